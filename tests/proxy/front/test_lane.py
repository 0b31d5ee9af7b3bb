"""The HTTP fast lane answers exactly as the SDK path does (proxy/front/lane.py).

Two real gateways with the same policy and keys run side by side: one with the lane (the
default), one with ``[gateway] fast_lane = false`` (every request through the SDK session
transport). The same raw HTTP exchanges go to both and the answers are compared: status,
content type and the JSON-RPC body (decision ids and times blanked), over a decision
table of methods, request shapes, headers and client eras. A counter on the lane shows
which rows it served itself: the hot rows must be served by it, the rest must not.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

import proxy.front.lane as lane
from tests.conftest import running
from tests.e2e.conftest import CLAUDE_KEY, GPT_KEY, make_site

pytestmark = pytest.mark.anyio

BOTH = "application/json, text/event-stream"
HANDSHAKE = "2025-11-25"


VARYING = frozenset({"decision_id", "timestamp", "time", "at", "policy_digest", "policy_revision", "elapsed_ms",
                     "expires_at", "risk_score", "weight"})


def blank(value: Any) -> Any:
    """The answer with what differs between two gateways by nature (ids, times, digests, the
    time-decayed session risk) blanked."""
    if isinstance(value, dict):
        return {k: "*" if k in VARYING else blank(v) for k, v in value.items()}
    if isinstance(value, list):
        return [blank(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"session risk [0-9.]+", "session risk *", re.sub(r"\b[0-9a-f]{16,}\b", "*", value))
    return value


def events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in body.replace("\r\n", "\n").split("\n") if line.startswith("data:")]


@contextlib.asynccontextmanager
async def opened(http: httpx2.AsyncClient, url: str, key: str) -> AsyncIterator[str]:
    """A 2025-11-25 session on ``url``; yields its id."""
    auth = {"Authorization": f"Bearer {key}", "Accept": BOTH, "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    reply = await http.post(url, json=init, headers=auth)
    assert reply.status_code == 200, reply.text
    sid = reply.headers["mcp-session-id"]
    done = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers={**auth, "Mcp-Session-Id": sid, "MCP-Protocol-Version": HANDSHAKE})
    assert done.status_code == 202
    yield sid


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Methods the lane answered itself, in order."""
    seen: list[str] = []
    original = lane.HttpLane._serve

    async def counting(self: Any, transport: Any, message: dict[str, Any], accepts: Any, send: Any) -> None:
        seen.append(message["method"])
        await original(self, transport, message, accepts, send)

    monkeypatch.setattr(lane.HttpLane, "_serve", counting)
    return seen


