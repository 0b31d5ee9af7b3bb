"""The lean stdio front: one read loop, one writer, a fast lane beside the SDK server.

Each line from the client is decoded exactly once. What the :class:`Lane` takes (hot
requests on an initialised session) it answers itself; everything else - ``initialize``,
every other method, notifications, the client's answers to server->client requests - is
validated into a ``SessionMessage`` from the already-decoded dict and handed to the SDK
``Server`` unchanged, so all protocol behaviour stays the SDK's. Both lanes write through
the one :class:`~proxy.wire.framing.LineWriter`.

Lines that are not JSON-RPC messages are answered as JSON-RPC requires: ``-32700`` with
``id: null`` for a line that is not JSON, ``-32600`` (echoing a usable id) for JSON that is
not a request; a malformed *response* is dropped with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import Server
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, jsonrpc_message_adapter
from pydantic import ValidationError

from proxy.wire import codec
from proxy.wire.framing import ByteSource, LineReader, LineWriter
from proxy.wire.spawn import CallPool, Spawner

__all__ = ["Lane", "LaneFactory", "invalid_message_reply", "serve_lines"]

log = structlog.get_logger("securegateway.wire")

_PARSE_ERROR = ErrorData(code=PARSE_ERROR, message="Parse error")


class Lane(Protocol):
    """Takes the messages it can answer itself; returns False to leave one to the SDK."""

    async def offer(self, message: dict[str, Any], tg: Spawner) -> bool: ...


LaneFactory = Callable[[LineWriter], Lane]
"""Builds the fast lane over the front's writer (so both lanes share the one writer)."""


async def serve_lines(
    server: Server[Any], source: ByteSource, writer: LineWriter, *, max_message_bytes: int,
    lane: LaneFactory | None = None,
) -> None:
    """Serve one client over ``source``/``writer`` until the source ends."""
    fast = lane(writer) if lane is not None else None
    to_sdk, sdk_in = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    sdk_out, from_sdk = anyio.create_memory_object_stream[SessionMessage](0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_write_sdk_messages, from_sdk, writer)
        served = anyio.Event()

        async def run_server() -> None:
            try:
                await server.run(sdk_in, sdk_out, server.create_initialization_options())
            finally:
                served.set()

        tg.start_soon(run_server)
        calls = CallPool(tg)  # the fast lane's calls, one task each (proxy/wire/spawn.py)
        await tg.start(calls.run)
        try:
            async with to_sdk:
                async for line in LineReader(source, max_message_bytes):
                    await _route(line, to_sdk, writer, fast, calls)
            await served.wait()  # the SDK answers what it holds and closes the connection
        finally:
            tg.cancel_scope.cancel()  # fast-lane calls of a client that went away


async def _route(
    line: bytes | dict[str, Any], to_sdk: MemoryObjectSendStream[SessionMessage | Exception], writer: LineWriter,
    lane: Lane | None, tg: Spawner,
) -> None:
    if isinstance(line, dict):  # the stand-in for an oversized request
        message: Any = line
    else:
        try:
            message = codec.decode(line)
        except codec.DecodeError as exc:
            log.warning("stdio line is not json", error=str(exc)[:200])
            await writer.send(codec.encode_error(None, _PARSE_ERROR))
            return
    if lane is not None and isinstance(message, dict) and await lane.offer(message, tg):
        return
    try:
        parsed = jsonrpc_message_adapter.validate_python(message, by_name=False)
    except ValidationError as exc:
        reply = invalid_message_reply(exc)
        if reply is not None:
            await writer.send(codec.encode_error(reply[0], reply[1]))
        return
    await to_sdk.send(SessionMessage(parsed))


async def _write_sdk_messages(from_sdk: MemoryObjectReceiveStream[SessionMessage], writer: LineWriter) -> None:
    async with from_sdk:
        async for message in from_sdk:
            await writer.send(codec.encode_message(message))


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
