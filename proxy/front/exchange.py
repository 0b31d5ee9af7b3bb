"""Streamable HTTP replies shaped per exchange: a JSON body unless the exchange needs a stream.

The SDK's 2025-era server transport answers every POSTed request with an SSE stream (or,
in its all-or-nothing ``json_response`` mode, with JSON only, losing every notification
and server-to-client request tied to a call). ``ExchangeTransport`` decides per request:
it waits for the first message the session routes to the request's stream, and

- if that is the request's own response, answers with a plain ``application/json`` body;
- if it is anything else (progress, logging, a sampling or elicitation request), commits
  ``text/event-stream`` and streams that message, everything after it, then the result;
- if nothing arrives within ``PING_INTERVAL``, commits the stream and sends SSE comment
  pings, so that an idle-read timeout between client and gateway cannot cut a long call.

The client's ``Accept`` header chooses when it allows only one: ``application/json``
alone gets JSON (with no back-channel: server-to-client requests tied to the call are
refused and its notifications dropped, as in the SDK's JSON mode); ``text/event-stream``
alone gets SSE. A session with an event store (resumable streams) keeps the SDK's
always-SSE replies, whose priming events resumption depends on. Everything else (GET
streams, DELETE, session checks, errors) is the SDK's transport unchanged, except that a
request reusing an id still in flight on the session is refused (``-32600``): the SDK keys
each request's stream by id, so it would take over the first request's answers.
"""

from __future__ import annotations

from functools import partial
from http import HTTPStatus
from typing import Any, Final
from uuid import uuid4

import anyio
import pydantic_core
import structlog
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_SSE,
    MCP_SESSION_ID_HEADER,
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["PING_INTERVAL", "ExchangeSessionManager", "ExchangeTransport"]

log = structlog.get_logger("securegateway.front")

PING_INTERVAL: Final = 15.0
"""Seconds a request may run silent before its reply commits to SSE and starts pinging."""

_PING: Final = b": ping\r\n\r\n"
TRANSPORT_SCOPE_KEY: Final = "securegateway.transport"
"""Where a session's transport leaves itself in its ``initialize`` request's ASGI scope."""


