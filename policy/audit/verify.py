"""Verify an audit log end to end, and look events up in it.

``verify_log`` walks every rotated file, oldest first, then the current file, and checks
each line: it parses, it is a well-formed schema-1 event, its bytes are the canonical form
of what it parses to, its hash recomputes, its ``seq`` is one more than the previous event's
and its ``prev_hash`` is the previous event's ``hash`` (genesis for the first). It stops at
the first bad line and names it. Then it compares the last event with the head sidecar (and
with an ``anchor`` held outside the log, when given), which is what catches a log cut short
at the end: a chain alone cannot tell its last event from a deleted one.

Problem codes (``BadEvent.problem``)::

    invalid_json     a line that does not parse and is not a recorded torn fragment
    schema           parses, but is not a well-formed event of schema securegateway.audit/1
    hash_mismatch    the hash does not recompute, or the line is not in canonical form (edited)
    seq_gap          seq jumps forward and the missing seq is nowhere later (deleted)
    reordered        seq goes backwards, repeats, or the missing seq appears later (moved)
    chain_break      seq continues but prev_hash is not the previous event's hash (replaced)
    truncated        the sidecar or anchor names an event past the end, or the log recorded on
                     reopening that its sidecar was ahead of it (events lost from the tail)
    head_missing     events but no head sidecar (with ``require_head``, the default)
    head_mismatch    the sidecar names a seq whose hash differs, or is unreadable
    anchor_mismatch  the anchor, or a checkpoint from the checkpoint file, names a seq whose hash differs
    head_unsigned    a verification key is given but the sidecar carries no checkpoint (rewritten by
                     someone without the key), or the log recorded one on reopening after it had been signed
    head_forged      the sidecar's checkpoint does not verify with the key, or the log recorded one
    checkpoint_invalid  an ``audit.checkpoint`` event, or a line of the checkpoint file, whose
                     signature does not verify or which does not vouch for the event before it

A torn line (a crash mid-write) is not a problem: as the very last line of the current file
with no trailing newline it sets ``torn_tail``; earlier, it must be followed by the
``audit.recovered`` event the writer appends on reopening, whose recorded length and sha256
match it. Anything else that does not parse is ``invalid_json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from policy.audit.checkpoint import Checkpoint, CheckpointVerifier
from policy.audit.event import GENESIS_HASH, canonical_event, envelope_problem, event_hash
from policy.audit.head import GENESIS, Head, HeadRecord, log_files, read_head_record

__all__ = ["PROBLEMS", "BadEvent", "VerifyReport", "find_events", "verify_log"]

PROBLEMS = (
    "invalid_json",
    "schema",
    "hash_mismatch",
    "seq_gap",
    "reordered",
    "chain_break",
    "truncated",
    "head_missing",
    "head_mismatch",
    "anchor_mismatch",
    "head_unsigned",
    "head_forged",
    "checkpoint_invalid",
)


@dataclass(frozen=True)
class BadEvent:
    """The first line that failed verification: where it is, which event it claims to be, why."""

    file: str
    line: int
    seq: int | None
    event_id: str | None
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_log`; ``head`` is the last event that verified."""

    ok: bool
    events: int
    files: tuple[str, ...]
    first_bad: BadEvent | None
    torn_tail: bool
    message: str
    head: Head = GENESIS
    warnings: tuple[str, ...] = ()
    # The last event vouched for by a signed checkpoint (in the log or the sidecar), 0 if none.
    checkpointed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON data (``securegateway audit verify --json``)."""
        return {
            "ok": self.ok,
            "events": self.events,
            "files": list(self.files),
            "first_bad": asdict(self.first_bad) if self.first_bad else None,
            "torn_tail": self.torn_tail,
            "message": self.message,
            "head": {"seq": self.head.seq, "hash": self.head.hash},
            "checkpointed": self.checkpointed,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class _Line:
    file: Path
    number: int
    raw: bytes  # without the trailing newline
    terminated: bool
    last_in_file: bool


class _Failure(Exception):
    def __init__(self, bad: BadEvent, message: str) -> None:
        super().__init__(message)
        self.bad = bad
        self.message = message


def _lines(files: list[Path]) -> Iterator[_Line]:
    for file in files:
        with file.open("rb") as handle:
            previous: bytes | None = None
            number = 0
            for raw in handle:
                if previous is not None:
                    yield _Line(file, number, previous.rstrip(b"\n"), True, False)
                previous = raw
                number += 1
            if previous is not None:
                yield _Line(file, number, previous.rstrip(b"\n"), previous.endswith(b"\n"), True)


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _INVALID


_INVALID = object()


def _fail(line: _Line, problem: str, message: str, parsed: Any = None) -> _Failure:
    seq = parsed.get("seq") if isinstance(parsed, dict) else None
    event_id = parsed.get("event_id") if isinstance(parsed, dict) else None
    bad = BadEvent(
        file=os.fspath(line.file),
        line=line.number,
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        event_id=event_id if isinstance(event_id, str) else None,
        problem=problem,
    )
    return _Failure(bad, f"{problem} at {line.file.name}:{line.number}: {message}")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Seen:
    hash: str
    file: Path
    line: int


class _Walk:
    def __init__(self, files: list[Path], targets: set[int], verifier: CheckpointVerifier | None = None) -> None:
        self.files = files
        self.verifier = verifier
        # The last seq a verified checkpoint event vouched for, 0 if none yet.
        self.checkpointed = 0
        self.lines = _lines(files)
        self.targets = targets
        self.head = Head(0, GENESIS_HASH)
        self.events = 0
        self.torn_tail = False
        self.warnings: list[str] = []
        self.last_line: _Line | None = None
        # The events the sidecar and the anchor name, as the walk met them.
        self.seen: dict[int, _Seen] = {}

    def run(self) -> None:
        fragment: _Line | None = None
        for line in self.lines:
            self.last_line = line
            parsed = _loads(line.raw)
            after_fragment = fragment is not None
            if fragment is not None:
                self._check_recovery(fragment, parsed)
                fragment = None
            if parsed is _INVALID:
                if not line.terminated and line.last_in_file and line.file == self.files[-1]:
                    self.torn_tail = True
                    self.warnings.append(f"torn last line at {line.file.name}:{line.number} (crash mid-write)")
                    return
                if line.terminated and not line.last_in_file:
                    fragment = line  # tolerated only if the next line records it
                    continue
                raise _fail(line, "invalid_json", "line is not json")
            self._check_event(line, parsed, after_fragment)

    def _check_recovery(self, fragment: _Line, parsed: Any) -> None:
        if (
            isinstance(parsed, dict)
            and parsed.get("type") == "audit.recovered"
            and parsed.get("torn_bytes") == len(fragment.raw)
            and parsed.get("torn_sha256") == _sha256(fragment.raw)
        ):
            self.warnings.append(f"recovered torn write at {fragment.file.name}:{fragment.number}")
            return
        raise _fail(fragment, "invalid_json", "line is not json and no recovery event records it")

    def _check_event(self, line: _Line, event: Any, after_fragment: bool) -> None:
        problem = envelope_problem(event)
        if problem is not None:
            raise _fail(line, "schema", problem, event)
        if canonical_event(event).encode("ascii") != line.raw:
            raise _fail(line, "hash_mismatch", "line bytes are not the canonical form of the event", event)
        if event_hash(event) != event["hash"]:
            raise _fail(line, "hash_mismatch", "hash does not match the event's content", event)
        seq, expected = event["seq"], self.head.seq + 1
        if seq < expected:
            raise _fail(line, "reordered", f"seq {seq} appears after seq {self.head.seq}", event)
        if seq > expected:
            if self._appears_later(expected):
                raise _fail(line, "reordered", f"seq {seq} appears before seq {expected}", event)
            raise _fail(line, "seq_gap", f"seq {expected} to {seq - 1} missing", event)
        if event["prev_hash"] != self.head.hash:
            raise _fail(line, "chain_break", f"prev_hash is not the hash of seq {self.head.seq}", event)
        if event["type"] == "audit.recovered":
            self._check_recovered_event(line, event, after_fragment)
        if event["type"] == "audit.checkpoint":
            self._check_checkpoint_event(line, event)
        self.head = Head(seq, event["hash"])
        self.events += 1
        if seq in self.targets:
            self.seen[seq] = _Seen(event["hash"], line.file, line.number)

    def _check_recovered_event(self, line: _Line, event: dict[str, Any], after_fragment: bool) -> None:
        if bool(event["torn_bytes"]) != after_fragment:
            raise _fail(line, "schema", "recovery event does not match the line before it", event)
        reason, sidecar = event["reason"], event["sidecar"]
        if reason == "truncated":
            behind = sidecar["seq"] - self.head.seq if isinstance(sidecar, dict) else 0
            lost = behind if isinstance(behind, int) and behind > 0 else "some"
            raise _fail(line, "truncated", f"on reopening, {lost} event(s) were missing from the tail", event)
        if reason == "head_mismatch":
            raise _fail(line, "head_mismatch", "on reopening, the head sidecar named a different event", event)
        if reason == "head_forged":
            raise _fail(line, "head_forged", "on reopening, the head sidecar's signature did not verify", event)
        if reason == "head_unsigned":
            if self.checkpointed:
                raise _fail(
                    line,
                    "head_unsigned",
                    f"on reopening, the head sidecar was unsigned although seq {self.checkpointed} had been "
                    f"signed: events after seq {self.checkpointed} may have been cut off",
                    event,
                )
            self.warnings.append(f"head sidecar was unsigned on reopening, at {line.file.name}:{line.number}")
        if reason in ("head_missing", "head_invalid"):
            state = reason.removeprefix("head_")
            self.warnings.append(f"head sidecar was {state} on reopening, at {line.file.name}:{line.number}")

    def _check_checkpoint_event(self, line: _Line, event: dict[str, Any]) -> None:
        checkpoint = Checkpoint.from_dict(event["checkpoint"])
        if checkpoint is None or (checkpoint.seq, checkpoint.hash) != (self.head.seq, self.head.hash):
            raise _fail(line, "checkpoint_invalid", "checkpoint does not vouch for the event before it", event)
        if self.verifier is not None:
            if not checkpoint.verify(self.verifier):
                why = f"checkpoint signature does not verify (key `{checkpoint.key_id}`)"
                raise _fail(line, "checkpoint_invalid", why, event)
            self.checkpointed = checkpoint.seq

    def _appears_later(self, seq: int) -> bool:
        needle = b'"seq":%d,' % seq
        for line in self.lines:
            if needle in line.raw:
                parsed = _loads(line.raw)
                if isinstance(parsed, dict) and parsed.get("seq") == seq:
                    return True
        return False


def _tail_failure(walk: _Walk, head: Head, what: str, mismatch: str, path: Path) -> _Failure | None:
    """A failure if the walked log does not contain ``head`` (from the sidecar or an anchor)."""
    last = walk.last_line
    if head.seq > walk.head.seq:
        where = last.file if last else path
        bad = BadEvent(os.fspath(where), (last.number + 1) if last else 1, head.seq, None, "truncated")
        return _Failure(
            bad,
            f"truncated at {where.name}: the {what} names seq {head.seq} but the log ends at seq {walk.head.seq}",
        )
    if head.seq == 0:
        if head.hash == GENESIS_HASH:
            return None
        bad = BadEvent(os.fspath(path), 0, 0, None, mismatch)
        return _Failure(bad, f"{mismatch}: the {what} names seq 0 with a hash that is not genesis")
    seen = walk.seen[head.seq]
    if seen.hash != head.hash:
        bad = BadEvent(os.fspath(seen.file), seen.line, head.seq, None, mismatch)
        return _Failure(
            bad, f"{mismatch} at {seen.file.name}:{seen.line}: the {what} names seq {head.seq} with another hash"
        )
    return None


def _signed_head_failure(walk: _Walk, record: HeadRecord, verifier: CheckpointVerifier, path: Path) -> _Failure | None:
    """With a key: the sidecar must carry a checkpoint that verifies, of its head or (lagging) of an
    earlier event of the log (checked by :func:`_lagging_checkpoint_failure`)."""
    if walk.events == 0:
        return None
    where = os.fspath(path) + ".head"
    vouched = f"the last signed checkpoint in the log is seq {walk.checkpointed}" if walk.checkpointed else (
        "the log holds no signed checkpoint"
    )
    gap = (
        f"the log ends at seq {walk.head.seq} and {vouched}: "
        f"events after seq {walk.checkpointed} may have been cut off"
    )
    if record.checkpoint is None:
        return _Failure(
            BadEvent(where, 0, record.head.seq, None, "head_unsigned"),
            f"head_unsigned: the head sidecar carries no signed checkpoint (rewritten without the key?); {gap}",
        )
    if not record.checkpoint.verify(verifier):
        return _Failure(
            BadEvent(where, 0, record.head.seq, None, "head_forged"),
            f"head_forged: the head sidecar's checkpoint does not verify (key `{record.checkpoint.key_id}`); {gap}",
        )
    return None


def _lagging_checkpoint_failure(walk: _Walk, record: HeadRecord, path: Path) -> _Failure | None:
    """The event a lagging sidecar checkpoint signed must be in the log with the hash it signed:
    a tail cut past it, with the unsigned head rewritten to the new end, is truncation."""
    checkpoint = record.checkpoint
    if checkpoint is None or (checkpoint.seq, checkpoint.hash) == (record.head.seq, record.head.hash):
        return None
    return _tail_failure(walk, Head(checkpoint.seq, checkpoint.hash), "head sidecar's signed checkpoint",
                         "head_mismatch", path)


def _checkpoint_file_failure(
    walk: _Walk, checkpoints: list[Checkpoint], verifier: CheckpointVerifier | None, path: Path
) -> _Failure | None:
    """Every checkpoint carried off the log must be in it: the newest one names how much is missing."""
    for checkpoint in checkpoints:
        if verifier is not None and not checkpoint.verify(verifier):
            bad = BadEvent(os.fspath(path), 0, checkpoint.seq, None, "checkpoint_invalid")
            return _Failure(bad, f"checkpoint_invalid: the checkpoint file's seq {checkpoint.seq} does not verify")
    if not checkpoints:
        return None
    newest = max(checkpoints, key=lambda checkpoint: checkpoint.seq)
    failure = _tail_failure(walk, Head(newest.seq, newest.hash), "checkpoint file", "anchor_mismatch", path)
    if failure is not None and failure.bad.problem == "truncated":
        missing = f"events {walk.head.seq + 1} to {newest.seq} are missing"
        return _Failure(failure.bad, f"{failure.message}: {missing}")
    return failure


def verify_log(
    path: str | os.PathLike[str],
    *,
    anchor: tuple[int, str] | None = None,
    require_head: bool = True,
    verifier: CheckpointVerifier | None = None,
    checkpoints: list[Checkpoint] | None = None,
) -> VerifyReport:
    """Check the whole chain of the log at ``path``; never raises for log content.

    ``anchor`` is a ``(seq, hash)`` recorded outside the log (``JsonlAuditLog.head`` or a
    previous report's ``head``); the log must contain exactly that event. Without it, a
    writer with access to the files could rebuild a consistent chain; see docs/audit.md.
    ``verifier`` checks the signed checkpoints (sidecar and ``audit.checkpoint`` events), and
    requires the sidecar to carry one; ``checkpoints`` (from the checkpoint file) must all be
    in the log.
    """
    # The sidecar is read before the files: it is only ever written after the event it
    # names, so a verifier racing a live writer never sees it ahead of the data.
    record = read_head_record(path)
    recorded = record.head if isinstance(record, HeadRecord) else record
    files = log_files(path)
    targets: set[int] = {recorded.seq} if isinstance(recorded, Head) else set()
    if isinstance(record, HeadRecord) and record.checkpoint is not None:
        targets.add(record.checkpoint.seq)
    if anchor is not None:
        targets.add(anchor[0])
    if checkpoints:
        targets.add(max(checkpoint.seq for checkpoint in checkpoints))
    walk = _Walk(files, targets, verifier)
    names = tuple(os.fspath(file) for file in files)
    failure: _Failure | None = None
    try:
        walk.run()
    except OSError as exc:
        failure = _Failure(
            BadEvent(os.fspath(path), 0, None, None, "invalid_json"), f"invalid_json: cannot read log: {exc}"
        )
    except _Failure as exc:
        failure = exc
    if failure is None:
        if isinstance(recorded, str):
            failure = _Failure(
                BadEvent(os.fspath(path) + ".head", 0, None, None, "head_mismatch"), f"head_mismatch: {recorded}"
            )
        elif recorded is None:
            if require_head and walk.events:
                failure = _Failure(
                    BadEvent(os.fspath(path) + ".head", 0, None, None, "head_missing"),
                    "head_missing: the log has events but no head sidecar; truncation cannot be ruled out",
                )
        else:
            failure = _tail_failure(walk, recorded, "head sidecar", "head_mismatch", Path(path))
            if failure is None and walk.head.seq - recorded.seq > 1:
                walk.warnings.append(f"head sidecar is {walk.head.seq - recorded.seq} events behind the log")
    if failure is None and checkpoints:
        # Before the sidecar's signature: the checkpoint file can say exactly what is missing.
        failure = _checkpoint_file_failure(walk, checkpoints, verifier, Path(path))
    if failure is None and isinstance(record, HeadRecord):
        failure = _lagging_checkpoint_failure(walk, record, Path(path))
    if failure is None and verifier is not None and isinstance(record, HeadRecord):
        failure = _signed_head_failure(walk, record, verifier, Path(path))
        if failure is None and record.checkpoint is not None and record.lag > 0:
            walk.warnings.append(
                f"the head sidecar's signature covers seq {record.checkpoint.seq}: the {record.lag} event(s) "
                "after it are chained but not signed yet (the signing lag, docs/audit.md)"
            )
    if failure is None and anchor is not None:
        failure = _tail_failure(walk, Head(*anchor), "anchor", "anchor_mismatch", Path(path))
    checkpointed = walk.checkpointed
    if failure is None and verifier is not None and isinstance(record, HeadRecord) and record.checkpoint:
        checkpointed = max(checkpointed, record.checkpoint.seq)
    if failure is not None:
        return VerifyReport(
            ok=False,
            events=walk.events,
            files=names,
            first_bad=failure.bad,
            torn_tail=walk.torn_tail,
            message=failure.message,
            head=walk.head,
            warnings=tuple(walk.warnings),
            checkpointed=walk.checkpointed,
        )
    message = f"ok: {walk.events} events in {len(files)} file(s), head seq {walk.head.seq}"
    if verifier is not None:
        message += f", signed up to seq {checkpointed}"
    if walk.torn_tail:
        message += ", torn last line"
    return VerifyReport(
        ok=True,
        events=walk.events,
        files=names,
        first_bad=None,
        torn_tail=walk.torn_tail,
        message=message,
        head=walk.head,
        warnings=tuple(walk.warnings),
        checkpointed=checkpointed,
    )


def find_events(
    path: str | os.PathLike[str],
    *,
    decision_id: str | None = None,
    event_type: str | None = None,
) -> list[dict[str, Any]]:
    """Events of the log at ``path`` (all files, oldest first) matching every filter given.

    A lookup, not a check: lines that do not parse are skipped; run ``verify_log`` to know
    whether what it returns can be trusted.
    """
    needles = [
        f'"{name}":{json.dumps(value)}'.encode("ascii")
        for name, value in (("decision_id", decision_id), ("type", event_type))
        if value is not None
    ]
    found: list[dict[str, Any]] = []
    for line in _lines(log_files(path)):
        if not all(needle in line.raw for needle in needles):
            continue
        parsed = _loads(line.raw)
        if not isinstance(parsed, dict):
            continue
        if decision_id is not None and parsed.get("decision_id") != decision_id:
            continue
        if event_type is not None and parsed.get("type") != event_type:
            continue
        found.append(parsed)
    return found
