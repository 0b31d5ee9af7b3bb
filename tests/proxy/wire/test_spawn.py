"""CallPool: per-request asyncio tasks that stay structured (owned, cancelled, awaited)."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from proxy.wire.spawn import CallPool

pytestmark = pytest.mark.anyio


async def test_cancelling_the_owner_cancels_and_awaits_every_task() -> None:
    cleaned: list[int] = []
    started = 0

    async def call(n: int) -> None:
        nonlocal started
        started += 1
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # cleanup that itself awaits still completes
            cleaned.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            pool = CallPool(tg)
            await tg.start(pool.run)
            for n in range(5):
                pool.start_soon(call, n)
            while started < 5:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    assert sorted(cleaned) == [0, 1, 2, 3, 4]  # all done before the task group exited


async def test_a_failing_task_fails_the_owner_and_cancels_its_siblings() -> None:
    sibling_cancelled = anyio.Event()

    async def sibling() -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            sibling_cancelled.set()
            raise

    async def boom() -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("boom")

    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as caught:
        async with anyio.create_task_group() as tg:
            pool = CallPool(tg)
            await tg.start(pool.run)
            pool.start_soon(sibling)
            pool.start_soon(boom)
            await anyio.sleep_forever()
    assert caught.group_contains(ValueError, match="boom")
    assert sibling_cancelled.is_set()


async def test_a_task_may_cancel_itself_with_an_anyio_scope() -> None:
    outcomes: list[str] = []

    async def call() -> None:
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep_forever()
        outcomes.append("timed out" if scope.cancelled_caught else "finished")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            pool = CallPool(tg)
            await tg.start(pool.run)
            pool.start_soon(call)
            while not outcomes:
                await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    assert outcomes == ["timed out"]


async def test_no_task_starts_once_the_pool_is_closed() -> None:
    async with anyio.create_task_group() as tg:
        pool = CallPool(tg)
        await tg.start(pool.run)
        tg.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="closed"):
        pool.start_soon(anyio.sleep, 0)


async def test_a_finished_task_leaves_the_pool_in_its_own_last_step() -> None:
    """No done callback: the pool's bookkeeping costs the loop no extra turn per call."""
    seen: list[int] = []

    async def call(pool: CallPool) -> None:
        await anyio.lowlevel.checkpoint()
        # runs on the loop's next turn, after this task's last step; a done callback would
        # only be scheduled after it, so the task would still count here
        asyncio.get_running_loop().call_soon(lambda: seen.append(len(pool._tasks)))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            pool = CallPool(tg)
            await tg.start(pool.run)
            pool.start_soon(call, pool)
            while not seen:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    assert seen == [0]
