"""The stdio upstream line transport end to end: big answers exact, oversized ones refused.

Invariant: a line over the limit fails its caller at once with an error naming the limit,
and the link keeps serving (the correlator's own invariants: test_dispatch.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.e2e.test_stdio_wire import stdio_gateway
from tests.proxy.wire.test_front import replies_for
from tests.proxy.wire.test_lane import call

pytestmark = pytest.mark.anyio


async def test_a_megabyte_answer_comes_back_exact_and_an_oversized_one_fails_at_once(tmp_path: Path) -> None:
    async with stdio_gateway(tmp_path, gateway="max_message_bytes = 4000000") as wire:
        text = "".join(chr(0x20 + (i * 7919) % 0x5E) for i in range(1_000_000))
        await wire.send(call(1, "search.echo", {"text": text}))
        assert (await replies_for(wire, 1))[1]["result"]["content"][0]["text"] == text
        with anyio.fail_after(15):  # well inside the upstream timeout: the caller is failed at once
            await wire.send(call(2, "search.big", {"size": 5_000_000}))
            error = (await replies_for(wire, 2))[2]
        assert "over the gateway's limit of 4000000 bytes" in json.dumps(error)
        await wire.send(call(3, "search.echo", {"text": "still here"}))
        assert (await replies_for(wire, 3))[3]["result"]["content"][0]["text"] == "still here"


async def test_a_child_is_read_through_the_feed_and_what_it_wrote_before_the_hand_over_is_kept() -> None:
    """A pre-spawned child may write before the link adopts it: those lines come first, then the rest."""
    import sys
    from types import SimpleNamespace

    from proxy.wire.framing import LineFeed
    from proxy.wire.upstream import stdio_upstream

    script = ("import sys,time; print('early one'); print('early two', flush=True); "
              "[print('echo', line.strip(), flush=True) for line in sys.stdin]")
    process = await anyio.open_process([sys.executable, "-c", script], start_new_session=True)
    await anyio.sleep(0.5)  # the early lines are in the asyncio reader's buffer by now
    params = SimpleNamespace(command=sys.executable, args=[], env={}, cwd=None)
    async with stdio_upstream(params, upstream="t", max_message_bytes=1 << 20, process=process) as pipe:
        assert isinstance(pipe.lines, LineFeed)
        await pipe.send(b"ping")
        got = []
        with anyio.fail_after(10):
            async for line in pipe.lines:
                got.append(line)
                if len(got) == 3:
                    break
    assert got == [b"early one", b"early two", b"echo ping"]
