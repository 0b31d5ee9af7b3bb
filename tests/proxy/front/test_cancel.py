"""A client's cancellation of a call over Streamable HTTP, as the client sees it (proxy/front/lane.py).

The SDK's client (mcp 2.3.0) reads a JSON-body answer with an unguarded write to its session's
read stream: an answer that arrives once the session has closed that stream (a client that gives
up on a call and disconnects) fails the client's whole transport task group, while its SSE reader
drops such an answer. So a cancelled 2025-era call's answer (``-32800``, which the 2025 wire needs
to end the request's stream, as the SDK server sends it) goes out as an SSE event whenever the
client takes SSE, in the fast lane and on the SDK path alike, whatever the timing. A 2026 client
cancels by closing the POST and is never answered. Either way the upstream is told; and the
SDK's stdio client, in either era, cancels a call and goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.conftest import connect, running
from tests.e2e.conftest import GPT_KEY, make_site
from tests.proxy.front.test_lane import BOTH, HANDSHAKE, call_headers, events, opened

pytestmark = pytest.mark.anyio

ROUNDS = 3
SLOW = {"steps": 100, "delay": 0.1}


@pytest.mark.parametrize("mode", ["legacy", "auto"], ids=["2025", "2026"])
@pytest.mark.parametrize("gateway", ["", "fast_lane = false"], ids=["fast-lane", "sdk-path"])
async def test_a_client_that_cancels_a_call_and_disconnects_at_once_fails_nothing_and_the_upstream_is_told(
    tmp_path: Path, mode: str, gateway: str,
) -> None:
    site = make_site(tmp_path / "site", gateway=gateway)
    marker = tmp_path / "site" / "calls.txt"
    async with running(site.app()):
        for round_ in range(1, ROUNDS + 1):
            with anyio.fail_after(30):  # no hang: the call gives up, the client closes cleanly
                async with connect(site.url, GPT_KEY, mode=mode) as client:
                    assert (await client.call_tool("search.echo", {"text": "up"})).content[0].text == "up"
                    with anyio.move_on_after(0.5) as gave_up:
                        await client.call_tool("search.slow", SLOW)
                    assert gave_up.cancelled_caught
                # (leaving the block closes the session at once: the race the answer must not lose)
                while _cancels(marker) < round_:
                    await anyio.sleep(0.05)


def _cancels(marker: Path) -> int:
    return marker.read_text().count("cancelled") if marker.exists() else 0


def _slow_call(request_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "search.slow", "arguments": SLOW}}


@pytest.mark.parametrize("gateway", ["", "fast_lane = false"], ids=["fast-lane", "sdk-path"])
async def test_a_cancelled_2025_call_is_answered_request_cancelled_on_a_stream_unless_the_client_takes_only_json(
    tmp_path: Path, gateway: str,
) -> None:
    site = make_site(tmp_path / "site", gateway=gateway)
    marker = tmp_path / "site" / "calls.txt"
    assert site.url is not None
    url = site.url
    async with running(site.app()), httpx2.AsyncClient(timeout=30) as http, opened(http, url, GPT_KEY) as sid:
        replies: dict[str, httpx2.Response] = {}
        for request_id, accept in ((4, BOTH), (5, "application/json")):
            headers = {**call_headers(sid), "Accept": accept}

            async def call(request_id: int = request_id, headers: dict[str, str] = headers) -> None:
                replies[headers["Accept"]] = await http.post(url, json=_slow_call(request_id), headers=headers)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await anyio.sleep(0.5)
                    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                              "params": {"requestId": request_id, "reason": "changed my mind"}}
                    accepted = await http.post(url, json=cancel, headers=call_headers(sid))
                    assert accepted.status_code == 202
        with anyio.fail_after(20):
            while _cancels(marker) < 2:  # the upstream was told, both times
                await anyio.sleep(0.05)
    cancelled = {"code": -32800, "message": "Request cancelled"}
    streamed = replies[BOTH]
    assert streamed.headers["content-type"] == "text/event-stream"
    assert events(streamed.text) == [{"jsonrpc": "2.0", "id": 4, "error": cancelled}]
    plain = replies["application/json"]
    assert plain.headers["content-type"] == "application/json"
    assert plain.json() == {"jsonrpc": "2.0", "id": 5, "error": cancelled}
    assert HANDSHAKE == "2025-11-25"


@pytest.mark.parametrize("mode", ["legacy", "auto"], ids=["2025", "2026"])
async def test_a_stdio_client_that_cancels_a_call_goes_on_and_the_upstream_is_told(tmp_path: Path, mode: str) -> None:
    from tests.proxy.wire.test_lane import sdk_client

    marker = tmp_path / "site" / "calls.txt"
    with anyio.fail_after(60):
        async with sdk_client(tmp_path / "site", mode=mode) as client:
            for round_ in range(1, ROUNDS + 1):
                with anyio.move_on_after(0.5) as gave_up:
                    await client.call_tool("search.slow", SLOW)
                assert gave_up.cancelled_caught
                while _cancels(marker) < round_:
                    await anyio.sleep(0.05)
                # the session goes on (that no answer for the cancelled id is written on stdio, in
                # either era, is checked on the raw wire in tests/proxy/wire/test_lane.py)
                assert (await client.call_tool("search.echo", {"text": str(round_)})).content[0].text == str(round_)
