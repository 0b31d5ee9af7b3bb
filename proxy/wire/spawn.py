"""A task per hot request, at the price of an asyncio task rather than an anyio one.

Measured on this machine (uvloop, anyio 4.16): ``TaskGroup.start_soon`` costs ~23 us per
task (a ``TaskHandle`` with its own cancel scope and event, a wrapper coroutine, the
name lookup, the done-callback bookkeeping), a plain ``loop.create_task`` ~4 us. The stdio
lane starts one task per ``tools/call``, so that difference is ~8% of the relay's whole
CPU per call. :class:`CallPool` keeps the structure anyio gives: every task it starts is
owned by :meth:`CallPool.run`, itself a task of the caller's task group; when ``run`` is
cancelled (the client went away, the gateway stops) every task still running is
cancelled and awaited before ``run`` returns, and a task that fails with anything but a
cancellation fails ``run`` (and so its task group) with that exception. A task's code may
use anyio freely: anyio adopts native asyncio tasks (their cancel scopes work as usual).

On a backend other than asyncio the pool hands the tasks to the task group unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
import anyio.abc

__all__ = ["CallPool", "Spawner"]


class Spawner(Protocol):
    """Starts a task that its owner waits for (``anyio.abc.TaskGroup`` is one)."""

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any: ...


class CallPool:
    """Per-request tasks owned by one task of a task group (see the module docstring)."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: BaseException | None = None
        self._scope: anyio.CancelScope | None = None
        self._closed = False

    @property
    def native(self) -> bool:
        """Running on asyncio: tasks are started with the loop's ``create_task`` (so also from a
        read callback, outside any task: proxy/wire/framing.py ``LineFeed``)."""
        return self._loop is not None

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._closed:
            raise RuntimeError("the call pool is closed")
        if self._loop is None:  # not running, or not asyncio: the task group's own tasks
            self._tg.start_soon(func, *args)
            return
        cell: list[asyncio.Task[Any]] = []  # the task, for its own last step (no current_task() there)
        task = self._loop.create_task(self._owned(func(*args), cell))
        cell.append(task)
        self._tasks.add(task)

    async def _owned(self, coro: Coroutine[Any, Any, Any], cell: list[asyncio.Task[Any]]) -> None:
        """The task's code, with the pool's bookkeeping done in its own last step: a done
        callback would cost the loop one more turn per call."""
        try:
            await coro
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
                if self._scope is not None:
                    self._scope.cancel()  # fail the owner, as a task group fails on a child's error
        finally:
            self._tasks.discard(cell[0])

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the pool's tasks until cancelled; then cancel and await every one still running."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # another backend
            self._loop = None
        try:
            with anyio.CancelScope() as self._scope:
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._closed = True
            self._scope = None
            with anyio.CancelScope(shield=True):
                while self._tasks:
                    pending = list(self._tasks)
                    for task in pending:
                        task.cancel()
                    await asyncio.wait(pending)
        if self._failure is not None:
            raise self._failure
