"""The Streamable HTTP client to an upstream: the SDK's transport with a lean request POST.

The SDK's client transport sends every message through ``httpx`` (headers and body as two
socket writes, the pure-Python h11 parser, redirect and auth layers) and models each
message it sends and receives as pydantic objects. Measured against the demo upstream on
this machine, one ``tools/call`` POST cost ~0.8 ms of CPU over ``httpx2`` and ~0.25 ms
over ``aiohttp`` (one write per request, a C parser), and answered in a fraction of the
wall time.

So a *request* (``tools/call``, ``tools/list``, every request but ``initialize``) is POSTed
over ``aiohttp`` on the event loop's shared keep-alive pool
(:func:`proxy.upstream.http_pool.lean_session`), its body encoded once from the
dispatcher's message, and its reply parsed without pydantic: a JSON body, or an SSE
stream whose events are cut by httpx2's own SSE parser (same size limit, same line
rules) and decoded once; a well-formed response becomes a ``JSONRPCResponse`` without
re-validation (:func:`parse_line`). Messages the upstream interleaves
before the response (progress, logging, a sampling or elicitation request) reach the
dispatcher in order, exactly as through the SDK's transport, and the client's answers to
them go back as ordinary POSTs.

Everything else stays the SDK's: ``initialize`` (the session id is taken from its answer),
notifications and responses, the standalone GET stream and its reconnection, resumption,
session termination (``DELETE``), the 2026 cancellation rule (aborting a request's POST).
The reply's status is mapped as the SDK maps it (202, ``>= 400`` with or without a JSON-RPC
error body, 404 as a terminated session, an unexpected content type); a redirect is left
to the SDK, which re-sends the request over ``httpx`` under its same-origin rule (a
redirected POST was not processed). Headers are the httpx client's (the link's configured
headers, such as ``Authorization``), the session id and ``MCP-Protocol-Version``, and the
per-message ones; the link's cookie jar is read and fed as the SDK's requests would.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import anyio.abc
import httpx2
import structlog
from httpx2._sse import _SSEParser  # httpx2's own SSE rules (pinned with the SDK)
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import (
    DEFAULT_MAX_SSE_EVENT_SIZE,
    RequestContext,
    StreamableHTTPTransport,
    StreamWriter,
)
from mcp.shared._compat import resync_tracer
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

from proxy.upstream.http_pool import DRAIN_BYTES, DRAIN_SECONDS, lean_session
from proxy.wire import codec

__all__ = ["LeanClient", "LeanStreamableHTTPTransport", "SSEEvents", "lean_client", "lean_streamable_http_client"]

log = structlog.get_logger("securegateway.upstream")

REDIRECTS = frozenset({301, 302, 303, 307, 308})


class SSEEvents:
    """The SSE events of one aiohttp response body, by httpx2's parser (decoded as UTF-8 with
    replacement), remembering the last event id and retry hint the stream sent for a resumption.

    ``async with contextlib.aclosing(events.iterate()) as stream: async for sse in stream``;
    the parser's ``SSEError`` and aiohttp's errors reach the caller as raised."""

    __slots__ = ("last_event_id", "max_event_size", "response", "retry_ms")

    def __init__(self, response: aiohttp.ClientResponse, max_event_size: int | None) -> None:
        self.response = response
        self.max_event_size = max_event_size
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    async def iterate(self) -> AsyncGenerator[Any, None]:
        parser = _SSEParser(self.max_event_size)
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for chunk in self.response.content.iter_any():
            for sse in parser.decode(text.decode(chunk)):
                if sse.id:
                    self.last_event_id = sse.id
                if sse.retry is not None:
                    self.retry_ms = sse.retry
                yield sse
        for sse in parser.flush():  # a last event without its blank line: not a resumption point
            yield sse


def parse_line(data: bytes, upstream: str) -> SessionMessage | Exception:
    """One message from the upstream as the dispatcher consumes it (an exception for a bad one):
    decoded once; a well-formed response becomes a ``JSONRPCResponse`` without re-validation."""
    try:
        message = codec.decode(data)
    except codec.DecodeError as exc:
        log.warning("upstream message is not json", upstream=upstream, error=str(exc)[:200])
        return ValueError(f"upstream `{upstream}` sent a message that is not JSON: {exc}")
    if type(message) is dict and "method" not in message and "error" not in message:
        request_id, result = message.get("id"), message.get("result")
        if type(result) is dict and type(request_id) in (int, str) and message.get("jsonrpc") == "2.0":
            return SessionMessage(JSONRPCResponse.model_construct(jsonrpc="2.0", id=request_id, result=result))
    try:
        return SessionMessage(jsonrpc_message_adapter.validate_python(message, by_name=False))
    except ValidationError as exc:
        return exc


def encode_outbound(message: JSONRPCRequest) -> bytes:
    """A dispatcher-built request as one JSON body, encoded once."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": message.id, "method": message.method}
    if message.params is not None:
        body["params"] = message.params
    return codec.encode(body)


