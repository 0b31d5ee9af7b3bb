"""The link's HTTP channel (proxy/upstream/http_call.py): requests POSTed by the task that awaits them.

Against the bundled test server on 127.0.0.1: concurrent callers share a keep-alive pool bounded
by their number, not by their calls; a cancelled caller and a timed-out request send the courtesy
``notifications/cancelled`` (the upstream's handler sees the cancellation) and the session goes
on; an upstream that dies mid-call fails that call with ``CONNECTION_CLOSED``, and the next POST,
refused, ends the channel's client with the failure, as the SDK's transport ends, so the link
restarts. The cases
the channel shares with the dispatcher over the lean client run in test_http_lean.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from mcp import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from tests.e2e.tcp_counter import CountingRelay
from tests.proxy.upstream.test_http_lean import OPTS, dispatcher, handshake

pytestmark = pytest.mark.anyio


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


async def test_concurrent_callers_hold_a_bounded_pool_and_reuse_it(http_upstream_factory: Any) -> None:
    url = http_upstream_factory("search")
    async with (
        CountingRelay(_port(url)).running() as relay,
        dispatcher(f"http://127.0.0.1:{relay.port}/mcp", [], kind="channel") as disp,
    ):
        await handshake(disp)
        seen: list[str] = []

        async def caller(n: int) -> None:
            for i in range(10):
                got = await disp.send_raw_request("tools/call", {"name": "echo", "arguments": {"text": f"{n}-{i}"}},
                                                  OPTS)
                seen.append(got["structuredContent"]["text"])

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(4):
                    tg.start_soon(caller, n)
        first = relay.accepted
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(4):
                    tg.start_soon(caller, n)
        again = relay.accepted - first
    assert sorted(seen) == sorted([f"{n}-{i}" for n in range(4) for i in range(10)] * 2)
    # initialize, the GET stream, and per caller its connection (and one more while a late stream
    # tail drains behind an answer): bounded by the callers, not by the 40 calls
    assert first <= 2 + 2 * 4, f"{first} connections for 4 concurrent callers"
    assert again <= 2, f"{again} new connections for 40 more calls once the pool was warm"


@pytest.mark.parametrize("how", ["cancelled", "timeout"])
async def test_an_abandoned_call_is_cancelled_upstream_and_the_session_goes_on(
    http_upstream_factory: Any, tmp_path: Path, how: str,
) -> None:
    marker = tmp_path / "marker"
    url = http_upstream_factory("search", "--marker", str(marker))
    async with dispatcher(url, [], kind="channel") as disp:
        await handshake(disp)
        slow = {"name": "slow", "arguments": {"steps": 200, "delay": 0.05}}
        with anyio.fail_after(30):
            if how == "cancelled":
                with anyio.move_on_after(0.5):
                    await disp.send_raw_request("tools/call", slow, OPTS)
            else:
                with pytest.raises(MCPError) as timed_out:
                    await disp.send_raw_request("tools/call", slow, {**OPTS, "timeout": 0.5})
                assert timed_out.value.code == REQUEST_TIMEOUT
            while not marker.exists():
                await anyio.sleep(0.05)
            got = await disp.send_raw_request("tools/call", {"name": "echo", "arguments": {"text": "after"}}, OPTS)
    assert marker.read_text() == "cancelled\n"
    assert got["structuredContent"]["text"] == "after"


async def test_an_upstream_that_dies_mid_call_fails_the_call_and_the_next_post_ends_the_client(
    http_upstream_factory: Any,
) -> None:
    url = http_upstream_factory("search")
    failures: list[MCPError] = []
    with pytest.raises(BaseExceptionGroup) as ended:  # the client ends with the failure: the link restarts
        with anyio.fail_after(30):
            async with dispatcher(url, [], kind="channel") as disp:
                await handshake(disp)
                for tool in ("crash", "echo"):  # the reply stream breaks; then the connection is refused
                    try:
                        await disp.send_raw_request("tools/call", {"name": tool, "arguments": {"text": "x"}}, OPTS)
                    except MCPError as exc:
                        failures.append(exc)
                await anyio.sleep(5)  # the failure ends the block before this does
    assert [f.code for f in failures] == [CONNECTION_CLOSED, CONNECTION_CLOSED]
    assert failures[0].message == "SSE stream ended without a response"  # as the SDK's transport words it
    assert ended.group_contains(aiohttp.ClientConnectionError)
