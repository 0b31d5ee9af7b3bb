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

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
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
from policy.audit.log import JsonlAuditLog
from proxy.audit.flush import AioFlusher, open_flusher
from proxy.config import AUDIT_DURABILITY, GatewayConfig
from proxy.errors import ConfigError

DURABILITY = AUDIT_DURABILITY
COMMIT_YIELDS = 4
"""Loop turns the commit task lets pass before it syncs on the event loop: enough for a
tools/call that just wrote its decision to reach the upstream's pipe (stdio), cheap next to
the fsync."""
AIO_COMMIT_YIELDS = 1
"""The same, when the flush goes through Linux AIO (proxy.audit.flush): the loop does not wait
for the disk, but ``io_submit`` itself can hold the loop thread (the kernel's flush work item
preempts it on its own CPU: ~0.1 ms, ms on a busy machine), so it must come after the requests
the batch's writers just forwarded. One turn is what that takes: a stdio forward is written
before its writer yields, but an HTTP forward is sent by a task the HTTP client starts in the
writer's turn (aiohttp's body writer, on Python 3.11), which runs in the next one - after a
commit that did not yield. Concurrent writers join the next batch while this one flushes."""

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

    __slots__ = ("_done", "error")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self.error: BaseException | None = None

    def settle(self, error: BaseException | None = None) -> None:
        self.error = error
        self._done.set()

    async def wait(self) -> None:
        """Return once the events are durable; raise ``AuditError`` if the sync failed."""
        if not self._done.is_set():  # settled already (the usual case by the time a reply is back): no loop turn
            await self._done.wait()
        if self.error is not None:  # a fresh exception per waiter: many tasks share one failure
            code = self.error.code if isinstance(self.error, AuditError) else "write_failed"
            raise AuditError(code, str(self.error) or type(self.error).__name__)


_HOLD: contextvars.ContextVar[list[Receipt] | None] = contextvars.ContextVar("securegateway_audit_hold", default=None)


@contextlib.contextmanager
def holding() -> Iterator[list[Receipt]]:
    """While active, ``record`` in ``before-response`` mode returns once the event is *written*
    and leaves its receipt here, for whoever holds the reply (proxy.audit.hold) to wait on."""
    held: list[Receipt] = []
    token = _HOLD.set(held)
    try:
        yield held
    finally:
        _HOLD.reset(token)


class AuditWriter:
    """Async front of the audit sink: writes on the event loop, one fsync per batch (group commit).

    ``record`` writes the event at once (one ``write()``: a crash of the process can no longer
    lose it) and then waits until a sync covers it, except inside :func:`holding` in
    ``before-response`` mode, where the holder waits instead. The commit task (``run``) issues
    the sync after letting the tasks that just wrote run on (so their requests reach the
    upstream first and concurrent writers join the batch), on the event-loop thread, or in a
    worker thread with ``sync_in_thread``.
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
        self._yields = yields  # None: COMMIT_YIELDS, or AIO_COMMIT_YIELDS with the AIO flusher
        self._batch = Receipt()
        self._wake: anyio.Event | None = None
        self._committed_at = 0.0  # loop clock of the last group commit (idle head signing)
        self.syncs = 0  # completed group commits, for tests and metrics
        self.sync_failures = 0
        self.aio = aio  # flush through Linux AIO where available (proxy.audit.flush)
        self._flusher: AioFlusher | None = None

    decision_event = staticmethod(decision_event)

    async def record(self, item: Mapping[str, Any]) -> None:
        """Write one event (a built event, or ``{"type": ..., **payload}``); raise if it was not written
        (or, outside a before-response hold, not made durable)."""
        built = item if "schema" in item else event(str(item["type"]), **{k: v for k, v in item.items() if k != "type"})
        if self._wake is None:  # not running (tests, CLI): write and sync inline, in a thread
            await anyio.to_thread.run_sync(self.sink.append, built)
            return
        receipt = self.submit(built)
        held = _HOLD.get()
        if held is not None and self.durability == "before-response":
            held.append(receipt)
            return
        await receipt.wait()

    def submit(self, built: Mapping[str, Any]) -> Receipt:
        """Write ``built`` now (raises AuditError if it cannot be) and return the receipt of its sync."""
        assert self._wake is not None, "the commit task is not running"
        self.sink.write_many([built], keep=False)  # on disk is all it needs: no copy back
        self._wake.set()
        return self._batch

    def record_sync(self, type_: str, payload: Mapping[str, Any]) -> None:
        """For synchronous callers (the negotiation service, in its worker thread): written and synced."""
        self.sink.append(event(type_, **dict(payload)))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._wake = anyio.Event()
        with open_flusher(enabled=self.aio and not self.sync_in_thread) as self._flusher:
            try:
                await self._commit_loop(task_status)
            finally:
                self._flusher = None

    async def _commit_loop(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._wake is not None
        yields = self._yields
        if yields is None:
            yields = COMMIT_YIELDS if self._flusher is None else AIO_COMMIT_YIELDS
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
        """Sign a head the batches left unsigned once ``head_sign_interval`` passed without a batch.

        One timer per interval, not one per batch: the commit loop itself arms nothing."""
        interval = max(self.sink.head_sign_interval, 0.01)
        while True:
            due = self._committed_at + interval - anyio.current_time()
            if due > 0:
                await anyio.sleep(due)
                continue
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
            if self._flusher is not None:
                await self._flushed()
            elif self.sync_in_thread:
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

    async def _flushed(self) -> None:
        """``sink.sync`` with its fdatasync through the AIO flusher: the loop runs on meanwhile.

        Shielded: once submitted, the flush completes (or fails) whatever happens to the task,
        and its batch is settled by what the disk did, not by the cancellation."""
        assert self._flusher is not None
        pending = self.sink.begin_sync()
        if pending is None:
            return
        error: BaseException | None = None
        with anyio.CancelScope(shield=True):
            try:
                if pending.fd >= 0 and not await self._flusher.flush(pending.fd):
                    os.fdatasync(pending.fd)  # AIO refused it before submitting: flush here
            except Exception as exc:  # not confirmed durable, whatever failed: the batch learns it
                error = exc
            self.sink.finish_sync(pending, error)

    def close(self) -> None:
        self.sink.close()
