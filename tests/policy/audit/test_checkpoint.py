"""policy.audit.checkpoint: signed checkpoints make a cut-off tail fail verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from policy.audit.checkpoint import Checkpoint, CheckpointFile, read_checkpoint_file, sign_checkpoint
from policy.audit.event import event, event_hash
from policy.audit.log import SIGNED_HEAD_SCHEMA, JsonlAuditLog, head_path, log_files, read_head_record
from policy.audit.verify import verify_log


class Hmac:
    """A test-local HMAC signer/verifier with the shape of negotiation.signing's."""

    algorithm = "hmac-sha256"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.key_id = hashlib.sha256(secret).hexdigest()[:16]

    def sign(self, data: bytes) -> str:
        return base64.b64encode(hmac.digest(self._secret, data, "sha256")).decode("ascii")

    def verify(self, data: bytes, signature: str, key_id: str, algorithm: str) -> bool:
        return algorithm == self.algorithm and key_id == self.key_id and hmac.compare_digest(signature, self.sign(data))


KEY = Hmac(b"a secret held apart from the log")
OTHER = Hmac(b"the attacker's own secret value")


def write(path: Path, count: int, *, every: int = 5, sinks: tuple[Any, ...] = ()) -> None:
    with JsonlAuditLog(path, fsync=False, signer=KEY, verifier=KEY, checkpoint_every=every, sinks=sinks) as log:
        for n in range(count):
            log.append(event("gateway.started", n=n))


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def truncate_to(path: Path, seq: int) -> dict[str, Any]:
    """Cut the log after ``seq`` and return that event."""
    kept = [line for line in path.read_bytes().splitlines() if json.loads(line)["seq"] <= seq]
    path.write_bytes(b"".join(line + b"\n" for line in kept))
    return json.loads(kept[-1])


def forge_unsigned_sidecar(path: Path, last: dict[str, Any]) -> None:
    record = {"schema": "securegateway.audit-head/1", "seq": last["seq"], "hash": last["hash"]}
    head_path(path).write_bytes(json.dumps(record).encode().ljust(511) + b"\n")


def test_the_sidecar_carries_a_signed_checkpoint_of_the_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 3)
    record = read_head_record(path)
    assert not isinstance(record, str) and record is not None
    assert record.checkpoint is not None and record.checkpoint.verify(KEY)
    assert not record.checkpoint.verify(OTHER)
    assert json.loads(head_path(path).read_bytes())["schema"] == SIGNED_HEAD_SCHEMA
    report = verify_log(path, verifier=KEY)
    assert report.ok, report.message
    assert "signed up to seq" in report.message


def test_checkpoint_events_are_written_every_n_events_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 12, every=5)
    stored = events(path)
    checkpoints = [e for e in stored if e["type"] == "audit.checkpoint"]
    # after seq 5, after seq 11 (5 more, counting the first checkpoint), and on close
    assert [c["checkpoint"]["seq"] for c in checkpoints] == [5, 11, 14]
    for c in checkpoints:
        assert c["checkpoint"]["seq"] == c["seq"] - 1
        assert c["checkpoint"]["hash"] == c["prev_hash"]
    assert verify_log(path, verifier=KEY).checkpointed == stored[-1]["seq"]


def test_truncation_with_a_rewritten_unsigned_sidecar_fails_naming_the_gap(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 12, every=5)
    last = truncate_to(path, 9)
    forge_unsigned_sidecar(path, last)
    assert verify_log(path).ok  # without the key the forgery is invisible: what signing is for
    report = verify_log(path, verifier=KEY)
    assert not report.ok and report.first_bad is not None
    assert report.first_bad.problem == "head_unsigned"
    assert "the log ends at seq 9" in report.message and "last signed checkpoint in the log is seq 5" in report.message


def test_a_sidecar_signed_with_another_key_is_forged(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 8, every=5)
    last = truncate_to(path, 7)
    forged = sign_checkpoint(OTHER, last["seq"], last["hash"]).to_dict()
    record = {"schema": SIGNED_HEAD_SCHEMA, "seq": last["seq"], "hash": last["hash"], "checkpoint": forged}
    head_path(path).write_bytes(json.dumps(record).encode().ljust(511) + b"\n")
    report = verify_log(path, verifier=KEY)
    assert report.first_bad is not None and report.first_bad.problem == "head_forged"


def test_reopening_after_a_forged_truncation_records_it_for_good(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 12, every=5)
    forge_unsigned_sidecar(path, truncate_to(path, 9))
    write(path, 2)  # the gateway restarts and keeps writing
    recovered = [e for e in events(path) if e["type"] == "audit.recovered"]
    assert [e["reason"] for e in recovered] == ["head_unsigned"]
    report = verify_log(path, verifier=KEY)
    assert report.first_bad is not None and report.first_bad.problem == "head_unsigned"
    assert "events after seq 5 may have been cut off" in report.message


