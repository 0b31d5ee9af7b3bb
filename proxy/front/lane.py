"""The HTTP fast lane: ``tools/call`` and ``tools/list`` POSTed on an initialised session.

The hot requests of a handshake-era session (a known ``Mcp-Session-Id`` whose connection
has accepted ``initialize``) are answered here, in front of the SDK's session manager and
transport: the body is decoded once (msgspec), the request is routed through the relay's
own :meth:`Relay.call_tool` / :meth:`Relay.list_items` (the same interceptor chain, the
same decision, audit and result scan as the SDK path and the stdio lane), and the reply is
encoded once (orjson) - no pydantic modelling, no SDK dispatcher, no memory streams.

Everything the lane does not take goes to the SDK path unchanged, with the body it has
already read replayed: a request the SDK would refuse (a failed Host/Origin check, an
unknown session id, another principal's session, a bad content type, an unacceptable
``Accept``, an oversized or unparsable body, a 2026-era header), every other method,
notifications, the client's answers to server->client requests. So every error keeps the
SDK's status, code and text. ``notifications/cancelled`` is seen first: it cancels a lane
call (answered ``-32800 Request cancelled``, as the SDK's transport answers a cancelled
2025-era request, and as an SSE event whenever the client takes SSE: the SDK client's JSON-body
reader, ``StreamableHTTPTransport._handle_json_response`` in mcp 2.3.0, writes to its session's
read stream unguarded, so an answer arriving after a cancelling client closed its session fails
that client's whole transport, where its SSE reader drops it; docs/wire.md) and still reaches
the SDK.

The reply is chosen as :class:`~proxy.front.exchange.ExchangeTransport` chooses it: a JSON
body when the answer is the first message for the request, SSE when progress comes first
(or the call is silent past ``PING_INTERVAL``: pings), and the client's ``Accept`` decides
when it allows only one type (``proxy.front.reply``: the call runs in the request's own task,
with no task, stream or timer of its own). Requests an upstream makes of the client during a call
(sampling, elicitation, roots) ride the session's GET stream, as on the SDK path. A request
id in flight on the session (in either path) is refused with ``-32600``; a lane request
holds the session open against its idle timeout, as the SDK transport's requests do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import structlog
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http import (
    CONTENT_TYPE_JSON,
    MCP_SESSION_ID_HEADER,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data, progress_token_from_params
from mcp_types import INVALID_REQUEST, ErrorData
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.front import exchange
from proxy.front.exchange import TRANSPORT_SCOPE_KEY
from proxy.front.reply import LaneReply, Pinger, send_json
from proxy.relay import Relay
from proxy.route.ids import IN_FLIGHT_KEY, SESSION_KEY, connection_of
from proxy.wire import codec
from proxy.wire.lane import METHODS, answer, enveloped, plain_request, progress_line

if TYPE_CHECKING:
    from proxy.front.exchange import ExchangeSessionManager, ExchangeTransport

__all__ = ["HttpLane", "bind_connection"]

log = structlog.get_logger("securegateway.front")

REQUEST_CANCELLED: Final = -32800
_SESSION_HEADER: Final = MCP_SESSION_ID_HEADER.lower().encode()


async def bind_connection(ctx: Any, call_next: Any) -> Any:
    """Server middleware: tell a session's transport which SDK connection ``initialize`` opened."""
    result = await call_next(ctx)
    if ctx.method == "initialize" and ctx.request is not None:
        transport = getattr(ctx.request, "scope", {}).get(TRANSPORT_SCOPE_KEY)
        if transport is not None:
            transport.connection = connection_of(ctx)
    return result


class _Replay:
    """``receive`` that hands out the messages already read, then the real ones."""

    def __init__(self, read: list[Message], receive: Receive) -> None:
        self._read = read
        self._receive = receive

    async def __call__(self) -> Message:
        if self._read:
            return self._read.pop(0)
        return await self._receive()


