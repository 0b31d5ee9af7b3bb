"""proxy/wire/eager.py: a task whose first step runs in the caller's iteration, and the
answered caller's step run by the code that answered it - with a task's semantics intact."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import anyio
import pytest

from proxy.wire.eager import create_eager_task, resume_now

pytestmark = pytest.mark.anyio

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="caller")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_first_step_runs_before_the_call_returns_in_the_new_task() -> None:
    loop = asyncio.get_running_loop()
    caller = asyncio.current_task()
    seen: list[Any] = []
    gate = loop.create_future()

    async def body() -> str:
        seen.append(asyncio.current_task())
        VAR.set("task")
        await gate
        seen.append(VAR.get())
        return "done"

    task = create_eager_task(loop, body())
    assert seen == [task]  # ran already, as the new task
    assert asyncio.current_task() is caller  # and the caller is current again
    assert VAR.get() == "caller"  # the task's context is its own
    gate.set_result(None)
    assert await task == "done"
    assert seen[1] == "task"


async def test_a_coroutine_that_ends_in_its_first_step_ends_its_task() -> None:
    loop = asyncio.get_running_loop()

    async def ok() -> int:
        return 7

    async def boom() -> None:
        raise ValueError("bad")

    assert await create_eager_task(loop, ok()) == 7
    failed = create_eager_task(loop, boom())
    with pytest.raises(ValueError, match="bad"):
        await failed


async def test_cancel_before_the_scheduled_step_reaches_the_suspended_coroutine() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    events: list[str] = []

    async def body() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("finally")

    task = create_eager_task(loop, body())
    task.cancel()  # before the task's own first step ran
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["cancelled", "finally"]
    assert gate.cancelled()  # what it awaited is cancelled, as a task's waiter would be


async def test_anyio_cancel_scopes_inside_work_as_in_any_task() -> None:
    loop = asyncio.get_running_loop()
    scope = anyio.CancelScope()
    reached: list[str] = []

    async def body() -> None:
        with scope:
            with anyio.move_on_after(0.01):
                await anyio.sleep(10)
            reached.append("timed out")
            await anyio.sleep(10)
        reached.append("after scope")

    task = create_eager_task(loop, body())
    await anyio.sleep(0.05)
    assert reached == ["timed out"]
    scope.cancel()
    await task
    assert reached == ["timed out", "after scope"]


async def test_resume_now_runs_the_answered_step_in_the_callers_iteration() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    after: list[Any] = []

    async def body() -> str:
        await gate
        after.append(asyncio.current_task())
        return "answered"

    task = create_eager_task(loop, body())
    await asyncio.sleep(0)  # the task takes its first step's outcome and waits on the gate
    gate.set_result(None)
    resume_now(task, gate)
    assert after == [task]  # ran now, as the task
    assert await task == "answered"


async def test_resume_now_leaves_a_task_with_a_cancellation_pending_to_itself() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    after: list[str] = []

    async def body() -> None:
        await gate
        after.append("ran")

    task = create_eager_task(loop, body())
    await asyncio.sleep(0)
    gate.set_result(None)
    task.cancel()  # the waiter is done, so the cancel is pending on the task
    resume_now(task, gate)
    assert after == []
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == []  # the cancellation won, as it does on a plain task


async def test_resume_now_ignores_tasks_it_did_not_start() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    after: list[str] = []

    async def body() -> None:
        await gate
        after.append("ran")

    task = loop.create_task(body())
    await asyncio.sleep(0)
    gate.set_result(None)
    resume_now(task, gate)
    assert after == []
    await task
    assert after == ["ran"]
