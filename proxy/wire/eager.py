"""Eager task start on Python 3.11: a new task's first step runs in the iteration that starts it.

``loop.create_task`` schedules a task's first step for the next loop iteration; Python 3.12's
``eager_start`` runs it at once, inside the caller's iteration. The fast lane's call does
nothing but synchronous work up to its upstream write (route, encode, ``write``), so an eager
start forwards the client's request in the same iteration its line was read: one loop
iteration (and its ``epoll_pwait``) less per call. :func:`create_eager_task` emulates
``eager_start`` as 3.12 implements it:

- the task object exists first (so ``asyncio.current_task()``, anyio's cancel scopes and the
  owner's done-callback see the task the code will keep running in);
- its first step runs synchronously in the task's own context with the task swapped in as the
  loop's current task (``asyncio.tasks._enter_task`` / ``_leave_task``, the functions the
  task machinery itself uses), and the caller's task swapped back afterwards;
- what that step produced is handed to the task: the future it awaits (the task waits on it
  as if it had yielded it itself), its result, or its exception (the task ends with it);
- a cancellation that reaches the task before its first scheduled step is thrown into the
  coroutine where it is suspended, exactly as a cancelled task's would be.

The task runs a :class:`_Started` around the coroutine: a ``collections.abc.Coroutine`` that
gives the task the first step's outcome, then relays ``send``/``throw``/``close`` to the
coroutine, and answers the ``cr_*`` attributes anyio reads (``inspect.getcoroutinestate``).
Off asyncio (or with no running task to swap out) the caller uses ``create_task`` instead.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import Any

__all__ = ["create_eager_task"]

_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task
_NOTHING = object()


class _Started(Coroutine[Any, Any, Any]):
    """A coroutine whose first step already ran: replays its outcome, then relays to it."""

    __slots__ = ("_coro", "_error", "_first", "_result")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._first: Any = _NOTHING  # what the first step yielded, until the task takes it
        self._result: Any = _NOTHING  # the first step's return value, if it finished
        self._error: BaseException | None = None  # or its exception

    def step(self) -> None:
        """The first step (the caller arranges the task and the context)."""
        try:
            self._first = self._coro.send(None)
        except StopIteration as stop:
            self._result = stop.value
        except BaseException as exc:  # handed to the task, which ends with it
            self._error = exc

    def send(self, value: Any) -> Any:
        first = self._first
        if first is not _NOTHING:
            self._first = _NOTHING
            return first  # the task now waits on what the first step awaited
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._result is not _NOTHING:
            result, self._result = self._result, _NOTHING
            raise StopIteration(result)
        return self._coro.send(value)

    def throw(
        self, typ: Any, val: Any = None, tb: TracebackType | None = None
    ) -> Any:
        first, self._first = self._first, _NOTHING
        if isinstance(first, asyncio.Future) and isinstance(val if val is not None else typ, asyncio.CancelledError):
            first.cancel()  # what the task would have cancelled had it been waiting on it already
        if self._error is not None or self._result is not _NOTHING:
            self._error, self._result = None, _NOTHING  # it had already ended: the throw wins, as on a task
            raise typ if val is None else val
        if val is None:
            return self._coro.throw(typ)
        return self._coro.throw(val)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:  # pragma: no cover - only a task drives it
        raise TypeError("an eagerly started coroutine is driven by its task only")

    # what inspect.getcoroutinestate (anyio's _task_started) and task reprs read
    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))

    @property
    def cr_suspended(self) -> bool:
        return bool(getattr(self._coro, "cr_suspended", False))

    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)


def create_eager_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task for ``coro`` whose first step has already run (see the module docstring).

    Must be called from a running task of ``loop`` (its current task is swapped out and back)."""
    caller = asyncio.current_task(loop)
    if caller is None:
        return loop.create_task(coro)
    context = contextvars.copy_context()
    started = _Started(coro)
    task = loop.create_task(started, context=context)
    _leave_task(loop, caller)
    _enter_task(loop, task)
    try:
        context.run(started.step)
    finally:
        _leave_task(loop, task)
        _enter_task(loop, caller)
    return task