class ExchangeTransport(StreamableHTTPServerTransport):
    """The SDK's session transport, replying to each POSTed request with JSON or SSE as needed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection: Any = None
        """The SDK connection ``initialize`` opened (set by ``proxy.front.lane.bind_connection``)."""
        self.lane_calls: dict[Any, anyio.CancelScope] = {}
        """Calls the HTTP fast lane is serving on this session, by ``(type name, id)``."""
        self._unanswered: set[str] = set()
        """Requests that settled with no answer (cancelled): their ``-32800`` goes out as an event."""

    async def _terminate_unanswered_request(self, request_id: Any) -> None:
        self._unanswered.add(str(request_id))
        await super()._terminate_unanswered_request(request_id)

    async def _handle_post_request(self, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
        writer = self._read_stream_writer
        if self._event_store is not None or writer is None:
            await super()._handle_post_request(scope, request, receive, send)
            return
        try:
            await self._post(writer, scope, request, receive, send)
        except Exception as err:  # the ASGI boundary: answer 500 and tell the session, as the SDK does
            log.exception("error handling a POST request")
            await self._error("Error handling POST request", HTTPStatus.INTERNAL_SERVER_ERROR, scope, receive, send,
                              INTERNAL_ERROR)
            await writer.send(Exception(err))

    async def _post(self, writer: Any, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
        has_json, has_sse = check_accept_headers(request)
        if not (has_json or has_sse):
            await self._error("Not Acceptable: Client must accept application/json or text/event-stream",
                              HTTPStatus.NOT_ACCEPTABLE, scope, receive, send)
            return
        if not self._check_content_type(request):
            await self._error("Unsupported Media Type: Content-Type must be application/json",
                              HTTPStatus.UNSUPPORTED_MEDIA_TYPE, scope, receive, send)
            return
        body = await request.body()
        try:
            raw = pydantic_core.from_json(body)
        except ValueError as e:
            await self._error(f"Parse error: {e}", HTTPStatus.BAD_REQUEST, scope, receive, send, PARSE_ERROR)
            return
        try:
            message = jsonrpc_message_adapter.validate_python(raw, by_name=False)
        except ValidationError as e:
            await self._error(f"Validation error: {e}", HTTPStatus.BAD_REQUEST, scope, receive, send, INVALID_PARAMS)
            return

        if isinstance(message, JSONRPCRequest) and message.method == "initialize":
            scope[TRANSPORT_SCOPE_KEY] = self  # so that the fast lane learns this session's connection
            presented = self._get_session_id(request)
            if self.mcp_session_id and presented and presented != self.mcp_session_id:
                await self._error("Not Found: Invalid or expired session ID", HTTPStatus.NOT_FOUND,
                                  scope, receive, send)
                return
        elif not await self._validate_request_headers(request, send):
            return

        if not isinstance(message, JSONRPCRequest):  # a notification or a response: accepted, no body
            await self._create_json_response(None, HTTPStatus.ACCEPTED)(scope, receive, send)
            await writer.send(SessionMessage(message, metadata=ServerMessageMetadata(request_context=request)))
            return

        request_id = str(message.id)
        if request_id in self._request_streams:
            # The streams are keyed by id: a second request with an id still in flight would take
            # the first one's answers. The holder keeps its id; the newcomer is refused.
            await _refuse_duplicate(message, scope, receive, send)
            return
        streams = anyio.create_memory_object_stream[EventMessage](REQUEST_STREAM_BUFFER_SIZE)
        self._request_streams[request_id] = streams
        reader = streams[1]
        json_only = not has_sse
        metadata = ServerMessageMetadata(
            request_context=request,
            on_request_unanswered=partial(self._terminate_unanswered_request, message.id),
            can_send_request=not json_only,  # a JSON body has room for the response only
        )
        try:
            await writer.send(SessionMessage(message, metadata=metadata))
            await self._reply(reader, json_only=json_only, sse_only=not has_json, send=send, scope=scope,
                              receive=receive)
        finally:
            self._unanswered.discard(request_id)
            await self._clean_up_memory_streams(request_id)

    async def _reply(self, reader: Any, *, json_only: bool, sse_only: bool, scope: Scope, receive: Receive,
                     send: Send) -> None:
        """Wait for the request's first routed message, then answer with JSON or commit SSE."""
        first: EventMessage | None = None
        try:
            while first is None:
                with anyio.move_on_after(None if json_only else PING_INTERVAL):
                    first = await reader.receive()
                if first is None:
                    break  # silent past the window: keep the connection alive with SSE
                if json_only and not _is_response(first):
                    log.debug("message for a json-only request dropped", method=_method(first))
                    first = None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            await self._error("Session terminated before the request completed",
                              HTTPStatus.INTERNAL_SERVER_ERROR, scope, receive, send, INTERNAL_ERROR)
            return
        # A cancelled request's answer is an event whenever the client takes SSE (as the SDK server
        # sends it): the SDK client's JSON-body reader fails its whole transport on an answer that
        # arrives once its session closed (a client that cancels and disconnects), its SSE reader
        # drops it (tests/proxy/front/test_cancel.py).
        if first is not None and _is_response(first) and not sse_only and (
                json_only or str(getattr(first.message, "id", None)) not in self._unanswered):
            await self._create_json_response(first.message)(scope, receive, send)
            return
        await self._stream(reader, first, send)

    async def _stream(self, reader: Any, first: EventMessage | None, send: Send) -> None:
        """Commit ``text/event-stream``: ``first``, then every message until the response."""
        headers = [
            (b"content-type", CONTENT_TYPE_SSE.encode()),
            (b"cache-control", b"no-cache, no-transform"),
            (b"connection", b"keep-alive"),
            (b"x-accel-buffering", b"no"),
        ]
        if self.mcp_session_id:
            headers.append((MCP_SESSION_ID_HEADER.encode(), self.mcp_session_id.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        event = first
        try:
            while True:
                if event is None:
                    await send({"type": "http.response.body", "body": _PING, "more_body": True})
                else:
                    done = _is_response(event)
                    await send({"type": "http.response.body", "body": _frame(event), "more_body": not done})
                    if done:
                        return
                event = None
                with anyio.move_on_after(PING_INTERVAL):
                    event = await reader.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass  # the session ended: the stream ends without a response, as the SDK's does
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _error(self, text: str, status: HTTPStatus, scope: Scope, receive: Receive, send: Send,
                     code: int | None = None) -> None:
        if code is None:
            response = self._create_error_response(text, status)
        else:
            response = self._create_error_response(text, status, code)
        await response(scope, receive, send)


async def _refuse_duplicate(message: JSONRPCRequest, scope: Scope, receive: Receive, send: Send) -> None:
    text = f"request id `{str(message.id)[:80]}` is already in flight on this session; use a new id"
    error = JSONRPCError(jsonrpc="2.0", id=message.id, error=ErrorData(code=INVALID_REQUEST, message=text))
    log.warning("duplicate in-flight request id refused", id=str(message.id)[:80])
    await Response(error.model_dump_json(by_alias=True, exclude_unset=True), media_type=CONTENT_TYPE_JSON)(
        scope, receive, send)


def _is_response(event: EventMessage) -> bool:
    return isinstance(event.message, JSONRPCResponse | JSONRPCError)


def _method(event: EventMessage) -> str:
    return str(getattr(event.message, "method", "?"))


def _frame(event: EventMessage) -> bytes:
    data = event.message.model_dump_json(by_alias=True, exclude_unset=True)
    return b"event: message\r\ndata: " + data.encode() + b"\r\n\r\n"


class ExchangeSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, opening every stateful session on an ``ExchangeTransport``."""

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            return None
        transport = ExchangeTransport(
            mcp_session_id=uuid4().hex,
            is_json_response_enabled=False,
            event_store=self.event_store,
            security_settings=self.security_settings,
            retry_interval=self.retry_interval,
            idle_timeout=self.session_idle_timeout,
        )
        session_id = transport.mcp_session_id
        assert session_id is not None
        if requestor is not None:
            self._session_owners[session_id] = requestor
        self._server_instances[session_id] = transport
        return transport
