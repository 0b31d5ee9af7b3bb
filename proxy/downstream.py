"""The client-facing stdio front (the Streamable HTTP front lives in ``proxy.front``).

It serves the same SDK ``Server`` (whose only middleware is the relay) as the HTTP
front, so every client era the SDK accepts is accepted on both.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
from typing import Any

import anyio
import structlog
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError

log = structlog.get_logger("securegateway.downstream")

OVERSIZED_METHOD = "securegateway/message_too_large"
"""Stand-in for a stdio request over the size limit; the relay answers it with a clear error."""
_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,20}|"(?:[^"\\]|\\.){0,200}")')


async def serve_stdio(server: Server[Any], *, max_message_bytes: int) -> None:
    """Serve one client over this process's stdin/stdout until it closes stdin."""
    pipes = await _pipes()
    if pipes is None:  # a regular file or other non-pipe: the SDK's thread-backed files
        stdin = CappedLines(anyio.wrap_file(sys.stdin.buffer), max_message_bytes)
        async with stdio_server(stdin=stdin) as (read, write):  # type: ignore[arg-type]
            await server.run(AnsweringReader(read, write), write, server.create_initialization_options())
        return
    reader, writer = pipes
    async with stdio_server(stdin=CappedLines(reader, max_message_bytes), stdout=writer) as (read, write):  # type: ignore[arg-type]
        await server.run(AnsweringReader(read, write), write, server.create_initialization_options())


class AnsweringReader:
    """The stdio read stream, answering lines that are not JSON-RPC messages as HTTP does.

    The SDK's stdio transport hands an unparseable line to the server as an exception,
    which drops it; JSON-RPC wants ``-32700`` (id null) for a line that is not JSON and
    ``-32600`` for JSON that is not a request (a non-string ``method``, a batch, a
    scalar). The id is echoed when the object carries a usable one, so the client's
    pending request is answered. A malformed *response* (it has ``result`` or ``error``)
    is dropped with a warning: answering it could start an error ping-pong.
    """

    def __init__(self, inner: Any, write: Any) -> None:
        self._inner = inner
        self._write = write

    @property
    def last_context(self) -> Any:  # the SDK restores the sender's contextvars from this
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, Exception):
                return item
            reply = invalid_message_reply(item)
            if reply is not None:
                await self._write.send(SessionMessage(reply))

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> AnsweringReader:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AnsweringReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def invalid_message_reply(exc: Exception) -> JSONRPCError | None:
    """The JSON-RPC error answering a line the transport could not turn into a message."""
    if not isinstance(exc, ValidationError):
        log.warning("unreadable stdio message dropped", error=str(exc)[:200])
        return None
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        log.warning("stdio line is not json", error=errors[0].get("msg"))
        return JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message="Parse error"))
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
    return JSONRPCError(
        jsonrpc="2.0", id=rid, error=ErrorData(code=INVALID_REQUEST, message=f"Invalid request: {detail[:300]}")
    )


class _PipeReader:
    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream

    async def read1(self, n: int) -> bytes:
        return await self._stream.read(n)


class _PipeWriter:
    """Text-file face of a non-blocking stdout pipe (what ``stdio_server`` writes to)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


async def _pipes() -> tuple[_PipeReader, _PipeWriter] | None:
    """stdin/stdout as event-loop pipes: no worker-thread hop per message (asyncio only)."""
    try:
        loop = asyncio.get_running_loop()
        for fd in (0, 1):
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
                return None
        reader = asyncio.StreamReader(limit=2**20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(0, "rb", buffering=0, closefd=False))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", buffering=0, closefd=False)
        )
        return _PipeReader(reader), _PipeWriter(asyncio.StreamWriter(transport, protocol, None, loop))
    except (RuntimeError, OSError, ValueError):
        return None


class CappedLines:
    """stdin as lines of at most ``limit`` bytes, never holding a longer one in memory.

    An oversized request is replaced by a small ``securegateway/message_too_large`` request
    with the same id, which the relay answers with a JSON-RPC error naming the limit; an
    oversized notification (no id to answer) is dropped with a warning.
    """

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._buf = bytearray()
        self._scanned = 0
        self._dropped = 0
        self._prefix = b""
        self._eof = False

    def __aiter__(self) -> CappedLines:
        return self

    async def __anext__(self) -> str:
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                self._scanned = 0
                if self._dropped or len(line) > self._limit:
                    stand_in = self._stand_in(self._prefix or line[:4096], self._dropped + len(line))
                    if stand_in is None:
                        continue
                    return stand_in
                if not line.strip():
                    continue  # a blank line between messages is not a message
                return line.decode("utf-8", "replace")
            self._scanned = len(self._buf)
            if len(self._buf) > self._limit:
                if not self._dropped:
                    self._prefix = bytes(self._buf[:4096])
                self._dropped += len(self._buf)
                self._buf.clear()
                self._scanned = 0
            if self._eof:
                if self._buf or self._dropped:
                    self._buf += b"\n"
                    continue
                raise StopAsyncIteration
            chunk = await self._raw.read1(1 << 16)  # what is there now: a pipe may not fill 64 KiB
            if not chunk:
                self._eof = True
            self._buf += chunk

    def _stand_in(self, prefix: bytes, size: int) -> str | None:
        self._dropped, self._prefix = 0, b""
        match = _ID.search(prefix)
        log.warning("oversized message refused", bytes=size, limit=self._limit, answered=match is not None)
        if match is None:
            return None  # a notification or garbage: nothing to answer
        request = {"jsonrpc": "2.0", "id": json.loads(match.group(1)), "method": OVERSIZED_METHOD,
                   "params": {"bytes": size, "limit": self._limit}}
        return json.dumps(request)