class LeanStreamableHTTPTransport(StreamableHTTPTransport):
    """``StreamableHTTPTransport`` whose request POSTs go over aiohttp (see the module docstring)."""

    def __init__(self, url: str, lean: aiohttp.ClientSession, *, upstream: str,
                 max_sse_event_size: int | None = DEFAULT_MAX_SSE_EVENT_SIZE) -> None:
        super().__init__(url, max_sse_event_size=max_sse_event_size)
        self.lean = lean
        self.upstream = upstream
        self._base_headers: dict[str, str] | None = None

    async def _handle_post_request(self, ctx: RequestContext) -> None:
        message = ctx.session_message.message
        if not isinstance(message, JSONRPCRequest) or message.method == "initialize":
            await super()._handle_post_request(ctx)
            return
        headers = self.request_headers(ctx.client, ctx.metadata.headers if ctx.metadata is not None else None)
        async with self._post(message, headers) as response:
            self.keep_cookies(ctx.client, response)
            status = response.status
            if status in REDIRECTS:
                redirected = True
            else:
                redirected = False
                await self._handle_reply(ctx, message, response)
        if redirected:  # the SDK's origin rule decides; the POST was not processed where it was sent
            await super()._handle_post_request(ctx)

    @contextlib.asynccontextmanager
    async def _post(self, message: JSONRPCRequest, headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            response = await self.lean.post(self.url, data=encode_outbound(message), headers=headers,
                                             allow_redirects=False)
        except Exception as exc:
            log.warning("lean POST failed", upstream=self.upstream, error=repr(exc))
            raise
        async with response:
            yield response

    def request_headers(self, client: httpx2.AsyncClient, extra: Mapping[str, str] | None) -> dict[str, str]:
        """A request POST's headers: the client's, the transport's, ``extra`` (per message), cookies."""
        if self._base_headers is None:
            self._base_headers = {k: v for k, v in client.headers.items() if k.lower() != "content-length"}
        headers = {**self._base_headers, **self._prepare_headers()}
        if extra is not None:
            headers.update(extra)
        if client.cookies:
            probe = httpx2.Request("POST", self.url)
            client.cookies.set_cookie_header(probe)
            if "cookie" in probe.headers:
                headers["cookie"] = probe.headers["cookie"]
        return headers

    def keep_cookies(self, client: httpx2.AsyncClient, response: aiohttp.ClientResponse) -> None:
        cookies = response.headers.getall("set-cookie", [])
        if cookies:
            seen = httpx2.Response(response.status, headers=[("set-cookie", c) for c in cookies],
                                   request=httpx2.Request("POST", self.url))
            client.cookies.extract_cookies(seen)

    async def _handle_reply(self, ctx: RequestContext, message: JSONRPCRequest,
                            response: aiohttp.ClientResponse) -> None:
        writer = ctx.read_stream_writer
        status = response.status
        if status == 202:
            await self._resolve_abandoned_request(writer, message.id, "server answered a request with 202 Accepted",
                                                  code=INVALID_REQUEST)
            return
        content_type = response.headers.get("content-type", "").lower()
        if status >= 400:
            await writer.send(SessionMessage(await status_error(message.id, response, content_type, self)))
            return
        if content_type.startswith("application/json"):
            parsed = parse_line(await response.read(), self.upstream)
            if isinstance(parsed, Exception):
                error = ErrorData(code=PARSE_ERROR, message=f"Failed to parse JSON response: {parsed}")
                parsed = SessionMessage(JSONRPCError(jsonrpc="2.0", id=message.id, error=error))
            await writer.send(parsed)
        elif content_type.startswith("text/event-stream"):
            await self._read_events(ctx, message, response)
        else:
            log.error("unexpected content type from upstream", upstream=self.upstream, content_type=content_type)
            error = ErrorData(code=INVALID_REQUEST, message=f"Unexpected content type: {content_type}")
            await writer.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))

    async def _read_events(self, ctx: RequestContext, message: JSONRPCRequest,
                           response: aiohttp.ClientResponse) -> None:
        """Relay the stream's messages until the response, then let the stream end (pool reuse)."""
        writer = ctx.read_stream_writer
        events = SSEEvents(response, self.max_sse_event_size)
        on_token = ctx.metadata.on_resumption_token_update if ctx.metadata else None
        try:
            async with contextlib.aclosing(events.iterate()) as stream:
                async for sse in stream:
                    if await self._relay_event(sse, message, writer, on_token):
                        await drain(response)
                        return
        except httpx2.SSEError as exc:
            await self._resolve_abandoned_request(writer, message.id, f"SSE stream failed: {exc}")
            return
        except (aiohttp.ClientError, OSError):
            log.debug("upstream SSE stream ended", upstream=self.upstream, exc_info=True)
        if events.last_event_id is not None:
            await self._handle_reconnection(ctx, events.last_event_id, events.retry_ms)
        else:
            await self._resolve_abandoned_request(writer, message.id, "SSE stream ended without a response")

    async def _relay_event(self, sse: Any, message: JSONRPCRequest, writer: StreamWriter, on_token: Any) -> bool:
        """Hand one event's message to the dispatcher; True when it is the request's answer."""
        if sse.event != "message":
            log.warning("unknown SSE event from upstream", upstream=self.upstream, event=sse.event)
            return False
        if not sse.data:  # a priming event (resumability)
            if sse.id and on_token:
                await on_token(sse.id)
            return False
        parsed = parse_line(sse.data.encode("utf-8"), self.upstream)
        if isinstance(parsed, Exception):
            error = ErrorData(code=PARSE_ERROR, message=f"Failed to parse SSE message: {parsed}")
            await writer.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))
            return True
        answer = parsed.message
        if isinstance(answer, JSONRPCResponse | JSONRPCError):
            answer.id = message.id  # as the SDK's transport: the answer is this request's
        await writer.send(parsed)
        if sse.id and on_token:
            await on_token(sse.id)
        return isinstance(answer, JSONRPCResponse | JSONRPCError)


