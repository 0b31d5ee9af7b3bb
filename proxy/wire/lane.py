"""The fast lane: ``tools/call``, ``tools/list`` (and on stdio the other merged lists) of a connection, in either era.

A hot request is answered from the dict the front decoded, without modelling it as
pydantic objects, without the SDK's dispatcher and server layers, and with its reply
encoded once. The work in between is the relay's own (:meth:`Relay.call_tool`,
:meth:`Relay.list_items`, and for a 2026 client :meth:`Relay.for_modern`): the same
routing, the same interceptor chain (decision, audit, result scan, the decision in
``_meta``), the same ``resultType`` / cache hints / ``serverInfo`` stamp, so a call gives
the same answer on either path. The relay's guarantees hold for fast-lane requests too:

- a request id already in flight on the connection (in either lane) gets ``-32600``;
  the ids are held in the set the relay uses (``connection.state`` of a 2025 session, the
  stream's own set for a 2026 stream);
- ``notifications/cancelled`` cancels a fast-lane call: its upstream request is
  abandoned (the upstream gets the courtesy cancel) and the call is never answered;
- a ``progressToken`` gets the upstream's progress as ``notifications/progress``,
  never after the reply;
- upstream sampling / elicitation / roots requests during a 2025 call go through the
  SDK server session (the connection; during the stdio opening, the opening's channel,
  which brings the SDK up first: proxy/wire/opening.py), which writes through the same
  single writer; a
  2026 call gets them as MRTR input requests, through the session's bridge, as on the
  SDK path.

Which era a stdio stream speaks is the SDK's decision (its first request fixes it); the
lane follows it: a 2025 stream once ``initialize`` attached its session (on the SDK path, or
the opening's stand-in connection before the SDK is loaded), a 2026 stream
once the SDK path served its first enveloped request (and the relay reported the
identity's session). Until then, and for anything else, the lane declines and the SDK
path serves the request: a request of the other era, a 2026 envelope the SDK would
refuse, an id that is not a string or integer, params that are not an object, extra
top-level members, every other method.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import structlog

from proxy.protocol import (
    MODERN_PROTOCOL_VERSIONS,
    PROTOCOL_VERSION_META_KEY,
    coerce_request_id,
    error_body,
    progress_token_from_params,
)
from proxy.relay import Relay
from proxy.route.ids import IN_FLIGHT_KEY, SESSION_KEY, duplicate_id_error, id_key
from proxy.session import DownstreamSession
from proxy.wire import codec
from proxy.wire.framing import LineWriter
from proxy.wire.spawn import Spawner

__all__ = ["METHODS", "FastLane", "answer", "enveloped", "plain_request", "progress_line"]

log = structlog.get_logger("securegateway.wire")

METHODS = frozenset({"tools/call", "tools/list"})
"""What both lean lanes serve (this one and the HTTP front's, proxy/front/lane.py)."""
STDIO_METHODS = METHODS | {"prompts/list", "resources/list", "resources/templates/list"}
"""What this lane serves: the other merged lists too, which a desktop client asks for right after
``initialize`` - served here, they do not bring the SDK up inside the stdio opening
(proxy/wire/opening.py). A list no upstream offers is left to the SDK path (``-32601``)."""
_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})


