"""Durable audit writes from async code, with group commit.

The JSONL sink is synchronous (write + fsync); calling it on the event loop would
stall every client. ``AuditWriter.record`` hands the event to one writer task that
drains whatever is queued and writes the batch in a worker thread with a single
fsync, then wakes each caller once its event is on disk. A caller that gets no
confirmation gets an exception: enforcement then denies (fail closed).

``open_audit_log`` also wires the signed checkpoints of docs/audit.md: the key that signs
them (the policy signing key, or an HMAC secret from the environment) and where copies go
besides the log (``[audit] checkpoint_file``, ``checkpoint_log``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from negotiation.errors import SigningError
from negotiation.signing import HmacSigner, HmacVerifier, Signer, Verifier, load_signing
from policy.audit_checkpoint import Checkpoint, CheckpointFile, CheckpointSink
from policy.audit_event import decision_event, event
from policy.audit_log import JsonlAuditLog
from proxy.config import GatewayConfig
from proxy.errors import ConfigError

MAX_BATCH = 512

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


class _Pending:
    __slots__ = ("done", "error", "event")

    def __init__(self, event: Mapping[str, Any]) -> None:
        self.event = event
        self.done = anyio.Event()
        self.error: BaseException | None = None


class AuditWriter:
    """Async front of an AuditSink: ``record`` returns once the event is durably written."""

    def __init__(self, sink: JsonlAuditLog) -> None:
        self.sink = sink
        self._send: MemoryObjectSendStream[_Pending] | None = None
        self._receive: MemoryObjectReceiveStream[_Pending] | None = None

    decision_event = staticmethod(decision_event)

    async def record(self, item: Mapping[str, Any]) -> None:
        """Write one event (a built event, or ``{"type": ..., **payload}``); raise if it was not written."""
        built = item if "schema" in item else event(str(item["type"]), **{k: v for k, v in item.items() if k != "type"})
        if self._send is None:  # not running (tests, CLI): write inline in a thread
            await anyio.to_thread.run_sync(self.sink.append, built)
            return
        pending = _Pending(built)
        await self._send.send(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    def record_sync(self, type_: str, payload: Mapping[str, Any]) -> None:
        """For synchronous callers (the negotiation service, in its worker thread)."""
        self.sink.append(event(type_, **dict(payload)))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        send, receive = anyio.create_memory_object_stream[_Pending](MAX_BATCH)
        self._send, self._receive = send, receive
        task_status.started()
        try:
            async with receive:
                async for first in receive:
                    batch = [first]
                    while len(batch) < MAX_BATCH:
                        try:
                            batch.append(receive.receive_nowait())
                        except anyio.WouldBlock:
                            break
                    await self._write(batch)
        finally:
            self._send = None
            send.close()

    async def _write(self, batch: list[_Pending]) -> None:
        def write_all() -> list[BaseException | None]:
            try:  # group commit: the whole batch, one fsync
                self.sink.append_many([p.event for p in batch])
                return [None] * len(batch)
            except Exception:
                pass  # find out which event failed: one at a time, each its own outcome
            outcomes: list[BaseException | None] = []
            for pending in batch:
                try:
                    self.sink.append(pending.event)
                    outcomes.append(None)
                except Exception as exc:  # reported to exactly the caller whose event failed
                    outcomes.append(exc)
            return outcomes

        try:
            outcomes = await anyio.to_thread.run_sync(write_all)
        except BaseException as exc:
            for pending in batch:
                pending.error = exc
                pending.done.set()
            raise
        for pending, error in zip(batch, outcomes, strict=True):
            pending.error = error
            pending.done.set()

    def close(self) -> None:
        self.sink.close()
