"""The lean Streamable HTTP client (proxy/upstream/http_lean.py) against a real HTTP upstream.

The SDK's dispatcher runs over ``lean_streamable_http_client`` exactly as an upstream link
runs it, and the upstream is the bundled test server on 127.0.0.1, reached through a TCP
relay that counts connections: request POSTs reuse one keep-alive connection; an SSE reply
that interleaves progress or a sampling request before the result hands them to the
dispatcher in order (the sampling answer goes back and the call completes); a sessionless
(2026) upstream's JSON replies are parsed too; a terminated session and a refused request
are reported as the SDK's transport reports them. Each case runs twice: the dispatcher over the
lean client, and the link's channel (proxy/upstream/http_call.py), whose requests skip the
dispatcher's streams and are POSTed by their callers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import pytest
from mcp import MCPError
from mcp.client.streamable_http import DEFAULT_MAX_SSE_EVENT_SIZE, streamable_http_client
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types.version import LATEST_MODERN_VERSION

from proxy.upstream.http_call import http_channel
from proxy.upstream.http_lean import lean_streamable_http_client
from proxy.upstream.http_pool import shared_pool, upstream_http_client
from tests.e2e.tcp_counter import CountingRelay

pytestmark = pytest.mark.anyio

HANDSHAKE = "2025-11-25"
OPTS: Any = {"headers": {"mcp-protocol-version": HANDSHAKE}, "timeout": 30}


KINDS = ("lean", "channel")
"""The dispatcher over the lean client; the link's channel (requests POSTed by their callers)."""


@contextlib.asynccontextmanager
async def dispatcher(
    url: str, asked: list[tuple[str, Any]], *, sdk: bool = False, kind: str = "lean",
) -> AsyncIterator[Any]:
    """The SDK's dispatcher over the lean client (with ``sdk``, over the SDK's own client; with
    ``kind="channel"``, the link's :class:`~proxy.upstream.http_call.HttpChannel`)."""
    async def on_request(ctx: Any, method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        asked.append((method, params))
        return {"role": "assistant", "content": {"type": "text", "text": "sure"}, "model": "m"}

    async def on_notify(ctx: Any, method: str, params: Mapping[str, Any] | None) -> None:
        if method != "notifications/progress":  # progress goes to the request's own callback
            asked.append((method, params))

    async with shared_pool(), upstream_http_client({}) as http, contextlib.AsyncExitStack() as stack:
        disp: Any
        if kind == "channel":
            disp = await stack.enter_async_context(http_channel(url, http_client=http, upstream="search",
                                                                max_sse_event_size=DEFAULT_MAX_SSE_EVENT_SIZE))
        else:
            read, write = await stack.enter_async_context(
                streamable_http_client(url, http_client=http) if sdk
                else lean_streamable_http_client(url, http_client=http, upstream="search"))
            disp = JSONRPCDispatcher(read, write)
        tg = await stack.enter_async_context(anyio.create_task_group())
        await tg.start(disp.run, on_request, on_notify)
        try:
            yield disp
        finally:
            tg.cancel_scope.cancel()


async def handshake(disp: Any) -> None:
    result = await disp.send_raw_request("initialize", {
        "protocolVersion": HANDSHAKE, "capabilities": {"sampling": {}}, "clientInfo": {"name": "t", "version": "1"}})
    assert result["protocolVersion"] == HANDSHAKE
    await disp.notify("notifications/initialized", None, OPTS)


@pytest.mark.parametrize("kind", KINDS)
async def test_request_posts_reuse_one_connection_and_parse_sse_replies(http_upstream_factory: Any, kind: str) -> None:
    url = http_upstream_factory("search")
    async with (
        CountingRelay(int(url.split(":")[2].split("/")[0])).running() as relay,
        dispatcher(f"http://127.0.0.1:{relay.port}/mcp", [], kind=kind) as disp,
    ):
        await handshake(disp)
        warm = await disp.send_raw_request("tools/call", {"name": "echo", "arguments": {"text": "w"}}, OPTS)
        assert warm["structuredContent"] == {"text": "w", "server": "search"}
        before = relay.accepted
        with anyio.fail_after(60):
            for i in range(20):
                got = await disp.send_raw_request("tools/call", {"name": "echo", "arguments": {"text": str(i)}},
                                                  OPTS)
                assert got["structuredContent"] == {"text": str(i), "server": "search"}
            listed = await disp.send_raw_request("tools/list", {}, OPTS)
            assert "echo" in [t["name"] for t in listed["tools"]]
        opened = relay.accepted - before
    assert opened <= 1, f"{opened} new connections for 21 requests"


@pytest.mark.parametrize("kind", KINDS)
async def test_progress_and_a_sampling_request_interleaved_in_the_reply_reach_the_dispatcher(
    http_upstream_factory: Any, kind: str,
) -> None:
    url = http_upstream_factory("search")
    asked: list[tuple[str, Any]] = []
    async with dispatcher(url, asked, kind=kind) as disp:
        await handshake(disp)
        steps: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            steps.append(progress)

        with anyio.fail_after(30):
            slow = await disp.send_raw_request("tools/call", {"name": "slow", "arguments": {"steps": 3}},
                                               {**OPTS, "on_progress": on_progress})
            assert slow["content"][0]["text"] == "done 3"
            assert steps == [1, 2, 3]
            sampled = await disp.send_raw_request("tools/call", {"name": "sample", "arguments": {"prompt": "hi?"}},
                                                  OPTS)
    assert [m for m, _ in asked] == ["sampling/createMessage"]
    assert sampled["content"][0]["text"] == "model said: sure"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_sessionless_upstream_is_answered_with_json_bodies(http_upstream_factory: Any, kind: str) -> None:
    url = http_upstream_factory("search")
    async with (
        CountingRelay(int(url.split(":")[2].split("/")[0])).running() as relay,
        dispatcher(f"http://127.0.0.1:{relay.port}/mcp", [], kind=kind) as disp,
    ):
        envelope = {"io.modelcontextprotocol/protocolVersion": LATEST_MODERN_VERSION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}
        modern: Any = {"headers": {"mcp-protocol-version": LATEST_MODERN_VERSION, "mcp-method": "tools/call",
                                   "mcp-name": "echo"}, "timeout": 30}
        with anyio.fail_after(60):
            for i in range(10):
                got = await disp.send_raw_request(
                    "tools/call", {"name": "echo", "arguments": {"text": str(i)}, "_meta": envelope}, modern)
                assert got["structuredContent"] == {"text": str(i), "server": "search"}
        assert relay.accepted <= 2


async def test_errors_are_reported_as_the_sdk_transport_reports_them(http_upstream_factory: Any) -> None:
    url = http_upstream_factory("search")
    reported = []
    for sdk, kind in ((True, "lean"), (False, "lean"), (False, "channel")):
        async with dispatcher(url, [], sdk=sdk, kind=kind) as disp:
            await handshake(disp)
            errors = []
            for method, opts in (
                ("nope/nope", OPTS),  # a JSON-RPC error in the reply
                ("tools/list", {"headers": {"mcp-protocol-version": "1999-01-01"}, "timeout": 30}),  # a 400
                ("tools/list", {"headers": {"mcp-session-id": "f" * 32, **OPTS["headers"]}, "timeout": 30}),  # 404
            ):
                with pytest.raises(MCPError) as refused:
                    await disp.send_raw_request(method, {}, opts)
                errors.append((refused.value.code, refused.value.message))
            reported.append(errors)
    assert reported[0] == reported[1] == reported[2]
    assert reported[0][0][0] == -32601