@contextlib.asynccontextmanager
async def two_gateways(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """(lane url, SDK-path url): the same site twice, the second without the fast lane."""
    fast = make_site(tmp_path / "fast")
    slow = make_site(tmp_path / "slow", gateway="fast_lane = false")
    assert fast.url and slow.url
    async with running(fast.app()), running(slow.app()):
        yield fast.url, slow.url


CALL = {"name": "search.echo", "arguments": {"text": "hi"}}
# (case, key, body (None: the request), extra headers, served by the lane)
TABLE: list[tuple[str, str, Any, dict[str, str], bool]] = [
    ("allowed call", GPT_KEY, {"method": "tools/call", "params": CALL}, {}, True),
    ("string id", GPT_KEY, {"id": "abc", "method": "tools/call", "params": CALL}, {}, True),
    ("denied by policy", CLAUDE_KEY, {"method": "tools/call", "params": {"name": "calendar.delete_event",
                                                                           "arguments": {}}}, {}, True),
    ("outside the key's scope", CLAUDE_KEY, {"method": "tools/call", "params": CALL}, {}, True),
    ("deny rule", GPT_KEY, {"method": "tools/call", "params": {"name": "search.crash", "arguments": {}}}, {}, True),
    ("unknown tool", GPT_KEY, {"method": "tools/call", "params": {"name": "search.nope", "arguments": {}}}, {}, True),
    ("name not a string", GPT_KEY, {"method": "tools/call", "params": {"name": 7}}, {}, True),
    ("arguments not an object", GPT_KEY, {"method": "tools/call", "params": {"name": "search.echo",
                                                                             "arguments": [1]}}, {}, True),
    ("upstream error result", GPT_KEY, {"method": "tools/call", "params": {"name": "search.add",
                                                                           "arguments": {"a": "x"}}}, {}, True),
    ("tools/list", GPT_KEY, {"method": "tools/list", "params": {}}, {}, True),
    ("tools/list without params", GPT_KEY, {"method": "tools/list"}, {}, True),
    ("tools/list of a narrower key", CLAUDE_KEY, {"method": "tools/list", "params": {}}, {}, True),
    ("tools/list with a bad cursor", GPT_KEY, {"method": "tools/list", "params": {"cursor": "nonsense"}}, {}, True),
    ("no protocol-version header", GPT_KEY, {"method": "tools/call", "params": CALL}, {"MCP-Protocol-Version": ""},
     True),
    ("json only", GPT_KEY, {"method": "tools/call", "params": CALL}, {"Accept": "application/json"}, True),
    ("sse only", GPT_KEY, {"method": "tools/call", "params": CALL}, {"Accept": "text/event-stream"}, True),
    ("wildcard accept", GPT_KEY, {"method": "tools/call", "params": CALL}, {"Accept": "*/*"}, True),
    ("content type with charset", GPT_KEY, {"method": "tools/call", "params": CALL},
     {"Content-Type": "application/json; charset=utf-8"}, True),
    # not the lane's: the SDK answers
    ("params null", GPT_KEY, {"method": "tools/call", "params": None}, {}, False),
    ("params a list", GPT_KEY, {"method": "tools/call", "params": [1]}, {}, False),
    ("boolean id", GPT_KEY, {"id": True, "method": "tools/call", "params": CALL}, {}, False),
    ("extra member", GPT_KEY, {"method": "tools/call", "params": CALL, "extra": 1}, {}, False),
    ("wrong jsonrpc", GPT_KEY, {"jsonrpc": "1.0", "method": "tools/call", "params": CALL}, {}, False),
    ("enveloped (2026 meta)", GPT_KEY, {"method": "tools/call", "params": {
        **CALL, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}, {}, False),
    ("other method", GPT_KEY, {"method": "prompts/list", "params": {}}, {}, False),
    ("ping", GPT_KEY, {"method": "ping"}, {}, False),
    ("unknown method", GPT_KEY, {"method": "nope/nope", "params": {}}, {}, False),
    ("older handshake header", GPT_KEY, {"method": "tools/call", "params": CALL},
     {"MCP-Protocol-Version": "2025-06-18"}, True),
    ("2026 header", GPT_KEY, {"method": "tools/call", "params": CALL}, {"MCP-Protocol-Version": "2026-07-28"},
     False),
    ("accepts neither", GPT_KEY, {"method": "tools/call", "params": CALL}, {"Accept": "text/html"}, False),
    ("not json", GPT_KEY, b"{nope", {}, False),
    ("json but not an object", GPT_KEY, b"[1, 2]", {}, False),
    ("wrong content type", GPT_KEY, {"method": "tools/call", "params": CALL}, {"Content-Type": "text/plain"},
     False),
    ("another model's key on the session", "SWAP", {"method": "tools/call", "params": CALL}, {}, False),
    ("unknown session id", GPT_KEY, {"method": "tools/call", "params": CALL}, {"Mcp-Session-Id": "f" * 32}, False),
    ("bad host", GPT_KEY, {"method": "tools/call", "params": CALL}, {"Host": "evil.example:80"}, False),
    ("bad origin", GPT_KEY, {"method": "tools/call", "params": CALL}, {"Origin": "http://evil.example"}, False),
    ("unknown key", "modelkey-nobody", {"method": "tools/call", "params": CALL}, {}, False),
]


async def exchange(http: httpx2.AsyncClient, url: str, sid: str, key: str, body: Any, extra: dict[str, str],
                   number: int) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Accept": BOTH, "Content-Type": "application/json",
               "Mcp-Session-Id": sid, "MCP-Protocol-Version": HANDSHAKE, **extra}
    headers = {k: v for k, v in headers.items() if v}
    content = body if isinstance(body, bytes) else json.dumps({"jsonrpc": "2.0", "id": number, **body}).encode()
    reply = await http.post(url, content=content, headers=headers)
    kind = reply.headers.get("content-type", "").split(";")[0]
    if kind == "text/event-stream":
        payload: Any = events(reply.text)
    else:
        try:
            payload = reply.json()
        except ValueError:
            payload = reply.text
    return reply.status_code, kind, blank(payload)


async def test_the_lane_and_the_sdk_path_answer_every_row_alike(tmp_path: Path, served: list[str]) -> None:
    async with two_gateways(tmp_path) as (fast, slow), httpx2.AsyncClient(timeout=30) as http:
        sessions: dict[tuple[str, str], str] = {}
        stack = contextlib.AsyncExitStack()
        async with stack:
            for url in (fast, slow):
                for key in (GPT_KEY, CLAUDE_KEY):
                    sessions[url, key] = await stack.enter_async_context(opened(http, url, key))
            for number, (case, key, body, extra, hot) in enumerate(TABLE, start=1):
                answers = []
                for url in (fast, slow):
                    owner = CLAUDE_KEY if key == "SWAP" else key if key in (GPT_KEY, CLAUDE_KEY) else GPT_KEY
                    sid = sessions[url, owner]
                    presented = GPT_KEY if key == "SWAP" else key
                    before = len(served)
                    with anyio.fail_after(30):
                        answers.append(await exchange(http, url, sid, presented, body, extra, number))
                    took = len(served) > before
                    if url == fast:
                        assert took == hot, f"{case}: served by the lane: {took}, expected {hot}"
                    else:
                        assert not took, f"{case}: the lane served a gateway with fast_lane = false"
                assert answers[0] == answers[1], f"{case}: lane {answers[0]} != sdk {answers[1]}"


async def test_the_lane_serves_the_hot_requests_of_a_real_client(tmp_path: Path, served: list[str]) -> None:
    from tests.conftest import connect

    site = make_site(tmp_path / "site")
    assert site.url
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        assert "search.echo" in tools
        result = await client.call_tool("search.echo", {"text": "lean"})
        assert result.structured_content == {"text": "lean", "server": "search"}
        denied = await client.call_tool("search.crash", {})
        assert denied.is_error
    assert served == ["tools/list", "tools/call", "tools/call"]


def call_headers(sid: str, key: str = GPT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Accept": BOTH, "Content-Type": "application/json",
            "Mcp-Session-Id": sid, "MCP-Protocol-Version": HANDSHAKE}


async def test_an_oversized_body_is_refused_alike_with_or_without_a_length(tmp_path: Path, served: list[str]) -> None:
    fast = make_site(tmp_path / "fast", gateway="max_message_bytes = 4096")
    slow = make_site(tmp_path / "slow", gateway="max_message_bytes = 4096\nfast_lane = false")
    assert fast.url and slow.url
    body = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": "search.echo", "arguments": {"text": "x" * 10_000}}}).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is found while reading
        for start in range(0, len(body), 1000):
            yield body[start:start + 1000]

    async with running(fast.app()), running(slow.app()), httpx2.AsyncClient(timeout=30) as http:
        answers = []
        for url in (fast.url, slow.url):
            async with opened(http, url, GPT_KEY) as sid:
                sized = await http.post(url, content=body, headers=call_headers(sid))
                streamed = await http.post(url, content=chunks(), headers=call_headers(sid))
                small = await http.post(url, json={"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                                                   "params": CALL}, headers=call_headers(sid))
                answers.append([(r.status_code, r.text) for r in (sized, streamed)])
                assert small.status_code == 200 and small.json()["result"]["structuredContent"]["text"] == "hi"
        assert answers[0] == answers[1]
        assert [status for status, _ in answers[0]] == [413, 413]
    assert served == ["tools/call"]  # only the small call; the oversized ones went to the SDK's limit


async def test_progress_streams_and_a_cancelled_call_is_answered_alike(tmp_path: Path, served: list[str]) -> None:
    async with two_gateways(tmp_path) as (fast, slow), httpx2.AsyncClient(timeout=30) as http:
        results = []
        for url in (fast, slow):
            async with opened(http, url, GPT_KEY) as sid:
                progress = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                    "name": "search.slow", "arguments": {"steps": 3}, "_meta": {"progressToken": "p"}}}
                streamed = await http.post(url, json=progress, headers=call_headers(sid))
                assert streamed.headers["content-type"] == "text/event-stream"
                replies: list[httpx2.Response] = []
                long_call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
                    "name": "search.slow", "arguments": {"steps": 1, "delay": 20}}}

                async def call(replies: list[httpx2.Response] = replies, url: str = url, sid: str = sid,
                               message: dict[str, Any] = long_call) -> None:
                    replies.append(await http.post(url, json=message, headers=call_headers(sid)))

                with anyio.fail_after(15):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call)
                        await anyio.sleep(1.0)
                        duplicate = await http.post(url, json=long_call, headers=call_headers(sid))
                        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                  "params": {"requestId": 4, "reason": "changed my mind"}}
                        accepted = await http.post(url, json=cancel, headers=call_headers(sid))
                results.append((blank(events(streamed.text)), duplicate.status_code, blank(duplicate.json()),
                                accepted.status_code, replies[0].status_code, replies[0].headers["content-type"],
                                blank(events(replies[0].text))))
        assert results[0] == results[1]
        got = results[0]
        assert [m.get("method") for m in got[0]] == ["notifications/progress"] * 3 + [None]
        assert got[2]["error"]["code"] == -32600  # the id is in flight
        assert got[5] == "text/event-stream"  # a cancelled call's answer is an event (tests/proxy/front/test_cancel.py)
        assert [m["error"] for m in got[6]] == [{"code": -32800, "message": "Request cancelled"}]
    assert served == ["tools/call", "tools/call", "tools/call"]
