"""Where proposals live between the model asking and a reviewer deciding.

``ProposalStore`` is the seam; ``SqliteProposalStore`` is the one implementation, on the
standard library's ``sqlite3``. The database runs in WAL mode with ``synchronous=FULL``, so a
write that has returned survives the process being killed at any moment, and the running
gateway and a reviewer's CLI can share one file. Every status change is a compare-and-set
on the previous status inside one ``BEGIN IMMEDIATE`` transaction: whoever decides first
wins and the other gets ``InvalidStateError``, in one process or across several.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from negotiation.errors import InvalidStateError, ProposalNotFoundError
from negotiation.guardrails import Verdict
from negotiation.merge import DiffEntry
from negotiation.proposal import Proposal, ProposalStatus
from negotiation.sqlite import immediate, open_store

__all__ = ["ProposalStore", "SqliteProposalStore"]


class ProposalStore(Protocol):
    """Durable proposals. Every method returns only after the change is on disk."""

    def add(self, proposal: Proposal) -> None: ...

    def get(self, proposal_id: str) -> Proposal: ...

    def list(self, status: ProposalStatus | None = None) -> tuple[Proposal, ...]: ...

    def count(self, model_id: str, status: ProposalStatus, *, since: datetime | None = None) -> int:
        """How many of ``model_id``'s proposals have ``status`` (created at or after ``since``)."""
        ...

    def update(self, proposal: Proposal, *, expected: ProposalStatus) -> None:
        """Replace the stored proposal if its status is still ``expected``."""
        ...

    def expire_pending(self, now: datetime) -> tuple[Proposal, ...]:
        """Mark pending proposals whose ``expires_at`` has passed as expired; return them."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS proposals (
    id           TEXT PRIMARY KEY,
    model_id     TEXT NOT NULL,
    yaml         TEXT NOT NULL,
    justification TEXT NOT NULL,
    status       TEXT NOT NULL
                 CHECK (status IN ('pending', 'approved', 'rejected', 'expired', 'merged')),
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    verdicts     TEXT NOT NULL,
    diff         TEXT NOT NULL,
    reviewer     TEXT,
    comment      TEXT NOT NULL DEFAULT '',
    decided_at   TEXT,
    contract     TEXT,
    session_risk REAL NOT NULL DEFAULT 0,
    original_digest TEXT
);
CREATE INDEX IF NOT EXISTS proposals_by_status ON proposals (status, expires_at);
CREATE INDEX IF NOT EXISTS proposals_by_model ON proposals (model_id, status, created_at);
"""
# Columns added after the first release, for databases created before them.
_ADDED_COLUMNS = {"original_digest": "TEXT"}

_COLUMNS = (
    "id, model_id, yaml, justification, status, created_at, expires_at, verdicts, diff, "
    "reviewer, comment, decided_at, contract, session_risk, original_digest"
)


