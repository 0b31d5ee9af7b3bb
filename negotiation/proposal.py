"""A policy proposal as a value, and the only moves its status may make.

A proposal is never edited in place: every step returns a new frozen ``Proposal`` and the
store persists it with a compare-and-set on the previous status, so two reviewers (or the
gateway and a CLI process) cannot both decide the same proposal.

    pending ──► approved ──► merged        (auto-approved proposals are stored as
       │           └──────► rejected        approved and merged at once; rejected when
       │                                    the merge's intent cannot be audited)
       ├──────► rejected
       └──────► expired

``rejected``, ``expired`` and ``merged`` are final.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from negotiation.errors import InvalidStateError
from negotiation.guardrails import Verdict
from negotiation.merge import DiffEntry

__all__ = ["TRANSITIONS", "Proposal", "ProposalStatus", "new_proposal_id"]


class ProposalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    MERGED = "merged"


TRANSITIONS: Mapping[ProposalStatus, frozenset[ProposalStatus]] = {
    ProposalStatus.PENDING: frozenset({ProposalStatus.APPROVED, ProposalStatus.REJECTED, ProposalStatus.EXPIRED}),
    # approved -> rejected only when the merge is aborted because its intent could not be
    # audited: nothing was committed, and recovery must not merge it later.
    ProposalStatus.APPROVED: frozenset({ProposalStatus.MERGED, ProposalStatus.REJECTED}),
    ProposalStatus.REJECTED: frozenset(),
    ProposalStatus.EXPIRED: frozenset(),
    ProposalStatus.MERGED: frozenset(),
}


def new_proposal_id() -> str:
    """``prop_`` and 12 random hex digits: unguessable enough to be used in URLs."""
    return "prop_" + secrets.token_hex(6)


@dataclass(frozen=True)
class Proposal:
    """One proposed policy change and everything decided about it."""

    id: str
    model_id: str
    yaml: str
    justification: str
    status: ProposalStatus
    created_at: datetime
    expires_at: datetime
    verdicts: tuple[Verdict, ...] = ()
    diff: tuple[DiffEntry, ...] = ()
    reviewer: str | None = None
    comment: str = ""
    decided_at: datetime | None = None
    # The signed contract (``Contract.to_dict()``) once merged; plain JSON so the store and
    # the audit log need no knowledge of the signing module.
    contract: Mapping[str, Any] | None = field(default=None, compare=False)
    session_risk: float = 0.0
    # The digest of the text exactly as the model sent it (``yaml`` and ``justification``
    # are stored redacted).
    original_digest: str | None = None

    def advance(
        self,
        to: ProposalStatus,
        *,
        at: datetime,
        reviewer: str | None = None,
        comment: str | None = None,
        contract: Mapping[str, Any] | None = None,
    ) -> Proposal:
        """Return this proposal moved to ``to``; raises ``InvalidStateError`` for a move the
        status machine does not allow."""
        if to not in TRANSITIONS[self.status]:
            raise InvalidStateError(f"proposal `{self.id}` is {self.status.value}; it cannot become {to.value}")
        return replace(
            self,
            status=to,
            # A merge keeps the reviewer's decision time; every other move is a decision.
            decided_at=self.decided_at if to is ProposalStatus.MERGED else at,
            reviewer=self.reviewer if reviewer is None else reviewer,
            comment=self.comment if comment is None else comment,
            contract=self.contract if contract is None else dict(contract),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form shown to reviewers and written to the audit log."""
        return {
            "id": self.id,
            "model_id": self.model_id,
            "yaml": self.yaml,
            "justification": self.justification,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "diff": [d.to_dict() for d in self.diff],
            "reviewer": self.reviewer,
            "comment": self.comment,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "contract": dict(self.contract) if self.contract is not None else None,
            "session_risk": self.session_risk,
            "original_digest": self.original_digest,
        }
