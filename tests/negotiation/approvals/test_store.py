"""Approvals are single-use, bound to one exact call, and expire - in every store.

Each behaviour runs against the in-memory store and the SQLite default; the SQLite-only
tests at the end reopen the file the way a restarted gateway does."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

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
    SqliteApprovalStore,
    arguments_digest,
)

BINDING = ApprovalBinding("gpt-4o", "s1", "mail", "send", arguments_digest({"to": "bob"}), "sha256:p", 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending(
    approval_id: str = "a1", binding: ApprovalBinding = BINDING, ttl: float = 60, mode: str = "wait"
) -> Approval:
    return Approval(approval_id, binding, "d1", ("ask-send",), "operator", "approval required", {"to": "bob"},
                    1000.0, 1000.0 + ttl, mode=mode)


Factory = Callable[..., Any]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    opened: list[Any] = []

    def factory(clock: Clock | None = None, **options: Any) -> Any:
        clock = clock or Clock()
        if request.param == "memory":
            store: Any = MemoryApprovalStore(clock=clock, **options)
        else:
            store = SqliteApprovalStore(tmp_path_factory.mktemp("approvals") / "approvals.db", clock=clock,
                                        **options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def test_an_approved_call_is_consumed_once(make: Factory) -> None:
    store = make()
    store.add(pending())
    store.answer("a1", approve=True, by="alice", how="admin_api", comment="ok")
    assert store.consume("a1", BINDING).status is ApprovalStatus.CONSUMED
    with pytest.raises(ApprovalError) as again:
        store.consume("a1", BINDING)
    assert again.value.code == "invalid_state"


def test_a_denied_or_unanswered_approval_cannot_be_consumed(make: Factory) -> None:
    store = make()
    store.add(pending("a1"))
    store.add(pending("a2"))
    store.answer("a2", approve=False, by="bob", how="cli")
    for approval_id in ("a1", "a2"):
        with pytest.raises(ApprovalError):
            store.consume(approval_id, BINDING)
    with pytest.raises(ApprovalError):
        store.answer("a2", approve=True, by="mallory", how="cli")  # an answer is final


def test_an_approval_past_its_expiry_cannot_be_used_and_expires_once_when_swept(make: Factory) -> None:
    clock = Clock()
    store = make(clock)
    store.add(pending("a1", ttl=10))
    store.add(pending("a2", ttl=10))
    store.add(pending("a3", ttl=100))
    store.answer("a1", approve=True, by="alice", how="admin_api")
    clock.now += 11
    with pytest.raises(ApprovalError) as late:
        store.consume("a1", BINDING)
    assert late.value.code == "expired"
    with pytest.raises(ApprovalError) as unanswered:
        store.answer("a2", approve=True, by="alice", how="admin_api")
    assert unanswered.value.code == "expired"
    # nothing flips behind the caller's back: the sweep does it, once, and says which
    assert store.get("a1").status is ApprovalStatus.APPROVED
    assert sorted(a.id for a in store.expire_due()) == ["a1", "a2"]
    assert store.expire_due() == []
    assert [store.get(i).status for i in ("a1", "a2", "a3")] == [
        ApprovalStatus.EXPIRED, ApprovalStatus.EXPIRED, ApprovalStatus.PENDING]
    assert store.expire("a1") is None  # already finished


def test_abandon_finishes_only_pending_approvals_of_the_waiting_modes(make: Factory) -> None:
    store = make()
    store.add(pending("w", mode="wait"))
    store.add(pending("e", mode="elicitation"))
    store.add(pending("p", mode="pending"))
    store.add(pending("i", mode="input_required"))
    store.add(pending("ok", mode="wait"))
    store.answer("ok", approve=True, by="alice", how="admin_api")
    assert sorted(a.id for a in store.abandon(("wait", "elicitation"))) == ["e", "w"]
    assert {a.id: a.status.value for a in store.list()} == {
        "w": "abandoned", "e": "abandoned", "p": "pending", "i": "pending", "ok": "approved"}
    assert sorted(a.id for a in store.list(ApprovalStatus.ABANDONED)) == ["e", "w"]
    with pytest.raises(ApprovalError):
        store.answer("w", approve=True, by="alice", how="admin_api")


def test_find_pending_returns_the_open_request_for_exactly_this_call(make: Factory) -> None:
    clock = Clock()
    store = make(clock)
    store.add(pending("p", mode="pending", ttl=10))
    assert store.find_pending(BINDING, "pending").id == "p"
    assert store.find_pending(BINDING, "wait") is None
    assert store.find_pending(replace(BINDING, arguments_digest=arguments_digest({"to": "eve"})), "pending") is None
    clock.now += 11
    assert store.find_pending(BINDING, "pending") is None  # lapsed: a new request
    store.expire_due()
    store.add(pending("q", mode="pending"))
    store.answer("q", approve=True, by="alice", how="admin_api")
    assert store.find_pending(BINDING, "pending") is None  # answered ones are not re-offered


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
    store = MemoryApprovalStore(clock=Clock())  # the transition is shared; the SQLite store runs it too
    store.add(pending())
    store.answer("a1", approve=True, by="alice", how="admin_api")
    with pytest.raises(ApprovalError) as caught:
        store.consume("a1", replace(BINDING, **{name: value}))
    assert caught.value.code == "binding_mismatch" and name in caught.value.message
    assert store.get("a1").status is ApprovalStatus.APPROVED  # the right call may still use it


def test_pending_approvals_are_capped(make: Factory) -> None:
    store = make(max_pending=2)
    store.add(pending("a1"))
    store.add(pending("a2"))
    with pytest.raises(ApprovalError) as full:
        store.add(pending("a3"))
    assert full.value.code == "too_many_pending"


def test_handles_are_mac_bound_to_the_model_the_call_the_expiry_and_the_key(tmp_path: Path) -> None:
    sealer = HandleSealer.from_state_dir(tmp_path)
    assert (tmp_path / "approvals.key").stat().st_mode & 0o777 == 0o600
    approval = pending("a1")
    handle = sealer.seal(approval, "gpt-4o")
    assert sealer.approval_id(handle) == "a1"
    sealer.verify(handle, approval, "gpt-4o")
    HandleSealer.from_state_dir(tmp_path).verify(handle, approval, "gpt-4o")  # the key persists
    for malformed in ("sga1.a1.", "sg1.x.y", None, 7, "sga1..abc", "sga1.a.b.c", "sga1." + "x" * 65 + ".m"):
        with pytest.raises(ApprovalError) as caught:
            sealer.approval_id(malformed)
        assert caught.value.code == "forged"
    forgeries = [handle[:-1] + ("0" if handle[-1] != "0" else "1"), "sga1.a1." + "0" * 32]
    for forged in forgeries:
        with pytest.raises(ApprovalError) as caught:
            sealer.verify(forged, approval, "gpt-4o")
        assert caught.value.code == "forged"
    other_call = replace(approval, binding=replace(BINDING, arguments_digest=arguments_digest({"to": "eve"})))
    for changed, model in ((approval, "claude"), (other_call, "gpt-4o"), (replace(approval, id="a2"), "gpt-4o"),
                           (replace(approval, expires_at=approval.expires_at + 3600), "gpt-4o")):
        with pytest.raises(ApprovalError):
            sealer.verify(handle, changed, model)  # another model, call, id or expiry: not this handle
    with pytest.raises(ApprovalError):
        HandleSealer(b"k" * 32).verify(handle, approval, "gpt-4o")


# ---- SQLite: what a restarted gateway finds ---------------------------------------------------------


def test_the_sqlite_store_keeps_every_state_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "approvals.db"
    clock = Clock()
    first = SqliteApprovalStore(path, clock=clock)
    first.add(pending("used"))
    first.add(pending("waiting", mode="pending"))
    first.add(pending("no"))
    first.answer("used", approve=True, by="alice", how="admin_api", comment="fine")
    first.consume("used", BINDING)
    first.answer("no", approve=False, by="bob", how="cli")
    first.close()
    again = SqliteApprovalStore(path, clock=clock)
    assert {a.id: a.status.value for a in again.list()} == {"used": "consumed", "waiting": "pending", "no": "denied"}
    assert again.get("used").comment == "fine" and again.get("waiting").mode == "pending"
    assert again.get("used") == replace(pending("used"), status=ApprovalStatus.CONSUMED, answered_by="alice",
                                        answered_how="admin_api", comment="fine", answered_at=1000.0)
    with pytest.raises(ApprovalError) as replay:
        again.consume("used", BINDING)  # single use is durable
    assert replay.value.code == "invalid_state"
    again.close()


def test_two_sqlite_connections_racing_to_consume_one_approval_let_exactly_one_win(tmp_path: Path) -> None:
    path = tmp_path / "approvals.db"
    setup = SqliteApprovalStore(path)
    for i in range(20):
        setup.add(replace(pending(f"a{i}"), created_at=0.0, expires_at=4e9))
        setup.answer(f"a{i}", approve=True, by="alice", how="admin_api")
    stores = [SqliteApprovalStore(path), SqliteApprovalStore(path)]
    wins: list[str] = []
    lock = threading.Lock()

    def race(store: SqliteApprovalStore) -> None:
        for i in range(20):
            try:
                store.consume(f"a{i}", BINDING)
            except ApprovalError:
                continue
            with lock:
                wins.append(f"a{i}")

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(wins) == sorted(f"a{i}" for i in range(20))  # each once, none twice
    for store in (setup, *stores):
        store.close()


def test_finished_approvals_are_purged_after_the_keep_window(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteApprovalStore(tmp_path / "approvals.db", clock=clock, keep_seconds=100)
    store.add(pending("old"))
    store.add(pending("live", ttl=10_000))
    store.answer("old", approve=False, by="bob", how="cli")
    clock.now += 101
    store.expire_due()
    assert [a.id for a in store.list()] == ["live"]
    store.close()