def _ts(value: datetime) -> str:
    # One fixed-width UTC form, so that text comparison in SQL is time comparison.
    if value.tzinfo is None:
        raise ValueError("proposal timestamps must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _row(p: Proposal) -> tuple[Any, ...]:
    return (
        p.id,
        p.model_id,
        p.yaml,
        p.justification,
        p.status.value,
        _ts(p.created_at),
        _ts(p.expires_at),
        json.dumps([v.to_dict() for v in p.verdicts], sort_keys=True),
        json.dumps([d.to_dict() for d in p.diff], sort_keys=True),
        p.reviewer,
        p.comment,
        _ts(p.decided_at) if p.decided_at else None,
        json.dumps(dict(p.contract), sort_keys=True) if p.contract is not None else None,
        p.session_risk,
        p.original_digest,
    )


def _proposal(row: sqlite3.Row) -> Proposal:
    contract: Mapping[str, Any] | None = json.loads(row["contract"]) if row["contract"] else None
    return Proposal(
        id=row["id"],
        model_id=row["model_id"],
        yaml=row["yaml"],
        justification=row["justification"],
        status=ProposalStatus(row["status"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        expires_at=datetime.fromisoformat(row["expires_at"]),
        verdicts=tuple(Verdict.from_dict(v) for v in json.loads(row["verdicts"])),
        diff=tuple(DiffEntry.from_dict(d) for d in json.loads(row["diff"])),
        reviewer=row["reviewer"],
        comment=row["comment"],
        decided_at=datetime.fromisoformat(row["decided_at"]) if row["decided_at"] else None,
        contract=contract,
        session_risk=float(row["session_risk"]),
        original_digest=row["original_digest"],
    )


class SqliteProposalStore:
    """Proposals in one SQLite file; safe to share between threads and processes."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        # One connection guarded by a lock: the service serialises its own work anyway, and
        # a single connection keeps WAL checkpoints simple. Autocommit mode, explicit
        # transactions below.
        self._conn = open_store(self.path, synchronous="FULL", busy_timeout_ms=busy_timeout_ms, rows=True)
        self._lock = threading.Lock()
        with self._lock:
            existing = {row[1] for row in self._conn.execute("PRAGMA table_info(proposals)")}
            for name, kind in _ADDED_COLUMNS.items():
                if existing and name not in existing:
                    self._conn.execute(f"ALTER TABLE proposals ADD COLUMN {name} {kind}")
            self._conn.executescript(_SCHEMA)

    def add(self, proposal: Proposal) -> None:
        with self._lock, immediate(self._conn):
            self._conn.execute(
                f"INSERT INTO proposals ({_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                _row(proposal),
            )

    def get(self, proposal_id: str) -> Proposal:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM proposals WHERE id = ?", (proposal_id,)).fetchone()
        if row is None:
            raise ProposalNotFoundError(f"no proposal `{proposal_id}`")
        return _proposal(row)

    def list(self, status: ProposalStatus | None = None) -> tuple[Proposal, ...]:
        query = f"SELECT {_COLUMNS} FROM proposals"
        params: tuple[str, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (ProposalStatus(status).value,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY created_at, id", params).fetchall()
        return tuple(_proposal(r) for r in rows)

    def count(self, model_id: str, status: ProposalStatus, *, since: datetime | None = None) -> int:
        query = "SELECT COUNT(*) FROM proposals WHERE model_id = ? AND status = ?"
        params: tuple[str, ...] = (model_id, ProposalStatus(status).value)
        if since is not None:
            query += " AND created_at >= ?"
            params += (_ts(since),)
        with self._lock:
            return int(self._conn.execute(query, params).fetchone()[0])

    def update(self, proposal: Proposal, *, expected: ProposalStatus) -> None:
        with self._lock, immediate(self._conn):
            self._compare_and_set(proposal, expected)

    def expire_pending(self, now: datetime) -> tuple[Proposal, ...]:
        expired: list[Proposal] = []
        with self._lock, immediate(self._conn):
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM proposals WHERE status = 'pending' AND expires_at <= ?",
                (_ts(now),),
            ).fetchall()
            for row in rows:
                done = _proposal(row).advance(ProposalStatus.EXPIRED, at=now, reviewer="ttl")
                self._compare_and_set(done, ProposalStatus.PENDING)
                expired.append(done)
        return tuple(expired)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _compare_and_set(self, proposal: Proposal, expected: ProposalStatus) -> None:
        row = _row(proposal)
        cursor = self._conn.execute(
            "UPDATE proposals SET model_id = ?, yaml = ?, justification = ?, status = ?, "
            "created_at = ?, expires_at = ?, verdicts = ?, diff = ?, reviewer = ?, comment = ?, "
            "decided_at = ?, contract = ?, session_risk = ?, original_digest = ? WHERE id = ? AND status = ?",
            (*row[1:], proposal.id, ProposalStatus(expected).value),
        )
        if cursor.rowcount != 1:
            current = self._conn.execute("SELECT status FROM proposals WHERE id = ?", (proposal.id,)).fetchone()
            if current is None:
                raise ProposalNotFoundError(f"no proposal `{proposal.id}`")
            raise InvalidStateError(
                f"proposal `{proposal.id}` is {current['status']}, not {ProposalStatus(expected).value}"
            )
