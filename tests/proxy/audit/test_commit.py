"""proxy.audit.writer's group commit and durability modes, on a real audit log in tmp_path.

Invariants: an event is written (in the file) when ``record`` returns or hands back its
receipt; every ``record`` outside a before-response hold returns only once a sync covers its
event; concurrent records share one sync; a failed sync reaches exactly the callers whose
events it covered, as an exception.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from policy.audit.log import JsonlAuditLog, read_head
from policy.audit.verify import verify_log
from proxy.audit.flush import AioFlusher, Done
from proxy.audit.writer import AuditWriter, holding
from proxy.config import parse_config
from tests.conftest import running

pytestmark = pytest.mark.anyio


class Disk:
    """Counts the log's flushes (real ones: ``os.fdatasync`` on the loop or the Linux AIO
    flusher's) and can make them fail (EIO, the one fault a healthy disk cannot produce)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.syncs = 0
        self.aio = 0  # of which through Linux AIO
        self.fail = False
        real = os.fdatasync
        real_submit = AioFlusher.submit

        def submit(flusher: AioFlusher, fd: int, done: Done) -> bool:
            if self.fail:
                raise OSError(errno.EIO, "Input/output error")
            submitted = real_submit(flusher, fd, done)
            self.syncs += submitted
            self.aio += submitted
            return submitted

        monkeypatch.setattr(AioFlusher, "submit", submit)

        def fdatasync(fd: int) -> None:
            if self.fail:
                raise OSError(errno.EIO, "Input/output error")
            self.syncs += 1
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("flush", ["aio", "loop", "thread"])
async def test_concurrent_records_share_one_sync_and_each_returns_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush: str
) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path), durability="before-forward", sync_in_thread=flush == "thread",
                         aio=flush == "aio")
    disk = Disk(monkeypatch)
    durable_at_return: list[bool] = []

    async def caller(n: int) -> None:
        await writer.record({"type": "gateway.started", "n": n})
        durable_at_return.append(read_head(path).seq >= n)  # type: ignore[union-attr]

    async with running(writer), anyio.create_task_group() as tg:
        for n in range(1, 21):
            tg.start_soon(caller, n)
    writer.close()
    assert durable_at_return == [True] * 20
    assert disk.syncs < 20 and writer.syncs <= disk.syncs
    if flush != "aio":
        assert disk.aio == 0  # no AIO flusher: fdatasync on the loop or in the thread
    assert [e["n"] for e in lines(path)[:20]] == list(range(1, 21))
    assert verify_log(path).ok


async def test_in_a_before_response_hold_record_returns_once_written_and_the_receipt_once_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path), durability="before-response")
    disk = Disk(monkeypatch)
    async with running(writer):
        with holding() as held:
            await writer.record({"type": "gateway.started", "n": 1})
            assert lines(path)[-1]["n"] == 1  # in the file (the kernel has it) ...
            assert writer.sink.unsynced and disk.syncs == 0  # ... not yet synced
        assert len(held) == 1
        await held[0].wait()
        assert not writer.sink.unsynced and disk.syncs == 1
        assert read_head(path).seq == 1  # type: ignore[union-attr]
        await writer.record({"type": "gateway.started", "n": 2})  # outside a hold: durable on return
        assert disk.syncs == 2 and read_head(path).seq == 2  # type: ignore[union-attr]
    writer.close()


@pytest.mark.parametrize("flush", ["aio", "loop"])
@pytest.mark.parametrize("mode", ["before-forward", "before-response"])
async def test_a_failed_sync_reaches_every_caller_it_covered_and_the_log_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, flush: str
) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path), durability=mode, aio=flush == "aio")
    disk = Disk(monkeypatch)
    failures: list[str] = []

    async def caller(n: int) -> None:
        with holding() as held:
            try:
                await writer.record({"type": "gateway.started", "n": n})
                for receipt in held:
                    await receipt.wait()
            except Exception as exc:
                failures.append(getattr(exc, "code", type(exc).__name__))

    async with running(writer):
        disk.fail = True
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(caller, n)
        assert failures == ["write_failed"] * 3 and writer.sync_failures >= 1
        disk.fail = False
        await writer.record({"type": "gateway.started", "n": 9})  # the next write reopens and syncs
    writer.close()
    assert lines(path)[-1]["type"] in ("gateway.started", "audit.recovered")
    assert verify_log(path).ok


async def test_events_written_when_the_commit_task_stops_are_synced_on_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path), durability="before-response")
    disk = Disk(monkeypatch)
    async with running(writer):
        with holding() as held:
            await writer.record({"type": "gateway.started"})
    await held[0].wait()  # settled by the shutdown's last commit, not left hanging
    assert disk.syncs == 1 and not writer.sink.unsynced
    writer.close()


