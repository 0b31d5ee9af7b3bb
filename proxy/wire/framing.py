"""Newline-delimited JSON-RPC framing on a byte stream: whole lines in, whole lines out.

:class:`LineReader` cuts a stream into lines of at most ``limit`` bytes without ever
holding a longer one (it scans each byte once, however the chunks fall), strips a
trailing ``\\r`` (CRLF clients) and skips blank lines. An oversized line that carries an
id becomes a small ``securegateway/message_too_large`` request with that id, which the
relay answers with an error naming the limit; one without an id is dropped with a warning.

:class:`LineWriter` is the one writer of an output stream: each message is a single
``write`` of the whole line, so concurrent senders never interleave.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

import structlog

__all__ = ["JOIN_BELOW", "OVERSIZED_METHOD", "ByteSink", "ByteSource", "LineReader", "LineWriter", "oversized_stand_in"]

log = structlog.get_logger("securegateway.wire")

OVERSIZED_METHOD = "securegateway/message_too_large"
"""Stand-in for a request over the size limit; the relay answers it with a clear error."""
CHUNK = 1 << 18
JOIN_BELOW = 1 << 16
"""A line shorter than this is written with its newline joined on (one write call); a longer
one as two writes, since the join copies it (measured: ~2.4 ms for a 2 MB line, page faults
included). Either way nothing else can run between the two: senders never interleave."""
_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,20}|"(?:[^"\\]|\\.){0,200}")')


class ByteSource(Protocol):
    """Anything that hands out what is there now (``asyncio.StreamReader.read``)."""

    async def read(self, n: int) -> bytes: ...


def oversized_stand_in(prefix: bytes, size: int, limit: int) -> dict[str, Any] | None:
    """The request standing in for an oversized line (None when it names no id)."""
    match = _ID.search(prefix)
    log.warning("oversized message refused", bytes=size, limit=limit, answered=match is not None)
    if match is None:
        return None  # a notification or garbage: nothing to answer
    return {"jsonrpc": "2.0", "id": json.loads(match.group(1)), "method": OVERSIZED_METHOD,
            "params": {"bytes": size, "limit": limit}}


class LineReader:
    """Lines (bytes, no terminator) or stand-in dicts for oversized requests, until EOF."""

    def __init__(self, source: ByteSource, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._buf = bytearray()
        self._start = 0  # where the next line begins in _buf
        self._scanned = 0  # bytes of _buf already searched for a newline
        self._dropped = 0  # bytes of an oversized line already discarded
        self._prefix = b""  # its first bytes, where the id is
        self._eof = False

    def __aiter__(self) -> LineReader:
        return self

    async def __anext__(self) -> bytes | dict[str, Any]:
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                with memoryview(self._buf) as view:  # one copy of a large line, not two
                    line = bytes(view[self._start:nl])
                self._start = self._scanned = nl + 1
                if self._dropped or len(line) > self._limit:
                    stand_in = self._refuse(line)
                    if stand_in is None:
                        continue
                    return stand_in
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line.strip():
                    continue  # a blank line between messages is not a message
                return line
            self._compact()
            self._scanned = len(self._buf)
            if len(self._buf) > self._limit:  # the line in progress is already too long: let it go
                if not self._dropped:
                    self._prefix = bytes(self._buf[:4096])
                self._dropped += len(self._buf)
                self._buf.clear()
                self._scanned = 0
            if self._eof:
                if self._buf or self._dropped:
                    self._buf += b"\n"  # a last line without its newline still counts
                    continue
                raise StopAsyncIteration
            chunk = await self._source.read(CHUNK)
            if not chunk:
                self._eof = True
            elif (
                not self._buf and not self._dropped and type(chunk) is bytes and chunk[-1] == 10
                and chunk.find(b"\n") == len(chunk) - 1 and len(chunk) <= self._limit
            ):
                # the usual case: one whole line in one read, nothing pending; it is returned as
                # read, without the copy into the buffer and back out
                line = chunk[:-2] if chunk.endswith(b"\r\n") else chunk[:-1]
                if line.strip():
                    return line
                continue
            self._buf += chunk

    def _compact(self) -> None:
        if self._start:
            del self._buf[: self._start]
            self._scanned -= self._start
            self._start = 0

    def _refuse(self, line: bytes) -> dict[str, Any] | None:
        size = self._dropped + len(line)
        prefix = self._prefix or line[:4096]
        self._dropped, self._prefix = 0, b""
        return oversized_stand_in(prefix, size, self._limit)


class ByteSink(Protocol):
    """A buffered output (``asyncio.StreamWriter``): ``write`` queues, ``drain`` waits for room."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class LineWriter:
    """The single writer of one output stream; ``send`` writes one whole line."""

    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink

    async def send(self, data: bytes) -> None:
        if len(data) < JOIN_BELOW:
            self._sink.write(data + b"\n")  # one synchronous write per line: senders never interleave
        else:
            self._sink.write(data)
            self._sink.write(b"\n")
        await self._sink.drain()
