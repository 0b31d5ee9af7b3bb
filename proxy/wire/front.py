"""The lean stdio front: one read loop, one writer, a fast lane beside the SDK server.

Each line from the client is decoded exactly once. What the :class:`Lane` takes (hot
requests on an initialised session) it answers itself; everything else - ``initialize``,
every other method, notifications, the client's answers to server->client requests - is
validated into a ``SessionMessage`` from the already-decoded dict and handed to the SDK
``Server`` unchanged, so all protocol behaviour stays the SDK's. Both lanes write through
the one :class:`~proxy.wire.framing.LineWriter`.

A gateway's stdio connection starts on the SDK-free opening (:mod:`proxy.wire.opening`),
which brings this path (:class:`SDKPath`) up when a message first needs the SDK;
:func:`serve_lines` is the path alone (``fast_lane = false``, tests).

Lines that are not JSON-RPC messages are answered as JSON-RPC requires: ``-32700`` with
``id: null`` for a line that is not JSON, ``-32600`` (echoing a usable id) for JSON that is
not a request; a malformed *response* is dropped with a warning.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import structlog
from mcp.server import Server
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, ErrorData, jsonrpc_message_adapter
from pydantic import ValidationError

from proxy.wire import codec
from proxy.wire.framing import Input, LineWriter, lines_of
from proxy.wire.opening import UNDECODABLE, Lane, LaneFactory, decoded
from proxy.wire.spawn import CallPool

__all__ = ["Lane", "LaneFactory", "SDKPath", "invalid_message_reply", "serve_lines"]

log = structlog.get_logger("securegateway.wire")


async def serve_lines(
    server: Server[Any], source: Input, writer: LineWriter, *, max_message_bytes: int,
    lane: LaneFactory | None = None,
) -> None:
    """Serve one client over ``source``/``writer`` until the source ends."""
    fast = lane(writer) if lane is not None else None
    sdk = SDKPath(server, writer)
    async with anyio.create_task_group() as tg:
        sdk.start(tg)
        calls = CallPool(tg)  # the fast lane's calls, one task each (proxy/wire/spawn.py)
        await tg.start(calls.run)
        try:
            async for line in lines_of(source, max_message_bytes):
                message = await decoded(line, writer)
                if message is UNDECODABLE:
                    continue
                if fast is not None and isinstance(message, dict) and await fast.offer(message, calls):
                    continue
                await sdk.deliver(message)
            await sdk.finish()  # the SDK answers what it holds and closes the connection
        finally:
            tg.cancel_scope.cancel()  # fast-lane calls of a client that went away


class SDKPath:
    """The SDK ``Server`` serving the client's messages over the front's writer.

    ``drop`` names request ids whose answers are the front's own business (the stdio
    opening's replayed ``initialize``, proxy/wire/opening.py): they are not written."""

    def __init__(self, server: Server[Any], writer: LineWriter, *, drop: frozenset[Any] = frozenset()) -> None:
        self._server = server
        self._writer = writer
        self._drop = drop
        self._to_sdk, self._sdk_in = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        self._sdk_out, self._from_sdk = anyio.create_memory_object_stream[SessionMessage](0)
        self._served = anyio.Event()

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self._write)
        tg.start_soon(self._run)

    async def _run(self) -> None:
        try:
            await self._server.run(self._sdk_in, self._sdk_out, self._server.create_initialization_options())
        finally:
            self._served.set()

    async def deliver(self, message: Any) -> None:
        """Validate one decoded message and hand it to the SDK (or answer it as invalid)."""
        try:
            parsed = jsonrpc_message_adapter.validate_python(message, by_name=False)
        except ValidationError as exc:
            reply = invalid_message_reply(exc)
            if reply is not None:
                await self._writer.send(codec.encode_error(reply[0], reply[1]))
            return
        await self._to_sdk.send(SessionMessage(parsed))

    async def finish(self) -> None:
        """No more messages: wait until the SDK has answered what it holds."""
        await self._to_sdk.aclose()
        await self._served.wait()

    async def _write(self) -> None:
        async with self._from_sdk:
            async for message in self._from_sdk:
                msg = message.message
                if self._drop and not hasattr(msg, "method") and getattr(msg, "id", None) in self._drop:
                    error = getattr(msg, "error", None)
                    if error is not None:  # the client was answered already: its session cannot be the SDK's
                        log.error("the SDK refused the replayed opening", code=error.code, error=error.message[:200])
                    continue
                await self._writer.send(codec.encode_message(message))


def invalid_message_reply(exc: ValidationError) -> tuple[Any, ErrorData] | None:
    """``(id, error)`` answering a decoded value that is not a JSON-RPC message (None: drop it).

    The id is echoed when the object carries a usable one, so the client's pending request
    is answered. A malformed *response* (it has ``result`` or ``error``) is dropped with a
    warning: answering it could start an error ping-pong."""
    errors = exc.errors()
    decoded = next((e.get("input") for e in errors if isinstance(e.get("input"), dict)), None)
    if isinstance(decoded, dict) and "method" not in decoded and ("result" in decoded or "error" in decoded):
        log.warning("malformed response from the client dropped", id=str(decoded.get("id"))[:100])
        return None
    rid = decoded.get("id") if isinstance(decoded, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        rid = None
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'message'}: {e.get('msg')}"
        for e in errors if e.get("loc") and e["loc"][0] == "JSONRPCRequest"
    ) or "not a JSON-RPC request object"
    log.warning("invalid stdio request", id=rid, detail=detail[:200])
    return rid, ErrorData(code=INVALID_REQUEST, message=f"Invalid request: {detail[:300]}")
