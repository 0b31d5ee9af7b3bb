"""A policy contract: who activated which policy version, on top of which parent, and the signature.

One contract per policy version, stored as one JSON line in ``contracts.jsonl``. What is
signed is ``signed_bytes(policy.canonical())``: the canonical JSON (``policy.canonical``'s
sorted-key compact UTF-8 form) of the policy's own canonical form plus every field that
says *why* it is live::

    {"approver", "created_at", "justification", "parent_digest", "policy", "proposal_id", "version"}

``digest`` is not signed separately: it is the hash of ``policy``, which is. ``algorithm``,
``key_id`` and ``signature`` describe the signature and so sit outside it; a verifier
refuses a key id it does not hold.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from negotiation.errors import ContractError
from negotiation.signing import Signer, Verifier
from policy.canonical import canonical_bytes

__all__ = ["Contract", "utc_now"]

_APPROVER = re.compile(r"guardrail|operator|bootstrap|reviewer:\S.*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
# A record written before signing was configured has no signature fields at all.
_OPTIONAL = frozenset({"algorithm", "key_id", "signature"})


def utc_now() -> str:
    """The current time as RFC 3339 UTC with millisecond precision: ``2025-01-31T12:00:00.000Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Contract:
    """The signed record that makes one policy version live."""

    version: int
    digest: str
    parent_digest: str | None
    proposal_id: str | None
    justification: str | None
    approver: str
    created_at: str
    algorithm: str | None = None
    key_id: str | None = None
    signature: str | None = None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ContractError(f"invalid contract v{self.version}: {'; '.join(problems)}")

    @property
    def signed(self) -> bool:
        return self.signature is not None

    def signed_bytes(self, policy_canonical: dict[str, Any]) -> bytes:
        """The exact bytes a signature covers, for this contract and its policy's canonical form."""
        return canonical_bytes(
            {
                "policy": policy_canonical,
                "version": self.version,
                "parent_digest": self.parent_digest,
                "proposal_id": self.proposal_id,
                "justification": self.justification,
                "approver": self.approver,
                "created_at": self.created_at,
            }
        )

    def sign(self, signer: Signer, policy_canonical: dict[str, Any]) -> Contract:
        """A copy of this contract carrying ``signer``'s signature."""
        return dataclasses.replace(
            self,
            algorithm=signer.algorithm,
            key_id=signer.key_id,
            signature=signer.sign(self.signed_bytes(policy_canonical)),
        )

    def verify(self, verifier: Verifier, policy_canonical: dict[str, Any]) -> bool:
        """Whether the signature is valid for ``policy_canonical``; an unsigned contract is not."""
        if self.signature is None or self.algorithm is None or self.key_id is None:
            return False
        return verifier.verify(self.signed_bytes(policy_canonical), self.signature, self.key_id, self.algorithm)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Contract:
        """Parse a stored record; unknown keys are refused so nothing unsigned rides along."""
        if not isinstance(data, dict):
            raise ContractError("a contract record must be a json object")
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ContractError(f"unknown contract keys: {', '.join(f'`{k}`' for k in unknown)}")
        missing = sorted(name for name in names - set(data) if name not in _OPTIONAL)
        if missing:
            raise ContractError(f"missing contract keys: {', '.join(f'`{k}`' for k in missing)}")
        return cls(**data)


def _optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _problems(c: Contract) -> list[str]:
    problems: list[str] = []
    if not isinstance(c.version, int) or isinstance(c.version, bool) or c.version < 1:
        problems.append("`version` must be a positive integer")
    if not isinstance(c.digest, str) or not _DIGEST.fullmatch(c.digest):
        problems.append("`digest` must be `sha256:<64 hex>`")
    if c.parent_digest is not None and (not isinstance(c.parent_digest, str) or not _DIGEST.fullmatch(c.parent_digest)):
        problems.append("`parent_digest` must be null or `sha256:<64 hex>`")
    if not isinstance(c.approver, str) or not _APPROVER.fullmatch(c.approver):
        problems.append("`approver` must be guardrail, operator, bootstrap or reviewer:<name>")
    if not isinstance(c.created_at, str) or not _RFC3339_UTC.fullmatch(c.created_at):
        problems.append("`created_at` must be rfc 3339 utc (`...Z`)")
    for name in ("proposal_id", "justification", "algorithm", "key_id", "signature"):
        if not _optional_str(getattr(c, name)):
            problems.append(f"`{name}` must be a string or null")
    signature_parts = (c.algorithm, c.key_id, c.signature)
    if any(part is None for part in signature_parts) and any(part is not None for part in signature_parts):
        problems.append("`algorithm`, `key_id` and `signature` must be all set or all null")
    return problems
