"""Requests to a handshake-era Streamable HTTP upstream, POSTed by the task that awaits them.

Through the SDK's dispatcher a request goes into a memory stream, to the transport's writer
task, which opens a task group and starts two tasks for its POST; the answer goes back through
another stream to the dispatcher's reader task, which wakes the caller through a third. Measured
on this machine against the demo upstream: ~0.53 ms of CPU per ``tools/call`` that way, ~0.16 ms
for the aiohttp POST itself (``bench/README.md``). :class:`HttpChannel` is the link's channel
for an HTTP upstream: a *request* on a handshake-era session is encoded once, POSTed over the
shared keep-alive pool (:func:`proxy.upstream.http_pool.lean_session`) by the caller's own task,
and its reply, a JSON body or an SSE stream read until the answer, is decoded once into the
result dict (or raised as the ``MCPError`` the dispatcher would raise).

What an SSE reply carries before the answer keeps its order and its handling: progress for the
request goes to its callback; every other message (logging, ``list_changed``, a sampling,
elicitation or roots request) goes to the SDK dispatcher exactly as the SDK's transport hands it
over, so the dispatcher answers the upstream's requests as before. While it is unanswered, a
POSTed request is in the dispatcher's pending table as the dispatcher's own requests are, so
what the upstream sends for it on another stream (progress on the standalone GET stream, or
on another request's reply) reaches its callback as on a direct connection, and nothing does
once it is answered (as directly: the dispatcher drops late progress). A timeout or a cancelled
caller sends the dispatcher's courtesy ``notifications/cancelled``. The request's ``_meta`` is
the relay's, as on the stdio leg (the SDK dispatcher's client span and trace-context injection
are not on this path; the gateway's own tracing is ``proxy/telemetry.py``).

Everything else stays on the SDK's path (:mod:`proxy.upstream.http_lean`): ``initialize``,
notifications and responses, the GET stream, 2026-era requests (their cancellation is the
POST's abort, which the SDK implements), a request with a caller-chosen id or resumption hints,
a redirected POST (re-sent by the SDK under its origin rule), and the answer of a stream that
ends early with an event id (resumed by the SDK's GET reconnection). Failures read as the SDK's
transport words them; a connection-level failure also ends the transport, as it ends the SDK's,
so the link restarts the session. Two failures mean the upstream did not run the request, so it
is raised as :class:`~proxy.wire.dispatch.NotDelivered` and the link sends it again on the new
session: a refused connection, and a 404 to our session id (the upstream forgot the session;
the spec's rule is a new one, where a direct SDK client keeps failing with "Session terminated").
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import aiohttp
import anyio
import anyio.abc
import httpx2
import structlog
from mcp import MCPError
from mcp.client.streamable_http import RequestContext, StreamWriter
from mcp.shared.dispatcher import CallOptions
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_REQUEST,
    PARSE_ERROR,
    REQUEST_TIMEOUT,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from proxy.upstream.http_lean import (
    REDIRECTS,
    LeanStreamableHTTPTransport,
    SSEEvents,
    drain,
    lean_client,
    parse_line,
    status_error,
)
from proxy.upstream.http_pool import DRAIN_SECONDS
from proxy.upstream.repair import repair_responses
from proxy.wire import codec
from proxy.wire.dispatch import NotDelivered

__all__ = ["HttpChannel", "http_channel"]

log = structlog.get_logger("securegateway.upstream")

ABANDON_WRITE_TIMEOUT: Final = 5.0
"""Bound on the courtesy cancel's write, as the SDK dispatcher's."""
_REDIRECTED: Final = object()
_UNREAD: Final = object()


class HttpChannel:
    """The link's channel to a Streamable HTTP upstream (see the module docstring)."""

    def __init__(
        self, dispatcher: JSONRPCDispatcher[Any], transport: LeanStreamableHTTPTransport,
        client: httpx2.AsyncClient, inbound: StreamWriter, task_group: anyio.abc.TaskGroup,
    ) -> None:
        self._disp = dispatcher
        self._task_group = task_group  # the client's: where answered streams finish
        self._transport = transport
        self._client = client
        self._inbound = inbound
        self.failure: BaseException | None = None
        """A connection-level failure of a direct POST; the transport ends with it (set once)."""
        self.failed = anyio.Event()
        self.on_close: Callable[[], None] | None = None
        """Called once, synchronously, when the channel fails: the link stops handing it calls."""

    async def run(self, on_request: Any, on_notify: Any, on_notify_intercept: Any = None, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._disp.run(on_request, on_notify, on_notify_intercept, task_status=task_status)

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None) -> None:
        await self._disp.notify(method, params, opts)

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        opts = opts or {}
        headers = opts.get("headers") or {}
        disp = self._disp
        if self.failure is not None and method != "initialize":
            raise NotDelivered(CONNECTION_CLOSED, "Connection closed")  # the link re-sends it after the restart
        if (
            method == "initialize" or disp._closed or not disp._running
            or headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS
            or "request_id" in opts or "resumption_token" in opts or "on_resumption_token" in opts
        ):
            return await disp.send_raw_request(method, params, opts)
        request_id = disp._allocate_id()
        while request_id in disp._pending:
            request_id = disp._allocate_id()
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        on_progress = opts.get("on_progress")
        if on_progress is not None:
            out = dict(params or {})
            out["_meta"] = {**(out.get("_meta") or {}), "progressToken": request_id}
            body["params"] = out
        elif params:
            body["params"] = params
        timeout = opts.get("timeout")
        started = False  # a POST begun counts as issued (it may have reached the upstream)
        # Registered as the dispatcher registers its own requests, so that what the upstream sends
        # for this request on another stream (progress on the GET stream, above all) is routed to
        # it by the dispatcher exactly as on a direct connection; unregistered once it is answered.
        waiter = _Waiter(on_progress)
        disp._pending[request_id] = waiter  # type: ignore[assignment]  # the dispatcher's duck type
        try:
            with anyio.fail_after(timeout):
                started = True
                outcome = await self._call(method, request_id, codec.encode(body), headers, waiter)
        except TimeoutError:
            if opts.get("cancel_on_abandon", True):
                await self._courtesy_cancel(request_id, f"timed out after {timeout}s", shield=False)
            raise MCPError(code=REQUEST_TIMEOUT, message=f"Request {method!r} timed out") from None
        except anyio.get_cancelled_exc_class():
            if started and opts.get("cancel_on_abandon", True) and self.failure is None:
                await self._courtesy_cancel(request_id, "caller cancelled", shield=True)
            raise
        finally:
            if disp._pending.get(request_id) is waiter:
                del disp._pending[request_id]
        if outcome is _REDIRECTED:  # not processed where it was sent: the SDK re-sends it under its origin rule
            return await disp.send_raw_request(method, params, opts)
        if isinstance(outcome, JSONRPCError):
            error = outcome.error
            raise MCPError(code=error.code, message=error.message, data=error.data)
        assert isinstance(outcome, dict)
        return outcome

    # ---- one POST --------------------------------------------------------------------------------

    async def _call(
        self, method: str, request_id: int, body: bytes, extra: Mapping[str, str], waiter: _Waiter,
    ) -> dict[str, Any] | JSONRPCError | object:
        transport = self._transport
        try:
            response = await transport.lean.post(
                transport.url, data=body, headers=transport.request_headers(self._client, extra), allow_redirects=False,
            )
            tail = False
            try:
                transport.keep_cookies(self._client, response)
                outcome, tail = await self._reply(method, request_id, response, extra, waiter)
            finally:
                if not tail:
                    response.release()
        except aiohttp.ClientConnectorError as exc:  # never reached the upstream: the link re-sends it
            self._fail(exc)
            raise NotDelivered(code=CONNECTION_CLOSED, message="Connection closed") from None
        except (aiohttp.ClientError, OSError) as exc:  # as the SDK's transport: the session ends with it
            self._fail(exc)
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):  # the dispatcher is gone
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None
        if tail:  # the answer is the caller's now; the stream's tail is drained behind it (pool reuse)
            try:
                self._task_group.start_soon(_finish, response)
            except RuntimeError:  # the client is closing: no drain, the connection is closed
                response.release()
        return outcome

    async def _reply(
        self, method: str, request_id: int, response: aiohttp.ClientResponse, extra: Mapping[str, str],
        waiter: _Waiter,
    ) -> tuple[dict[str, Any] | JSONRPCError | object, bool]:
        """The reply's status mapped as the SDK's transport maps it; True when a stream's tail is still due."""
        status = response.status
        if status in REDIRECTS:
            return _REDIRECTED, False
        if status == 202:
            return _error(request_id, INVALID_REQUEST, "server answered a request with 202 Accepted"), False
        content_type = response.headers.get("content-type", "").lower()
        if status == 404 and self._transport.session_id is not None and "mcp-session-id" not in extra:
            # The upstream no longer knows the session (it expired, or the server restarted): it did
            # not process the request, and the spec's rule is a new session. The link restarts it and
            # sends the request again there; a direct SDK client reports "Session terminated" and
            # keeps failing on the dead session.
            error = await status_error(request_id, response, content_type, self._transport)
            self._fail(MCPError(code=error.error.code, message=f"upstream session terminated: {error.error.message}"))
            raise NotDelivered(code=error.error.code, message=error.error.message)
        if status >= 400:
            return await status_error(request_id, response, content_type, self._transport), False
        if content_type.startswith("application/json"):
            return self._outcome(request_id, await response.read(), "Failed to parse JSON response"), False
        if content_type.startswith("text/event-stream"):
            outcome = await self._events(method, request_id, response, extra, waiter)
            # The stream's end comes right behind the answer (measured: already there for ~40% of
            # calls, ~55 us later at the median, 1.3 ms at p90 under load): the caller does not wait
            # for it; it is drained behind the answer, and the connection is back in the pool,
            # usually before the caller's next call.
            return outcome, not response.content.is_eof()
        log.error("unexpected content type from upstream", upstream=self._transport.upstream,
                  content_type=content_type)
        return _error(request_id, INVALID_REQUEST, f"Unexpected content type: {content_type}"), False

    def _outcome(
        self, request_id: int, data: bytes, what: str, message: Any = _UNREAD,
    ) -> dict[str, Any] | JSONRPCError:
        """A JSON body's answer: decoded once; anything else is the SDK transport's error for it."""
        if message is _UNREAD:
            try:
                message = codec.decode(data)
            except codec.DecodeError:
                message = None
        if type(message) is dict and "method" not in message and "error" not in message:
            result = message.get("result")
            if type(result) is dict and type(message.get("id")) in (int, str) and message.get("jsonrpc") == "2.0":
                return result
        parsed = parse_line(data, self._transport.upstream)
        if isinstance(parsed, Exception):
            return _error(request_id, PARSE_ERROR, f"{what}: {parsed}")
        answer = parsed.message
        if isinstance(answer, JSONRPCResponse):
            return answer.result
        if isinstance(answer, JSONRPCError):
            return answer
        return _error(request_id, PARSE_ERROR, f"{what}: not a response")

    async def _events(
        self, method: str, request_id: int, response: aiohttp.ClientResponse, extra: Mapping[str, str],
        waiter: _Waiter,
    ) -> dict[str, Any] | JSONRPCError:
        """Read the stream until the answer; what comes first keeps its order (module docstring)."""
        transport = self._transport
        events = SSEEvents(response, transport.max_sse_event_size)
        try:
            async with contextlib.aclosing(events.iterate()) as stream:
                async for sse in stream:
                    answer = await self._event(sse, request_id, waiter.on_progress)
                    if answer is not None:
                        return answer
        except httpx2.SSEError as exc:
            return _error(request_id, CONNECTION_CLOSED, f"SSE stream failed: {exc}")
        except (aiohttp.ClientError, OSError):
            log.debug("upstream SSE stream ended", upstream=transport.upstream, exc_info=True)
        if waiter.outcome is not _UNREAD:  # the answer came on another stream (the dispatcher routed it)
            return waiter.result(request_id)
        if events.last_event_id is None:
            return _error(request_id, CONNECTION_CLOSED, "SSE stream ended without a response")
        return await self._resume(method, request_id, extra, waiter, events.last_event_id, events.retry_ms)

    async def _event(self, sse: Any, request_id: int, on_progress: Any) -> dict[str, Any] | JSONRPCError | None:
        if sse.event != "message":
            log.warning("unknown SSE event from upstream", upstream=self._transport.upstream, event=sse.event)
            return None
        if not sse.data:  # a priming event (resumability)
            return None
        data = sse.data.encode("utf-8")
        try:
            message = codec.decode(data)
        except codec.DecodeError:
            message = None
        if type(message) is dict and "method" not in message:
            return self._outcome(request_id, data, "Failed to parse SSE message", message)
        if (on_progress is not None and type(message) is dict and message.get("method") == "notifications/progress"
                and "id" not in message and _progress(message.get("params"), request_id, on_progress)):
            params = message["params"]
            total, text = params.get("total"), params.get("message")
            try:
                await on_progress(float(params["progress"]), float(total) if isinstance(total, int | float) else None,
                                  text if isinstance(text, str) else None)
            except Exception:
                log.exception("progress callback raised")
            return None
        parsed = parse_line(data, self._transport.upstream)
        if isinstance(parsed, Exception):
            return _error(request_id, PARSE_ERROR, f"Failed to parse SSE message: {parsed}")
        await self._inbound.send(parsed)  # the dispatcher's, as the SDK transport hands it over
        return None

    async def _resume(
        self, method: str, request_id: int, extra: Mapping[str, str], waiter: _Waiter, last_event_id: str,
        retry_ms: int | None,
    ) -> dict[str, Any] | JSONRPCError:
        """The SDK's GET reconnection with ``Last-Event-ID``, its answer awaited as the dispatcher awaits one."""
        ctx = RequestContext(
            client=self._client, session_id=self._transport.session_id,
            session_message=SessionMessage(JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)),
            metadata=ClientMessageMetadata(headers=dict(extra)), read_stream_writer=self._inbound,
        )
        await self._transport._handle_reconnection(ctx, last_event_id, retry_ms)
        await waiter.wait()
        return waiter.result(request_id)

    async def _courtesy_cancel(self, request_id: int, reason: str, *, shield: bool) -> None:
        with anyio.move_on_after(ABANDON_WRITE_TIMEOUT, shield=shield) as scope:
            await self._disp.notify("notifications/cancelled", {"requestId": request_id, "reason": reason})
        if scope.cancelled_caught:
            log.warning("courtesy cancel gave up: transport write blocked", upstream=self._transport.upstream)

    def _fail(self, exc: BaseException) -> None:
        log.warning("upstream channel failed", upstream=self._transport.upstream, error=repr(exc))
        if self.failure is None:
            self.failure = exc
            self.failed.set()
            if self.on_close is not None:
                self.on_close()


