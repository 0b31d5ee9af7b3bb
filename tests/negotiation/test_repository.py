from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from negotiation.errors import PolicyTamperedError, RepositoryError, SigningError
from negotiation.high_water import HighWater
from negotiation.repository import PolicyRepository
from negotiation.signing import HmacSigner, HmacVerifier
from policy import Policy, PolicyLoadError, load_policy_text

SECRET = b"repository test secret, 32 bytes"
OTHER_SECRET = b"a different secret of 32 bytes!!"
STEPS = ("archived", "pending", "appended", "live")


def policy_text(*tools: str, comment: str = "") -> str:
    lines = [f"# {comment}"] if comment else []
    lines += ["rules:", "  - id: docs", "    model: claude", f"    allow_tools: {json.dumps(list(tools))}"]
    return "\n".join(lines) + "\n"


def policy(*tools: str) -> Policy:
    return load_policy_text(policy_text(*tools))


class Env:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.live = root / "policies.yaml"
        self.state = root / "state"
        self.live.write_text(policy_text("fs.read", comment="written by hand"))

    def repo(
        self, *, secret: bytes = SECRET, sign: bool = True, verify: bool = True, require_signature: bool = False
    ) -> PolicyRepository:
        return PolicyRepository(
            self.live,
            self.state,
            signer=HmacSigner(secret) if sign else None,
            verifier=HmacVerifier(secret) if verify else None,
            require_signature=require_signature,
        )

    @property
    def log(self) -> Path:
        return self.state / "contracts.jsonl"

    def archives(self) -> list[str]:
        return sorted(path.name for path in (self.state / "policies").iterdir())

    def rewrite_log(self, change: Callable[[list[dict[str, Any]]], None]) -> None:
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        change(records)
        self.log.write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


class SimulatedCrash(Exception):
    pass


def crash_at(step: str) -> Callable[[str], None]:
    def reached(name: str) -> None:
        if name == step:
            raise SimulatedCrash(step)

    return reached


# -- bootstrap, commit, history -----------------------------------------------------------------


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


# -- verify_chain and tampering -------------------------------------------------------------------


def three_versions(env: Env) -> PolicyRepository:
    repo = env.repo()
    repo.load()
    repo.commit(policy("a"), proposal_id="p1", justification=None, approver="guardrail")
    repo.commit(policy("b"), proposal_id="p2", justification=None, approver="reviewer:bob")
    return repo


def test_verify_chain_passes_an_untouched_history(env: Env) -> None:
    report = three_versions(env).verify_chain()
    assert report == report.__class__(ok=True, versions=3, problems=(), signatures_checked=True)


def test_verify_chain_detects_a_tampered_archive_file(env: Env) -> None:
    three_versions(env)
    archive = env.state / "policies" / env.archives()[1]  # v2
    archive.write_text(policy_text("a", "everything"))
    report = env.repo().verify_chain()
    assert not report.ok
    assert len(report.problems) == 1 and report.problems[0].startswith("v2:")
    assert "hashes to" in report.problems[0]


def test_verify_chain_detects_a_bad_signature_and_a_foreign_key(env: Env) -> None:
    three_versions(env)
    env.rewrite_log(lambda records: records[0].update(approver="operator"))
    report = env.repo().verify_chain()
    assert not report.ok and report.problems[0].startswith("v1: signature does not verify")

    other = env.repo(secret=OTHER_SECRET).verify_chain()
    assert len(other.problems) == 3


def test_verify_chain_detects_a_broken_link_and_a_gap(env: Env) -> None:
    three_versions(env)
    env.rewrite_log(lambda records: records[2].update(parent_digest=records[0]["digest"]))
    report = env.repo().verify_chain()
    assert any("v3: parent" in problem for problem in report.problems)

    env.rewrite_log(lambda records: records.pop(1))
    report = env.repo().verify_chain()
    assert any("version 3, expected 2" in problem for problem in report.problems)


