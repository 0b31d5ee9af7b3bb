"""One request per JSON-RPC id at a time on a Streamable HTTP session.

The SDK's HTTP transport keys each POST's response stream by request id, so a second POST
reusing an id that is still in flight takes over the first one's stream: answers go to the
wrong caller, or to nobody. :class:`UniqueRequestIds` sits in front of the transport and
answers such a POST at once with a JSON-RPC ``-32600`` error; the request that holds the id
keeps it and gets its own answer. Ids are scoped by the principal and the ``Mcp-Session-Id``
header (the relay applies the same rule per connection for stdio).
"""

from __future__ import annotations

import json
from typing import Any

from mcp_types import INVALID_REQUEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["UniqueRequestIds"]

_SESSION_HEADER = b"mcp-session-id"


class UniqueRequestIds:
    """ASGI wrapper refusing a POST whose request id is already in flight on its session."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._in_flight: set[tuple[Any, ...]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        session = dict(scope.get("headers") or ()).get(_SESSION_HEADER)
        if session is None:  # initialize, or a sessionless request: no shared response streams
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body = message.get("body", b"")
            chunks.append(body)
            size += len(body)
            more = bool(message.get("more_body"))
            if size > self.max_body_bytes:
                break  # the transport refuses it with its own size error
        body = b"".join(chunks)
        request_id = _request_id(body) if size <= self.max_body_bytes else None
        replay = _Replay(body, more, receive)
        if request_id is None:
            await self.app(scope, replay, send)
            return
        user = scope.get("user")
        key = (getattr(user, "username", None) or repr(user), session, type(request_id).__name__, request_id)
        if key in self._in_flight:
            await _refuse(send, request_id)
            return
        self._in_flight.add(key)
        try:
            await self.app(scope, replay, send)
        finally:
            self._in_flight.discard(key)


def _request_id(body: bytes) -> int | str | None:
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict) or "method" not in message:
        return None
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    return request_id


class _Replay:
    """``receive`` that hands out the buffered body first, then whatever is left."""

    def __init__(self, body: bytes, more: bool, receive: Receive) -> None:
        self._first: Message | None = {"type": "http.request", "body": body, "more_body": more}
        self._receive = receive

    async def __call__(self) -> Message:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._receive()


async def _refuse(send: Send, request_id: int | str) -> None:
    body = json.dumps({
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": INVALID_REQUEST, "message": f"request id `{str(request_id)[:80]}` is already in flight "
                  "on this session; use a new id"},
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