class FastLane:
    """Answers hot requests of the one stdio connection itself (see the module docstring)."""

    def __init__(self, relay: Relay, writer: LineWriter) -> None:
        self._relay = relay
        self._writer = writer
        self._connection: Any = None  # a 2025 stream's SDK connection
        self._modern: DownstreamSession | None = None  # a 2026 stream's session
        self._modern_ids: set[Any] = set()  # its ids in flight, in either lane (the relay's set)
        self._calls: dict[Any, anyio.CancelScope] = {}
        self._scope_type: type[anyio.CancelScope] | None = None  # the running backend's (see _scope)
        self._debug = log.is_enabled_for(logging.DEBUG)  # decided once: a filtered call still costs ~2 us
        relay.attach_stdio_lane(self)

    def attach(self, connection: Any) -> None:
        """The SDK connection ``initialize`` opened (its ``state`` holds the session and ids)."""
        self._connection = connection

    def modern_opened(self, session: DownstreamSession, held: set[Any]) -> None:
        """The SDK path served this stream's 2026 request with ``session`` (one per identity),
        holding the stream's ids in ``held``."""
        self._modern, self._modern_ids = session, held

    async def offer(self, message: dict[str, Any], tg: Spawner) -> bool:
        method = message.get("method")
        if method == "notifications/cancelled":
            self._cancel(message.get("params"))
            return False  # the SDK still sees it (it may name one of its own requests)
        if method not in STDIO_METHODS:
            return False
        route = self._admit(message, method)
        if route is None:
            return False
        request_id = message["id"]
        key = id_key(request_id)
        if key in route[1]:
            await self._writer.send(codec.encode_error(request_id, error_body(*duplicate_id_error(request_id))))
            return True
        self._start(message, method, route, key, tg)
        return True

    def offer_now(self, message: dict[str, Any], tg: Spawner) -> bool:
        """:meth:`offer` for a request that needs no await (started here: True); False, with
        nothing done, for every other message - the read callback's path (proxy/wire/framing.py
        ``LineFeed``), which leaves those to :meth:`offer` in the reader task."""
        method = message.get("method")
        if method != "tools/call":
            return False
        route = self._admit(message, method)
        if route is None:
            return False
        key = id_key(message["id"])
        if key in route[1]:
            return False  # the refusal is written by offer(), which awaits the writer
        self._start(message, method, route, key, tg)
        return True

    def _admit(self, message: dict[str, Any], method: str) -> tuple[DownstreamSession, set[Any], bool] | None:
        """The route of a request this lane serves; None for one it leaves to the SDK path."""
        if not plain_request(message):
            return None
        route = self._route(message)
        if route is None or not self._relay.offers(route[0], method):
            return None  # the SDK path answers -32601, as a server without the capability does
        return route

    def _start(
        self, message: dict[str, Any], method: str, route: tuple[DownstreamSession, set[Any], bool], key: Any,
        tg: Spawner,
    ) -> None:
        session, held, modern = route
        request_id = message["id"]
        scope = self._scope()
        call_id = coerce_request_id(request_id)
        # started first (the task runs from the next loop turn on), so that a spawner that refuses
        # (a pool closed at shutdown) leaves nothing claimed
        tg.start_soon(self._serve, session, method, request_id, message.get("params") or {}, scope, key, held,
                      modern, call_id)
        held.add(key)  # claimed here, in arrival order, before anything else can run
        self._calls[call_id] = scope
        if self._debug:  # tests read which lane served a request from this line
            log.debug("fast lane", method=method, id=request_id, era="2026" if modern else "2025")

    def _scope(self) -> anyio.CancelScope:
        """A new cancel scope of the running backend's class, made directly: ``anyio.CancelScope()``
        asks which backend runs on every call (~2 us: sniffio, ``current_task``, a ``getpid``)."""
        kind = self._scope_type
        if kind is None:
            scope = anyio.CancelScope()
            self._scope_type = type(scope)
            return scope
        return kind()

    def _route(self, message: dict[str, Any]) -> tuple[DownstreamSession, set[Any], bool] | None:
        """``(session, ids held, 2026?)`` for a request this stream's era lets the lane serve."""
        if enveloped(message.get("params")):
            session = self._modern
            if session is None:
                return None
            from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request  # a 2026 stream: loaded

            if isinstance(classify_inbound_request(message), InboundLadderRejection):
                return None  # the SDK decides the era, and answers an envelope it refuses
            return session, self._modern_ids, True
        connection = self._connection
        if connection is None or not connection.initialize_accepted:
            return None
        if connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        legacy: DownstreamSession | None = connection.state.get(SESSION_KEY)
        if legacy is None:
            return None
        state = connection.state
        held = state.get(IN_FLIGHT_KEY)
        if held is None:
            held = state[IN_FLIGHT_KEY] = set()
        return legacy, held, False

    def _cancel(self, params: Any) -> None:
        if not isinstance(params, Mapping):
            return
        request_id = params.get("requestId")
        if isinstance(request_id, bool) or not isinstance(request_id, int | str):
            return
        scope = self._calls.get(coerce_request_id(request_id))
        if scope is not None:
            scope.cancel()

    async def _serve(
        self, session: DownstreamSession, method: str, request_id: Any, params: dict[str, Any],
        scope: anyio.CancelScope, key: Any, held: set[Any], modern: bool, call_id: Any,
    ) -> None:
        answered = False  # progress stops at the reply
        relay = self._relay
        progress = None
        if method == "tools/call" and "_meta" in params:
            token = progress_token_from_params(params)
            if token is not None:

                async def relay_progress(progress: float, total: float | None, message: str | None) -> None:
                    if answered or scope.cancel_called:
                        return
                    await self._writer.send(progress_line(token, progress, total, message))

                progress = relay_progress

        reply: bytes | None = None
        try:
            with scope:
                try:
                    if method == "tools/call":  # answer(), inlined: one frame fewer on every resume
                        result = await relay.call_tool(session, params, progress)
                    else:
                        result = await relay.list_items(session, method, params)
                    if modern:
                        result = relay.for_modern(session, method, result)
                    reply = codec.encode_result(request_id, result)
                except Exception as exc:  # the wire boundary, as the SDK dispatcher's
                    reply = codec.encode_error(request_id, _error_data(exc, method, modern))
        finally:
            held.discard(key)  # released before the reply: the client may reuse the id at once
            calls = self._calls
            if calls.get(call_id) is scope:
                del calls[call_id]
        answered = True
        if reply is not None and not scope.cancel_called:  # a cancelled request is never answered
            await self._writer.send(reply)


