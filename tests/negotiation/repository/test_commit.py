"""A first load bootstraps a signed version one; commits chain versions, archive them and write
the live file; operator edits are recorded as versions of their own."""

from __future__ import annotations

import pytest

from negotiation.errors import RepositoryError
from policy import PolicyLoadError, load_policy_text
from tests.negotiation.repository.support import (
    Env,
    policy,
    policy_text,
)


def test_first_load_bootstraps_version_one_signed_and_archived(env: Env) -> None:
    active = env.repo().load()
    assert active.version == 1
    assert active.contract is not None
    assert active.contract.approver == "bootstrap"
    assert active.contract.parent_digest is None
    assert active.contract.signature is not None
    assert active.policy.digest == policy("fs.read").digest
    assert env.archives() == [f"v1-{active.digest.removeprefix('sha256:')[:12]}.yaml"]
    # The operator's text, comment included, is what was archived.
    assert "written by hand" in (env.state / "policies" / env.archives()[0]).read_text()


def test_loading_an_unchanged_file_again_records_nothing(env: Env) -> None:
    repo = env.repo()
    first = repo.load()
    again = env.repo().load()
    assert again.version == 1 and again.contract == first.contract
    assert len(repo.contracts()) == 1


def test_commit_increments_version_links_parent_and_writes_the_live_file(env: Env) -> None:
    repo = env.repo()
    v1 = repo.load()
    v2 = repo.commit(policy("fs.read", "fs.list"), proposal_id="p-1", justification="list dirs", approver="guardrail")
    v3 = repo.commit(policy("fs.*"), proposal_id="p-2", justification=None, approver="reviewer:alice")
    assert (v2.version, v3.version) == (2, 3)
    assert v2.contract is not None and v3.contract is not None
    assert v2.contract.parent_digest == v1.digest
    assert v3.contract.parent_digest == v2.digest
    assert v3.contract.approver == "reviewer:alice" and v2.contract.proposal_id == "p-1"
    assert load_policy_text(env.live.read_text()).digest == v3.digest
    assert repo.head() == v3.contract
    assert [c.version for c in repo.contracts()] == [1, 2, 3]
    assert env.repo().load().version == 3


def test_archive_returns_each_version_for_explain(env: Env) -> None:
    repo = env.repo()
    v1 = repo.load()
    v2 = repo.commit(policy("fs.list"), proposal_id=None, justification=None, approver="operator")
    fresh = env.repo()  # no cache: read from the archive files
    old, new = fresh.get_policy(v1.digest), fresh.get_policy(v2.digest)
    assert old is not None and old.digest == v1.digest and old.canonical() == v1.policy.canonical()
    assert new is not None and new.digest == v2.digest
    assert fresh.get_policy("sha256:" + "0" * 64) is None


def test_operator_edit_is_recorded_as_a_new_signed_version_and_the_file_kept(env: Env) -> None:
    repo = env.repo()
    v1 = repo.load()
    edited = policy_text("fs.read", "fs.stat", comment="operator added stat")
    env.live.write_text(edited)
    v2 = repo.load()
    assert v2.version == 2
    assert v2.contract is not None
    assert v2.contract.approver == "operator" and v2.contract.parent_digest == v1.digest
    assert v2.contract.signature is not None
    assert env.live.read_text() == edited  # not rewritten: the comment survives
    assert env.repo().verify_chain().ok


def test_without_a_signer_versions_are_recorded_unsigned(env: Env) -> None:
    repo = env.repo(sign=False, verify=False)
    active = repo.load()
    assert active.contract is not None and active.contract.signature is None
    report = repo.verify_chain()
    assert report.ok and not report.signatures_checked


def test_commit_refuses_a_moved_base_and_an_unrecorded_edit(env: Env) -> None:
    repo = env.repo()
    v1 = repo.load()
    repo.commit(policy("a"), proposal_id=None, justification=None, approver="guardrail")
    with pytest.raises(RepositoryError) as info:
        repo.commit(policy("b"), proposal_id=None, justification=None, approver="guardrail", base_digest=v1.digest)
    assert info.value.code == "policy_conflict"

    env.live.write_text(policy_text("hand", "edit"))
    with pytest.raises(RepositoryError) as info:
        repo.commit(policy("c"), proposal_id=None, justification=None, approver="guardrail")
    assert info.value.code == "policy_conflict"
    assert env.live.read_text() == policy_text("hand", "edit")
    assert len(repo.contracts()) == 2


def test_a_live_file_that_does_not_load_raises_and_records_nothing(env: Env) -> None:
    repo = env.repo()
    repo.load()
    env.live.write_text("rules:\n  - id: x\n    allow_tool: [oops]\n")
    with pytest.raises(PolicyLoadError):
        repo.load()
    assert len(repo.contracts()) == 1

