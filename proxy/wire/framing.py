"""Newline-delimited JSON-RPC framing on a byte stream: whole lines in, whole lines out.

:class:`LineReader` cuts a stream into lines of at most ``limit`` bytes without ever
holding a longer one (it scans each byte once, however the chunks fall), strips a
trailing ``\\r`` (CRLF clients) and skips blank lines. An oversized line that carries an
id becomes a small ``securegateway/message_too_large`` request with that id, which the
relay answers with an error naming the limit; one without an id is dropped with a warning.

:class:`LineFeed` is the same cut driven by an event loop's read callback instead of a
reader task: a line that needs nothing but a synchronous step is handled right in the
callback (see its docstring), everything else is queued for the reader task in wire order.

:class:`LineWriter` is the one writer of an output stream: each message is a single
``write`` of the whole line, so concurrent senders never interleave.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import Callable
from typing import Any, Protocol

import structlog

__all__ = [
    "FEED_HIGH", "JOIN_BELOW", "OVERSIZED_METHOD", "ByteSink", "ByteSource", "Input", "LineFeed", "LineReader",
    "LineSplitter", "LineWriter", "Take", "lines_of", "must_drain", "oversized_stand_in",
]

log = structlog.get_logger("securegateway.wire")

OVERSIZED_METHOD = "securegateway/message_too_large"
"""Stand-in for a request over the size limit; the relay answers it with a clear error."""
CHUNK = 1 << 18
JOIN_BELOW = 1 << 16
"""A line shorter than this is written with its newline joined on (one write call); a longer
one as two writes, since the join copies it (measured: ~2.4 ms for a 2 MB line, page faults
included). Either way nothing else can run between the two: senders never interleave."""
FEED_HIGH = 1 << 20
"""Bytes of queued lines above which a :class:`LineFeed` pauses its transport (resumed at half)."""
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


class LineSplitter:
    """The cut itself, fed chunk by chunk: what :class:`LineReader` and :class:`LineFeed` share.

    ``push`` returns the items a chunk completes (lines without terminator, or stand-in dicts
    for oversized requests), ``end`` the last one at EOF (a last line without its newline still
    counts). A line longer than ``limit`` is never held: once the line in progress passes the
    limit its bytes are counted and let go."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._dropped = 0  # bytes of an oversized line already discarded
        self._prefix = b""  # its first bytes, where the id is

    def push(self, chunk: bytes) -> list[bytes | dict[str, Any]]:
        if (
            not self._buf and not self._dropped and type(chunk) is bytes and chunk[-1:] == b"\n"
            and chunk.find(b"\n") == len(chunk) - 1 and len(chunk) <= self._limit
        ):
            # the usual case: one whole line in one read, nothing pending; it is returned as
            # read, without the copy into the buffer and back out
            line = chunk[:-2] if chunk.endswith(b"\r\n") else chunk[:-1]
            return [line] if line.strip() else []
        buf = self._buf
        scanned = len(buf)
        buf += chunk
        out: list[bytes | dict[str, Any]] = []
        start = 0
        while (nl := buf.find(b"\n", scanned)) >= 0:
            with memoryview(buf) as view:  # one copy of a large line, not two
                line = bytes(view[start:nl])
            start = scanned = nl + 1
            if self._dropped or len(line) > self._limit:
                stand_in = self._refuse(line)
                if stand_in is not None:
                    out.append(stand_in)
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.strip():  # a blank line between messages is not a message
                out.append(line)
        if start:
            del buf[:start]
        if len(buf) > self._limit:  # the line in progress is already too long: let it go
            if not self._dropped:
                self._prefix = bytes(buf[:4096])
            self._dropped += len(buf)
            buf.clear()
        return out

    def end(self) -> list[bytes | dict[str, Any]]:
        """EOF: what is left over is a last line."""
        if self._buf or self._dropped:
            return self.push(b"\n")
        return []

    def _refuse(self, line: bytes) -> dict[str, Any] | None:
        size = self._dropped + len(line)
        prefix = self._prefix or line[:4096]
        self._dropped, self._prefix = 0, b""
        return oversized_stand_in(prefix, size, self._limit)


class LineReader:
    """Lines (bytes, no terminator) or stand-in dicts for oversized requests, until EOF."""

    def __init__(self, source: ByteSource, limit: int) -> None:
        self._source = source
        self._split = LineSplitter(limit)
        self._ready: collections.deque[bytes | dict[str, Any]] = collections.deque()
        self._eof = False

    def __aiter__(self) -> LineReader:
        return self

    async def __anext__(self) -> bytes | dict[str, Any]:
        ready = self._ready
        while not ready:
            if self._eof:
                raise StopAsyncIteration
            chunk = await self._source.read(CHUNK)
            if not chunk:
                self._eof = True
                ready.extend(self._split.end())
                continue
            items = self._split.push(chunk)
            if len(items) == 1:
                return items[0]
            ready.extend(items)
        return ready.popleft()