class _Waiter:
    """A POSTed request in the dispatcher's pending table (duck-typed as its ``_Pending``): the
    dispatcher finds its progress callback there, and may hand it an answer (or the close)."""

    __slots__ = ("_event", "on_progress", "outcome")

    def __init__(self, on_progress: Any) -> None:
        self.on_progress = on_progress
        self.outcome: Any = _UNREAD
        self._event: anyio.Event | None = None

    @property
    def send(self) -> _Waiter:  # the dispatcher resolves with ``pending.send.send_nowait(outcome)``
        return self

    def send_nowait(self, outcome: dict[str, Any] | ErrorData) -> None:
        if self.outcome is not _UNREAD:
            raise anyio.WouldBlock  # the first outcome stands, as with the dispatcher's one-slot stream
        self.outcome = outcome
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self.outcome is _UNREAD:
            self._event = anyio.Event()
            await self._event.wait()

    def result(self, request_id: int) -> dict[str, Any] | JSONRPCError:
        if isinstance(self.outcome, dict):
            return self.outcome
        return JSONRPCError(jsonrpc="2.0", id=request_id, error=self.outcome)


async def _finish(response: aiohttp.ClientResponse) -> None:
    """Let an answered stream's tail arrive, then give its connection back (closed if it did not)."""
    try:
        with anyio.move_on_after(DRAIN_SECONDS), contextlib.suppress(aiohttp.ClientError, OSError):
            await response.content.wait_eof()
        if not response.content.is_eof():
            await drain(response)  # more than the end came: read it off, within the same budget
    finally:
        response.release()


