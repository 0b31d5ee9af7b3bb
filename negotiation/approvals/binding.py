"""What one approval is bound to, and the approval record itself.

An approval says yes to exactly one call: this model identity, on this session, to this
upstream's tool, with arguments whose digest is this, under this policy. Anything else -
other arguments, another session, a changed policy - needs a new approval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from policy.canonical import digest
from policy.redact import digest as value_digest

__all__ = ["LIVE", "MODES", "WAITING_MODES", "Approval", "ApprovalBinding", "ApprovalStatus", "arguments_digest"]


def arguments_digest(arguments: Any) -> str:
    """``sha256:`` of the canonical JSON of the arguments (the audit log's ``arguments_digest``)."""
    return value_digest(arguments)


@dataclass(frozen=True)
class ApprovalBinding:
    """The exact call an approval is for; two calls share an approval only if these are equal."""

    model: str
    session: str
    upstream: str
    tool: str
    arguments_digest: str
    policy_digest: str
    policy_version: int | None

    @property
    def digest(self) -> str:
        return digest(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: ApprovalBinding) -> list[str]:
        """Names of the fields in which ``other`` differs (empty when it is the same call)."""
        mine, theirs = asdict(self), asdict(other)
        return [name for name in mine if mine[name] != theirs[name]]


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CONSUMED = "consumed"
    ABANDONED = "abandoned"  # the call waiting for it died with its gateway process


LIVE = (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)

# How the asking call waits for the answer. ``wait`` and ``elicitation`` hold a running request,
# so they die with the process; ``input_required`` and ``pending`` end the request and hand the
# client a sealed handle to come back with, so they survive a restart.
MODES = ("wait", "elicitation", "input_required", "pending")
WAITING_MODES = ("wait", "elicitation")


@dataclass(frozen=True)
class Approval:
    """One approval request and what became of it. ``arguments`` is the redacted view shown to approvers."""

    id: str
    binding: ApprovalBinding
    decision_id: str
    rules: tuple[str, ...]
    approver: str
    reason: str
    arguments: Mapping[str, Any]
    created_at: float
    expires_at: float
    status: ApprovalStatus = ApprovalStatus.PENDING
    answered_by: str | None = None
    answered_how: str | None = None
    comment: str | None = None
    answered_at: float | None = None
    mode: str = "wait"

    @property
    def live(self) -> bool:
        """Still answerable or usable (pending, or approved and not yet consumed)."""
        return self.status in LIVE

    def to_record(self) -> dict[str, Any]:
        """Everything, for a store (the inverse of :meth:`from_record`)."""
        record = asdict(self)
        record["status"] = self.status.value
        record["rules"] = list(self.rules)
        record["arguments"] = dict(self.arguments)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Approval:
        fields = dict(record)
        fields["binding"] = ApprovalBinding(**fields["binding"])
        fields["status"] = ApprovalStatus(fields["status"])
        fields["rules"] = tuple(fields["rules"])
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "decision_id": self.decision_id,
            "model": self.binding.model,
            "session": self.binding.session,
            "upstream": self.binding.upstream,
            "tool": f"{self.binding.upstream}.{self.binding.tool}",
            "arguments": dict(self.arguments),
            "arguments_digest": self.binding.arguments_digest,
            "policy_digest": self.binding.policy_digest,
            "policy_version": self.binding.policy_version,
            "rules": list(self.rules),
            "approver": self.approver,
            "reason": self.reason,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "answered_by": self.answered_by,
            "answered_how": self.answered_how,
            "comment": self.comment,
            "answered_at": self.answered_at,
            "mode": self.mode,
        }