Take = Callable[[bytes], bool]
"""Handles one line at once, in the read callback; False leaves it to the reader task."""


class LineFeed:
    """Lines pushed by the event loop's read callback, pulled by one reader task.

    The transport's protocol calls :meth:`feed_data` / :meth:`feed_eof`; the reader task
    iterates the feed as it would a :class:`LineReader`. ``take`` (set by that reader, which
    alone knows what it may do at once) sees each line first while the reader is idle - it
    awaits the next line and nothing is queued - and handles it synchronously in the
    callback: one loop turn and one task wake fewer than a line handed to the reader, for
    the lines that need nothing but a synchronous step (an upstream's answer to a waiting
    caller, a client's ``tools/call``). A line arriving while the reader is busy or has a
    backlog is queued behind it, so every line is still handled in wire order. Reading is
    paused while more than :data:`FEED_HIGH` bytes wait in the queue."""

    def __init__(self, limit: int, *, take: Take | None = None) -> None:
        self._split = LineSplitter(limit)
        self.take = take
        self._queue: collections.deque[bytes | dict[str, Any]] = collections.deque()
        self._queued = 0  # bytes of lines in the queue
        self._waiter: asyncio.Future[None] | None = None  # the idle reader's
        self._eof = False
        self._transport: Any = None  # paused while the queue is over FEED_HIGH
        self._paused = False
        self._closed = False

    def attach(self, transport: Any) -> None:
        """The read transport feeding this (``pause_reading`` / ``resume_reading``)."""
        self._transport = transport

    def close(self) -> None:
        """No reader any more: what is queued or still comes is dropped, and the reader (if
        any) sees the end; reading goes on, so a writer at the other end never blocks."""
        self._closed = True
        self.take = None
        self._queue.clear()
        self._queued = 0
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        self.feed_eof()

    def feed_data(self, data: bytes) -> None:
        if self._closed:
            return
        items = self._split.push(bytes(data))
        if not items:
            return
        take, queue = self.take, self._queue
        for item in items:
            if take is not None and self._waiter is not None and not queue and type(item) is bytes:
                try:
                    if take(item):
                        continue
                except Exception:  # a read callback must not raise: the line goes the slow way
                    log.exception("the line feed's taker raised; the line is queued")
            queue.append(item)
            if type(item) is bytes:
                self._queued += len(item)
        if queue:
            self._wake()
            if self._queued > FEED_HIGH and not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()

    def feed_eof(self) -> None:
        if self._eof:
            return
        self._eof = True
        if not self._closed:
            self._queue.extend(self._split.end())
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        """The pipe failed: logged, and read as its end (what :class:`LineReader`'s sources do)."""
        log.warning("line feed: the pipe failed", error=str(exc)[:200])
        self.feed_eof()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> LineFeed:
        return self

    async def __anext__(self) -> bytes | dict[str, Any]:
        queue = self._queue
        while not queue:
            if self._eof:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = queue.popleft()
        if type(item) is bytes:
            self._queued -= len(item)
            if self._paused and self._queued <= FEED_HIGH // 2:
                self._paused = False
                self._transport.resume_reading()
        return item


Input = ByteSource | LineFeed
"""What a front reads: bytes it cuts itself, or a feed cut by the read callback."""


def lines_of(source: Input, limit: int) -> LineReader | LineFeed:
    """The lines of a front's input: a feed is its own lines (cut at its own limit)."""
    return source if isinstance(source, LineFeed) else LineReader(source, limit)


class ByteSink(Protocol):
    """A buffered output (``asyncio.StreamWriter``): ``write`` queues, ``drain`` waits for room."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class LineWriter:
    """The single writer of one output stream; ``send`` writes one whole line."""

    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink
        self._transport = sink.transport if isinstance(sink, asyncio.StreamWriter) else None
        # an asyncio stream's write is its transport's: called directly, one frame fewer per line
        self._write = self._transport.write if self._transport is not None else sink.write

    async def send(self, data: bytes) -> None:
        if len(data) < JOIN_BELOW:
            self._write(data + b"\n")  # one synchronous write per line: senders never interleave
        else:
            self._write(data)
            self._write(b"\n")
        if must_drain(self._transport):
            await self._sink.drain()


def must_drain(transport: Any) -> bool:
    """Whether a write just made to an asyncio stream must be followed by its ``drain``: unless
    the transport is open with nothing left buffered (so not paused either), ``drain`` would
    return at once without awaiting anything, and skipping it saves two coroutines per write.
    A transport that is closing (or none known) is always drained: that is where the end of
    the stream is reported."""
    return transport is None or transport.is_closing() or transport.get_write_buffer_size() > 0