def test_verify_chain_reports_a_malformed_log_instead_of_raising(env: Env) -> None:
    three_versions(env)
    env.log.write_text(env.log.read_text() + "{not json}\n")
    report = env.repo().verify_chain()
    assert not report.ok and "contracts.jsonl:4" in report.problems[0]


def test_load_refuses_a_head_whose_signature_or_archive_was_tampered(env: Env) -> None:
    three_versions(env)
    env.rewrite_log(lambda records: records[2].update(justification="smuggled"))
    with pytest.raises(PolicyTamperedError) as info:
        env.repo().load()
    assert info.value.code == "signature_invalid"

    env.rewrite_log(lambda records: records[2].update(justification=None))
    assert env.repo().load().version == 3
    archive = env.state / "policies" / env.archives()[2]
    archive.write_text(policy_text("b", "more"))
    with pytest.raises(PolicyTamperedError) as info:
        env.repo().load()
    assert info.value.code == "signature_invalid"


def test_load_refuses_a_history_with_a_broken_link(env: Env) -> None:
    three_versions(env)
    env.rewrite_log(lambda records: records[1].update(parent_digest="sha256:" + "1" * 64))
    with pytest.raises(PolicyTamperedError) as info:
        env.repo().load()
    assert info.value.code == "chain_broken"


# -- require_signature ---------------------------------------------------------------------------


def test_require_signature_needs_a_verifier(env: Env) -> None:
    with pytest.raises(SigningError) as info:
        env.repo(verify=False, require_signature=True)
    assert info.value.code == "verifier_required"


def test_require_signature_refuses_an_unsigned_operator_edit_and_keeps_the_head(env: Env) -> None:
    env.repo().load()
    v2 = env.repo().commit(policy("a"), proposal_id=None, justification=None, approver="guardrail")
    strict = env.repo(require_signature=True)
    assert strict.load().version == 2

    env.live.write_text(policy_text("a", "sneaky"))
    with pytest.raises(PolicyTamperedError) as info:
        strict.load()
    assert info.value.code == "policy_unsigned"
    assert strict.head() == v2.contract
    assert len(strict.contracts()) == 2
    served = strict.get_policy(v2.digest)
    assert served is not None and served.digest == v2.digest

    signed = strict.sign_current(justification="reviewed by ops")
    assert signed.version == 3 and signed.contract is not None
    assert signed.contract.approver == "operator" and signed.contract.justification == "reviewed by ops"
    assert strict.load().version == 3


def test_require_signature_refuses_an_unsigned_history_and_a_first_run(env: Env) -> None:
    env.repo(sign=False, verify=False).load()
    with pytest.raises(PolicyTamperedError) as info:
        env.repo(require_signature=True).load()
    assert info.value.code == "policy_unsigned"

    fresh = Env(env.live.parent / "fresh")
    with pytest.raises(PolicyTamperedError) as info:
        fresh.repo(require_signature=True).load()
    assert info.value.code == "policy_unsigned"
    assert fresh.repo(require_signature=True).sign_current().version == 1


def test_require_signature_without_a_signer_cannot_commit(env: Env) -> None:
    env.repo().load()
    verify_only = env.repo(sign=False, require_signature=True)
    with pytest.raises(SigningError) as info:
        verify_only.commit(policy("a"), proposal_id=None, justification=None, approver="guardrail")
    assert info.value.code == "signer_required"
    assert len(verify_only.contracts()) == 1


def test_sign_current_does_nothing_for_an_already_signed_head(env: Env) -> None:
    repo = env.repo()
    v1 = repo.load()
    assert repo.sign_current() == v1
    assert len(repo.contracts()) == 1
    # After a key rotation the head no longer verifies, so signing records it anew.
    rotated = env.repo(secret=OTHER_SECRET)
    assert rotated.sign_current().version == 2


