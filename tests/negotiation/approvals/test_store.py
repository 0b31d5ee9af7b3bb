"""Approvals are single-use, bound to one exact call, and expire."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from negotiation.approvals import (
    Approval,
    ApprovalBinding,
    ApprovalError,
    ApprovalStatus,
    HandleSealer,
    MemoryApprovalStore,
    arguments_digest,
)

BINDING = ApprovalBinding("gpt-4o", "s1", "mail", "send", arguments_digest({"to": "bob"}), "sha256:p", 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending(approval_id: str = "a1", binding: ApprovalBinding = BINDING, ttl: float = 60) -> Approval:
    return Approval(approval_id, binding, "d1", ("ask-send",), "operator", "approval required", {"to": "bob"},
                    1000.0, 1000.0 + ttl)


def test_an_approved_call_is_consumed_once() -> None:
    store = MemoryApprovalStore(clock=Clock())
    store.add(pending())
    store.answer("a1", approve=True, by="alice", how="admin_api", comment="ok")
    assert store.consume("a1", BINDING).status is ApprovalStatus.CONSUMED
    with pytest.raises(ApprovalError) as again:
        store.consume("a1", BINDING)
    assert again.value.code == "invalid_state"


def test_a_denied_or_unanswered_approval_cannot_be_consumed() -> None:
    store = MemoryApprovalStore(clock=Clock())
    store.add(pending("a1"))
    store.add(pending("a2"))
    store.answer("a2", approve=False, by="bob", how="cli")
    for approval_id in ("a1", "a2"):
        with pytest.raises(ApprovalError):
            store.consume(approval_id, BINDING)
    with pytest.raises(ApprovalError):
        store.answer("a2", approve=True, by="mallory", how="cli")  # an answer is final


def test_an_approval_past_its_expiry_is_expired_even_if_approved() -> None:
    clock = Clock()
    store = MemoryApprovalStore(clock=clock)
    store.add(pending(ttl=10))
    store.answer("a1", approve=True, by="alice", how="admin_api")
    clock.now += 11
    assert store.get("a1").status is ApprovalStatus.EXPIRED
    with pytest.raises(ApprovalError) as late:
        store.consume("a1", BINDING)
    assert late.value.code == "expired"


_CHANGES = {
    "model": st.sampled_from(["claude", "gpt-4o-mini"]),
    "session": st.text(min_size=1, max_size=8).filter(lambda s: s != "s1"),
    "upstream": st.sampled_from(["mail2", "calendar"]),
    "tool": st.sampled_from(["send_all", "delete"]),
    "arguments_digest": st.dictionaries(st.text(max_size=4), st.integers(), min_size=1).map(arguments_digest),
    "policy_digest": st.just("sha256:other"),
    "policy_version": st.integers(min_value=4, max_value=99),
}


@given(st.sampled_from([f.name for f in fields(ApprovalBinding)]).flatmap(
    lambda name: st.tuples(st.just(name), _CHANGES[name])))
def test_any_change_to_the_bound_call_needs_a_new_approval(change: tuple[str, object]) -> None:
    name, value = change
    store = MemoryApprovalStore(clock=Clock())
    store.add(pending())
    store.answer("a1", approve=True, by="alice", how="admin_api")
    with pytest.raises(ApprovalError) as caught:
        store.consume("a1", replace(BINDING, **{name: value}))
    assert caught.value.code == "binding_mismatch" and name in caught.value.message
    assert store.get("a1").status is ApprovalStatus.APPROVED  # the right call may still use it


def test_pending_approvals_are_capped() -> None:
    store = MemoryApprovalStore(max_pending=2, clock=Clock())
    store.add(pending("a1"))
    store.add(pending("a2"))
    with pytest.raises(ApprovalError) as full:
        store.add(pending("a3"))
    assert full.value.code == "too_many_pending"


def test_handles_are_mac_bound_to_the_model_and_the_key(tmp_path: Path) -> None:
    sealer = HandleSealer.from_state_dir(tmp_path)
    assert (tmp_path / "approvals.key").stat().st_mode & 0o777 == 0o600
    handle = sealer.seal("a1", "gpt-4o")
    assert sealer.open(handle, "gpt-4o") == "a1"
    assert HandleSealer.from_state_dir(tmp_path).open(handle, "gpt-4o") == "a1"  # the key persists
    forgeries = [
        handle.replace("a1", "a2"), handle[:-1] + ("0" if handle[-1] != "0" else "1"), "sga1.a1.", "sg1.x.y",
        None, 7, "sga1.a1." + "0" * 32,
    ]
    for forged in forgeries:
        with pytest.raises(ApprovalError) as caught:
            sealer.open(forged, "gpt-4o")
        assert caught.value.code == "forged"
    with pytest.raises(ApprovalError):
        sealer.open(handle, "claude")  # another model cannot use it
    with pytest.raises(ApprovalError):
        HandleSealer(b"k" * 32).open(handle, "gpt-4o")
