"""Issue 9 item 4: a catastrophic-backtracking pattern in a deny rule is harmless on RE2.

``(a+)+b`` against ``a``*n + ``c`` takes ~2^n steps on a backtracking engine: 40 characters
would block the event loop for days. On RE2 it is linear, so a second client's calls are
answered promptly while the first client's adversarial arguments are being evaluated.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import connect, running
from tests.e2e.conftest import CLAUDE_KEY, GPT_KEY, make_site, text_of

pytestmark = pytest.mark.anyio

POLICY = """\
rules:
  - id: calendar-read
    model: "*"
    allow_tools: [calendar.echo]
  - id: no-ab
    model: "*"
    deny_tools: [calendar.echo]
    when:
      text: {regex: "(a+)+b"}
"""


async def test_a_redos_pattern_cannot_stall_another_clients_calls(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", policy=POLICY)
    adversarial = ["a" * 40 + "c", "a" * 64 + "c", "a" * 500_000 + "c"]
    latencies: list[float] = []
    attacker_done = anyio.Event()
    async with running(site.app()), connect(site.url, GPT_KEY) as attacker, connect(site.url, CLAUDE_KEY) as other:
        assert (await attacker.call_tool("calendar.echo", {"text": "aaab"})).is_error  # the rule does fire

        async def attack() -> None:
            try:
                for _ in range(3):
                    for text in adversarial:
                        result = await attacker.call_tool("calendar.echo", {"text": text})
                        assert not result.is_error and len(text_of(result)) == len(text)
            finally:
                attacker_done.set()

        async def measure() -> None:
            index = 0
            while not attacker_done.is_set() or index < 10:
                started = time.perf_counter()
                result = await other.call_tool("calendar.echo", {"text": f"ping {index}"})
                latencies.append(time.perf_counter() - started)
                assert text_of(result) == f"ping {index}"
                index += 1

        # A backtracking engine would not finish even the first 40-character argument.
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(attack)
                tg.start_soon(measure)
    median = statistics.median(latencies)
    print(f"\nconcurrent calls: {len(latencies)}, median {median * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    # The bound the issue names, on the median; the max gets headroom for a loaded CI machine
    # (it includes the attacker's half-megabyte messages sharing the same process).
    assert median < 0.100
    assert max(latencies) < 2.0