def test_durability_is_configured_and_checked(tmp_path: Path) -> None:
    def load(audit: dict[str, object]) -> Any:
        raw = {"gateway": {"listen": "stdio"}, "policy": {"file": "p.yaml", "model_keys": "k.yaml"}, "audit": audit}
        return parse_config(raw, tmp_path / "gateway.toml")

    assert load({}).audit.durability == "before-response"
    assert load({"durability": "before-forward"}).audit.durability == "before-forward"
    with pytest.raises(Exception, match=r"audit\.durability.*before-response, before-forward.*`later`"):
        load({"durability": "later"})
    with pytest.raises(ValueError, match="unknown audit durability"):
        AuditWriter(JsonlAuditLog(tmp_path / "a.jsonl"), durability="later")


def test_record_sync_from_a_thread_writes_and_syncs(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path))
    writer.record_sync("proposal.proposed", {"id": "p1"})
    assert read_head(path).seq == 1 and lines(path)[0]["id"] == "p1"  # type: ignore[union-attr]
    writer.close()


@pytest.mark.parametrize("algorithm", ["hmac", "ed25519"])
async def test_batched_signed_writes_verify_and_checkpoints_are_published_only_once_durable(
    tmp_path: Path, algorithm: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from negotiation.signing import Ed25519Signer, Ed25519Verifier, HmacSigner, HmacVerifier
    from policy.audit.checkpoint import Checkpoint, CheckpointFile

    if algorithm == "hmac":
        secret = b"audit-secret-for-tests-0123456789abcdef"
        signer: Any = HmacSigner(secret)
        verifier: Any = HmacVerifier(secret)
    else:
        private = Ed25519PrivateKey.generate()
        signer, verifier = Ed25519Signer(private), Ed25519Verifier(private.public_key())
    path, anchors = tmp_path / "audit.jsonl", tmp_path / "anchors" / "checkpoints.jsonl"
    published: list[tuple[int, int]] = []  # (checkpoint seq, head the sidecar named when it was published)

    class Watching(CheckpointFile):
        def publish(self, checkpoint: Checkpoint) -> None:
            published.append((checkpoint.seq, read_head(path).seq))  # type: ignore[union-attr]
            super().publish(checkpoint)

    log = JsonlAuditLog(path, signer=signer, verifier=verifier, checkpoint_every=5, sinks=[Watching(anchors)])
    writer = AuditWriter(log, durability="before-response")

    async def caller(n: int) -> None:
        with holding() as held:
            await writer.record({"type": "gateway.started", "n": n})
        for receipt in held:
            await receipt.wait()

    async with running(writer):
        for wave in range(4):
            async with anyio.create_task_group() as tg:
                for n in range(7):
                    tg.start_soon(caller, wave * 7 + n)
    writer.close()
    assert published and all(head >= seq for seq, head in published)  # never ahead of the disk
    from policy.audit.checkpoint import read_checkpoint_file

    copies, problems = read_checkpoint_file(anchors)
    assert copies and not problems
    report = verify_log(path, verifier=verifier, checkpoints=copies)
    assert report.ok, report
    assert sorted(e["n"] for e in lines(path) if e["type"] == "gateway.started") == list(range(28))


async def test_an_idle_writer_signs_the_head_its_batches_left_unsigned(tmp_path: Path) -> None:
    from negotiation.signing import HmacSigner, HmacVerifier
    from policy.audit.log import read_head_record

    secret = b"audit-secret-for-tests-0123456789abcdef"
    path = tmp_path / "audit.jsonl"
    log = JsonlAuditLog(path, fsync=False, signer=HmacSigner(secret), verifier=HmacVerifier(secret),
                        checkpoint_every=0, head_sign_interval=0.2, head_sign_events=10_000)
    writer = AuditWriter(log, durability="before-forward")
    async with running(writer):
        for n in range(5):  # five batches inside one interval: the first signs, the rest lag
            await writer.record({"type": "gateway.started", "n": n})
        record = read_head_record(path)
        assert not isinstance(record, str) and record is not None
        assert record.head.seq == 5 and record.checkpoint is not None and record.lag > 0
        with anyio.fail_after(5):
            while log.signing_lags:  # the commit task signs once the interval passes without a batch
                await anyio.sleep(0.05)
        record = read_head_record(path)
        assert not isinstance(record, str) and record is not None and record.checkpoint is not None
        assert (record.checkpoint.seq, record.lag) == (5, 0)
    writer.close()
    assert verify_log(path, verifier=HmacVerifier(secret)).ok
