from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from negotiation.errors import InvalidStateError
from negotiation.proposal import TRANSITIONS, Proposal, ProposalStatus, new_proposal_id

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def pending() -> Proposal:
    return Proposal(
        id=new_proposal_id(),
        model_id="gpt-4o",
        yaml="rules: []",
        justification="why",
        status=ProposalStatus.PENDING,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=72),
    )


def test_proposal_ids_are_prop_and_twelve_hex_digits_and_unique() -> None:
    ids = {new_proposal_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"prop_[0-9a-f]{12}", i) for i in ids)


def test_the_lifecycle_pending_approved_merged() -> None:
    approved = pending().advance(ProposalStatus.APPROVED, at=NOW, reviewer="alice", comment="fine")
    merged = approved.advance(ProposalStatus.MERGED, at=NOW + timedelta(seconds=1), contract={"version": 2})

    assert merged.status is ProposalStatus.MERGED
    assert merged.reviewer == "alice" and merged.comment == "fine"
    assert merged.decided_at == NOW  # the decision time, not the merge time
    assert merged.contract == {"version": 2}


@pytest.mark.parametrize("final", [ProposalStatus.REJECTED, ProposalStatus.EXPIRED, ProposalStatus.MERGED])
def test_final_states_go_nowhere(final: ProposalStatus) -> None:
    assert TRANSITIONS[final] == frozenset()


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (ProposalStatus.PENDING, ProposalStatus.MERGED),
        (ProposalStatus.APPROVED, ProposalStatus.EXPIRED),
        (ProposalStatus.REJECTED, ProposalStatus.APPROVED),
        (ProposalStatus.EXPIRED, ProposalStatus.APPROVED),
    ],
)
def test_forbidden_moves_raise_invalid_state(start: ProposalStatus, to: ProposalStatus) -> None:
    proposal = pending()
    if start is not ProposalStatus.PENDING:
        via = ProposalStatus.APPROVED if start is ProposalStatus.APPROVED else start
        proposal = proposal.advance(via, at=NOW)
    with pytest.raises(InvalidStateError) as caught:
        proposal.advance(to, at=NOW)
    assert caught.value.code == "invalid_state"


def test_to_dict_is_plain_json() -> None:
    data = pending().to_dict()
    assert data["status"] == "pending"
    assert data["created_at"] == "2030-01-01T00:00:00+00:00"
    assert data["verdicts"] == [] and data["contract"] is None
