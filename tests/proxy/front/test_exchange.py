"""Each POSTed request is answered with JSON unless its exchange needs a stream (proxy/front/exchange.py).

A real gateway (HTTP front) in front of a real Streamable HTTP upstream, driven with raw
HTTP requests so that the reply's Content-Type and framing are visible: a plain call gets
``application/json``; a call whose upstream reports progress or asks for sampling mid-call
gets ``text/event-stream`` with the interleaved messages before the result; the client's
``Accept`` header decides when it allows only one type; a silent long call commits SSE and
pings. The SDK client's end-to-end behaviour over these replies is covered by every other
HTTP test (tests/proxy/test_relay.py, tests/e2e/).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

import proxy.front.exchange as exchange
from tests.conftest import connect, running
from tests.e2e.tcp_counter import CountingRelay
from tests.proxy.test_relay import make_gateway

pytestmark = pytest.mark.anyio

BOTH = "application/json, text/event-stream"
JSON = "application/json"
SSE = "text/event-stream"


def events(body: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in an SSE body (``data:`` lines; comment pings skipped)."""
    return [json.loads(line[5:]) for line in body.replace("\r\n", "\n").split("\n") if line.startswith("data:")]


class RawSession:
    """A hand-driven 2025-11-25 session: every reply's headers and body are visible."""

    def __init__(self, http: httpx2.AsyncClient, url: str, session_id: str) -> None:
        self.http, self.url, self.session_id = http, url, session_id
        self._next = 1

    def headers(self, accept: str = BOTH) -> dict[str, str]:
        return {"Accept": accept, "Content-Type": "application/json", "Mcp-Session-Id": self.session_id,
                "MCP-Protocol-Version": "2025-11-25"}

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        return {"jsonrpc": "2.0", "id": self._next, "method": method, "params": params}

    async def post(self, message: dict[str, Any], accept: str = BOTH) -> httpx2.Response:
        return await self.http.post(self.url, json=message, headers=self.headers(accept))


@contextlib.asynccontextmanager
async def raw_session(url: str, capabilities: dict[str, Any] | None = None) -> AsyncIterator[RawSession]:
    async with httpx2.AsyncClient(timeout=30) as http:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": capabilities or {},
            "clientInfo": {"name": "raw", "version": "1"}}}
        opened = await http.post(url, json=init, headers={"Accept": BOTH, "Content-Type": "application/json"})
        assert opened.status_code == 200, opened.text
        assert opened.headers["content-type"] == JSON  # nothing to stream before the handshake's answer
        assert opened.json()["result"]["protocolVersion"] == "2025-11-25"
        session = RawSession(http, url, opened.headers["mcp-session-id"])
        done = await session.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert done.status_code == 202
        yield session


@pytest.fixture
def gateway(tmp_path: Path, http_upstream_factory: Any) -> tuple[Any, str]:
    return make_gateway(tmp_path, [{"name": "search", "url": http_upstream_factory("search")}])


async def test_a_plain_call_is_answered_with_a_json_body(gateway: tuple[Any, str]) -> None:
    gw, url = gateway
    async with running(gw), raw_session(url) as s:
        reply = await s.post(s.request("tools/call", {"name": "search.echo", "arguments": {"text": "hi"}}))
        assert reply.status_code == 200
        assert reply.headers["content-type"] == JSON
        assert reply.headers["mcp-session-id"] == s.session_id
        body = reply.json()
        assert body["id"] == s._next and body["result"]["structuredContent"] == {"text": "hi", "server": "search"}
        listed = await s.post(s.request("tools/list", {}))
        assert listed.headers["content-type"] == JSON
        assert "search.echo" in [t["name"] for t in listed.json()["result"]["tools"]]


async def test_a_call_with_progress_streams_the_progress_then_the_result(gateway: tuple[Any, str]) -> None:
    gw, url = gateway
    async with running(gw), raw_session(url) as s:
        call = s.request("tools/call", {"name": "search.slow", "arguments": {"steps": 3},
                                        "_meta": {"progressToken": "p1"}})
        reply = await s.post(call)
        assert reply.status_code == 200
        assert reply.headers["content-type"] == SSE
        got = events(reply.text)
        assert [m.get("method") for m in got[:-1]] == ["notifications/progress"] * 3
        assert [m["params"]["progress"] for m in got[:-1]] == [1, 2, 3]
        assert got[-1]["id"] == call["id"] and got[-1]["result"]["content"][0]["text"] == "done 3"


