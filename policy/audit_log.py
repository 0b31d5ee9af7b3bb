"""The embedded audit sink: an append-only, hash-chained, size-rotated JSONL file.

Files, for ``path = audit.jsonl``::

    audit.jsonl.1, audit.jsonl.2, ...   rotated files, a higher number is newer
    audit.jsonl                         the current file
    audit.jsonl.head                    the head sidecar: seq and hash of the last event, signed
                                        (a checkpoint) when the log has a signer
    audit.jsonl.lock                    held (flock) by the one writer

Durability: a batch of events is one ``write()`` of their whole lines, ``\\n`` included, on
an ``O_APPEND`` descriptor (``write_many``: the bytes are in the kernel, so a crash of the
process loses nothing written); ``sync`` then makes everything written so far durable with one
``fdatasync`` (when ``fsync`` is on), and only then is the head sidecar rewritten in place (one
fixed-size ``pwrite``, not synced). So the sidecar is never ahead of the data it names: a
sidecar ahead of the file means events were lost. ``append_many`` is both.

Crash recovery, on open and after any failed write: the head of the chain is the last
complete event of the current file, else of the newest rotated file, else genesis. A torn
last line (no trailing newline, not a complete event) is left untouched; the log appends a
``\\n`` to end it and an ``audit.recovered`` event recording its length and sha256, so the
verifier can tell that fragment from an edit. The same event records a head sidecar that is
missing, unreadable, or disagrees with the file (events lost from the tail), and, when the
log has a signer, a sidecar that is unsigned or whose signature does not verify (a tail
cut off and the sidecar rewritten while the gateway was down). The writer then continues:
the gap is evidence in the chain, not a reason to stop auditing.

Checkpoints (policy.audit_checkpoint): with a ``signer``, the sidecar holds a signed
checkpoint of the head, an ``audit.checkpoint`` event is appended every
``checkpoint_every`` events and when the log is closed, and each such event is handed to the
``sinks`` (a second file, the gateway's log) once it is durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from policy.audit_checkpoint import (
    Checkpoint,
    CheckpointSigner,
    CheckpointSink,
    CheckpointVerifier,
    sign_checkpoint,
)
from policy.audit_event import (
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    GENESIS_HASH,
    SCHEMA,
    AuditError,
    event_hash,
    format_ts,
    new_event_id,
    plain_body,
    scrub_event,
    sealed_line,
)

__all__ = [
    "GENESIS",
    "HEAD_SCHEMA",
    "SIGNED_HEAD_SCHEMA",
    "AuditSink",
    "Head",
    "HeadRecord",
    "JsonlAuditLog",
    "head_path",
    "log_files",
    "read_head",
    "read_head_record",
]

HEAD_SCHEMA = "securegateway.audit-head/1"
SIGNED_HEAD_SCHEMA = "securegateway.audit-head/2"
# The sidecar is one fixed-size record (JSON padded with spaces), rewritten in place.
_HEAD_SIZE = 512
_SINK_FIELDS = frozenset({"seq", "ts", "prev_hash", "hash"})


class AuditSink(Protocol):
    """Where audit events go. ``append`` returns the event as written (with seq, ts, hashes)."""

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Head:
    """The last event of a chain: its ``seq`` (0 for an empty log) and ``hash``."""

    seq: int
    hash: str


GENESIS = Head(0, GENESIS_HASH)


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files of the log at ``path``, oldest first: rotated ``<name>.<N>`` by N, then current."""
    current = Path(path)
    pattern = re.compile(re.escape(current.name) + r"\.([0-9]+)")
    rotated: list[tuple[int, Path]] = []
    if current.parent.is_dir():
        for entry in current.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and entry.is_file():
                rotated.append((int(match.group(1)), entry))
    files = [entry for _, entry in sorted(rotated)]
    if current.is_file():
        files.append(current)
    return files


def head_path(path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(path)}.head")


@dataclass(frozen=True)
class HeadRecord:
    """What the sidecar says: the head, and the checkpoint vouching for it when signed."""

    head: Head
    checkpoint: Checkpoint | None


