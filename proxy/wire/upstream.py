"""The line transport to a stdio upstream: a child process as a source of lines and a line sink.

The SDK's client transport decodes the child's stdout as text, re-splits its whole buffer
on every chunk (quadratic in the size of a long line: a 1 MB answer costs hundreds of
scans), pydantic-validates every line and hands it through a memory stream to a dispatcher
task. Here :func:`stdio_upstream` yields a :class:`StdioPipe`: ``lines``, the child's stdout
cut once by a :class:`~proxy.wire.framing.LineFeed` fed by the pipe's read callback
(capped at ``gateway.max_message_bytes``; an oversized line becomes the stand-in dict),
and ``send``, one whole line to the child's stdin per
call. The correlator (:mod:`proxy.wire.dispatch`) reads the lines in its one reader task and
decodes each once. Process start and shutdown are the SDK's own helpers (pinned to
``mcp==2.3.0``): spawn in a new session, close stdin, wait, kill the tree; the child's last
output is drained meanwhile so a server flushing at exit does not block on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import structlog

from proxy.protocol import load_sdk
from proxy.upstream.prespawn import kill_group
from proxy.wire.framing import JOIN_BELOW, LineFeed, LineReader, must_drain

if TYPE_CHECKING:
    from mcp import StdioServerParameters

__all__ = ["StdioPipe", "stdio_upstream"]

log = structlog.get_logger("securegateway.upstream")


class _Stdout:
    """The child's stdout as a :class:`~proxy.wire.framing.ByteSource`; any end of it reads as EOF."""

    def __init__(self, stream: Any, upstream: str) -> None:
        self._stream = stream
        self._upstream = upstream
        self.shutting_down = False

    async def read(self, n: int) -> bytes:
        try:
            return bytes(await self._stream.receive(n))
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return b""  # the child exited, or our own shutdown closed the pipe under the read
        except (anyio.BrokenResourceError, OSError):
            if not self.shutting_down:
                log.exception("reading the upstream's stdout failed mid-session", upstream=self._upstream)
            return b""


class StdioPipe:
    """One upstream child process: ``lines`` from its stdout, ``send`` to its stdin."""

    def __init__(self, process: Any, upstream: str, max_message_bytes: int) -> None:
        self._stdin = process.stdin
        # anyio's wrapper adds two checkpoints per write, one of them a full loop iteration
        # (measured: ~10 us per call); the asyncio writer under it is written directly
        stream = getattr(self._stdin, "_stream", None)
        self._writer: asyncio.StreamWriter | None = stream if isinstance(stream, asyncio.StreamWriter) else None
        self._stdout = _Stdout(process.stdout, upstream)
        self._feed = _take_over_stdout(process, max_message_bytes)
        self.lines: LineReader | LineFeed = self._feed or LineReader(self._stdout, max_message_bytes)
        self.closed = False

    async def send(self, data: bytes) -> None:
        """Write one line (``data`` has no newline); ``BrokenResourceError`` once the child is gone."""
        if self.closed:
            raise anyio.ClosedResourceError
        writer = self._writer
        try:
            if writer is None:
                await self._stdin.send(data + b"\n")
                return
            # one synchronous write (whole, so concurrent senders never interleave); drain
            # waits only while the pipe is over its high-water mark: that is the backpressure
            transport = writer.transport  # StreamWriter.write is its transport's: called directly
            if len(data) < JOIN_BELOW:
                transport.write(data + b"\n")
            else:  # no copy of a long line just to add its newline (see framing.JOIN_BELOW)
                transport.write(data)
                transport.write(b"\n")
            if must_drain(transport):
                await writer.drain()
        except (OSError, RuntimeError) as exc:  # the child went away under the write (uvloop: RuntimeError)
            raise anyio.BrokenResourceError from exc

    def close(self) -> None:
        self.closed = True
        self._stdout.shutting_down = True
        if self._feed is not None:
            self._feed.close()  # the child's last output is read and dropped from now on