# -- crashes between the write steps -------------------------------------------------------------


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


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrent_commits_from_two_threads_serialize(env: Env) -> None:
    env.repo().load()
    errors: list[BaseException] = []
    per_thread = 8

    def worker(name: str) -> None:
        repo = env.repo()  # its own instance and its own lock file descriptor
        try:
            for i in range(per_thread):
                repo.commit(policy(f"{name}.{i}"), proposal_id=f"{name}-{i}", justification=None, approver="guardrail")
        except BaseException as exc:  # report to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    contracts = env.repo().contracts()
    assert [c.version for c in contracts] == list(range(1, 2 + 2 * per_thread))
    assert {c.proposal_id for c in contracts[1:]} == {f"{n}-{i}" for n in "ab" for i in range(per_thread)}
    assert env.repo().verify_chain().ok
    assert env.repo().load().digest == contracts[-1].digest


# -- no rollback: the high-water mark ------------------------------------------------------------


def _three_versions(env: Env) -> tuple[bytes, str]:
    """v1..v3 committed under require_signature; returns contracts.jsonl and the live text at v2."""
    repo = env.repo()
    repo.load()
    repo.commit(policy("a"), proposal_id=None, justification=None, approver="guardrail")
    at_v2 = (env.log.read_bytes(), env.live.read_text())
    repo.commit(policy("a", "b"), proposal_id=None, justification=None, approver="guardrail")
    return at_v2


def test_a_history_rolled_back_to_an_older_signed_version_is_refused(env: Env) -> None:
    old_log, old_live = _three_versions(env)
    mark = env.repo().high_water()
    assert mark is not None and mark.version == 3 and mark.verifies(HmacVerifier(SECRET))
    env.log.write_bytes(old_log)  # contracts.jsonl and policies.yaml restored together
    env.live.write_text(old_live)
    strict = env.repo(require_signature=True)
    with pytest.raises(PolicyTamperedError) as info:
        strict.load()
    assert info.value.code == "policy_rollback"
    assert "ends at v2" in str(info.value) and "v3" in str(info.value) and "--accept-rollback" in str(info.value)
    report = strict.verify_chain()
    assert not report.ok and any("policy rollback refused" in problem for problem in report.problems)
    # Not lowered by the refused load.
    mark_after = strict.high_water()
    assert mark_after is not None and mark_after.version == 3


def test_accept_rollback_is_the_explicit_way_back(env: Env) -> None:
    old_log, old_live = _three_versions(env)
    env.log.write_bytes(old_log)
    env.live.write_text(old_live)
    strict = env.repo(require_signature=True)
    previous, head = strict.accept_rollback()
    assert previous is not None and previous.version == 3 and head.version == 2
    assert strict.load().version == 2
    assert strict.verify_chain().ok


def test_a_forged_or_unsigned_high_water_mark_is_refused(env: Env) -> None:
    _three_versions(env)
    mark_path = env.state / "policy-high-water.json"
    record = json.loads(mark_path.read_text())
    mark_path.write_text(json.dumps({**record, "version": 1, "signature": None}))
    with pytest.raises(PolicyTamperedError) as info:
        env.repo(require_signature=True).load()
    assert info.value.code == "policy_state_invalid"
    mark_path.write_text("{not json")
    with pytest.raises(PolicyTamperedError) as info:
        env.repo(require_signature=True).load()
    assert info.value.code == "policy_state_invalid"


def test_same_version_with_another_digest_is_a_rollback_too(env: Env) -> None:
    _three_versions(env)
    mark_path = env.state / "policy-high-water.json"
    record = json.loads(mark_path.read_text())
    # A mark for v3 with another digest, validly signed: the history was forked at v3.
    forked = HighWater(3, "sha256:" + "f" * 64).sign(HmacSigner(SECRET))
    mark_path.write_text(json.dumps(forked.to_dict()))
    assert record["digest"] != forked.digest
    with pytest.raises(PolicyTamperedError) as info:
        env.repo(require_signature=True).load()
    assert info.value.code == "policy_rollback"


def test_without_require_signature_the_mark_is_kept_but_not_enforced(env: Env) -> None:
    old_log, old_live = _three_versions(env)
    env.log.write_bytes(old_log)
    env.live.write_text(old_live)
    assert env.repo().load().version == 2
    mark = env.repo().high_water()
    assert mark is not None and mark.version == 3  # never lowered silently
