"""The client-facing stdio front (the Streamable HTTP front lives in ``proxy.front``).

It serves the same SDK ``Server`` (whose only middleware is the relay) as the HTTP
front, so every client era the SDK accepts is accepted on both. On stdio the lines are
framed and decoded by the lean path (:mod:`proxy.wire`), whose fast lane answers hot
requests itself.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import structlog

from proxy.wire.framing import Input, LineFeed, LineWriter

log = structlog.get_logger("securegateway.downstream")


async def serve_stdio(
    serve: Callable[[Input, LineWriter], Awaitable[None]], *, max_message_bytes: int = 64 * 2**20
) -> None:
    """Serve one client over this process's stdin/stdout until it closes stdin.

    Pipes (the usual case) are read and written on the event loop; a regular file or
    other non-pipe goes through worker threads. A pipe's lines are cut in its read callback
    (a :class:`~proxy.wire.framing.LineFeed`, lines up to ``max_message_bytes``). Either way
    ``serve`` (the gateway's lean front: proxy/wire/opening.py, proxy/wire/front.py) frames the
    lines and answers them."""
    pipes = await _pipes(max_message_bytes)
    if pipes is None:
        source: Input = _ThreadedSource(anyio.wrap_file(sys.stdin.buffer))
        writer = LineWriter(_ThreadedSink(sys.stdout.buffer))
    else:
        source, writer = pipes
    await serve(source, writer)


class _ThreadedSource:
    def __init__(self, file: Any) -> None:
        self._file = file

    async def read(self, n: int) -> bytes:
        return bytes(await self._file.read1(n))  # what is there now: a pipe may not fill the buffer


class _ThreadedSink:
    """A blocking stdout (a regular file): written and flushed in place, nothing to drain."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    async def drain(self) -> None:
        return None


async def _pipes(limit: int) -> tuple[LineFeed, LineWriter] | None:
    """stdin/stdout as event-loop pipes: no worker-thread hop per message (asyncio only)."""
    try:
        loop = asyncio.get_running_loop()
        for fd in (0, 1):
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
                return None
        feed = LineFeed(limit)
        await loop.connect_read_pipe(lambda: _FeedProtocol(feed), os.fdopen(0, "rb", buffering=0, closefd=False))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", buffering=0, closefd=False)
        )
        return feed, LineWriter(asyncio.StreamWriter(transport, protocol, None, loop))
    except (RuntimeError, OSError, ValueError):
        return None


class _FeedProtocol(asyncio.Protocol):
    """stdin's read callbacks, straight into the feed."""

    def __init__(self, feed: LineFeed) -> None:
        self._feed = feed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._feed.attach(transport)

    def data_received(self, data: bytes) -> None:
        self._feed.feed_data(data)

    def eof_received(self) -> bool:
        self._feed.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._feed.feed_eof()
        else:
            self._feed.set_exception(exc)