async def status_error(request_id: Any, response: aiohttp.ClientResponse, content_type: str,
                       transport: StreamableHTTPTransport) -> JSONRPCError:
    """A non-2xx reply to request ``request_id`` as the SDK's transport reports it."""
    if content_type.startswith("application/json"):
        with contextlib.suppress(aiohttp.ClientError):
            parsed = parse_line(await response.read(), getattr(transport, "upstream", "?"))
            if isinstance(parsed, SessionMessage) and isinstance(parsed.message, JSONRPCError):
                return JSONRPCError(jsonrpc="2.0", id=request_id, error=parsed.message.error)
    if response.status == 404:
        if transport.session_id is None:
            return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=METHOD_NOT_FOUND,
                                                                              message="Not Found"))
        return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=INVALID_REQUEST,
                                                                          message="Session terminated"))
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(
        code=INTERNAL_ERROR, message="Server returned an error response"))


async def drain(response: aiohttp.ClientResponse) -> None:
    """Let the stream's tail arrive (it ends right after the answer) so the connection is reused."""
    with anyio.move_on_after(DRAIN_SECONDS), contextlib.suppress(aiohttp.ClientError, OSError):
        drained = 0
        async for chunk in response.content.iter_any():
            drained += len(chunk)
            if drained > DRAIN_BYTES:
                break


@dataclass(frozen=True)
class LeanClient:
    """What ``lean_client`` opens: the transport, the dispatcher's streams, the inbound writer."""

    transport: LeanStreamableHTTPTransport
    streams: TransportStreams
    inbound: StreamWriter
    """Where the transport hands the upstream's messages to the dispatcher (``read_stream``'s writer)."""
    task_group: anyio.abc.TaskGroup


@contextlib.asynccontextmanager
async def lean_client(
    url: str, *, http_client: httpx2.AsyncClient, upstream: str,
    max_sse_event_size: int | None = DEFAULT_MAX_SSE_EVENT_SIZE, terminate_on_close: bool = True,
) -> AsyncGenerator[LeanClient, None]:
    """``mcp.client.streamable_http.streamable_http_client`` (mcp==2.3.0) on the lean transport."""
    async with lean_session() as lean:
        transport = LeanStreamableHTTPTransport(url, lean, upstream=upstream, max_sse_event_size=max_sse_event_size)
        read_stream_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
        write_stream, write_stream_reader = create_context_streams[SessionMessage](0)
        async with (
            read_stream_writer,
            read_stream,
            write_stream,
            write_stream_reader,
            anyio.create_task_group() as tg,
        ):

            def start_get_stream() -> None:
                tg.start_soon(transport.handle_get_stream, http_client, read_stream_writer)

            tg.start_soon(transport.post_writer, http_client, write_stream_reader, read_stream_writer, write_stream,
                          start_get_stream, tg)
            try:
                yield LeanClient(transport, (read_stream, write_stream), read_stream_writer, tg)
            finally:
                if transport.session_id and terminate_on_close:
                    await transport.terminate_session(http_client)
                tg.cancel_scope.cancel()
    await resync_tracer()


@contextlib.asynccontextmanager
async def lean_streamable_http_client(
    url: str, *, http_client: httpx2.AsyncClient, upstream: str,
    max_sse_event_size: int | None = DEFAULT_MAX_SSE_EVENT_SIZE, terminate_on_close: bool = True,
) -> AsyncGenerator[TransportStreams, None]:
    """``mcp.client.streamable_http.streamable_http_client`` (mcp==2.3.0) on the lean transport."""
    async with lean_client(url, http_client=http_client, upstream=upstream, max_sse_event_size=max_sse_event_size,
                           terminate_on_close=terminate_on_close) as client:
        yield client.streams
