from __future__ import annotations

import threading
from pathlib import Path

import pytest

from negotiation.errors import InvalidStateError, MergeConflictError, NegotiationError, ProposalNotFoundError
from negotiation.proposal import Proposal, ProposalStatus
from policy import CallRequest, could_allow, evaluate
from tests.negotiation.support import in_hours, make_world

SAFE = f"rules:\n  - model: gpt-4o\n    allow_tools: [search.query]\n    expires: {in_hours(2)}\n"
WIDE = "rules:\n  - id: gpt-writes\n    model: gpt-4o\n    allow_tools: [fs.delete]\n"


def test_an_auto_approved_grant_is_merged_signed_and_live_at_once(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    before = world.live.current
    assert not could_allow(before.policy, world.keys, "gpt-4o", "search.query", now=world.clock())

    outcome = world.service.propose("gpt-4o", SAFE, "need search for research")

    assert outcome.status == "approved"
    assert outcome.version == before.version + 1
    after = world.live.current
    assert after.version == before.version + 1
    assert after.contract is not None and after.contract.signature
    assert after.contract.proposal_id == outcome.proposal_id
    assert after.contract.approver == "guardrail"
    request = CallRequest(model="gpt-4o", server="search", tool="query", arguments={"q": "mcp"})
    assert not evaluate(request, before.policy, world.keys, now=world.clock()).allowed
    assert evaluate(request, after.policy, world.keys, now=world.clock()).allowed
    assert world.repo.load().version == after.version  # committed to the files, not only in memory
    stored = world.store.get(outcome.proposal_id)
    assert stored.status is ProposalStatus.MERGED
    assert stored.contract is not None and stored.contract["signature"] == after.contract.signature
    assert world.types() == [
        "proposal.proposed",
        "proposal.validated",
        "proposal.auto_reviewed",
        "proposal.approved",
        "proposal.merge_intent",
        "proposal.merged",
        "policy.activated",
    ]
    intent = world.events_of("proposal.merge_intent")[0]
    assert intent["digest"] == after.policy.digest and intent["base_version"] == before.version
    activated = world.events_of("policy.activated")[0]
    assert activated["yaml"] == SAFE
    assert activated["justification"] == "need search for research"
    assert activated["model_id"] == "gpt-4o"
    assert activated["contract"]["signature"] == after.contract.signature
    assert activated["verdicts"]


def test_a_widening_waits_then_an_approval_merges_it_as_a_new_signed_version(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    version = world.live.current.version

    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")
    assert outcome.status == "pending"
    assert world.live.current.version == version
    assert [p.id for p in world.service.list("pending")] == [outcome.proposal_id]

    merged = world.service.approve(outcome.proposal_id, reviewer="alice", comment="ok for this sprint")

    assert merged.status is ProposalStatus.MERGED
    assert merged.reviewer == "alice" and merged.comment == "ok for this sprint"
    assert merged.contract is not None
    assert merged.contract["version"] == version + 1
    assert merged.contract["approver"] == "reviewer:alice"
    assert merged.contract["signature"]
    assert world.live.current.version == version + 1
    assert could_allow(world.live.current.policy, world.keys, "gpt-4o", "fs.delete", now=world.clock())
    assert world.repo.verify_chain().ok
    assert world.types()[-4:] == ["proposal.approved", "proposal.merge_intent", "proposal.merged", "policy.activated"]
    assert world.events_of("proposal.merged")[0]["contract"]["signature"] == merged.contract["signature"]


def test_a_rejected_proposal_changes_nothing(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")

    rejected = world.service.reject(outcome.proposal_id, reviewer="bob", comment="too broad")

    assert rejected.status is ProposalStatus.REJECTED
    assert rejected.comment == "too broad"
    assert world.live.current.version == 1
    assert not could_allow(world.live.current.policy, world.keys, "gpt-4o", "fs.delete", now=world.clock())
    assert world.events_of("proposal.rejected")[0]["reviewer"] == "bob"
    with pytest.raises(InvalidStateError):
        world.service.approve(outcome.proposal_id, reviewer="alice")


def test_pending_proposals_expire_after_their_ttl(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")

    world.clock.advance(hours=71)
    assert world.service.expire_pending() == ()
    world.clock.advance(hours=1)
    expired = world.service.expire_pending()

    assert [p.id for p in expired] == [outcome.proposal_id]
    assert world.store.get(outcome.proposal_id).status is ProposalStatus.EXPIRED
    assert world.events_of("proposal.expired")[0]["id"] == outcome.proposal_id
    with pytest.raises(InvalidStateError):
        world.service.approve(outcome.proposal_id, reviewer="alice")


def test_approving_a_proposal_past_its_ttl_expires_it_instead(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")
    world.clock.advance(hours=73)

    with pytest.raises(InvalidStateError):
        world.service.approve(outcome.proposal_id, reviewer="alice")

    assert world.store.get(outcome.proposal_id).status is ProposalStatus.EXPIRED
    assert world.live.current.version == 1


def test_a_kill_between_store_write_and_merge_is_merged_exactly_once_on_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(tmp_path)

    class Killed(BaseException):
        pass

    def crash(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(world.repo, "commit", crash)
    with pytest.raises(Killed):
        world.service.propose("gpt-4o", SAFE, "need search")
    (stuck,) = world.store.list(ProposalStatus.APPROVED)
    assert world.repo.load().version == 1
    world.store.close()

    restarted = make_world(tmp_path)
    recovered = restarted.service.recover()

    assert [p.id for p in recovered] == [stuck.id]
    assert restarted.store.get(stuck.id).status is ProposalStatus.MERGED
    assert restarted.live.current.version == 2
    assert [c.proposal_id for c in restarted.repo.contracts()].count(stuck.id) == 1
    assert restarted.service.recover() == ()
    assert len(restarted.repo.contracts()) == 2


def test_a_kill_after_commit_but_before_marking_merged_is_not_merged_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(tmp_path)
    original_update = world.store.update

    class Killed(BaseException):
        pass

    def crash_on_merged(proposal: Proposal, *, expected: ProposalStatus) -> None:
        if proposal.status is ProposalStatus.MERGED:
            raise Killed
        original_update(proposal, expected=expected)

    monkeypatch.setattr(world.store, "update", crash_on_merged)
    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")
    with pytest.raises(Killed):
        world.service.approve(outcome.proposal_id, reviewer="alice")
    assert world.repo.load().version == 2  # the commit happened
    world.store.close()

    restarted = make_world(tmp_path)
    (recovered,) = restarted.service.recover()

    assert recovered.status is ProposalStatus.MERGED
    assert recovered.contract is not None and recovered.contract["version"] == 2
    assert len(restarted.repo.contracts()) == 2
    assert restarted.live.current.version == 2


def test_approval_merges_into_the_policy_live_now_not_the_one_proposed_against(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    first = world.service.propose("gpt-4o", WIDE, "cleanup job")
    second = world.service.propose(
        "gpt-4o", "rules:\n  - id: gpt-writes-docs\n    model: gpt-4o\n    allow_tools: [docs.write]\n", "docs"
    )

    world.service.approve(second.proposal_id, reviewer="alice")
    world.service.approve(first.proposal_id, reviewer="alice")

    live = world.live.current
    assert live.version == 3
    granted = {tool for rule in live.policy.rules for tool in rule.allow_tools}
    assert {"fs.delete", "docs.write"} <= granted


def test_an_approval_that_no_longer_applies_is_refused_and_stays_pending(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")
    # The operator narrows gpt-4o's key meanwhile; the grant could never take effect now.
    narrowed = make_world(
        tmp_path,
        model_keys='models:\n  gpt-4o: {key: k, tools: ["docs.*"], can_propose: true}\n',
    )

    with pytest.raises(MergeConflictError):
        narrowed.service.approve(outcome.proposal_id, reviewer="alice")

    assert narrowed.store.get(outcome.proposal_id).status is ProposalStatus.PENDING


def test_a_proposer_without_can_propose_is_rejected_and_audited(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    outcome = world.service.propose("intern", SAFE, "please")

    assert outcome.status == "rejected"
    assert [v.code for v in outcome.verdicts] == ["model_not_authorized"]
    rejected = world.events_of("proposal.rejected")
    assert rejected and rejected[0]["model_id"] == "intern"
    # Refused before it was read: only the digest and size are kept, never the payload.
    assert SAFE not in rejected[0]["yaml"] and rejected[0]["size"] == len(SAFE) + len("please")
    assert rejected[0]["original_digest"] in rejected[0]["yaml"]
    assert world.types() == ["proposal.rejected"]


@pytest.mark.parametrize(
    ("yaml_text", "justification"),
    [(SAFE, ""), (SAFE, "   "), (SAFE, None), (42, "why"), (None, "why"), (SAFE, "x" * 5000)],
)
def test_malformed_arguments_are_a_rejection_not_an_exception(
    tmp_path: Path, yaml_text: object, justification: object
) -> None:
    world = make_world(tmp_path)

    outcome = world.service.propose("gpt-4o", yaml_text, justification)

    assert outcome.status == "rejected"
    assert {v.code for v in outcome.verdicts} == {"bad_arguments"}
    assert world.live.current.version == 1


def test_reviewing_an_unknown_proposal_is_not_found(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with pytest.raises(ProposalNotFoundError):
        world.service.approve("prop_000000000000", reviewer="alice")


@pytest.mark.parametrize("reviewer", ["", "  ", "guardrail", "a\nb"])
def test_a_reviewer_name_must_be_real(tmp_path: Path, reviewer: str) -> None:
    world = make_world(tmp_path)
    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")
    with pytest.raises(NegotiationError) as caught:
        world.service.approve(outcome.proposal_id, reviewer=reviewer)
    assert caught.value.code == "bad_request"


def test_concurrent_approvals_merge_once(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")
    results: list[str] = []

    def approve() -> None:
        try:
            world.service.approve(outcome.proposal_id, reviewer="alice")
            results.append("merged")
        except InvalidStateError:
            results.append("refused")

    threads = [threading.Thread(target=approve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == ["merged", "refused", "refused", "refused"]
    assert world.live.current.version == 2


def test_recovery_skips_and_audits_an_approved_proposal_that_no_longer_merges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(tmp_path)

    class Killed(BaseException):
        pass

    def crash(*args: object, **kwargs: object) -> None:
        raise Killed

    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")
    monkeypatch.setattr(world.repo, "commit", crash)
    with pytest.raises(Killed):
        world.service.approve(outcome.proposal_id, reviewer="alice")
    world.store.close()
    # Restarted with gpt-4o's key narrowed: the approved grant can never take effect now.
    restarted = make_world(tmp_path, model_keys='models:\n  gpt-4o: {key: k, tools: ["docs.*"], can_propose: true}\n')

    assert restarted.service.recover() == ()

    assert restarted.store.get(outcome.proposal_id).status is ProposalStatus.APPROVED
    assert restarted.live.current.version == 1
    (failed,) = restarted.events_of("proposal.merge_failed")
    assert failed["id"] == outcome.proposal_id and failed["code"] == "merge_conflict"


@pytest.mark.parametrize(
    ("yaml_text", "justification"),
    [("rules:\n  - model: gpt-4o\n    allow_tools: [a\ud800]\n", "why"), (SAFE, "why \udfff")],
)
def test_lone_surrogates_are_a_rejection_that_is_still_stored(
    tmp_path: Path, yaml_text: str, justification: str
) -> None:
    world = make_world(tmp_path)

    outcome = world.service.propose("gpt-4o", yaml_text, justification)

    assert outcome.status == "rejected"
    assert [v.code for v in outcome.verdicts] == ["bad_arguments"]
    assert "unicode" in outcome.verdicts[0].message
    assert world.store.get(outcome.proposal_id).status is ProposalStatus.REJECTED


def test_a_review_comment_with_a_lone_surrogate_is_stored_escaped(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = world.service.propose("gpt-4o", WIDE, "cleanup job")

    rejected = world.service.reject(outcome.proposal_id, reviewer="bob", comment="no \ud800")

    assert world.store.get(outcome.proposal_id).comment == rejected.comment == "no \\ud800"


def test_a_model_cannot_flood_reviewers_with_pending_proposals(tmp_path: Path) -> None:
    from dataclasses import replace

    world = make_world(tmp_path)
    world.service.config = replace(world.service.config, max_pending_per_model=2)
    outcomes = [world.service.propose("gpt-4o", WIDE, f"attempt {i}") for i in range(3)]
    assert [o.status for o in outcomes] == ["pending", "pending", "rejected"]
    assert [v.code for v in outcomes[2].verdicts] == ["too_many_pending"]
    assert len(world.service.list("pending")) == 2
