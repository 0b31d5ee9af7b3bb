"""bench/relay_only.py: the relay alone, and with ``--burn-us`` the relay plus a known amount of CPU.

The burning relay calibrates ``bench_gateway.py --burn``: what a given amount of hop CPU costs
in latency. Its row means something only if it relays calls unchanged and burns what it says.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from bench.relay_only import Burn

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "gateway.toml"
    argv = ", ".join(f'"{a}"' for a in (sys.executable, "-m", "demo.testserver", "--name", "bench"))
    config.write_text(textwrap.dedent(f"""\
        [gateway]
        listen = "stdio"

        [[upstreams]]
        name = "bench"
        command = [{argv}]
        """))
    return config


def test_a_burn_spends_at_least_its_cpu_on_this_thread() -> None:
    burn = Burn(2000)
    started = time.thread_time_ns()
    for _ in range(5):
        burn.spin()
    spent = time.thread_time_ns() - started
    assert spent >= 5 * 2_000_000
    assert burn.spent_ns >= 5 * 2_000_000


@pytest.mark.anyio
async def test_a_burn_passes_the_call_and_its_result_through_unchanged() -> None:
    seen: list[Any] = []

    async def call_next(call: Any) -> dict[str, Any]:
        seen.append(call)
        return {"content": [{"type": "text", "text": "done"}], "isError": False}

    call = object()
    burn = Burn(100)
    result = await burn(call, call_next)  # type: ignore[arg-type]
    assert seen == [call]
    assert result == {"content": [{"type": "text", "text": "done"}], "isError": False}
    assert burn.spent_ns >= 100_000


@pytest.mark.anyio
async def test_a_burn_after_the_reply_spends_nothing_before_the_result_is_back_and_all_of_it_next_turn() -> None:
    async def call_next(call: Any) -> dict[str, Any]:
        return {"content": [], "isError": False}

    burn = Burn(300, "after-reply")
    result = await burn(object(), call_next)  # type: ignore[arg-type]
    assert result == {"content": [], "isError": False}
    assert burn.spent_ns == 0  # the caller has its result (the lane writes the reply) before any burn
    await anyio.lowlevel.checkpoint()  # the loop runs the queued burn
    assert burn.spent_ns >= 300_000


@pytest.mark.anyio
async def test_a_burn_after_the_forward_runs_once_the_call_waits_for_its_upstream() -> None:
    spent_at_forward: list[int] = []
    answer = anyio.Event()

    async def call_next(call: Any) -> dict[str, Any]:
        spent_at_forward.append(burn.spent_ns)  # the forward is written here, before the first await
        await answer.wait()
        return {"content": [], "isError": False}

    async def upstream_answers() -> None:
        await anyio.sleep(0.01)
        answer.set()

    burn = Burn(300, "after-forward")
    async with anyio.create_task_group() as tg:
        tg.start_soon(upstream_answers)
        result = await burn(object(), call_next)  # type: ignore[arg-type]
    assert result == {"content": [], "isError": False}
    assert spent_at_forward == [0]
    assert burn.spent_ns >= 300_000  # spent while the call waited


def test_an_unknown_burn_position_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown burn position"):
        Burn(10, "sometime")


@pytest.mark.anyio
@pytest.mark.parametrize("at", ["before-forward", "after-forward", "after-reply"])
async def test_the_burning_relay_relays_a_real_session(tmp_path: Path, at: str) -> None:
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "bench.relay_only", str(_config(tmp_path)), "--burn-us", "500",
                                         "--burn-at", at],
                                   cwd=ROOT)
    with anyio.fail_after(30):
        async with Client(stdio_client(params), mode="legacy") as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("bench.echo", {"text": "through the burn"})
    assert "bench.echo" in names
    assert result.content[0].text == "through the burn"  # type: ignore[union-attr]


@pytest.mark.parametrize("argv", [["--burn-us", "-1"], ["--burn-us", "lots"], ["--burn-at", "later"], []])
def test_bad_arguments_are_refused_with_usage(tmp_path: Path, argv: list[str]) -> None:
    config = [str(_config(tmp_path))] if argv else []
    done = subprocess.run([sys.executable, "-m", "bench.relay_only", *config, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "usage:" in done.stderr


def test_the_benchmark_knows_every_burn_position_the_relay_offers() -> None:
    from bench.bench_gateway import BURN_POSITIONS
    from bench.relay_only import WHEN

    assert BURN_POSITIONS == WHEN
