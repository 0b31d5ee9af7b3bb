"""The high-water mark: the highest policy version ever accepted, remembered outside its history.

``contracts.jsonl`` proves each version follows the one before, and signatures prove who
vouched for each; neither can tell a history that *ends* at v2 from one cut back to v2.
Someone able to write the state directory could restore an older signed ``contracts.jsonl``
and ``policies.yaml`` together and have a gateway restart on a policy that was replaced on
purpose. The mark remembers ``(version, digest)`` of the newest accepted version, signed
with the policy key, so with ``require_signature`` a lower version is refused on start-up
and by ``securegateway policy verify`` until an operator accepts it
(``securegateway policy verify --accept-rollback``).

The mark lives behind :class:`HighWaterStore`; the embedded default is one JSON file,
written atomically, by default ``<state_dir>/policy-high-water.json``. Keep it where the
state directory's other writers cannot reach (``[policy] high_water_file``) for the check to
hold against someone who can also delete it; docs/audit.md says what it protects.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from negotiation.errors import PolicyTamperedError
from negotiation.signing import Signer, Verifier
from policy.canonical import canonical_bytes

__all__ = ["HIGH_WATER_SCHEMA", "FileHighWaterStore", "HighWater", "HighWaterStore"]

HIGH_WATER_SCHEMA = "securegateway.policy-high-water/1"


@dataclass(frozen=True)
class HighWater:
    """Version ``version`` (digest ``digest``) was accepted; signed by ``key_id`` when signed."""

    version: int
    digest: str
    algorithm: str | None = None
    key_id: str | None = None
    signature: str | None = None

    def signed_bytes(self) -> bytes:
        return canonical_bytes({"schema": HIGH_WATER_SCHEMA, "version": self.version, "digest": self.digest})

    def sign(self, signer: Signer) -> HighWater:
        return HighWater(self.version, self.digest, signer.algorithm, signer.key_id, signer.sign(self.signed_bytes()))

    def verifies(self, verifier: Verifier) -> bool:
        if self.signature is None or self.key_id is None or self.algorithm is None:
            return False
        return verifier.verify(self.signed_bytes(), self.signature, self.key_id, self.algorithm)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": HIGH_WATER_SCHEMA,
            "version": self.version,
            "digest": self.digest,
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "signature": self.signature,
        }


class HighWaterStore(Protocol):
    def read(self) -> HighWater | None:
        """The mark, None if none was ever written; ``PolicyTamperedError`` if it is unreadable."""
        ...

    def write(self, mark: HighWater) -> None: ...


def _optional(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError


class FileHighWaterStore:
    """The mark as one JSON file, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> HighWater | None:
        try:
            data = json.loads(self.path.read_bytes())
            if not isinstance(data, dict) or data.get("schema") != HIGH_WATER_SCHEMA:
                raise ValueError
            version, digest = data["version"], data["digest"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 1 or not isinstance(digest, str):
                raise ValueError
            return HighWater(
                version, digest, _optional(data.get("algorithm")), _optional(data.get("key_id")),
                _optional(data.get("signature")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
            raise PolicyTamperedError(
                f"the policy high-water mark `{self.path}` is unreadable or malformed", code="policy_state_invalid"
            ) from exc

    def write(self, mark: HighWater) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(mark.to_dict(), sort_keys=True).encode("utf-8") + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
