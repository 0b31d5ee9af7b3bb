"""Durable audit writes from async code, with group commit.

Every event is written (one ``write()``, in order) on the event-loop thread the moment it
is recorded, so a crash of the gateway process never loses it; durability (``fdatasync``)
is group-committed by one commit task, one sync for every event written since the last.
``[audit] durability`` says who waits for that sync (docs/audit.md, "Durability modes"):
``before-forward``, the recording caller, so nothing is forwarded before its decision is on
disk; ``before-response`` (the default), the reply, held by proxy.audit.hold until the sync
that covers every event of its call. A caller that gets no confirmation gets an exception:
enforcement then denies, or withholds the reply (fail closed).

``open_audit_log`` also wires the signed checkpoints of docs/audit.md: the key that signs
them (the policy signing key, or an HMAC secret from the environment) and where copies go
besides the log (``[audit] checkpoint_file``, ``checkpoint_log``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from negotiation.errors import SigningError
from negotiation.signing import HmacSigner, HmacVerifier, Signer, Verifier, load_signing
from policy.audit.checkpoint import Checkpoint, CheckpointFile, CheckpointSink
from policy.audit.decision import decision_event
from policy.audit.event import AuditError, event
from policy.audit.log import JsonlAuditLog, PendingSync
from proxy.audit.flush import AioFlusher, open_flusher
from proxy.config import AUDIT_DURABILITY, GatewayConfig
from proxy.errors import ConfigError

DURABILITY = AUDIT_DURABILITY
COMMIT_YIELDS = 4
"""Loop turns the commit task lets pass before it syncs on the event loop: enough for a
tools/call that just wrote its decision to reach the upstream's pipe (stdio), cheap next to
the fsync."""
AIO_COMMIT_YIELDS = 1
"""Loop turns between the one that queues a batch's flush and the flush's submission through
Linux AIO (proxy.audit.flush): the loop does not wait for the disk, but ``io_submit`` itself
can hold the loop thread (the kernel's flush work item preempts it on its own CPU: ~0.1 ms, ms
on a busy machine), so it must come after the requests the batch's writers just forwarded. One
turn is what that takes: a stdio forward is written before its writer yields, but an HTTP
forward is sent by a task the HTTP client starts in the writer's turn (aiohttp's body writer,
on Python 3.11), which runs in the next one - after a submission queued in the writer's own
turn. Concurrent writers join the next batch while this one flushes."""

IDLE_WAKES = 4
"""Needless completion wake-ups in a row (nobody waiting, nothing behind the flush) after which
the AIO commit stops watching the completion eventfd (proxy.audit.flush.AioFlusher.watch)."""

log = structlog.get_logger("securegateway.audit")


def audit_path(config: GatewayConfig, state_dir: Path) -> Path:
    return config.audit.file or state_dir / "audit.jsonl"


def audit_keys(config: GatewayConfig) -> tuple[Signer | None, Verifier | None]:
    """The key pair that signs and checks audit checkpoints, per ``[audit] signing``.

    ``auto`` uses the policy signing key when one is configured and present, else none;
    ``policy`` and ``hmac`` insist on theirs (ConfigError naming what is missing).
    """
    a, p = config.audit, config.policy
    if a.signing == "off":
        return None, None
    if a.signing == "hmac":
        secret = os.environ.get(a.hmac_key_env)
        if not secret:
            raise ConfigError(f"audit.signing = hmac: set the secret in environment variable `{a.hmac_key_env}`")
        try:
            return HmacSigner(secret.encode("utf-8")), HmacVerifier(secret.encode("utf-8"))
        except SigningError as exc:
            raise ConfigError(f"audit.hmac_key_env: {exc}") from None
    secret_value = os.environ.get(p.hmac_secret_env) if p.algorithm == "hmac-sha256" else None
    private = p.signing_key if p.signing_key is not None and p.signing_key.exists() else None
    public = p.public_key if p.public_key is not None and p.public_key.exists() else None
    try:
        signer, verifier = load_signing(
            p.algorithm, private_key=private, public_key=public,
            hmac_secret=secret_value.encode("utf-8") if secret_value else None,
        )
    except SigningError as exc:
        raise ConfigError(f"audit.signing: {exc}") from None
    if a.signing == "policy" and verifier is None:
        raise ConfigError("audit.signing = policy: no policy signing key is configured ([policy] signing_key)")
    return signer, verifier


class _LogSink:
    """Checkpoints as warning-free info lines on stderr, for a log shipper to carry off the host."""

    def publish(self, checkpoint: Checkpoint) -> None:
        log.info("audit checkpoint", **checkpoint.to_dict())


def open_audit_log(config: GatewayConfig, state_dir: Path) -> JsonlAuditLog:
    a = config.audit
    signer, verifier = audit_keys(config)
    sinks: list[CheckpointSink] = []
    if a.checkpoint_file is not None:
        sinks.append(CheckpointFile(a.checkpoint_file, fsync=a.fsync))
    if a.checkpoint_log:
        sinks.append(_LogSink())
    return JsonlAuditLog(
        audit_path(config, state_dir),
        max_bytes=a.max_bytes,
        fsync=a.fsync,
        signer=signer,
        verifier=verifier,
        checkpoint_every=a.checkpoint_every,
        sinks=sinks,
    )


class Receipt:
    """The durability of one group commit: every event written since the previous sync."""

    __slots__ = ("_advance", "_done", "_event", "error")

    def __init__(self, advance: Callable[[bool], None] | None = None) -> None:
        self._done = False
        self._event: anyio.Event | None = None  # made only for a waiter that has to wait
        self._advance = advance  # the AIO commit: reap a finished flush, start the next
        self.error: BaseException | None = None

    @property
    def settled(self) -> bool:
        return self._done

    @property
    def awaited(self) -> bool:
        """Someone waits for this receipt (so a flush's completion must wake the loop)."""
        return self._event is not None and not self._done

    def settle(self, error: BaseException | None = None) -> None:
        self.error = error
        self._done = True
        if self._event is not None:
            self._event.set()

    def poll(self) -> bool:
        """Whether the sync has ended, reaping a flush that completed meanwhile (no loop turn)."""
        if not self._done and self._advance is not None:
            self._advance(True)
        return self._done

    def check(self) -> None:
        """Raise ``AuditError`` if the sync failed (a fresh exception per waiter: many tasks share one failure)."""
        if self.error is not None:
            code = self.error.code if isinstance(self.error, AuditError) else "write_failed"
            raise AuditError(code, str(self.error) or type(self.error).__name__)

    async def wait(self) -> None:
        """Return once the events are durable; raise ``AuditError`` if the sync failed."""
        if not self.poll():  # settled already (the usual case by the time a reply is back): no loop turn
            if self._event is None:
                self._event = anyio.Event()
            if self._advance is not None:
                self._advance(False)  # now awaited: the flush's completion wakes the loop
            await self._event.wait()
        self.check()


HOLD: contextvars.ContextVar[list[Receipt] | None] = contextvars.ContextVar("securegateway_audit_hold", default=None)
"""The receipts of the reply being held (:func:`holding`; proxy.audit.hold sets it inline)."""


@contextlib.contextmanager
def holding() -> Iterator[list[Receipt]]:
    """While active, ``record`` in ``before-response`` mode returns once the event is *written*
    and leaves its receipt here, for whoever holds the reply (proxy.audit.hold) to wait on."""
    held: list[Receipt] = []
    token = HOLD.set(held)
    try:
        yield held
    finally:
        HOLD.reset(token)


class AuditWriter:
    """Async front of the audit sink: writes on the event loop, one fsync per batch (group commit).

    ``record`` writes the event at once (one ``write()``: a crash of the process can no longer
    lose it) and then waits until a sync covers it, except inside :func:`holding` in
    ``before-response`` mode, where the holder waits instead.

    With the AIO flusher (proxy.audit.flush) the commit is a small state machine on the loop, not
    a task: the first event of a batch schedules its flush for ``AIO_COMMIT_YIELDS`` loop turns
    later (by then the call that wrote it has sent its request upstream, and concurrent writers
    have joined the batch); one flush is in flight at a time, and its completion is reaped by whoever needs it
    first (a waiting receipt, the next batch, the idle timer), which then starts the next batch.
    The loop is woken by a completion only while a receipt is awaited, or a batch waits behind
    the flush (so sequential calls, whose flush is done by the time the reply is back, cost two
    wake-ups each, the client's request and the upstream's reply). Without
    AIO, the commit task (``run``) issues the sync after letting the tasks that just wrote run
    on, on the event-loop thread, or in a worker thread with ``sync_in_thread``.
    """

    def __init__(
        self,
        sink: JsonlAuditLog,
        *,
        durability: str = "before-response",
        sync_in_thread: bool = False,
        yields: int | None = None,
        aio: bool = True,
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"unknown audit durability `{durability}`")
        self.sink = sink
        self.durability = durability
        self.sync_in_thread = sync_in_thread
        self._yields = yields  # loop turns before a sync on the loop (None: COMMIT_YIELDS); not used with AIO
        self._batch = Receipt()
        self._wake: anyio.Event | None = None  # set while running (the commit task's, without AIO)
        self._committed_at = 0.0  # loop clock of the last group commit (idle head signing)
        self.syncs = 0  # completed group commits, for tests and metrics
        self.sync_failures = 0
        self.aio = aio  # flush through Linux AIO where available (proxy.audit.flush)
        self._flusher: AioFlusher | None = None
        # the AIO commit's state (see the class docstring)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty = False  # events written into ``_batch`` that no flush covers yet
        self._scheduled = False  # ``_start`` is queued on the loop
        self._in_flight: tuple[PendingSync, Receipt] | None = None
        self._idle_wakes = 0  # needless completion wake-ups in a row (see _woken)

    decision_event = staticmethod(decision_event)

    async def record(self, item: Mapping[str, Any]) -> None:
        """Write one event (a built event, or ``{"type": ..., **payload}``); raise if it was not written
        (or, outside a before-response hold, not made durable)."""
        built = item if "schema" in item else event(str(item["type"]), **{k: v for k, v in item.items() if k != "type"})
        if self._wake is None:  # not running (tests, CLI): write and sync inline, in a thread
            await anyio.to_thread.run_sync(self.sink.append, built)
            return
        receipt = self.submit(built)
        held = HOLD.get()
        if held is not None and self.durability == "before-response":
            held.append(receipt)
            return
        await receipt.wait()

    def submit(self, built: Mapping[str, Any]) -> Receipt:
        """Write ``built`` now (raises AuditError if it cannot be) and return the receipt of its sync."""
        assert self._wake is not None, "the commit task is not running"
        self.sink.write_many([built], keep=False)  # on disk is all it needs: no copy back
        if self._loop is None:
            self._wake.set()
            return self._batch
        self._dirty = True
        if self._in_flight is not None:
            assert self._flusher is not None
            self._flusher.watch(self._woken)  # this batch starts the moment the flush in flight completes
        else:
            self._schedule()
        return self._batch

    def record_sync(self, type_: str, payload: Mapping[str, Any]) -> None:
        """For synchronous callers (the negotiation service, in its worker thread): written and synced."""
        self.sink.append(event(type_, **dict(payload)))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with open_flusher(enabled=self.aio and not self.sync_in_thread) as self._flusher:
            try:
                if self._flusher is not None:
                    await self._aio_commits(task_status)
                else:
                    self._wake = anyio.Event()
                    await self._commit_loop(task_status)
            finally:
                self._flusher = None

    # ---- the AIO commit: callbacks on the loop ---------------------------------------------------

    async def _aio_commits(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Own the AIO commit while running; on the way out, settle every written event by the disk."""
        self._loop = asyncio.get_running_loop()
        self._batch = Receipt(self._advance)
        self._wake = anyio.Event()  # the running sentinel; never waited for on this path
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sign_when_idle)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._wake = None  # from now on a record writes and syncs inline
            with anyio.CancelScope(shield=True):
                while self._in_flight is not None or self._dirty:
                    target = self._in_flight[1] if self._in_flight is not None else self._batch
                    with contextlib.suppress(Exception):  # its failure is its waiters' to learn
                        await target.wait()
            if self._flusher is not None:
                self._flusher.unwatch()
            self._loop = None
            self._batch = Receipt()

    def _start(self, turns: int) -> None:
        if turns > 0:
            assert self._loop is not None
            self._loop.call_soon(self._start, turns - 1)
            return
        self._scheduled = False
        if self._in_flight is None and self._dirty:
            self._begin()
        self._advance(False)

    def _schedule(self) -> None:
        if not self._scheduled:
            assert self._loop is not None
            self._scheduled = True
            self._loop.call_soon(self._start, AIO_COMMIT_YIELDS)  # after this turn's forwards went upstream

    def _advance(self, reap: bool = True) -> None:
        """Reap a completed flush, queue the next batch's if events wait for one, and watch the
        context's eventfd while a flush is in flight that someone waits for, or that events
        written since wait behind (concurrent callers)."""
        flusher = self._flusher
        if flusher is None:
            return
        if reap and self._in_flight is not None:
            try:
                flusher.reap()
            except Exception as exc:  # the context failed: the flush in flight cannot be confirmed
                self._flushed(exc)
        if self._in_flight is None and self._dirty:
            self._schedule()  # never at once: a forward this turn started may not have left yet
        if self._in_flight is not None and (self._dirty or self._in_flight[1].awaited or self._batch.awaited):
            flusher.watch(self._woken)
            self._idle_wakes = 0
        # else: a flush nobody waits for yet, nothing behind it - its first waiter reaps it

    def _woken(self) -> None:
        """A flush completed while watched: reap it; stop watching once ``IDLE_WAKES`` wake-ups in a
        row found nobody waiting and nothing behind the flush (sequential calls: their replies
        reap their flushes), keep watching while wake-ups are needed (concurrent callers:
        re-arming the watch costs several syscalls, measured ~1.6 ``epoll_ctl`` per flush when it
        was dropped after every needless wake-up)."""
        needed = self._dirty or self._batch.awaited or (self._in_flight is not None and self._in_flight[1].awaited)
        self._advance()
        if needed:
            self._idle_wakes = 0
            return
        self._idle_wakes += 1
        if self._idle_wakes >= IDLE_WAKES and self._flusher is not None:
            self._flusher.unwatch()

    def _begin(self) -> None:
        """Flush every event written so far (one batch); settled now when nothing reaches the disk."""
        assert self._flusher is not None
        self._dirty = False
        batch, self._batch = self._batch, Receipt(self._advance)
        if not self.sink.fsync:  # nothing to flush: the sidecar's bookkeeping, in one call
            try:
                self.sink.sync()
            except Exception as exc:
                self._failed(batch, exc)
                return
            self._settled(batch)
            return
        try:
            pending = self.sink.begin_sync()
        except Exception as exc:
            self._failed(batch, exc)
            return
        if pending is None:
            self._settled(batch)
            return
        self._in_flight = (pending, batch)
        if pending.fd < 0:  # fsync off: nothing to wait for
            self._flushed(None)
            return
        try:
            if self._flusher.submit(pending.fd, functools.partial(self._flushed, pending=pending)):
                return
            os.fdatasync(pending.fd)  # AIO refused it before submitting: flush here
        except Exception as exc:  # not confirmed durable, whatever failed: the batch learns it
            self._flushed(exc)
            return
        self._flushed(None)

    def _flushed(self, error: BaseException | None, pending: PendingSync | None = None) -> None:
        """The flush in flight ended (``error``: how it failed): name the head, settle its batch.

        A completion reported for ``pending`` when another flush is in flight (the first was
        failed already, when reaping it failed) is ignored: it never settles a later batch."""
        if self._in_flight is None or (pending is not None and self._in_flight[0] is not pending):
            return
        pending, batch = self._in_flight
        self._in_flight = None
        try:
            self.sink.finish_sync(pending, error)
        except Exception as exc:
            self._failed(batch, exc)
            return
        self._settled(batch)

    def _settled(self, batch: Receipt) -> None:
        self.syncs += 1
        assert self._loop is not None
        self._committed_at = self._loop.time()  # anyio.current_time(), without its backend lookup
        batch.settle()

    def _failed(self, batch: Receipt, exc: BaseException) -> None:
        self.sync_failures += 1
        log.error("audit sync failed", error=str(exc))
        batch.settle(exc)

    # ---- the commit task (no AIO) ------------------------------------------------------------

    async def _commit_loop(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._wake is not None
        yields = self._yields
        if yields is None:
            yields = COMMIT_YIELDS
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sign_when_idle)
            task_status.started()
            try:
                while True:
                    await self._wake.wait()
                    # Let the writers run on first: their requests go upstream before the disk is
                    # waited for, and concurrent callers write into this batch meanwhile.
                    for _ in range(yields):
                        await anyio.lowlevel.checkpoint()
                    batch, self._batch, self._wake = self._batch, Receipt(), anyio.Event()
                    await self._commit(batch)
                    self._committed_at = anyio.current_time()
            finally:
                wake, self._wake = self._wake, None
                with anyio.CancelScope(shield=True):
                    if wake is not None and wake.is_set():
                        await self._commit(self._batch)
                self._batch = Receipt()
                tg.cancel_scope.cancel()

    async def _sign_when_idle(self) -> None:
        """Sign a head the batches left unsigned once ``head_sign_interval`` passed without a batch
        (and with AIO, finish a batch no receipt waited for).

        One timer per interval, not one per batch: the commit loop itself arms nothing."""
        interval = max(self.sink.head_sign_interval, 0.01)
        while True:
            due = self._committed_at + interval - anyio.current_time()
            if due > 0:
                await anyio.sleep(due)
                continue
            self._advance()
            if self.sink.signing_lags:
                self._sign_head()
            await anyio.sleep(interval)

    def _sign_head(self) -> None:
        try:
            self.sink.sign_head()
        except Exception as exc:  # the next batch's sidecar write tries again
            log.error("audit head signing failed", error=str(exc))

    async def _commit(self, batch: Receipt) -> None:
        try:
            if self.sync_in_thread:
                await anyio.to_thread.run_sync(self.sink.sync)
            else:
                self.sink.sync()  # fdatasync of a small append: cheaper on the loop than a thread hop
        except Exception as exc:
            self.sync_failures += 1
            log.error("audit sync failed", error=str(exc))
            batch.settle(exc)
        except BaseException as exc:
            batch.settle(AuditError("write_failed", "the gateway stopped before the audit sync completed"))
            raise exc
        else:
            self.syncs += 1
            batch.settle()

    def close(self) -> None:
        self.sink.close()