class _Relayed:
    """Stands for the child's stdout ``StreamReader`` in its asyncio protocol: the bytes go to the
    :class:`LineFeed`, and the end of the pipe to the reader too, so that whatever still reads
    it (the shutdown's drain) sees the end."""

    def __init__(self, feed: LineFeed, reader: asyncio.StreamReader) -> None:
        self._feed = feed
        self._reader = reader

    def feed_data(self, data: bytes) -> None:
        self._feed.feed_data(data)

    def feed_eof(self) -> None:
        self._feed.feed_eof()
        self._reader.feed_eof()

    def set_exception(self, exc: Exception) -> None:
        self._feed.set_exception(exc)
        self._reader.set_exception(exc)


def _take_over_stdout(process: Any, limit: int) -> LineFeed | None:
    """The child's stdout as a :class:`LineFeed`, fed by the pipe's read callback (no reader
    task between the pipe and the correlator: proxy/wire/framing.py); None where the process
    is not the asyncio one anyio wraps (another backend), which keeps the pulled reader.

    The subprocess protocol hands the pipe's bytes to ``protocol.stdout``; that attribute is
    pointed at the feed. Pinned to asyncio's ``SubprocessStreamProtocol`` (CPython 3.11-3.13,
    uvloop alike) and anyio's ``Process._process``; tests/proxy/wire/test_upstream.py checks
    that a real child is read this way."""
    inner = getattr(process, "_process", None)
    found = getattr(inner, "_protocol", None)
    if not isinstance(found, asyncio.subprocess.SubprocessStreamProtocol):
        return None
    if type(found.stdout) is not asyncio.StreamReader:
        return None
    protocol: Any = found
    reader: Any = found.stdout  # its private state, read once here (the hand-over)
    if reader._eof or reader.exception() is not None:
        return None
    transport = reader._transport
    feed = LineFeed(limit)
    feed.attach(transport)
    early = bytes(reader._buffer)  # what the child wrote before the hand-over (a pre-spawned one)
    reader._buffer.clear()
    protocol.stdout = _Relayed(feed, reader)
    if reader._paused and transport is not None:  # its buffer was full: the feed reads on
        reader._paused = False
        transport.resume_reading()
    if early:
        feed.feed_data(early)
    return feed


@asynccontextmanager
async def stdio_upstream(
    params: StdioServerParameters, *, upstream: str, max_message_bytes: int, errlog: TextIO = sys.stderr,
    process: Any = None,
) -> AsyncIterator[StdioPipe]:
    """Spawn the upstream (or adopt ``process``, one already spawned the same way: see
    proxy/upstream/prespawn.py), yield its pipe, stop it (and drain its last output) at exit."""
    if process is None:
        load_sdk()
        from mcp.client.stdio import (  # private helpers of mcp==2.3.0's stdio_client
            _create_platform_compatible_process,
            get_default_environment,
        )

        try:
            process = await _create_platform_compatible_process(
                command=params.command, args=params.args, env=get_default_environment() | (params.env or {}),
                errlog=errlog, cwd=params.cwd,
            )
        except FileNotFoundError as exc:  # uvloop leaves out which file: name the command
            exc.filename = exc.filename or params.command
            raise
    assert process.stdin is not None and process.stdout is not None
    pipe = StdioPipe(process, upstream, max_message_bytes)
    try:
        yield pipe
    finally:
        pipe.close()
        with anyio.CancelScope(shield=True):
            if "mcp.client.stdio" not in sys.modules:  # a session that never needed the SDK
                await _stop_adopted(process)
            else:
                from mcp.client.stdio import _drain_stdout, _stop_server_process

                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain_stdout, process)  # ends when the shutdown closes the pipe
                    await _stop_server_process(process)
                    tg.cancel_scope.cancel()


PROCESS_TERMINATION_TIMEOUT = 2.0
"""``mcp.client.stdio.PROCESS_TERMINATION_TIMEOUT`` of mcp==2.3.0 (a test keeps them equal)."""


async def _stop_adopted(process: Any) -> None:
    """The SDK's shutdown sequence for a process the gateway spawned itself (pre-spawned, in
    its own session) when the SDK is not loaded: close stdin, wait out the grace period while
    draining its last output, then SIGTERM and SIGKILL its process group. Importing the SDK
    only to stop a child would cost a session that never needed it ~0.5 s of CPU at exit."""

    async def drain() -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            while True:
                await process.stdout.receive()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
        with anyio.move_on_after(PROCESS_TERMINATION_TIMEOUT):
            await process.wait()
        await kill_group(process)
        tg.cancel_scope.cancel()
