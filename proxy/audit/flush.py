"""The group commit's disk flush, issued without blocking the event loop (Linux AIO).

``fdatasync`` of the audit log is the one call on the gateway's path that waits for the disk:
issued on the event-loop thread it stalls every session for the device's flush (0.2 ms idle,
several ms when other processes share the disk), and the reply that must wait for it anyway
then also waits for the loop to read, screen and encode it. Handing it to a Python worker
thread costs more CPU than it saves (GIL hand-offs; measured in docs/audit.md). Linux AIO
(``io_submit`` of ``IOCB_CMD_FDSYNC``, via ``caio``) is the third way: the kernel runs the
``fdatasync`` in its own worker, so the loop goes on relaying while the disk flushes, with no
thread of ours and no GIL traffic.

The completion is *reaped* (``io_getevents`` with no timeout: one syscall, no loop turn) by
whoever needs it next: the reply that waits for the flush, the writer's next batch, the idle
timer. Only while someone actually waits for an unfinished flush is the context's eventfd
watched by the loop (:meth:`AioFlusher.watch`), so a flush that completes while the gateway
sleeps for the upstream's answer - the usual case - does not wake it a third time per call.

The durability is the same ``fdatasync``: the kernel's completion is reported only after
``vfs_fsync`` returned, and its error (``EIO``, ``ENOSPC``) is passed on as the ``OSError``
``os.fdatasync`` would raise. Where AIO is not available (another OS, a kernel or filesystem
that refuses the opcode, a non-asyncio event loop) :func:`open_flusher` gives None, or
:meth:`AioFlusher.submit` returns False before anything was submitted, and the writer calls
``os.fdatasync`` on the loop as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import structlog

__all__ = ["AioFlusher", "Done", "open_flusher"]

log = structlog.get_logger("securegateway.audit")

Done = Callable[[OSError | None], None]
"""Told once how a submitted flush ended (None: durable); called from :meth:`AioFlusher.reap`."""


class AioFlusher:
    """``fdatasync`` through one Linux AIO context on the running asyncio loop (see the module docstring)."""

    def __init__(self, context: Any, operation: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._operation = operation
        self._loop = loop
        self._watching: Callable[[], None] | None = None
        self.usable = True

    def submit(self, fd: int, done: Done) -> bool:
        """Start flushing ``fd``'s data; ``done`` learns the outcome from a later :meth:`reap`.

        False when AIO refused the request (nothing was submitted: the caller flushes by
        itself; AIO is not tried again). Any other failure to submit raises."""
        if not self.usable:
            return False
        op = self._operation.fdsync(fd)

        def completed(_result: int) -> None:
            try:
                op.get_value()
            except SystemError as exc:  # the completion's error: the flush itself failed
                done(OSError(str(exc) or "fdatasync failed"))
                return
            done(None)

        op.set_callback(completed)
        try:
            accepted = self._context.submit(op)
        except ValueError as exc:  # io_submit refused it (EINVAL: this file system has no AIO fsync)
            self.usable = False
            log.warning("audit flush: linux aio refused fdatasync, syncing on the event loop", error=str(exc))
            return False
        if accepted != 1:
            raise OSError("the audit flush was not submitted")
        return True

    def reap(self) -> None:
        """Hand every completed flush to its ``done`` (no wait, no loop turn: one ``io_getevents``)."""
        self._context.process_events()

    def watch(self, on_ready: Callable[[], None]) -> None:
        """Call ``on_ready`` from the loop whenever a flush completes, until :meth:`unwatch`.

        The eventfd is not drained here: a flush that completed before (and was not reaped yet)
        wakes the loop at once, so no completion is ever missed; one already reaped at worst
        costs one needless wake-up."""
        if self._watching is None:
            self._loop.add_reader(self._context.fileno, self._ready)
        self._watching = on_ready

    def unwatch(self) -> None:
        if self._watching is not None:
            self._watching = None
            self._loop.remove_reader(self._context.fileno)

    def _ready(self) -> None:
        self._drain()
        if self._watching is not None:
            self._watching()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the counter may read zero: nothing to drain
            self._context.poll()

    def close(self) -> None:
        self.unwatch()


@contextlib.contextmanager
def open_flusher(*, enabled: bool = True) -> Iterator[AioFlusher | None]:
    """An :class:`AioFlusher` for the running loop, or None where Linux AIO cannot be used."""
    flusher: AioFlusher | None = None
    if enabled:
        try:
            loop = asyncio.get_running_loop()  # RuntimeError on another backend (trio)
            from caio import linux_aio, linux_aio_asyncio

            if linux_aio_asyncio is None:
                raise ImportError("caio has no linux aio on this system")
            flusher = AioFlusher(linux_aio.Context(max_requests=4), linux_aio.Operation, loop)
        except (RuntimeError, ImportError, OSError, SystemError) as exc:  # not Linux, or no AIO context
            log.info("audit flush: linux aio unavailable, syncing on the event loop", error=str(exc))
    try:
        yield flusher
    finally:
        if flusher is not None:
            flusher.close()