async def test_sampling_asked_mid_call_rides_the_get_stream_and_the_call_still_gets_json(
    gateway: tuple[Any, str],
) -> None:
    # The relay sends what an upstream asks of the client (sampling, elicitation, roots) on the
    # session's standalone GET stream, so the call's own exchange has nothing to stream.
    gw, url = gateway
    async with running(gw), raw_session(url, {"sampling": {}}) as s:
        asked: list[dict[str, Any]] = []
        replies: list[httpx2.Response] = []

        async def answer_on_the_get_stream(stream_open: anyio.Event) -> None:
            async with s.http.stream("GET", url, headers=s.headers(SSE)) as stream:
                assert stream.headers["content-type"] == SSE
                stream_open.set()
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        message = json.loads(line[5:])
                        asked.append(message)
                        answer = {"jsonrpc": "2.0", "id": message["id"], "result": {
                            "role": "assistant", "content": {"type": "text", "text": "sure"}, "model": "m"}}
                        assert (await s.post(answer)).status_code == 202
                        return

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                stream_open = anyio.Event()
                tg.start_soon(answer_on_the_get_stream, stream_open)
                await stream_open.wait()
                call = s.request("tools/call", {"name": "search.sample", "arguments": {"prompt": "hello?"}})
                replies.append(await s.post(call))
        assert [m["method"] for m in asked] == ["sampling/createMessage"]
        reply = replies[0]
        assert reply.headers["content-type"] == JSON
        assert reply.json()["result"]["content"][0]["text"] == "model said: sure"


async def test_a_client_accepting_only_json_gets_json_even_when_the_upstream_reports_progress(
    gateway: tuple[Any, str],
) -> None:
    gw, url = gateway
    async with running(gw), raw_session(url) as s:
        call = s.request("tools/call", {"name": "search.slow", "arguments": {"steps": 2},
                                        "_meta": {"progressToken": "p1"}})
        reply = await s.post(call, accept=JSON)
        assert reply.status_code == 200 and reply.headers["content-type"] == JSON
        assert reply.json()["result"]["content"][0]["text"] == "done 2"  # progress has no wire here: dropped
        plain = await s.post(s.request("tools/call", {"name": "search.echo", "arguments": {"text": "j"}}),
                             accept="application/*")
        assert plain.headers["content-type"] == JSON and plain.json()["result"]["content"][0]["text"] == "j"


async def test_a_client_accepting_only_sse_gets_sse_for_a_plain_call(gateway: tuple[Any, str]) -> None:
    gw, url = gateway
    async with running(gw), raw_session(url) as s:
        call = s.request("tools/call", {"name": "search.echo", "arguments": {"text": "s"}})
        reply = await s.post(call, accept=SSE)
        assert reply.status_code == 200 and reply.headers["content-type"] == SSE
        got = events(reply.text)
        assert len(got) == 1 and got[0]["id"] == call["id"] and got[0]["result"]["content"][0]["text"] == "s"


async def test_a_client_accepting_neither_type_is_refused_with_406(gateway: tuple[Any, str]) -> None:
    gw, url = gateway
    async with running(gw), raw_session(url) as s:
        reply = await s.post(s.request("tools/call", {"name": "search.echo", "arguments": {"text": "x"}}),
                             accept="text/html")
        assert reply.status_code == 406
        assert "application/json or text/event-stream" in reply.json()["error"]["message"]
        assert (await s.post(s.request("ping", {}))).json()["result"] == {}  # the session is still fine


async def test_a_silent_long_call_commits_sse_and_pings_until_the_result(
    gateway: tuple[Any, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(exchange, "PING_INTERVAL", 0.2)
    gw, url = gateway
    async with running(gw), raw_session(url) as s:
        # no progress token: the upstream's progress reports go nowhere, so the call is silent for ~1 s
        call = s.request("tools/call", {"name": "search.slow", "arguments": {"steps": 1, "delay": 1.0}})
        reply = await s.post(call)
        assert reply.headers["content-type"] == SSE
        assert reply.text.count(": ping") >= 2
        got = events(reply.text)
        assert len(got) == 1 and got[0]["id"] == call["id"] and got[0]["result"]["content"][0]["text"] == "done 1"
        quick = await s.post(s.request("tools/call", {"name": "search.echo", "arguments": {"text": "q"}}))
        assert quick.headers["content-type"] == JSON


async def test_sdk_clients_reuse_their_connection_to_the_gateway(gateway: tuple[Any, str]) -> None:
    gw, url = gateway
    port = int(url.split(":")[2].split("/")[0])
    async with (
        running(gw),
        CountingRelay(port).running() as relay,
        connect(f"http://127.0.0.1:{relay.port}/mcp") as client,
    ):
        assert (await client.call_tool("search.echo", {"text": "warm"})).structured_content
        before = relay.accepted
        with anyio.fail_after(60):
            for i in range(20):
                assert (await client.call_tool("search.echo", {"text": str(i)})).structured_content == {
                    "text": str(i), "server": "search"}
        opened = relay.accepted - before
    assert opened <= 1, f"{opened} new connections to the gateway for 20 calls"


async def test_other_paths_are_still_starlettes_while_the_mcp_path_skips_it(gateway: tuple[Any, str]) -> None:
    # The MCP path skips Starlette's middleware and router; every other path keeps them.
    gw, url = gateway
    base = url.rsplit("/", 1)[0]
    async with running(gw), httpx2.AsyncClient(timeout=30) as http:
        assert (await http.post(f"{base}/elsewhere", json={})).status_code == 404
        slash = await http.post(f"{url}/", json={}, follow_redirects=False)
        assert slash.status_code == 307 and slash.headers["location"].endswith("/mcp")
        async with raw_session(url) as s:
            assert (await s.post(s.request("ping", {}))).json()["result"] == {}
