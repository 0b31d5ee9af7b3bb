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

Checkpoints (policy.audit.checkpoint): with a ``signer``, the sidecar holds a signed
checkpoint of the head, an ``audit.checkpoint`` event is appended every
``checkpoint_every`` events and when the log is closed, and each such event is handed to the
``sinks`` (a second file, the gateway's log) once it is durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

from policy.audit.checkpoint import (
    Checkpoint,
    CheckpointSigner,
    CheckpointSink,
    CheckpointVerifier,
    sign_checkpoint,
)
from policy.audit.event import (
    ENVELOPE_FIELDS,
    HASH_SLOT,
    AuditError,
    checkpoint_body,
    format_ts,
    now_ts,
    prepare_body,
    recovered_body,
    reference_line,
    seal,
)
from policy.audit.head import (
    _HEAD_SIZE,
    GENESIS,
    HEAD_SCHEMA,
    SIGNED_HEAD_SCHEMA,
    Head,
    HeadRecord,
    checkpoint_json,
    head_path,
    head_record_bytes,
    log_files,
    read_head,
    read_head_record,
    scan_tail,
    sidecar_disagreement,
    unvouched,
)

__all__ = [
    "GENESIS",
    "HEAD_SCHEMA",
    "SIGNED_HEAD_SCHEMA",
    "AuditSink",
    "Head",
    "HeadRecord",
    "JsonlAuditLog",
    "PendingSync",
    "head_path",
    "log_files",
    "read_head",
    "read_head_record",
]

HEAD_SIGN_INTERVAL = 1.0
"""Seconds a signed head may lag the durable head while events keep coming (and, through
:meth:`JsonlAuditLog.sign_head`, once the writer goes idle); see docs/audit.md."""
HEAD_SIGN_EVENTS = 1000
"""Events a signed head may lag the durable head, whatever the time."""


class AuditSink(Protocol):
    """Where audit events go. ``append`` returns the event as written (with seq, ts, hashes)."""

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class PendingSync(NamedTuple):
    """A flush begun by :meth:`JsonlAuditLog.begin_sync`: the descriptor to flush (the log's own,
    kept open until :meth:`JsonlAuditLog.finish_sync`; -1 with ``fsync`` off), the head the flush
    makes durable, and the checkpoints waiting on it. A named tuple, not a frozen dataclass: one is
    made per group commit, and a tuple is built without three ``object.__setattr__`` calls."""

    fd: int
    target: Head
    published: list[Checkpoint]


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
        head_sign_interval: float = HEAD_SIGN_INTERVAL,
        head_sign_events: int = HEAD_SIGN_EVENTS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._clock = clock
        # The ``ts`` of the next event: the default clock's text without building a datetime.
        self._stamp: Callable[[], str] = now_ts if clock is _utcnow else (lambda: format_ts(clock()))
        self._signer = signer
        self._verifier = verifier
        self._checkpoint_every = checkpoint_every
        self._sinks = tuple(sinks)
        self.head_sign_interval = head_sign_interval
        self._head_sign_events = head_sign_events
        self._monotonic = monotonic
        # The checkpoint the sidecar carries (None until this process signs one), its json, and when.
        self._signed: Checkpoint | None = None
        self._signed_json = b""
        self._signed_at = 0.0
        self._sign_due = True  # the next sidecar write signs: set on opening and by a rotation
        self._checkpointed = 0
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        # Flushes begun and not finished (begin_sync .. finish_sync), which use the current
        # file's own descriptor: a file closed meanwhile (rotation, a failed write, close) is
        # kept open here until the last of them finishes, so no flush ever names a closed or
        # reused descriptor, and no batch pays an ``os.dup`` + ``close`` for it.
        self._flushing = 0
        self._retired: list[BinaryIO] = []
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

    def write_many(self, events: Iterable[Mapping[str, Any]], *, keep: bool = True) -> list[dict[str, Any]]:
        """Write ``events`` in order as consecutive links, without waiting for the disk.

        Returns the events as written (envelope included), or ``[]`` when not ``keep``: a caller
        that only needs them on disk (the gateway's group commit) spares a copy of each.

        Every event is validated before anything is written, so a malformed one fails the whole
        call and writes nothing; a write failure part-way may leave the leading events of the
        batch in the log (each complete and chained), like a crash would. Once this returns the
        lines are in the kernel: a crash of the process keeps them, a power loss may not until
        :meth:`sync` has returned.
        """
        bodies = [prepare_body(item) for item in events]
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
            if not keep and len(bodies) == 1 and self._write_one(*bodies[0]):
                return []
            return self._write(bodies, keep=keep)

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
        pending = self.begin_sync()
        if pending is None:
            return
        error: BaseException | None = None
        try:
            if pending.fd >= 0:
                os.fdatasync(pending.fd)
        except OSError as exc:
            error = exc
        except BaseException as exc:  # interrupted: not durable, and the descriptor is let go
            with contextlib.suppress(AuditError):
                self.finish_sync(pending, exc)
            raise
        self.finish_sync(pending, error)

    def begin_sync(self) -> PendingSync | None:
        """The first half of :meth:`sync`, for a caller that flushes the descriptor itself
        (asynchronously): what to flush, or None when everything written is durable already.

        The caller flushes ``pending.fd`` (``fdatasync``; it is -1 with ``fsync`` off) and then
        calls :meth:`finish_sync` exactly once: until then the descriptor stays open, even if the
        file is rotated away or the log closed meanwhile. The flush covers the writes made before
        this call returned, which are the ones ``pending.target`` names.
        """
        with self._lock:
            if self._closed:
                raise AuditError("closed", f"audit log `{self.path}` is closed")
            target = self._head
            if target.seq <= self._synced.seq and not self._unpublished:
                return None
            try:
                if self._file is None:
                    self._recover()
                assert self._file is not None
                fd = self._file.fileno() if self.fsync else -1
            except OSError as exc:
                raise AuditError("write_failed", f"audit sync failed: {exc.strerror}") from exc
            if fd >= 0:
                self._flushing += 1  # the file stays open until finish_sync (see _retire)
            published, self._unpublished = self._unpublished, []
        return PendingSync(fd, target, published)

    def finish_sync(self, pending: PendingSync, error: BaseException | None = None) -> None:
        """The second half of :meth:`sync`; ``error`` is how the flush failed, or None.

        On success the head sidecar names the flushed head (never one not flushed yet) and the
        checkpoints written before it go to the sinks; on failure, ``AuditError("write_failed")``.
        """
        if error is not None:
            with self._lock:
                self._unpublished = pending.published + self._unpublished
                self._abandon_file()
                self._unpin(pending)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise AuditError("write_failed", f"audit sync failed: {reason}") from error
        with self._lock:
            self._unpin(pending)
            if pending.target.seq > self._synced.seq:
                self._synced = pending.target
                if self._head_fd is None:  # closed meanwhile: close() synced and named the head itself
                    return
                try:
                    self._write_sidecar(pending.target)
                except OSError as exc:
                    raise AuditError("write_failed", f"audit head sidecar write failed: {exc.strerror}") from exc
        if pending.published:
            self._publish(pending.published)

    def close(self) -> None:
        with self._lock:
            active = not self._closed and self._file is not None
            if active and self._signer is not None and self._head.seq > self._checkpointed:
                # The last word of a run: a checkpoint a later truncation cannot fake.
                with contextlib.suppress(AuditError, OSError):
                    self._write([], checkpoint=True)
            if active and (self._head != self._synced or self._unpublished or self.signing_lags):
                with contextlib.suppress(AuditError, OSError):
                    self._sync_locked()
            self._closed = True
            self._release()

    def __enter__(self) -> JsonlAuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals; every method below runs under self._lock -------------------------------

    def _write(
        self, bodies: Sequence[tuple[dict[str, Any], bool]], prefix: bytes = b"", *, checkpoint: bool = False,
        keep: bool = True,
    ) -> list[dict[str, Any]]:
        """Chain and write ``bodies`` (each with its ``tame`` flag, see ``seal``) in one ``write()``."""
        seq, last = self._head.seq, self._head.hash  # the head as it moves: a Head is made once, at the end
        written: list[dict[str, Any]] = []
        lines: list[bytes] = []
        queue = list(bodies)
        signer = self._signer
        due = signer is not None and self._checkpoint_every > 0
        if signer is not None and checkpoint:
            queue.append((checkpoint_body(signer, seq, last), True))
        published: list[Checkpoint] = []
        checkpointed = self._checkpointed
        stamp = self._stamp
        index = 0
        while index < len(queue):
            body, tame = queue[index]
            index += 1
            seq += 1
            full = {**body, "seq": seq, "ts": stamp(), "prev_hash": last, "hash": HASH_SLOT}
            sealed = seal(full, tame=tame)  # one encoding, hashed as those bytes
            if sealed is None:  # not orjson's bytes: the reference encoder's (or its error)
                del full["hash"]
                last, line = reference_line(full)
            else:
                last, out, slot = sealed
                line = b"".join((out[:slot], b'"', last.encode("ascii"), b'"', out[slot + 1 :], b"\n"))
            lines.append(line)
            if keep:
                full["hash"] = last
                written.append({name: full[name] for name in ENVELOPE_FIELDS} | full)
            if body["type"] == "audit.checkpoint":
                vouched = Checkpoint.from_dict(body.get("checkpoint"))
                if vouched is not None:
                    published.append(vouched)
                checkpointed = seq
            elif due and signer is not None and index == len(queue) and seq - checkpointed >= self._checkpoint_every:
                queue.append((checkpoint_body(signer, seq, last), True))
        head = Head(seq, last)
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

    def _write_one(self, body: dict[str, Any], tame: bool) -> bool:
        """:meth:`_write` of one event the caller keeps no copy of, when no checkpoint is due after
        it (else False, nothing done): the gateway's every call, in less code than the general case.
        The same line, byte for byte (tests/policy/audit/data/pre_slot pins it)."""
        seq = self._head.seq + 1
        if body["type"] == "audit.checkpoint" or (
                self._signer is not None and 0 < self._checkpoint_every <= seq - self._checkpointed):
            return False
        full = {**body, "seq": seq, "ts": self._stamp(), "prev_hash": self._head.hash, "hash": HASH_SLOT}
        sealed = seal(full, tame=tame)
        if sealed is None:
            del full["hash"]
            hashed, line = reference_line(full)
        else:
            hashed, out, slot = sealed
            line = b"".join((out[:slot], b'"', hashed.encode("ascii"), b'"', out[slot + 1 :], b"\n"))
        try:
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._write_all(line)
        except OSError as exc:
            self._abandon_file()
            raise AuditError("write_failed", f"audit write failed: {exc.strerror}") from exc
        self._head = Head(seq, hashed)
        return True

    def _sync_locked(self) -> None:
        """:meth:`sync` for callers that hold the lock (recovery, closing); the head is signed."""
        assert self._file is not None
        if self.fsync:
            os.fdatasync(self._file.fileno())
        published, self._unpublished = self._unpublished, []
        if self._head != self._synced or self.signing_lags:
            self._synced = self._head
            self._write_sidecar(self._head, sign=True)
        self._publish(published)

    def _publish(self, published: list[Checkpoint]) -> None:
        for vouched in published:
            for sink in self._sinks:
                with contextlib.suppress(Exception):  # an anchor that fails must not fail the audit write
                    sink.publish(vouched)

    def _write_all(self, data: bytes) -> None:
        """One ``write()`` of ``data`` (looping only on a short write)."""
        assert self._file is not None
        count = self._file.write(data)
        if count != len(data):
            view = memoryview(data)[count or 0 :]
            while view:
                count = self._file.write(view)
                if not count:
                    raise OSError(errno.EIO, "short write")
                view = view[count:]
        self._size += len(data)

    def _write_sidecar(self, head: Head, *, sign: bool = False) -> None:
        """Name ``head`` (durable) in the sidecar, with the latest signed checkpoint.

        The head is re-signed when ``sign``, on the first write of this process and after a
        rotation, and when the signature would otherwise lag by :data:`HEAD_SIGN_EVENTS` events or
        :data:`HEAD_SIGN_INTERVAL` seconds; otherwise the record carries the previous checkpoint
        (schema ``/3``). One signature per interval instead of one per batch: under sequential
        load every call is its own batch, and an Ed25519 signature costs more than the rest of
        the write.
        """
        assert self._head_fd is not None
        if self._signer is not None:
            signed = self._signed
            if signed is None or signed.seq != head.seq or signed.hash != head.hash:
                now = self._monotonic()
                if (sign or self._sign_due or signed is None or head.seq - signed.seq >= self._head_sign_events
                        or now - self._signed_at >= self.head_sign_interval):
                    self._signed = sign_checkpoint(self._signer, head.seq, head.hash)
                    self._signed_json = checkpoint_json(self._signed)
                    self._signed_at = now
                    self._sign_due = head.seq == 0  # an empty log's head vouches for nothing yet
        os.pwrite(self._head_fd, head_record_bytes(head, self._signed, self._signed_json or None), 0)
        if not self._head_sized:  # drop anything a longer foreign file left past the record
            os.ftruncate(self._head_fd, _HEAD_SIZE)
            self._head_sized = True
        # Not synced, on purpose: it is written after the event it names is durable, so a
        # power loss can only leave it behind (or unreadable, recorded on reopening), never
        # ahead; syncing it too would halve append throughput for no added guarantee.

    @property
    def signing_lags(self) -> bool:
        """Whether the sidecar names a durable head its signature does not cover yet."""
        signed = self._signed
        return self._signer is not None and signed is not None and signed.seq != self._synced.seq

    def sign_head(self) -> None:
        """Sign the durable head into the sidecar now, if the signature lags it (an idle writer's call)."""
        with self._lock:
            if self._closed or self._head_fd is None or not self.signing_lags:
                return
            try:
                self._write_sidecar(self._synced, sign=True)
            except OSError as exc:
                raise AuditError("write_failed", f"audit head sidecar write failed: {exc.strerror}") from exc

    def _rotate(self) -> None:
        assert self._file is not None
        if self.fsync:  # a batch may have written to this file since the last sync
            os.fdatasync(self._file.fileno())
        self._retire(self._file)
        self._file = None
        files = log_files(self.path)
        numbers = [int(file.name.rsplit(".", 1)[1]) for file in files if file != self.path]
        target = self.path.with_name(f"{self.path.name}.{max(numbers, default=0) + 1}")
        os.rename(self.path, target)
        self._sign_due = True  # a rotated-away file is covered by a signed head at the next sync
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
                self._retire(self._file)
            self._file = None

    def _retire(self, file: BinaryIO) -> None:
        """Close ``file`` now, or once the flushes begun on it have finished (``_unpin``)."""
        if self._flushing:
            self._retired.append(file)
        else:
            file.close()

    def _unpin(self, pending: PendingSync) -> None:
        if pending.fd < 0:
            return
        self._flushing -= 1
        if not self._flushing and self._retired:
            retired, self._retired = self._retired, []
            for file in retired:
                with contextlib.suppress(OSError):
                    file.close()

    def _recover(self) -> None:
        files = log_files(self.path)
        tail = scan_tail(files, self.path)
        self._head = tail.head
        if not self._checkpointed:
            self._checkpointed = tail.head.seq
        self._open_current()
        record = read_head_record(self.path)
        recorded = record.head if isinstance(record, HeadRecord) else record
        reason = sidecar_disagreement(recorded, tail.head)
        if reason is None and self._signer is not None and isinstance(record, HeadRecord) and tail.head.seq > 0:
            reason = unvouched(record, files, tail.head, self._verifier)
        torn = tail.fragment if tail.fragment and not tail.fragment_is_event else b""
        prefix = b"\n" if tail.fragment else b""
        if reason is None and not torn:
            if prefix:
                self._append_raw(prefix)
            lagging = isinstance(record, HeadRecord) and self._signer is not None and record.lag > 0
            if recorded != tail.head or lagging:
                # What a crashed process wrote may still be only in the page cache: make it
                # durable before the sidecar names it (signed: a run starts with no lag).
                if self.fsync:
                    assert self._file is not None
                    os.fdatasync(self._file.fileno())
                self._write_sidecar(tail.head, sign=True)
            self._synced = tail.head
            return
        sidecar = {"seq": recorded.seq, "hash": recorded.hash} if isinstance(recorded, Head) else None
        body = recovered_body(reason or "torn_tail", torn, sidecar)
        self._write([(body, True)], prefix=prefix)
        self._sync_locked()

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
