"""The audit log's files on disk: rotated files, the head sidecar, and the scan of the tail.

The head sidecar (``<log>.head``) is one fixed-size record naming the last durable event's
``seq`` and ``hash``; when the log has a signer it also carries the latest signed checkpoint,
of that event (schema ``/2``) or of an earlier one (``/3``: the signature lags the head by at
most the log's signing interval, docs/audit.md). The tail scan finds the head of the chain
in the files themselves, so the two can be compared on open.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from policy.audit.checkpoint import Checkpoint, CheckpointVerifier
from policy.audit.event import GENESIS_HASH, event_hash

HEAD_SCHEMA = "securegateway.audit-head/1"
SIGNED_HEAD_SCHEMA = "securegateway.audit-head/2"
# The head and an earlier signed checkpoint: the unsigned events after it are the signing lag.
LAGGING_HEAD_SCHEMA = "securegateway.audit-head/3"
_HEAD_SCHEMAS = (HEAD_SCHEMA, SIGNED_HEAD_SCHEMA, LAGGING_HEAD_SCHEMA)
# The sidecar is one fixed-size record (JSON padded with spaces), rewritten in place.
_HEAD_SIZE = 512


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
    """What the sidecar says: the head, and the latest signed checkpoint (of the head, or of an
    earlier event when signing lags) when the log has a signer."""

    head: Head
    checkpoint: Checkpoint | None

    @property
    def lag(self) -> int:
        """Events after the signed checkpoint (all of them when there is none)."""
        return self.head.seq - (self.checkpoint.seq if self.checkpoint is not None else 0)


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
        if record.get("schema") not in _HEAD_SCHEMAS:
            raise ValueError
        seq, hash_ = record["seq"], record["hash"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(hash_, str):
            raise ValueError
        if record["schema"] != HEAD_SCHEMA:
            checkpoint = Checkpoint.from_dict(record.get("checkpoint"))
            if checkpoint is None:
                raise ValueError
            if record["schema"] == SIGNED_HEAD_SCHEMA and (checkpoint.seq, checkpoint.hash) != (seq, hash_):
                raise ValueError
            # A lagging checkpoint is taken as it is, even past the head (never written so):
            # what it vouches for is checked against the files by whoever reads it.
    except (ValueError, AttributeError, KeyError, UnicodeDecodeError):
        return "head sidecar is not a valid head record"
    return HeadRecord(Head(seq, hash_), checkpoint)


def head_record_bytes(head: Head, checkpoint: Checkpoint | None = None, signed: bytes | None = None) -> bytes:
    """The sidecar record of ``head`` and the latest ``checkpoint`` (of ``head``, or lagging behind it).

    ``signed`` is ``checkpoint_json(checkpoint)``, passed by a writer that keeps it between records.
    """
    schema = HEAD_SCHEMA
    if checkpoint is not None:
        same = checkpoint.seq == head.seq and checkpoint.hash == head.hash
        schema = SIGNED_HEAD_SCHEMA if same else LAGGING_HEAD_SCHEMA
    hash_ = head.hash
    # The usual record, without a json.dumps per write: a hash of printable ASCII without a quote or a
    # backslash is its own JSON string body (property-tested against the json.dumps form). Joined from
    # parts and padded by slicing, not ``%`` and ``ljust``: written after every group commit, on a cold
    # cache, where those rarer paths of the interpreter cost twice as much (measured, docs/audit.md).
    if type(hash_) is str and hash_.isascii() and hash_.isprintable() and '"' not in hash_ and "\\" not in hash_:
        parts = [_RECORD_START[schema], str(int(head.seq)).encode("ascii"), b',"hash":"', hash_.encode("ascii"), b'"']
    else:
        record = {"schema": schema, "seq": head.seq, "hash": head.hash}
        parts = [json.dumps(record, separators=(",", ":"))[:-1].encode()]
    if checkpoint is not None:
        parts += (b',"checkpoint":', signed if signed is not None else checkpoint_json(checkpoint))
    parts.append(b"}")
    text = b"".join(parts)
    return text + _PADDING[len(text):] if len(text) < _HEAD_SIZE - 1 else text + b"\n"


# ``{"schema":"<schema>","seq":`` for each schema, followed by the seq, the hash and the rest.
_RECORD_START = {schema: b'{"schema":"' + schema.encode("ascii") + b'","seq":' for schema in _HEAD_SCHEMAS}
_PADDING = b" " * (_HEAD_SIZE - 1) + b"\n"


def checkpoint_json(checkpoint: Checkpoint) -> bytes:
    return json.dumps(checkpoint.to_dict(), separators=(",", ":")).encode("ascii")


def hash_at(files: list[Path], seq: int) -> str | None:
    """The ``hash`` the event ``seq`` carries in ``files`` (read from the end), or None if it is not there."""
    for file in reversed(files):
        with file.open("rb") as handle:
            for line in _reverse_lines(handle, os.fstat(handle.fileno()).st_size):
                try:
                    parsed = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    continue
                found = parsed.get("seq") if isinstance(parsed, dict) else None
                if not isinstance(found, int) or isinstance(found, bool):
                    continue
                if found == seq:
                    hash_ = parsed.get("hash")
                    return hash_ if isinstance(hash_, str) else None
                if found < seq:
                    return None
    return None


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
class Tail:
    head: Head
    fragment: bytes  # bytes after the last newline of the current file
    fragment_is_event: bool  # ... which are a complete event missing only its newline


def scan_tail(files: list[Path], current: Path) -> Tail:
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
                    return Tail(Head(parsed["seq"], parsed["hash"]), last, True)
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
                        return Tail(Head(seq, hash_), fragment, fragment_is_event)
    return Tail(GENESIS, fragment, fragment_is_event)


def sidecar_disagreement(recorded: Head | str | None, head: Head) -> str | None:
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


def unvouched(record: HeadRecord, files: list[Path], tail: Head, verifier: CheckpointVerifier | None) -> str | None:
    """Why a sidecar that agrees with the files is not to be trusted, or None.

    A lagging checkpoint vouches for an earlier event, which must still be in the files
    with the hash it signed: otherwise the tail was cut (and maybe rebuilt) past it.
    """
    checkpoint = record.checkpoint
    if checkpoint is None:
        return "head_unsigned"
    if verifier is not None and not checkpoint.verify(verifier):
        return "head_forged"
    if (checkpoint.seq, checkpoint.hash) != (record.head.seq, record.head.hash):
        if checkpoint.seq > tail.seq:
            return "truncated"
        if hash_at(files, checkpoint.seq) != checkpoint.hash:
            return "head_mismatch"
    return None