def test_a_replayed_old_signed_sidecar_is_caught_by_the_checkpoint_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    anchor = tmp_path / "elsewhere" / "checkpoints.jsonl"
    write(path, 4, every=5, sinks=(CheckpointFile(anchor, fsync=False),))
    old_sidecar = head_path(path).read_bytes()  # the attacker keeps a copy of a valid head
    write(path, 10, every=5, sinks=(CheckpointFile(anchor, fsync=False),))
    truncate_to(path, 5)
    head_path(path).write_bytes(old_sidecar)
    assert verify_log(path, verifier=KEY).ok  # a genuine signed head, replayed: needs the anchor
    checkpoints, problems = read_checkpoint_file(anchor)
    assert problems == [] and checkpoints
    report = verify_log(path, verifier=KEY, checkpoints=checkpoints)
    assert report.first_bad is not None and report.first_bad.problem == "truncated"
    newest = max(c.seq for c in checkpoints)
    assert f"events 6 to {newest} are missing" in report.message


def test_a_chain_rebuilt_without_the_key_fails_at_its_first_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 7, every=5)
    stored = events(path)
    # Rewrite event 2 and recompute every later hash, checkpoints re-signed with another key.
    previous = None
    rebuilt: list[bytes] = []
    for item in stored:
        if item["seq"] == 2:
            item["n"] = 999
        if previous is not None:
            item["prev_hash"] = previous
        if item["type"] == "audit.checkpoint":
            item["checkpoint"] = sign_checkpoint(OTHER, item["seq"] - 1, item["prev_hash"]).to_dict()
        item.pop("hash")
        item["hash"] = event_hash(item)
        previous = item["hash"]
        rebuilt.append(json.dumps(item, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    path.write_bytes(b"".join(rebuilt))
    report = verify_log(path, verifier=KEY)
    assert report.first_bad is not None and report.first_bad.problem == "checkpoint_invalid"
    assert report.first_bad.seq == 6


def test_checkpoint_from_dict_refuses_malformed_records() -> None:
    good = sign_checkpoint(KEY, 3, "sha256:" + "a" * 64).to_dict()
    assert Checkpoint.from_dict(good) is not None
    for broken in ({**good, "seq": True}, {**good, "signature": ""}, {**good, "schema": "x"}, [], None):
        assert Checkpoint.from_dict(broken) is None


# ---- the signed head may lag the head: by at most an interval or a number of events -----------------

class Counting(Hmac):
    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        self.signed: list[bytes] = []

    def sign(self, data: bytes) -> str:
        self.signed.append(data)
        return super().sign(data)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lagging_log(path: Path, signer: Hmac = KEY, clock: Clock | None = None, **options: Any) -> JsonlAuditLog:
    options.setdefault("head_sign_interval", 60.0)
    options.setdefault("head_sign_events", 10_000)
    return JsonlAuditLog(path, fsync=False, signer=signer, verifier=signer, checkpoint_every=0,
                         monotonic=clock or Clock(), **options)


def sidecar(path: Path) -> dict[str, Any]:
    return json.loads(head_path(path).read_bytes())


def test_the_head_is_signed_once_per_interval_or_event_count_not_per_batch(tmp_path: Path) -> None:
    signer, clock = Counting(b"a secret held apart from the log"), Clock()
    path = tmp_path / "audit.jsonl"
    log = lagging_log(path, signer, clock, head_sign_interval=1.0, head_sign_events=25)
    del signer.signed[:]  # opening an empty log names (and signs) the genesis head
    for n in range(20):  # twenty batches of one event, each synced, within one interval
        log.append(event("gateway.started", n=n))
    assert len(signer.signed) == 1  # the first sync of the run signs
    record = sidecar(path)
    assert (record["schema"], record["seq"], record["checkpoint"]["seq"]) == ("securegateway.audit-head/3", 20, 1)
    clock.now += 1.0
    log.append(event("gateway.started", n=20))
    assert len(signer.signed) == 2 and sidecar(path)["schema"] == SIGNED_HEAD_SCHEMA  # the interval passed
    for n in range(25):  # no time passes: the event bound re-signs
        log.append(event("gateway.started", n=n))
    assert len(signer.signed) == 3 and sidecar(path)["checkpoint"]["seq"] == 46
    log.close()
    record = sidecar(path)
    assert record["schema"] == SIGNED_HEAD_SCHEMA and record["checkpoint"]["seq"] == record["seq"]  # closing signs
    assert verify_log(path, verifier=signer).ok


def test_a_lagging_signed_head_still_verifies_and_says_how_far_it_lags(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = lagging_log(path)
    for n in range(6):
        log.append(event("gateway.started", n=n))
    report = verify_log(path, verifier=KEY)
    assert report.ok, report.message
    assert report.checkpointed == 1
    assert any("covers seq 1: the 5 event(s) after it" in warning for warning in report.warnings)
    log.close()


def test_truncation_past_a_lagging_signed_head_is_detected_even_with_the_head_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = lagging_log(path)
    for n in range(3):
        log.append(event("gateway.started", n=n))
    log.sign_head()  # the idle writer's signature: seq 3
    for n in range(4):
        log.append(event("gateway.started", n=n))
    signed = sidecar(path)["checkpoint"]
    assert (signed["seq"], sidecar(path)["seq"]) == (3, 7)
    # The attacker cuts the log back to seq 2, before the signed event, and names the new end as the head.
    last = truncate_to(path, 2)
    record = {"schema": "securegateway.audit-head/3", "seq": last["seq"], "hash": last["hash"], "checkpoint": signed}
    head_path(path).write_bytes(json.dumps(record).encode().ljust(511) + b"\n")
    for verifier in (KEY, None):
        report = verify_log(path, verifier=verifier)
        assert report.first_bad is not None and report.first_bad.problem == "truncated", report.message
        assert "signed checkpoint names seq 3 but the log ends at seq 2" in report.message
    # Rebuilt past the signed event without the key: seq 3 now has another hash.
    rebuilt = path.read_bytes().splitlines()
    previous = json.loads(rebuilt[-1])["hash"]
    for seq in (3, 4):
        item = {"schema": "securegateway.audit/1", "seq": seq, "event_id": f"f{seq}", "type": "gateway.started",
                "ts": "2025-01-31T12:00:00.000000Z", "prev_hash": previous, "n": 99}
        item["hash"] = event_hash(item)
        previous = item["hash"]
        rebuilt.append(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())
    path.write_bytes(b"".join(line + b"\n" for line in rebuilt))
    record = {**record, "seq": 4, "hash": previous}
    head_path(path).write_bytes(json.dumps(record).encode().ljust(511) + b"\n")
    report = verify_log(path, verifier=KEY)
    assert report.first_bad is not None and report.first_bad.problem == "head_mismatch", report.message
    log._release()


def test_reopening_after_a_cut_past_the_lagging_signed_head_records_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = lagging_log(path)
    for n in range(5):
        log.append(event("gateway.started", n=n))
    log.sign_head()
    log.append(event("gateway.started", n=5))
    signed = sidecar(path)["checkpoint"]
    log._release()  # a crash: no closing checkpoint, no closing signature
    last = truncate_to(path, 3)
    record = {"schema": "securegateway.audit-head/3", "seq": last["seq"], "hash": last["hash"], "checkpoint": signed}
    head_path(path).write_bytes(json.dumps(record).encode().ljust(511) + b"\n")
    write(path, 1)  # the gateway restarts
    assert [e["reason"] for e in events(path) if e["type"] == "audit.recovered"] == ["truncated"]
    report = verify_log(path, verifier=KEY)
    assert report.first_bad is not None and report.first_bad.problem == "truncated"


def test_a_cut_inside_the_signing_lag_is_what_a_signed_head_cannot_see(tmp_path: Path) -> None:
    """The documented limit: events after the signed checkpoint are chained, not signed."""
    path = tmp_path / "audit.jsonl"
    log = lagging_log(path)
    for n in range(5):
        log.append(event("gateway.started", n=n))
    signed = sidecar(path)["checkpoint"]
    assert signed["seq"] == 1
    last = truncate_to(path, 3)
    record = {"schema": "securegateway.audit-head/3", "seq": last["seq"], "hash": last["hash"], "checkpoint": signed}
    head_path(path).write_bytes(json.dumps(record).encode().ljust(511) + b"\n")
    report = verify_log(path, verifier=KEY)
    assert report.ok and report.checkpointed == 1
    log._release()


def test_a_rotation_signs_the_head_at_its_next_sync(tmp_path: Path) -> None:
    signer = Counting(b"a secret held apart from the log")
    path = tmp_path / "audit.jsonl"
    log = lagging_log(path, signer, max_bytes=600)
    log.append(event("gateway.started", n=0))
    before = len(signer.signed)
    while len(log_files(path)) < 2:
        log.append(event("gateway.started", pad="x" * 100))
    assert len(signer.signed) == before + 1
    assert sidecar(path)["schema"] == SIGNED_HEAD_SCHEMA
    log.close()
    assert verify_log(path, verifier=signer).ok
