"""The high-water mark refuses a history rolled back to an older signed version."""

from __future__ import annotations

import json

import pytest

from negotiation.errors import PolicyTamperedError
from negotiation.high_water import HighWater
from negotiation.signing import HmacSigner, HmacVerifier
from tests.negotiation.repository.support import (
    SECRET,
    Env,
    policy,
)


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
