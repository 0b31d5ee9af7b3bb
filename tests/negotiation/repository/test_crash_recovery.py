"""A commit interrupted between any two of its write steps recovers deterministically on the next load."""

from __future__ import annotations

import pytest

from negotiation.errors import RepositoryError
from policy import load_policy_text
from tests.negotiation.repository.support import (
    STEPS,
    Env,
    SimulatedCrash,
    crash_at,
    policy,
    policy_text,
)


@pytest.mark.parametrize("step", STEPS)
def test_a_commit_interrupted_at_any_step_recovers_deterministically(
    env: Env, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = env.repo()
    v1 = repo.load()
    new = policy("fs.read", "fs.write")
    monkeypatch.setattr(repo, "_reached", crash_at(step))
    with pytest.raises(SimulatedCrash):
        repo.commit(new, proposal_id="p-9", justification="needed", approver="guardrail")

    after = env.repo().load()  # a new process
    if step == "archived":  # before the commit point: no trace of it
        assert after.version == 1 and after.digest == v1.digest
        assert env.archives() == [f"v1-{v1.digest.removeprefix('sha256:')[:12]}.yaml"]
    else:  # from the commit point on: completed exactly once
        assert after.version == 2 and after.digest == new.digest
        assert after.contract is not None and after.contract.proposal_id == "p-9"
    assert load_policy_text(env.live.read_text()).digest == after.digest
    assert not (env.state / "pending.json").exists()
    assert len(env.repo().contracts()) == after.version
    assert env.repo().verify_chain().ok
    nxt = env.repo().commit(policy("x"), proposal_id=None, justification=None, approver="guardrail")
    assert nxt.version == after.version + 1


def test_a_torn_contract_line_from_a_crash_mid_append_is_repaired(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = env.repo()
    repo.load()
    monkeypatch.setattr(repo, "_reached", crash_at("pending"))
    with pytest.raises(SimulatedCrash):
        repo.commit(policy("a"), proposal_id=None, justification=None, approver="guardrail")
    pending = (env.state / "pending.json").read_bytes()
    with env.log.open("ab") as log:
        log.write(pending[: len(pending) // 2])  # the append got half-way
    # A reader in the meantime sees only whole records.
    assert len(env.repo().contracts()) == 1
    assert env.repo().load().version == 2
    assert env.log.read_bytes().endswith(b"\n") and len(env.repo().contracts()) == 2
    assert env.repo().verify_chain().ok


def test_a_torn_line_with_no_commit_pending_is_corruption(env: Env) -> None:
    env.repo().load()
    with env.log.open("ab") as log:
        log.write(b'{"version": 2, "dig')
    with pytest.raises(RepositoryError) as info:
        env.repo().load()
    assert info.value.code == "state_corrupt"


def test_an_operator_edit_made_after_a_crash_is_not_overwritten(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = env.repo()
    repo.load()
    monkeypatch.setattr(repo, "_reached", crash_at("appended"))
    with pytest.raises(SimulatedCrash):
        repo.commit(policy("committed"), proposal_id=None, justification=None, approver="guardrail")
    env.live.write_text(policy_text("edited", "after", "crash"))
    after = env.repo().load()
    assert after.version == 3 and after.contract is not None and after.contract.approver == "operator"
    assert after.digest == policy("edited", "after", "crash").digest
    assert [c.approver for c in env.repo().contracts()] == ["bootstrap", "guardrail", "operator"]


def test_recording_an_operator_edit_interrupted_after_the_append_is_not_doubled(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = env.repo()
    repo.load()
    env.live.write_text(policy_text("edit"))
    monkeypatch.setattr(repo, "_reached", crash_at("appended"))
    with pytest.raises(SimulatedCrash):
        repo.load()
    after = env.repo().load()
    assert after.version == 2 and len(env.repo().contracts()) == 2
    assert env.live.read_text() == policy_text("edit")

