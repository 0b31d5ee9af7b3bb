"""Intent before effect: a merge whose intent cannot be audited does not happen; one whose later
events fail is live, said to be live, and completed by recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from negotiation.proposal import ProposalStatus
from negotiation.suggest import vet_suggestion
from policy import load_model_keys_text
from tests.negotiation.support import CONFIG, MODEL_KEYS, NOW, World, in_hours, make_world

SAFE = f"rules:\n  - model: gpt-4o\n    allow_tools: [search.query]\n    expires: {in_hours(2)}\n"


def failing_at(world: World, kind: str) -> None:
    real = world.service._audit

    def audit(type_: str, payload: object) -> None:
        if type_ == kind:
            raise OSError("disk full")
        real(type_, payload)  # type: ignore[arg-type]

    world.service._audit = audit  # type: ignore[method-assign]


@pytest.mark.parametrize("kind", ["proposal.approved", "proposal.merge_intent"])
def test_when_the_intent_cannot_be_audited_nothing_changes_now_or_after_recovery(tmp_path: Path, kind: str) -> None:
    world = make_world(tmp_path)
    version = world.live.current.version
    failing_at(world, kind)

    outcome = world.service.propose("gpt-4o", SAFE, "search")

    assert outcome.status == "rejected"
    assert "audit_unavailable" in {v.code for v in outcome.verdicts if not v.ok}
    assert world.live.current.version == version and len(world.repo.contracts()) == version
    assert world.store.get(outcome.proposal_id).status is ProposalStatus.REJECTED
    restarted = make_world(tmp_path)
    assert restarted.service.recover() == ()
    assert restarted.live.current.version == version


def test_when_the_merged_event_fails_the_change_is_live_the_proposer_is_told_and_recovery_audits_it(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path)
    version = world.live.current.version
    failing_at(world, "proposal.merged")

    outcome = world.service.propose("gpt-4o", SAFE, "search")

    assert outcome.status == "approved" and outcome.version == version + 1
    assert "audit_delayed" in {v.code for v in outcome.verdicts}
    assert world.live.current.version == version + 1
    assert world.store.get(outcome.proposal_id).status is ProposalStatus.APPROVED
    assert world.types()[-1] == "proposal.merge_intent"

    restarted = make_world(tmp_path)
    (done,) = restarted.service.recover()
    assert done.id == outcome.proposal_id and done.status is ProposalStatus.MERGED
    assert restarted.types() == ["proposal.merged", "policy.activated"]
    assert len(restarted.repo.contracts()) == version + 1  # never committed twice


def test_a_reviewers_approval_that_cannot_be_audited_is_refused_and_stays_pending(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = world.service.propose("gpt-4o", "rules:\n  - model: gpt-4o\n    allow_tools: [fs.delete]\n", "x")
    failing_at(world, "proposal.approved")

    with pytest.raises(Exception) as caught:
        world.service.approve(outcome.proposal_id, reviewer="alice")

    assert getattr(caught.value, "code", None) == "audit_unavailable"
    assert world.store.get(outcome.proposal_id).status is ProposalStatus.PENDING


def test_refusals_are_rate_limited_per_identity_and_not_stored_past_the_limit(tmp_path: Path) -> None:
    from dataclasses import replace

    world = make_world(tmp_path, config=replace(CONFIG, max_refused_per_window=2))
    codes = [world.service.propose("gpt-4o", "rules: []\n", "empty").verdicts[0].code for _ in range(4)]
    assert codes == ["empty_snippet", "empty_snippet", "rate_limited", "rate_limited"]
    assert len(world.store.list()) == 2
    # Another identity is not affected, and the window slides.
    assert world.service.propose("claude", "rules: []\n", "empty").verdicts[0].code == "empty_snippet"
    world.clock.advance(minutes=61)
    assert world.service.propose("gpt-4o", "rules: []\n", "empty").verdicts[0].code == "empty_snippet"


def test_a_secret_in_a_snippet_is_refused_and_stored_masked(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    snippet = (
        "rules:\n  - model: gpt-4o\n    allow_tools: [search.query]\n"
        f"    when: {{token: {{equals: AKIAIOSFODNN7EXAMPLE}}}}\n    expires: {in_hours(2)}\n"
    )

    outcome = world.service.propose("gpt-4o", snippet, "needs the key AKIAIOSFODNN7EXAMPLE")

    assert outcome.status == "rejected" and "secret_in_snippet" in {v.code for v in outcome.verdicts}
    stored = world.store.get(outcome.proposal_id)
    assert "AKIAIOSFODNN7EXAMPLE" not in stored.yaml + stored.justification
    assert stored.original_digest is not None
    assert all("AKIAIOSFODNN7EXAMPLE" not in str(payload) for _, payload in world.events)


def test_a_suggested_grant_is_completed_with_a_near_expiry_and_judged() -> None:
    keys = load_model_keys_text(MODEL_KEYS, "model_keys.yaml")
    from policy import load_policy_text

    live = load_policy_text("rules: []\n", "p.yaml")
    ok = vet_suggestion({"model": "gpt-4o", "allow_tools": ["search.query"]}, model_id="gpt-4o", live=live,
                        keys=keys, config=CONFIG, session_risk=0.0, now=NOW)
    wide = vet_suggestion({"model": "gpt-4o", "allow_tools": ["fs.delete"]}, model_id="gpt-4o", live=live,
                          keys=keys, config=CONFIG, session_risk=0.0, now=NOW)
    assert ok is not None and ok.auto_approvable and ok.rule["expires"] == "2030-06-01T13:00:00Z"
    assert wide is not None and not wide.auto_approvable and wide.codes == ("outside_envelope",)
    assert "reviewer" in wide.sentence()