def _error_data(exc: Exception, method: str, modern: bool) -> Any:
    """The JSON-RPC error the SDK path sends for ``exc``: a 2026 stream never sees internals."""
    if modern:
        from mcp.server.runner import modern_error_data  # a 2026 stream: the SDK is loaded

        return modern_error_data(exc)
    error = codec.handler_error(exc)
    if error is None:
        log.exception("fast-lane handler raised", method=method)
        error = {"code": 0, "message": str(exc)}
    return error


async def answer(relay: Relay, session: Any, method: str, params: dict[str, Any], progress: Any) -> Any:
    """The relay's result for one hot request (``tools/call`` with its progress callback, or a list)."""
    if method == "tools/call":
        return await relay.call_tool(session, params, progress)
    return await relay.list_items(session, method, params)


def progress_line(token: Any, progress: float, total: float | None, message: str | None) -> bytes:
    """One ``notifications/progress`` for ``token``, encoded."""
    note: dict[str, Any] = {"progressToken": token, "progress": progress}
    if total is not None:
        note["total"] = total
    if message is not None:
        note["message"] = message
    return codec.encode({"jsonrpc": "2.0", "method": "notifications/progress", "params": note})


def enveloped(params: Any) -> bool:
    meta = params.get("_meta") if type(params) is dict or isinstance(params, dict) else None
    return meta is not None and isinstance(meta, Mapping) and PROTOCOL_VERSION_META_KEY in meta


def plain_request(message: dict[str, Any]) -> bool:
    """A request the SDK would accept as is (its envelope, if any, is checked per era)."""
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return False
    if message.get("jsonrpc") != "2.0" or not _MEMBERS.issuperset(message):
        return False
    params = message.get("params")
    if params is None:
        return "params" not in message  # an explicit null is the SDK's to refuse
    return isinstance(params, dict)
