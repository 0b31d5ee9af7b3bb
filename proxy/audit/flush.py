"""The group commit's disk flush, issued without blocking the event loop (Linux AIO).

``fdatasync`` of the audit log is the one call on the gateway's path that waits for the disk:
issued on the event-loop thread it stalls every session for the device's flush (0.2 ms idle,
several ms when other processes share the disk), and the reply that must wait for it anyway
then also waits for the loop to read, screen and encode it. Handing it to a Python worker
thread costs more CPU than it saves (GIL hand-offs; measured in docs/audit.md). Linux AIO
(``io_submit`` of ``IOCB_CMD_FDSYNC``, via ``caio``) is the third way: the kernel runs the
``fdatasync`` in its own worker and signals completion on an eventfd the loop already polls,
so the loop goes on relaying while the disk flushes, with no thread of ours and no GIL traffic.

The durability is the same ``fdatasync``: the kernel's completion is reported only after
``vfs_fsync`` returned, and its error (``EIO``, ``ENOSPC``) is raised here as it would be by
``os.fdatasync``. Where AIO is not available (another OS, a kernel or filesystem that refuses
the opcode, a non-asyncio event loop) :func:`open_flusher` gives None, or :meth:`AioFlusher.flush`
returns False before anything was submitted, and the writer calls ``os.fdatasync`` on the loop
as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import structlog

__all__ = ["AioFlusher", "open_flusher"]

log = structlog.get_logger("securegateway.audit")


class AioFlusher:
    """``fdatasync`` through one Linux AIO context bound to the running asyncio loop."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.usable = True

    async def flush(self, fd: int) -> bool:
        """Flush ``fd``'s data to the device; False when AIO refused the request (nothing was
        submitted: the caller flushes by itself). Raises ``OSError`` when the flush failed."""
        if not self.usable:
            return False
        try:
            await self._context.fdsync(fd)
        except ValueError as exc:  # io_submit refused it (EINVAL: this file system has no AIO fsync)
            self.usable = False
            log.warning("audit flush: linux aio refused fdatasync, syncing on the event loop", error=str(exc))
            return False
        except SystemError as exc:  # the completion's error: the flush itself failed
            raise OSError(str(exc) or "fdatasync failed") from None
        return True

    def close(self) -> None:
        self._context.close()


@contextlib.contextmanager
def open_flusher(*, enabled: bool = True) -> Iterator[AioFlusher | None]:
    """An :class:`AioFlusher` for the running loop, or None where Linux AIO cannot be used."""
    flusher: AioFlusher | None = None
    if enabled:
        try:
            loop = asyncio.get_running_loop()  # RuntimeError on another backend (trio)
            from caio import linux_aio_asyncio

            if linux_aio_asyncio is None:
                raise ImportError("caio has no linux aio on this system")
            flusher = AioFlusher(linux_aio_asyncio.AsyncioContext(max_requests=4, loop=loop))
        except (RuntimeError, ImportError, OSError, SystemError) as exc:  # not Linux, or no AIO context
            log.info("audit flush: linux aio unavailable, syncing on the event loop", error=str(exc))
    try:
        yield flusher
    finally:
        if flusher is not None:
            flusher.close()
