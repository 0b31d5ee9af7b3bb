"""The desk audits every lapse exactly once, at the first look after the expiry, and abandons at start-up
only what waited in a request of the previous process. A fake clock makes expiry exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from negotiation.approvals import (
    ApprovalBinding,
    ApprovalError,
    ApprovalStatus,
    HandleSealer,
    SqliteApprovalStore,
    arguments_digest,
)
from policy import CallRequest, evaluate, load_model_keys_text, load_policy_text
from proxy.approval import ApprovalDesk
from tests.proxy.approval.test_gate import KEYS, POLICY

pytestmark = pytest.mark.anyio


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def held_decision() -> Any:
    decision = evaluate(CallRequest("gpt-4o", "mail", "send", {"to": "bob"}, None), load_policy_text(POLICY),
                        load_model_keys_text(KEYS))
    assert decision.reason_code == "approval_required"
    return decision


def binding(note: str) -> ApprovalBinding:
    return ApprovalBinding("gpt-4o", "identity:gpt-4o", "mail", "send", arguments_digest({"to": note}), "sha256:p", 1)


def desk_at(tmp_path: Path, clock: Clock, written: list[dict[str, Any]]) -> ApprovalDesk:
    async def audit(event: dict[str, Any]) -> None:
        written.append(event)

    store = SqliteApprovalStore(tmp_path / "approvals.db", clock=clock)
    return ApprovalDesk(HandleSealer.from_state_dir(tmp_path), audit, store=store, clock=clock)


async def test_a_lapsed_approval_is_expired_and_audited_once_at_the_first_look(tmp_path: Path) -> None:
    clock, written = Clock(), list[dict[str, Any]]()
    desk = desk_at(tmp_path, clock, written)
    asked = await desk.open(binding("a"), held_decision(), {"to": "a"}, mode="input_required")
    clock.now += 59
    assert (await desk.get(asked.id)).status is ApprovalStatus.PENDING
    clock.now += 2  # past the 60 s ttl
    assert (await desk.get(asked.id)).status is ApprovalStatus.EXPIRED
    await desk.sweep()
    await desk.list()
    expired = [e for e in written if e["type"] == "approval.expired"]
    assert len(expired) == 1 and expired[0]["approval_id"] == asked.id
    assert expired[0]["decision_id"] == asked.decision_id and expired[0]["why"] == "nobody answered in time"


async def test_recover_abandons_waiting_calls_and_keeps_handles_of_the_last_process(tmp_path: Path) -> None:
    clock, written = Clock(), list[dict[str, Any]]()
    before = desk_at(tmp_path, clock, written)
    waited = await before.open(binding("w"), held_decision(), {"to": "w"}, mode="wait")
    asked = await before.open(binding("e"), held_decision(), {"to": "e"}, mode="elicitation")
    handed = await before.open(binding("p"), held_decision(), {"to": "p"}, mode="pending")
    before.close()
    after = desk_at(tmp_path, clock, written)  # a new process on the same state_dir
    abandoned = await after.recover()
    assert sorted(a.id for a in abandoned) == sorted([waited.id, asked.id])
    assert (await after.redeem(after.handle(handed), "gpt-4o")).status is ApprovalStatus.PENDING
    events = [e for e in written if e["type"] == "approval.abandoned"]
    assert sorted(e["approval_id"] for e in events) == sorted([waited.id, asked.id])
    assert await after.recover() == []  # once
    after.close()


async def test_asking_twice_for_the_same_pending_call_is_one_request(tmp_path: Path) -> None:
    clock, written = Clock(), list[dict[str, Any]]()
    desk = desk_at(tmp_path, clock, written)
    first = await desk.find_or_open(binding("x"), held_decision(), {"to": "x"}, mode="pending")
    again = await desk.find_or_open(binding("x"), held_decision(), {"to": "x"}, mode="pending")
    other = await desk.find_or_open(binding("y"), held_decision(), {"to": "y"}, mode="pending")
    assert first.id == again.id != other.id
    assert [e["type"] for e in written].count("approval.requested") == 2
    desk.close()


async def test_a_full_store_refuses_before_anything_is_audited(tmp_path: Path) -> None:
    clock, written = Clock(), list[dict[str, Any]]()
    store = SqliteApprovalStore(tmp_path / "approvals.db", clock=clock, max_pending=1)
    desk = ApprovalDesk(HandleSealer.from_state_dir(tmp_path), _appending(written), store=store, clock=clock)
    await desk.open(binding("a"), held_decision(), {"to": "a"}, mode="pending")
    with pytest.raises(ApprovalError) as full:
        await desk.open(binding("b"), held_decision(), {"to": "b"}, mode="pending")
    assert full.value.code == "too_many_pending"
    assert [e["type"] for e in written] == ["approval.requested"]  # only the one that was stored
    assert len(store.list(ApprovalStatus.PENDING)) == 1


async def test_an_approval_another_writer_crowded_out_is_closed_in_the_audit_log(tmp_path: Path) -> None:
    """Two gateways on one state_dir: the other fills the last place while ours audits its request."""
    clock, written = Clock(), list[dict[str, Any]]()
    sealer = HandleSealer.from_state_dir(tmp_path)
    other = ApprovalDesk(sealer, _appending([]), clock=clock,
                         store=SqliteApprovalStore(tmp_path / "approvals.db", clock=clock, max_pending=1))

    async def audit(event: dict[str, Any]) -> None:
        written.append(event)
        if event["type"] == "approval.requested" and len(written) == 1:
            await other.open(binding("other"), held_decision(), {"to": "other"}, mode="pending")

    ours = ApprovalDesk(sealer, audit, clock=clock,
                        store=SqliteApprovalStore(tmp_path / "approvals.db", clock=clock, max_pending=1))
    with pytest.raises(ApprovalError) as full:
        await ours.open(binding("ours"), held_decision(), {"to": "ours"}, mode="pending")
    assert full.value.code == "too_many_pending"
    requested, closed = written
    assert requested["type"] == "approval.requested" and closed["type"] == "approval.expired"
    assert closed["approval_id"] == requested["approval_id"] and "refused" in closed["why"]
    (left,) = ours.store.list(ApprovalStatus.PENDING)  # the other's only; ours was never stored
    assert left.binding == binding("other")
    assert all(a.id != requested["approval_id"] for a in ours.store.list())


def _appending(written: list[dict[str, Any]]) -> Any:
    async def audit(event: dict[str, Any]) -> None:
        written.append(event)

    return audit