def read_head(path: str | os.PathLike[str]) -> Head | str | None:
    """The head recorded in the sidecar of the log at ``path``: a Head, None if absent, or why unreadable.

    An empty sidecar counts as absent: the writer creates it before its first event.
    """
    record = read_head_record(path)
    return record.head if isinstance(record, HeadRecord) else record


def read_head_record(path: str | os.PathLike[str]) -> HeadRecord | str | None:
    """The sidecar's record (its head and signature, if any), None if absent, or why unreadable."""
    try:
        raw = head_path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"head sidecar unreadable: {exc.strerror}"
    if not raw:
        return None
    checkpoint: Checkpoint | None = None
    try:
        record = json.loads(raw)
        if record.get("schema") not in (HEAD_SCHEMA, SIGNED_HEAD_SCHEMA):
            raise ValueError
        seq, hash_ = record["seq"], record["hash"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(hash_, str):
            raise ValueError
        if record["schema"] == SIGNED_HEAD_SCHEMA:
            checkpoint = Checkpoint.from_dict(record.get("checkpoint"))
            if checkpoint is None or (checkpoint.seq, checkpoint.hash) != (seq, hash_):
                raise ValueError
    except (ValueError, AttributeError, KeyError, UnicodeDecodeError):
        return "head sidecar is not a valid head record"
    return HeadRecord(Head(seq, hash_), checkpoint)


def _head_record(head: Head, checkpoint: Checkpoint | None = None) -> bytes:
    record: dict[str, Any] = {"schema": HEAD_SCHEMA, "seq": head.seq, "hash": head.hash}
    if checkpoint is not None:
        record = {**record, "schema": SIGNED_HEAD_SCHEMA, "checkpoint": checkpoint.to_dict()}
    text = json.dumps(record, separators=(",", ":"))
    return text.encode("ascii").ljust(_HEAD_SIZE - 1) + b"\n"


def _reverse_lines(handle: BinaryIO, size: int, block: int = 1 << 16) -> Iterator[bytes]:
    """Lines of a file from the end, without their ``\\n``; the first is what follows the last ``\\n``."""
    position = size
    pending = b""
    while position > 0:
        step = min(block, position)
        position -= step
        handle.seek(position)
        pending = handle.read(step) + pending
        lines = pending.split(b"\n")
        pending = lines[0]
        yield from reversed(lines[1:])
    yield pending


def _parse_event(line: bytes) -> dict[str, Any] | None:
    """The event on ``line`` if it is one whose hash checks out, else None."""
    try:
        parsed = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("seq"), int) or "hash" not in parsed:
        return None
    try:
        if parsed["hash"] != event_hash(parsed):
            return None
    except (TypeError, ValueError):
        return None
    return parsed


@dataclass(frozen=True)
class _Tail:
    head: Head
    fragment: bytes  # bytes after the last newline of the current file
    fragment_is_event: bool  # ... which are a complete event missing only its newline