def _error(request_id: int, code: int, message: str) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))


def _progress(params: Any, request_id: int, on_progress: Any) -> bool:
    """Whether a progress notification is this request's (the dispatcher's own test)."""
    if not isinstance(params, dict):
        return False
    token, progress = params.get("progressToken"), params.get("progress")
    return (
        type(token) in (int, str) and str(token) == str(request_id)
        and isinstance(progress, int | float) and not isinstance(progress, bool)
    )


@contextlib.asynccontextmanager
async def http_channel(
    url: str, *, http_client: httpx2.AsyncClient, upstream: str, max_sse_event_size: int | None,
) -> AsyncIterator[HttpChannel]:
    """The SDK's dispatcher over the lean client (``proxy.upstream.http_lean``), requests POSTed directly.

    A connection-level failure of a direct POST ends the client with that error, as the same
    failure inside the SDK's transport does, so the link restarts the session."""
    async with lean_client(url, http_client=http_client, upstream=upstream,
                           max_sse_event_size=max_sse_event_size) as client:
        dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(*repair_responses(client.streams, upstream)[:2])
        channel = HttpChannel(dispatcher, client.transport, http_client, client.inbound, client.task_group)

        async def fail() -> None:
            await channel.failed.wait()
            assert channel.failure is not None
            raise channel.failure

        client.task_group.start_soon(fail)
        yield channel
