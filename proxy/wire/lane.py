"""The fast lane: ``tools/call`` and ``tools/list`` on an initialised stdio session.

A hot request is answered from the dict the front decoded, without modelling it as
pydantic objects, without the SDK's dispatcher and server layers, and with its reply
encoded once. The work in between is the relay's own (:meth:`Relay.call_tool`,
:meth:`Relay.list_items`): the same routing, the same interceptor chain (decision,
audit, result scan, the decision in ``_meta``), so a call gives the same answer on
either path. The relay's guarantees hold for fast-lane requests too:

- a request id already in flight on the connection (in either lane) gets ``-32600``;
  the ids are held in the same set the relay uses (``connection.state``);
- ``notifications/cancelled`` cancels a fast-lane call: its upstream request is
  abandoned (the upstream gets the courtesy cancel) and the call is never answered;
- a ``progressToken`` gets the upstream's progress as ``notifications/progress``,
  never after the reply;
- upstream sampling / elicitation / roots requests during a call go through the SDK
  server session (the connection), which writes through the same single writer.

The lane declines (the SDK path serves it) anything else: a session that is not
initialised yet, a 2026-era (sessionless) client or an enveloped request, an id that
is not a string or integer, params that are not an object, extra top-level members.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import structlog
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data, progress_token_from_params
from mcp_types import INVALID_REQUEST, PROTOCOL_VERSION_META_KEY, ErrorData
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from proxy.relay import IN_FLIGHT_KEY, SESSION_KEY, Relay
from proxy.session import DownstreamSession
from proxy.wire import codec
from proxy.wire.framing import LineWriter

__all__ = ["FastLane"]

log = structlog.get_logger("securegateway.wire")

METHODS = frozenset({"tools/call", "tools/list"})
_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})


class FastLane:
    """Answers hot requests of the one stdio connection itself (see the module docstring)."""

    def __init__(self, relay: Relay, writer: LineWriter) -> None:
        self._relay = relay
        self._writer = writer
        self._connection: Any = None
        self._calls: dict[Any, anyio.CancelScope] = {}

    def attach(self, connection: Any) -> None:
        """The SDK connection ``initialize`` opened (its ``state`` holds the session and ids)."""
        self._connection = connection

    async def offer(self, message: dict[str, Any], tg: anyio.abc.TaskGroup) -> bool:
        method = message.get("method")
        if method == "notifications/cancelled":
            self._cancel(message.get("params"))
            return False  # the SDK still sees it (it may name one of its own requests)
        if method not in METHODS:
            return False
        session = self._session()
        if session is None or not _plain_request(message):
            return False
        request_id = message["id"]
        params = message.get("params") or {}
        held: set[Any] = self._connection.state.setdefault(IN_FLIGHT_KEY, set())
        key = (type(request_id).__name__, request_id)
        if key in held:
            await self._writer.send(codec.encode_error(request_id, ErrorData(
                code=INVALID_REQUEST,
                message=f"request id `{str(request_id)[:80]}` is already in flight on this session",
            )))
            return True
        held.add(key)  # claimed here, in arrival order, before anything else can run
        scope = anyio.CancelScope()
        self._calls[coerce_request_id(request_id)] = scope
        tg.start_soon(self._serve, session, method, request_id, params, scope, key, held)
        return True

    def _session(self) -> DownstreamSession | None:
        connection = self._connection
        if connection is None or not connection.initialize_accepted:
            return None
        if connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        session: DownstreamSession | None = connection.state.get(SESSION_KEY)
        return session

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
        scope: anyio.CancelScope, key: Any, held: set[Any],
    ) -> None:
        answered = False  # progress stops at the reply
        token = progress_token_from_params(params)

        async def relay_progress(progress: float, total: float | None, message: str | None) -> None:
            if answered or scope.cancel_called:
                return
            note: dict[str, Any] = {"progressToken": token, "progress": progress}
            if total is not None:
                note["total"] = total
            if message is not None:
                note["message"] = message
            await self._writer.send(codec.encode({"jsonrpc": "2.0", "method": "notifications/progress",
                                                  "params": note}))

        reply: bytes | None = None
        try:
            with scope:
                try:
                    if method == "tools/call":
                        result = await self._relay.call_tool(
                            session, params, relay_progress if token is not None else None
                        )
                    else:
                        result = await self._relay.list_items(session, method, params)
                    reply = codec.encode_result(request_id, result)
                except Exception as exc:  # the wire boundary, as the SDK dispatcher's
                    error = handler_exception_to_error_data(exc)
                    if error is None:
                        log.exception("fast-lane handler raised", method=method)
                        error = ErrorData(code=0, message=str(exc))
                    reply = codec.encode_error(request_id, error)
        finally:
            held.discard(key)  # released before the reply: the client may reuse the id at once
            if self._calls.get(coerce_request_id(request_id)) is scope:
                del self._calls[coerce_request_id(request_id)]
        answered = True
        if reply is not None and not scope.cancel_called:  # a cancelled request is never answered
            await self._writer.send(reply)


def _plain_request(message: dict[str, Any]) -> bool:
    """A request the SDK would accept as is, from a handshake-era client."""
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return False
    if message.get("jsonrpc") != "2.0" or not _MEMBERS.issuperset(message):
        return False
    params = message.get("params")
    if params is None:
        return "params" not in message  # an explicit null is the SDK's to refuse
    if not isinstance(params, dict):
        return False
    meta = params.get("_meta")
    return not (isinstance(meta, Mapping) and PROTOCOL_VERSION_META_KEY in meta)
