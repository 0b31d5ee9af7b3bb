"""proxy.audit.flush: the group commit's fdatasync through Linux AIO, on real files in tmp_path.

Invariants: with AIO available, the commit never calls ``fdatasync`` on the event loop and the
loop keeps running while a flush is in flight; the flush is submitted only after what the
batch's writer started in its turn (a forward sent by a task, as the HTTP client's is) ran; a
receipt settles (and the head sidecar names its events) only once that flush has completed; a
completion wakes the loop only while it is watched (someone waits), otherwise it waits to be
reaped; a descriptor AIO refuses falls back to ``fdatasync`` before anything was submitted.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from policy.audit.log import JsonlAuditLog, read_head
from policy.audit.verify import verify_log
from proxy.audit.flush import AioFlusher, Done, open_flusher
from proxy.audit.writer import AuditWriter, holding
from tests.conftest import running

pytestmark = pytest.mark.anyio


def head_seq(path: Path) -> int:
    head = read_head(path)
    assert not isinstance(head, str)
    return 0 if head is None else head.seq


async def aio_available() -> bool:
    with open_flusher() as flusher:
        return flusher is not None


async def flushed(flusher: AioFlusher, fd: int) -> OSError | None:
    """Submit a flush of ``fd`` and reap until it ends (what the writer does, in a loop)."""
    outcome: list[OSError | None] = []
    assert flusher.submit(fd, outcome.append)
    with anyio.fail_after(5):
        while not outcome:
            flusher.reap()
            await anyio.sleep(0.001)
    return outcome[0]


async def test_an_aio_flush_makes_a_real_file_durable_and_refuses_a_pipe_without_submitting(tmp_path: Path) -> None:
    if not await aio_available():
        pytest.skip("no linux aio here: the writer syncs on the loop (covered by test_commit.py)")
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    read, write = os.pipe()
    try:
        with open_flusher() as flusher:
            assert flusher is not None
            os.write(fd, b"line\n")
            assert await flushed(flusher, fd) is None
            assert flusher.submit(write, lambda _: None) is False  # EINVAL from io_submit: nothing in flight
            assert not flusher.usable and flusher.submit(fd, lambda _: None) is False  # the loop's fdatasync now
    finally:
        for descriptor in (fd, read, write):
            os.close(descriptor)


async def test_a_watched_flush_wakes_the_loop_even_if_complete_before_the_watch_and_an_unwatched_one_waits(
    tmp_path: Path,
) -> None:
    if not await aio_available():
        pytest.skip("no linux aio here")
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with open_flusher() as flusher:
            assert flusher is not None
            os.write(fd, b"line\n")
            outcome: list[OSError | None] = []
            assert flusher.submit(fd, outcome.append)
            await anyio.sleep(0.2)  # long done on the disk, but nobody reaped it: nothing was told
            assert outcome == []
            flusher.reap()
            assert outcome == [None]
            for done in (2, 3):
                woken = anyio.Event()

                def ready(done: int = done, woken: anyio.Event = woken) -> None:
                    flusher.reap()
                    if len(outcome) == done:
                        woken.set()

                os.write(fd, b"line\n")
                assert flusher.submit(fd, outcome.append)
                if done == 3:
                    await anyio.sleep(0.2)  # completed before the watch began: it must still wake the loop
                flusher.watch(ready)
                with anyio.fail_after(5):
                    await woken.wait()  # the completion's eventfd woke the loop, which reaped it
                flusher.unwatch()
            assert outcome == [None, None, None]
    finally:
        os.close(fd)


async def test_open_flusher_disabled_gives_none() -> None:
    with open_flusher(enabled=False) as flusher:
        assert flusher is None


async def test_the_commit_flushes_off_the_loop_and_the_reply_waits_for_the_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not await aio_available():
        pytest.skip("no linux aio here")
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path), durability="before-response")
    on_loop: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread():
            on_loop.append(fd)
        real_fdatasync(fd)

    gate = anyio.Event()
    in_flight = anyio.Event()
    real_submit = AioFlusher.submit

    def held_submit(flusher: AioFlusher, fd: int, done: Done) -> bool:
        in_flight.set()

        async def slow_disk() -> None:  # the flush has not completed before the gate opens
            await gate.wait()
            outcome = real_submit(flusher, fd, done)
            assert outcome

        tg.start_soon(slow_disk)
        return True

    async with running(writer), anyio.create_task_group() as tg:
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(AioFlusher, "submit", held_submit)
        with holding() as held:
            await writer.record({"type": "gateway.started", "n": 1})
        with anyio.fail_after(5):
            await in_flight.wait()
        # The flush is in flight and the loop runs on: more events are written meanwhile ...
        with holding() as later:
            await writer.record({"type": "gateway.started", "n": 2})
        assert head_seq(path) == 0
        # ... and no receipt settles, the sidecar names nothing, before the flush completes.
        with anyio.move_on_after(0.2):
            await held[0].wait()
        assert head_seq(path) == 0 and not held[0].settled
        gate.set()
        with anyio.fail_after(5):
            await held[0].wait()
            await later[0].wait()
        assert head_seq(path) == 2
        monkeypatch.setattr(AioFlusher, "submit", real_submit)
        await writer.record({"type": "gateway.started", "n": 3})  # durable on return, still off the loop
        assert head_seq(path) == 3
    assert on_loop == []  # no commit stalled the loop on the disk
    writer.close()
    assert verify_log(path).ok


async def test_the_flush_is_submitted_after_a_forward_the_writer_started_in_its_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not await aio_available():
        pytest.skip("no linux aio here")
    writer = AuditWriter(JsonlAuditLog(tmp_path / "audit.jsonl"), durability="before-response")
    order: list[str] = []
    real_submit = AioFlusher.submit

    def submit(flusher: AioFlusher, fd: int, done: Done) -> bool:
        order.append("flush")
        return real_submit(flusher, fd, done)

    async def forward(n: int) -> None:  # an HTTP client's body writer: a task of the caller's turn
        order.append(f"sent {n}")

    async with running(writer), anyio.create_task_group() as tg:
        monkeypatch.setattr(AioFlusher, "submit", submit)
        for n in range(3):
            with holding() as held:
                await writer.record({"type": "gateway.started", "n": n})
                tg.start_soon(forward, n)
            with anyio.fail_after(5):
                await held[0].wait()
    assert order == ["sent 0", "flush", "sent 1", "flush", "sent 2", "flush"]
    writer.close()


async def test_a_commit_in_flight_when_the_writer_stops_still_settles_by_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path), durability="before-response")
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        with holding() as held:
            for n in range(5):
                await writer.record({"type": "gateway.started", "n": n})
        tg.cancel_scope.cancel()  # mid-commit, or before it: the shielded last commit covers them
    with anyio.fail_after(5):
        await held[0].wait()
    assert head_seq(path) == 5
    writer.close()
    assert verify_log(path).ok


async def test_any_failure_of_the_aio_flush_withholds_durability_and_the_log_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not await aio_available():
        pytest.skip("no linux aio here")
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path), durability="before-response")
    real_submit = AioFlusher.submit

    def broken(flusher: AioFlusher, fd: int, done: Done) -> bool:
        raise RuntimeError("the aio context went away")  # a fault a healthy kernel does not produce

    async with running(writer):
        monkeypatch.setattr(AioFlusher, "submit", broken)
        with holding() as held:
            await writer.record({"type": "gateway.started", "n": 1})
        with pytest.raises(Exception) as caught, anyio.fail_after(5):
            await held[0].wait()
        assert getattr(caught.value, "code", None) == "write_failed" and writer.sync_failures == 1
        assert head_seq(path) == 0  # the sidecar never named the unconfirmed event
        monkeypatch.setattr(AioFlusher, "submit", real_submit)
        await writer.record({"type": "gateway.started", "n": 2})  # reopened, flushed, durable
        assert head_seq(path) >= 2
    writer.close()
    assert verify_log(path).ok


async def test_a_flush_nobody_waits_for_is_reaped_by_its_first_waiter_without_waking_the_loop(tmp_path: Path) -> None:
    if not await aio_available():
        pytest.skip("no linux aio here")
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path, head_sign_interval=60), durability="before-response")
    async with running(writer):
        syncs = writer.syncs
        with holding() as held:
            await writer.record({"type": "gateway.started", "n": 1})
        await anyio.sleep(0.2)  # submitted on the next loop turn, and long done on the disk
        # nobody waited: the completion did not wake the loop, so nothing settled it yet
        assert not held[0].settled and writer.syncs == syncs and head_seq(path) == 0
        with anyio.fail_after(5):
            await held[0].wait()  # reaped right here
        assert held[0].settled and writer.syncs == syncs + 1 and head_seq(path) == 1
        await writer.record({"type": "gateway.started", "n": 2})  # outside a hold: durable on return
        assert head_seq(path) == 2
    writer.close()
    assert verify_log(path).ok