def _scan_tail(files: list[Path], current: Path) -> _Tail:
    fragment = b""
    fragment_is_event = False
    for file in reversed(files):
        with file.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            lines = _reverse_lines(handle, size)
            last = next(lines, b"")
            if file == current and last:
                fragment = last
                parsed = _parse_event(last)
                if parsed is not None:
                    return _Tail(Head(parsed["seq"], parsed["hash"]), last, True)
            for line in lines:
                # The chain continues from the last complete line that carries an envelope,
                # verified or not: an edited line stays in the chain for the verifier to name.
                try:
                    parsed = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(parsed, dict):
                    seq, hash_ = parsed.get("seq"), parsed.get("hash")
                    if isinstance(seq, int) and not isinstance(seq, bool) and isinstance(hash_, str):
                        return _Tail(Head(seq, hash_), fragment, fragment_is_event)
    return _Tail(GENESIS, fragment, fragment_is_event)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class JsonlAuditLog:
    """The embedded :class:`AuditSink`; thread-safe, one writer per path (an ``flock``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 50 * 2**20,
        fsync: bool = True,
        clock: Callable[[], datetime] = _utcnow,
        signer: CheckpointSigner | None = None,
        verifier: CheckpointVerifier | None = None,
        checkpoint_every: int = 1000,
        sinks: Sequence[CheckpointSink] = (),
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._clock = clock
        self._signer = signer
        self._verifier = verifier
        self._checkpoint_every = checkpoint_every
        self._sinks = tuple(sinks)
        self._checkpointed = 0
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._head_fd: int | None = None
        self._lock_fd: int | None = None
        self._size = 0
        self._head = GENESIS
        self._synced = GENESIS  # the head as of the last completed sync: what the sidecar may name
        self._unpublished: list[Checkpoint] = []
        self._head_sized = False
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditError("locked", f"audit log `{self.path}` is open in another writer") from None
            self._head_fd = os.open(head_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)
            with self._lock:
                self._recover()
        except OSError as exc:
            self._release()
            raise AuditError("read_failed", f"cannot open audit log `{self.path}`: {exc.strerror}") from exc
        except AuditError:
            self._release()
            raise

    @property
    def head(self) -> Head:
        """The last event written: worth recording outside the log as an anchor for verify."""
        return self._head

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``event`` as the next link of the chain and make it durable; returns it as written."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Write ``events`` in order as consecutive links, with one sync for them all (group commit)."""
        written = self.write_many(events)
        if written:
            self.sync()
        return written

    def write_many(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Write ``events`` in order as consecutive links, without waiting for the disk.

        Every event is validated before anything is written, so a malformed one fails the whole
        call and writes nothing; a write failure part-way may leave the leading events of the
        batch in the log (each complete and chained), like a crash would. Once this returns the
        lines are in the kernel: a crash of the process keeps them, a power loss may not until
        :meth:`sync` has returned.
        """
        bodies = [self._prepare(item) for item in events]
        if not bodies:
            return []
        with self._lock:
            if self._closed:
                raise AuditError("closed", f"audit log `{self.path}` is closed")
            if self._file is None:
                try:
                    self._recover()
                except OSError as exc:
                    raise AuditError("write_failed", f"cannot recover audit log: {exc.strerror}") from exc
            return self._write(bodies)

    @property
    def unsynced(self) -> bool:
        """Whether events were written since the last completed :meth:`sync`."""
        return self._head.seq > self._synced.seq

    def sync(self) -> None:
        """Make every event written so far durable, then advance the head sidecar.

        One ``fdatasync`` (with ``fsync`` on), issued without holding the writer's lock so that
        other threads can keep writing meanwhile. Raises ``AuditError("write_failed")`` when the
        sync fails: the events stay in the file (and the chain) but are not confirmed durable,
        and the next write reopens the file first.
        """
        with self._lock:
            if self._closed:
                raise AuditError("closed", f"audit log `{self.path}` is closed")
            target = self._head
            if target.seq <= self._synced.seq and not self._unpublished:
                return
            try:
                if self._file is None:
                    self._recover()
                assert self._file is not None
                fd = os.dup(self._file.fileno()) if self.fsync else -1
            except OSError as exc:
                raise AuditError("write_failed", f"audit sync failed: {exc.strerror}") from exc
            published, self._unpublished = self._unpublished, []
        try:
            if fd >= 0:
                os.fdatasync(fd)
        except OSError as exc:
            with self._lock:
                self._unpublished = published + self._unpublished
                self._abandon_file()
            raise AuditError("write_failed", f"audit sync failed: {exc.strerror}") from exc
        finally:
            if fd >= 0:
                os.close(fd)
        with self._lock:
            if target.seq > self._synced.seq:
                self._synced = target
                try:
                    self._write_sidecar(target)
                except OSError as exc:
                    raise AuditError("write_failed", f"audit head sidecar write failed: {exc.strerror}") from exc
        self._publish(published)

    def close(self) -> None:
        with self._lock:
            active = not self._closed and self._file is not None
            if active and self._signer is not None and self._head.seq > self._checkpointed:
                # The last word of a run: a checkpoint a later truncation cannot fake.
                with contextlib.suppress(AuditError, OSError):
                    self._write([], checkpoint=True)
            if active and (self._head != self._synced or self._unpublished):
                with contextlib.suppress(AuditError, OSError):
                    self._sync_locked()
            self._closed = True
            self._release()

    def __enter__(self) -> JsonlAuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals; every method below runs under self._lock -------------------------------

    @staticmethod
    def _prepare(event: Mapping[str, Any]) -> dict[str, Any]:
        kind = event.get("type")
        if kind not in EVENT_TYPES:
            raise AuditError("unknown_event_type", f"unknown audit event type `{kind}`")
        reserved = sorted(_SINK_FIELDS & set(event))
        if reserved:
            raise AuditError("reserved_field", f"field `{reserved[0]}` is assigned by the audit log")
        body, strings = plain_body(event)
        body.setdefault("schema", SCHEMA)
        body.setdefault("event_id", new_event_id())
        if body["schema"] != SCHEMA:
            raise AuditError("reserved_field", f"unsupported schema `{body['schema']}`")
        # Whatever built the event, no secret the scanners know reaches the file.
        return scrub_event(body, strings)

    def _checkpoint_body(self, head: Head) -> dict[str, Any]:
        assert self._signer is not None
        checkpoint = sign_checkpoint(self._signer, head.seq, head.hash)
        return {"schema": SCHEMA, "event_id": new_event_id(), "type": "audit.checkpoint",
                "checkpoint": checkpoint.to_dict()}

    def _write(
        self, bodies: Sequence[dict[str, Any]], prefix: bytes = b"", *, checkpoint: bool = False
    ) -> list[dict[str, Any]]:
        head = self._head
        written: list[dict[str, Any]] = []
        lines: list[bytes] = []
        queue = list(bodies)
        due = self._signer is not None and self._checkpoint_every > 0
        if self._signer is not None and checkpoint:
            queue.append(self._checkpoint_body(head))
        published: list[Checkpoint] = []
        checkpointed = self._checkpointed
        index = 0
        while index < len(queue):
            body = queue[index]
            index += 1
            full = {**body, "seq": head.seq + 1, "ts": format_ts(self._clock()), "prev_hash": head.hash}
            full["hash"], line = sealed_line(full)  # one encoding, hashed as those bytes
            written.append({name: full[name] for name in ENVELOPE_FIELDS} | full)
            lines.append(line)
            head = Head(full["seq"], full["hash"])
            if full["type"] == "audit.checkpoint":
                vouched = Checkpoint.from_dict(full.get("checkpoint"))
                if vouched is not None:
                    published.append(vouched)
                checkpointed = head.seq
            elif due and index == len(queue) and head.seq - checkpointed >= self._checkpoint_every:
                queue.append(self._checkpoint_body(head))
        try:
            chunk: list[bytes] = [prefix] if prefix else []
            pending = len(prefix)
            for line in lines:
                # A recovery write (prefix) must end the torn fragment in its own file: no rotation.
                filled = self._size + pending
                if not prefix and filled > 0 and filled + len(line) > self.max_bytes:
                    self._write_all(b"".join(chunk))
                    chunk, pending = [], 0
                    self._rotate()
                chunk.append(line)
                pending += len(line)
            self._write_all(b"".join(chunk))
        except OSError as exc:
            self._abandon_file()
            raise AuditError("write_failed", f"audit write failed: {exc.strerror}") from exc
        self._head = head
        self._checkpointed = checkpointed
        self._unpublished.extend(published)  # handed to the sinks once durable (sync)
        return written[: len(bodies)]  # a checkpoint added at the end is the log's own

    def _sync_locked(self) -> None:
        """:meth:`sync` for callers that hold the lock (recovery, closing)."""
        assert self._file is not None
        if self.fsync:
            os.fdatasync(self._file.fileno())
        published, self._unpublished = self._unpublished, []
        if self._head != self._synced:
            self._synced = self._head
            self._write_sidecar(self._head)
        self._publish(published)

    def _publish(self, published: list[Checkpoint]) -> None:
        for vouched in published:
            for sink in self._sinks:
                with contextlib.suppress(Exception):  # an anchor that fails must not fail the audit write
                    sink.publish(vouched)

    def _write_all(self, data: bytes) -> None:
        """One ``write()`` of ``data`` (looping only on a short write)."""
        assert self._file is not None
        view = memoryview(data)
        while view:
            count = self._file.write(view)
            if not count:
                raise OSError(errno.EIO, "short write")
            view = view[count:]
        self._size += len(data)

    def _write_sidecar(self, head: Head) -> None:
        assert self._head_fd is not None
        signed = sign_checkpoint(self._signer, head.seq, head.hash) if self._signer else None
        os.pwrite(self._head_fd, _head_record(head, signed), 0)
        if not self._head_sized:  # drop anything a longer foreign file left past the record
            os.ftruncate(self._head_fd, _HEAD_SIZE)
            self._head_sized = True
        # Not synced, on purpose: it is written after the event it names is durable, so a
        # power loss can only leave it behind (or unreadable, recorded on reopening), never
        # ahead; syncing it too would halve append throughput for no added guarantee.

    def _rotate(self) -> None:
        assert self._file is not None
        if self.fsync:  # a batch may have written to this file since the last sync
            os.fdatasync(self._file.fileno())
        self._file.close()
        self._file = None
        files = log_files(self.path)
        numbers = [int(file.name.rsplit(".", 1)[1]) for file in files if file != self.path]
        target = self.path.with_name(f"{self.path.name}.{max(numbers, default=0) + 1}")
        os.rename(self.path, target)
        self._open_current()
        if self.fsync:
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def _open_current(self) -> None:
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - owned for the log's life
        self._size = os.fstat(self._file.fileno()).st_size

    def _abandon_file(self) -> None:
        # After a failed write the file may end in a fragment; the next append recovers first.
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _recover(self) -> None:
        files = log_files(self.path)
        tail = _scan_tail(files, self.path)
        self._head = tail.head
        if not self._checkpointed:
            self._checkpointed = tail.head.seq
        self._open_current()
        record = read_head_record(self.path)
        recorded = record.head if isinstance(record, HeadRecord) else record
        reason = _sidecar_disagreement(recorded, tail.head)
        if reason is None and self._signer is not None and isinstance(record, HeadRecord) and tail.head.seq > 0:
            reason = self._unvouched(record)
        torn = tail.fragment if tail.fragment and not tail.fragment_is_event else b""
        prefix = b"\n" if tail.fragment else b""
        if reason is None and not torn:
            if prefix:
                self._append_raw(prefix)
            if recorded != tail.head:
                # What a crashed process wrote may still be only in the page cache: make it
                # durable before the sidecar names it.
                if self.fsync:
                    assert self._file is not None
                    os.fdatasync(self._file.fileno())
                self._write_sidecar(tail.head)
            self._synced = tail.head
            return
        sidecar = {"seq": recorded.seq, "hash": recorded.hash} if isinstance(recorded, Head) else None
        body = {
            "schema": SCHEMA,
            "event_id": new_event_id(),
            "type": "audit.recovered",
            "reason": reason or "torn_tail",
            "torn_bytes": len(torn),
            "torn_sha256": "sha256:" + hashlib.sha256(torn).hexdigest() if torn else None,
            "sidecar": sidecar,
        }
        self._write([body], prefix=prefix)
        self._sync_locked()

    def _unvouched(self, record: HeadRecord) -> str | None:
        """Why a sidecar that agrees with the files is not to be trusted, or None."""
        if record.checkpoint is None:
            return "head_unsigned"
        if self._verifier is not None and not record.checkpoint.verify(self._verifier):
            return "head_forged"
        return None

    def _append_raw(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._size += len(data)
        if self.fsync:
            os.fdatasync(self._file.fileno())

    def _release(self) -> None:
        self._abandon_file()
        for name in ("_head_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)  # closing the lock descriptor releases the flock
                setattr(self, name, None)


def _sidecar_disagreement(recorded: Head | str | None, head: Head) -> str | None:
    """Why the sidecar contradicts the head found in the files, or None when it is consistent.

    A sidecar *behind* the file is consistent (a crash between the event's write and the
    sidecar's): it can only guard the tail, and the verifier checks the hash it names.
    """
    if recorded is None:
        return "head_missing" if head.seq > 0 else None
    if isinstance(recorded, str):
        return "head_invalid"
    if recorded.seq > head.seq:
        return "truncated"
    if recorded.seq == head.seq and recorded.hash != head.hash:
        return "head_mismatch"
    return None