class HttpLane:
    """ASGI app in front of the SDK's session manager (see the module docstring)."""

    def __init__(self, app: ASGIApp, manager: ExchangeSessionManager, relay: Relay, max_body: int) -> None:
        self._app = app
        self._manager = manager
        self._relay = relay
        self._max_body = max_body
        self._pinger = Pinger()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The lane's one background task (its replies' pings); the app's lifespan runs it."""
        await self._pinger.run(task_status=task_status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = (
            self._transport(scope)
            if scope["type"] == "http" and scope["method"] == "POST" and self._pinger.running else None
        )
        if transport is None:
            await self._app(scope, receive, send)
            return
        headers = _headers(scope)
        accepts = self._admissible(scope, headers, transport)
        if accepts is None:
            await self._app(scope, receive, send)
            return
        read, body = await self._body(receive)
        replay = _Replay(read, receive)
        message = _decode(body)
        if message is None:
            await self._app(scope, replay, send)
            return
        method = message.get("method")
        if method == "notifications/cancelled":
            # the SDK accepts it (202) first, then the call is cancelled: the order of the SDK path,
            # whose clients expect the 202 before the cancelled request's answer
            await self._app(scope, replay, send)
            _cancel(transport, message.get("params"))
            return
        if method not in METHODS or not plain_request(message) or enveloped(message.get("params")):
            # a 2026 envelope on a session is the SDK's to judge (this lane serves 2025-era sessions)
            await self._app(scope, replay, send)
            return
        await self._serve(transport, message, accepts, send)

    # ---- admission -------------------------------------------------------------------------------

    def _transport(self, scope: Scope) -> ExchangeTransport | None:
        """The session transport a POST names, if the lane may serve it (else the SDK decides)."""
        sid = next((v for k, v in scope["headers"] if k == _SESSION_HEADER), None)
        if sid is None:
            return None
        transport = self._manager._server_instances.get(sid.decode("latin-1"))
        if not isinstance(transport, exchange.ExchangeTransport):
            return None
        if transport.connection is None or transport.is_terminated or transport._event_store is not None:
            return None
        return transport

    def _admissible(
        self, scope: Scope, headers: Mapping[str, str], transport: ExchangeTransport
    ) -> tuple[bool, bool] | None:
        """``(has_json, has_sse)`` when every check the SDK path makes passes; None otherwise."""
        sid = transport.mcp_session_id
        version = headers.get("mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        user = scope.get("user")
        requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
        if requestor != self._manager._session_owners.get(sid or ""):
            return None  # another principal's session: the SDK answers 404
        idle = transport.idle_scope
        if idle is not None and idle.cancel_called:
            return None
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self._max_body):
            return None
        if not _json_content(headers.get("content-type", "")):
            return None
        security = transport._security
        if security.settings.enable_dns_rebinding_protection and not (
            security._validate_host(headers.get("host")) and security._validate_origin(headers.get("origin"))
        ):
            return None
        connection = transport.connection
        if not connection.initialize_accepted or connection.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        if connection.state.get(SESSION_KEY) is None:
            return None
        has_json, has_sse = _accepts(headers.get("accept", ""))
        if not (has_json or has_sse):
            return None
        return has_json, has_sse

    async def _body(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The messages read and the whole body (None when it is over the limit or not all there)."""
        read: list[Message] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                return read, None
            size += len(message.get("body", b""))
            if size > self._max_body:
                return read, None  # the SDK's limit answers 413
            if not message.get("more_body", False):
                break
        if len(read) == 1:
            return read, read[0].get("body", b"")
        return read, b"".join(m.get("body", b"") for m in read)

    # ---- serving ---------------------------------------------------------------------------------

    async def _serve(
        self, transport: ExchangeTransport, message: dict[str, Any], accepts: tuple[bool, bool], send: Send
    ) -> None:
        connection = transport.connection
        request_id = message["id"]
        held: set[Any] = connection.state.setdefault(IN_FLIGHT_KEY, set())
        key = (type(request_id).__name__, request_id)
        if key in held or str(request_id) in transport._request_streams:
            log.warning("duplicate in-flight request id refused", id=str(request_id)[:80])
            text = f"request id `{str(request_id)[:80]}` is already in flight on this session; use a new id"
            await send_json(send, transport.mcp_session_id, codec.encode_error(
                request_id, ErrorData(code=INVALID_REQUEST, message=text)))
            return
        held.add(key)  # claimed before anything else can run
        has_json, has_sse = accepts
        with _holding(transport):
            await self._answer(transport, message, request_id, key, held, json_only=not has_sse,
                               sse_only=not has_json, send=send)

    async def _answer(
        self, transport: ExchangeTransport, request: dict[str, Any], request_id: Any, key: Any, held: set[Any],
        *, json_only: bool, sse_only: bool, send: Send,
    ) -> None:
        """Run the call in this task; the reply takes JSON or SSE as the exchange goes (proxy/front/reply.py)."""
        session = transport.connection.state[SESSION_KEY]
        method = request["method"]
        params = request.get("params") or {}
        token = progress_token_from_params(params)
        reply = LaneReply(send, transport.mcp_session_id, json_only=json_only, sse_only=sse_only)
        pinger = self._pinger
        scope = anyio.CancelScope()
        calls = transport.lane_calls
        calls[key] = scope

        async def relay_progress(progress: float, total: float | None, message: str | None) -> None:
            if not scope.cancel_called and await reply.progress(progress_line(token, progress, total, message)):
                pinger.touch(reply)

        if reply.pings:
            pinger.watch(reply)
        data: bytes
        cancelled = False
        try:
            with scope:
                try:
                    result = await answer(self._relay, session, method, params,
                                          relay_progress if token is not None else None)
                    data = codec.encode_result(request_id, result)
                except Exception as exc:  # the wire boundary, as the SDK dispatcher's
                    error = handler_exception_to_error_data(exc)
                    if error is None:
                        log.exception("http fast-lane handler raised", method=method)
                        error = ErrorData(code=0, message=str(exc))
                    data = codec.encode_error(request_id, error)
            if scope.cancelled_caught or scope.cancel_called:
                cancelled = True
                data = codec.encode_error(request_id, ErrorData(code=REQUEST_CANCELLED, message="Request cancelled"))
        finally:
            held.discard(key)  # released before the reply: the client may reuse the id at once
            if calls.get(key) is scope:
                del calls[key]
            pinger.forget(reply)
        # A cancelled call's answer is an SSE event whenever the client takes SSE, as the SDK's server
        # transport sends it (see the module docstring: the SDK client's JSON-body reader fails its
        # whole transport on an answer that arrives after its session closed).
        await reply.answer(data, stream=cancelled)


class _holding:  # a context manager, named for how it reads
    """A request in flight holds the session against its idle timeout (as the SDK transport's do)."""

    def __init__(self, transport: ExchangeTransport) -> None:
        self._transport = transport

    def __enter__(self) -> None:
        t = self._transport
        if t.idle_scope is not None and t._idle_timeout is not None:
            t._requests_in_flight += 1
            t.idle_scope.deadline = math.inf

    def __exit__(self, *exc: object) -> None:
        t = self._transport
        if t.idle_scope is not None and t._idle_timeout is not None:
            t._requests_in_flight -= 1
            if not t._requests_in_flight:
                t.idle_scope.deadline = anyio.current_time() + t._idle_timeout


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers, lower-cased; the first of repeated ones (as starlette's ``get``)."""
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        out.setdefault(k.decode("latin-1"), v.decode("latin-1"))
    return out


# The SDK's own header checks, remembered per header value (clients send the same few values on
# every request; the bound keeps a client that varies them from growing the memory).
@functools.lru_cache(maxsize=256)
def _json_content(content_type: str) -> bool:
    """A JSON body, by the SDK transport's test (and a prefix test for the SDK's path to agree on)."""
    request: Any = SimpleNamespace(headers={"content-type": content_type})
    return content_type.lower().startswith(CONTENT_TYPE_JSON) and StreamableHTTPServerTransport._check_content_type(
        None, request)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def _accepts(accept: str) -> tuple[bool, bool]:
    """``(has_json, has_sse)`` by the SDK's ``check_accept_headers``."""
    request: Any = SimpleNamespace(headers={"accept": accept})
    return check_accept_headers(request)


def _decode(body: bytes | None) -> dict[str, Any] | None:
    if body is None:
        return None
    try:
        message = codec.decode(body)
    except codec.DecodeError:
        return None  # the SDK answers -32700
    return message if isinstance(message, dict) else None


def _cancel(transport: ExchangeTransport, params: Any) -> None:
    if not isinstance(params, Mapping):
        return
    request_id = params.get("requestId")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return
    scope = transport.lane_calls.get((type(request_id).__name__, request_id))
    if scope is not None:
        scope.cancel()
