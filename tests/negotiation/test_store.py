from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from negotiation.errors import InvalidStateError, ProposalNotFoundError
from negotiation.guardrails import Verdict
from negotiation.merge import DiffEntry
from negotiation.proposal import Proposal, ProposalStatus, new_proposal_id
from negotiation.store import SqliteProposalStore

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def proposal(**overrides: object) -> Proposal:
    base = Proposal(
        id=new_proposal_id(),
        model_id="gpt-4o",
        yaml="rules:\n  - model: gpt-4o\n    allow_tools: [search.query]\n",
        justification="research — ünïcode too",
        status=ProposalStatus.PENDING,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=72),
        verdicts=(Verdict("valid", True, "snippet parsed"), Verdict("outside_envelope", False, "x")),
        diff=(DiffEntry("gpt-4o", "search.query", "wider", "newly allowed"),),
        session_risk=0.25,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_a_proposal_round_trips_through_the_file(tmp_path: Path) -> None:
    store = SqliteProposalStore(tmp_path / "p.db")
    original = proposal()
    store.add(original)
    store.close()

    reopened = SqliteProposalStore(tmp_path / "p.db")
    loaded = reopened.get(original.id)

    assert loaded == original
    assert loaded.verdicts == original.verdicts and loaded.diff == original.diff


def test_the_database_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = SqliteProposalStore(tmp_path / "p.db")
    # synchronous is per connection: ask the store's own (2 is FULL).
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    store.close()
    with sqlite3.connect(tmp_path / "p.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_update_is_a_compare_and_set_on_the_status(tmp_path: Path) -> None:
    store = SqliteProposalStore(tmp_path / "p.db")
    original = proposal()
    store.add(original)
    approved = original.advance(ProposalStatus.APPROVED, at=NOW, reviewer="alice")
    rejected = original.advance(ProposalStatus.REJECTED, at=NOW, reviewer="bob")

    store.update(approved, expected=ProposalStatus.PENDING)
    with pytest.raises(InvalidStateError):
        store.update(rejected, expected=ProposalStatus.PENDING)

    assert store.get(original.id).status is ProposalStatus.APPROVED
    assert store.get(original.id).reviewer == "alice"


def test_two_handles_on_one_file_see_each_others_decisions(tmp_path: Path) -> None:
    gateway = SqliteProposalStore(tmp_path / "p.db")
    cli = SqliteProposalStore(tmp_path / "p.db")
    original = proposal()
    gateway.add(original)

    cli.update(original.advance(ProposalStatus.REJECTED, at=NOW, reviewer="bob"), expected=ProposalStatus.PENDING)

    assert gateway.get(original.id).status is ProposalStatus.REJECTED
    with pytest.raises(InvalidStateError):
        gateway.update(original.advance(ProposalStatus.APPROVED, at=NOW), expected=ProposalStatus.PENDING)


def test_list_filters_by_status_oldest_first(tmp_path: Path) -> None:
    store = SqliteProposalStore(tmp_path / "p.db")
    older = proposal(created_at=NOW - timedelta(hours=1))
    newer = proposal()
    done = proposal(status=ProposalStatus.REJECTED)
    for item in (newer, done, older):
        store.add(item)

    assert [p.id for p in store.list(ProposalStatus.PENDING)] == [older.id, newer.id]
    assert len(store.list()) == 3


def test_expire_pending_expires_only_overdue_pending_proposals(tmp_path: Path) -> None:
    store = SqliteProposalStore(tmp_path / "p.db")
    overdue = proposal(expires_at=NOW - timedelta(seconds=1))
    fresh = proposal(expires_at=NOW + timedelta(hours=1))
    approved = proposal(status=ProposalStatus.APPROVED, expires_at=NOW - timedelta(hours=1))
    for item in (overdue, fresh, approved):
        store.add(item)

    expired = store.expire_pending(NOW)

    assert [p.id for p in expired] == [overdue.id]
    assert store.get(overdue.id).status is ProposalStatus.EXPIRED
    assert store.get(fresh.id).status is ProposalStatus.PENDING
    assert store.get(approved.id).status is ProposalStatus.APPROVED
    assert store.expire_pending(NOW) == ()


def test_timestamps_compare_as_times_whatever_their_offset(tmp_path: Path) -> None:
    from datetime import timezone

    store = SqliteProposalStore(tmp_path / "p.db")
    plus_two = timezone(timedelta(hours=2))
    # 13:00+02:00 is 11:00 UTC: overdue at NOW-ish 12:00 UTC even though "13" > "12" as text.
    overdue = proposal(expires_at=datetime(2030, 1, 1, 13, 0, tzinfo=plus_two))
    store.add(overdue)

    assert [p.id for p in store.expire_pending(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))] == [overdue.id]


def test_a_missing_proposal_is_not_found(tmp_path: Path) -> None:
    store = SqliteProposalStore(tmp_path / "p.db")
    with pytest.raises(ProposalNotFoundError) as caught:
        store.get("prop_000000000000")
    assert caught.value.code == "not_found"


def test_adding_the_same_id_twice_fails_and_keeps_the_first(tmp_path: Path) -> None:
    store = SqliteProposalStore(tmp_path / "p.db")
    first = proposal()
    store.add(first)
    with pytest.raises(sqlite3.IntegrityError):
        store.add(replace(first, justification="other"))
    assert store.get(first.id).justification == first.justification


_WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from negotiation.proposal import Proposal, ProposalStatus, new_proposal_id
from negotiation.store import SqliteProposalStore

store = SqliteProposalStore(sys.argv[1])
now = datetime.now(UTC)
while True:
    p = Proposal(new_proposal_id(), "gpt-4o", "rules: []", "why", ProposalStatus.PENDING, now, now + timedelta(hours=1))
    store.add(p)
    print(p.id, flush=True)
"""


def test_every_write_that_returned_survives_a_kill_9(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    db = tmp_path / "p.db"
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().strip() for _ in range(25)]
    child.send_signal(signal.SIGKILL)
    child.wait()

    store = SqliteProposalStore(db)
    for proposal_id in acknowledged:
        assert store.get(proposal_id).status is ProposalStatus.PENDING
