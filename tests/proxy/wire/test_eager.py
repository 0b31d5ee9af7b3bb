"""proxy/wire/eager.py: a task whose first step runs in the caller's iteration, with a task's
semantics intact (current task, context, result, exception, cancellation, anyio scopes)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import anyio
import pytest

from proxy.wire.eager import create_eager_task

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

