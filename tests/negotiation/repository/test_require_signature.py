"""With require_signature, nothing unsigned is loaded or committed."""

from __future__ import annotations

import pytest

from negotiation.errors import PolicyTamperedError, SigningError
from tests.negotiation.repository.support import (
    OTHER_SECRET,
    Env,
    policy,
    policy_text,
)


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

