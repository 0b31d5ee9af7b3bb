"""verify_chain reports every kind of tampering instead of raising, and load refuses a tampered head or history."""

from __future__ import annotations

import pytest

from negotiation.errors import PolicyTamperedError
from negotiation.repository import PolicyRepository
from tests.negotiation.repository.support import (
    OTHER_SECRET,
    Env,
    policy,
    policy_text,
)


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

