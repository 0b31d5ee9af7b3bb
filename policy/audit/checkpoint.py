"""Signed checkpoints of the audit chain: what makes a cut-off tail detectable.

A hash chain cannot tell its last event from a deleted one, and an unkeyed head sidecar can
be rewritten by whoever truncates the file. A checkpoint is ``(seq, hash)`` of one event
signed with a key the log does not hold: the gateway's policy signing key (Ed25519) or an
HMAC secret kept in the environment. Whoever can edit the files but not use the key can
no longer make a shortened log verify. Checkpoints appear in three places:

* the head sidecar holds the latest one, rewritten after every write;
* an ``audit.checkpoint`` event in the log, every ``checkpoint_every`` events and when the
  log is closed, vouches for the event before it;
* a :class:`CheckpointSink` (an append-only second file, the gateway's stderr log) carries
  them off the log, to an anchor an attacker on the host must also reach.

The signed bytes are the canonical JSON of ``{"schema": CHECKPOINT_SCHEMA, "seq": N,
"hash": "sha256:..."}``. Signer and verifier are seams (``Protocol``) matching
``negotiation.signing``, so this module stays free of key handling.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "CHECKPOINT_SCHEMA",
    "Checkpoint",
    "CheckpointFile",
    "CheckpointSigner",
    "CheckpointSink",
    "CheckpointVerifier",
    "read_checkpoint_file",
    "sign_checkpoint",
]

CHECKPOINT_SCHEMA = "securegateway.audit-checkpoint/1"


class CheckpointSigner(Protocol):
    algorithm: str
    key_id: str

    def sign(self, data: bytes) -> str: ...


class CheckpointVerifier(Protocol):
    def verify(self, data: bytes, signature: str, key_id: str, algorithm: str) -> bool: ...


def _signed_bytes(seq: int, hash_: str) -> bytes:
    text = json.dumps({"hash": hash_, "schema": CHECKPOINT_SCHEMA, "seq": seq}, sort_keys=True, separators=(",", ":"))
    return text.encode("ascii")


@dataclass(frozen=True)
class Checkpoint:
    """Event ``seq`` (whose hash is ``hash``) vouched for by key ``key_id``."""

    seq: int
    hash: str
    algorithm: str
    key_id: str
    signature: str

    def verify(self, verifier: CheckpointVerifier) -> bool:
        """Whether the signature is ``verifier``'s key's; never raises."""
        try:
            return verifier.verify(_signed_bytes(self.seq, self.hash), self.signature, self.key_id, self.algorithm)
        except (TypeError, ValueError, UnicodeEncodeError):
            return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": CHECKPOINT_SCHEMA,
            "seq": self.seq,
            "hash": self.hash,
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: object) -> Checkpoint | None:
        """The checkpoint ``data`` describes, or None if it is not a well-formed one."""
        if not isinstance(data, Mapping) or data.get("schema") != CHECKPOINT_SCHEMA:
            return None
        seq = data.get("seq")
        fields = [data.get(name) for name in ("hash", "algorithm", "key_id", "signature")]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            return None
        if not all(isinstance(value, str) and value for value in fields):
            return None
        hash_, algorithm, key_id, signature = (str(value) for value in fields)
        return cls(seq, hash_, algorithm, key_id, signature)


def sign_checkpoint(signer: CheckpointSigner, seq: int, hash_: str) -> Checkpoint:
    return Checkpoint(seq, hash_, signer.algorithm, signer.key_id, signer.sign(_signed_bytes(seq, hash_)))


class CheckpointSink(Protocol):
    """Where checkpoints go besides the log; ``publish`` is called after the event is durable."""

    def publish(self, checkpoint: Checkpoint) -> None: ...


class CheckpointFile:
    """An append-only JSONL file of checkpoints: keep it where the log's writer cannot rewrite it."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync

    def publish(self, checkpoint: Checkpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(checkpoint.to_dict(), sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)


def read_checkpoint_file(path: str | os.PathLike[str]) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints in the file at ``path``, oldest first, and the lines that were not one."""
    checkpoints: list[Checkpoint] = []
    problems: list[str] = []
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], [f"checkpoint file `{path}` does not exist"]
    except OSError as exc:
        return [], [f"checkpoint file `{path}` is unreadable: {exc.strerror}"]
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        checkpoint = Checkpoint.from_dict(parsed)
        if checkpoint is None:
            if number < len(data.splitlines()) or data.endswith(b"\n"):
                problems.append(f"{Path(path).name}:{number}: not a checkpoint")
            continue  # a torn last line from a crash mid-append
        checkpoints.append(checkpoint)
    return checkpoints, problems
