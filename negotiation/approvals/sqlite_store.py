"""Approvals in SQLite (``<state_dir>/approvals.db``): the default store, surviving restarts.

WAL mode with ``synchronous=FULL``: a transition that has returned survives the process
being killed, so a consumed approval stays consumed and its handle stays refused after a
restart. Each transition reads, applies the pure transition of :mod:`store` and writes back
inside one ``BEGIN IMMEDIATE`` transaction (compare-and-set on the status read), so two
processes or threads racing on one approval cannot both win.

The row keeps the whole record as canonical JSON beside the columns that queries need
(status, mode, binding digest, times). Finished approvals are purged after ``keep_seconds``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from negotiation.approvals.binding import Approval, ApprovalBinding, ApprovalStatus
from negotiation.approvals.store import ApprovalError, answered, consumed, expired, not_found
from negotiation.sqlite import immediate, open_store

__all__ = ["SqliteApprovalStore"]

Approvals = list[Approval]  # (the stores\' ``list`` method shadows the builtin in class bodies)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id             TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    mode           TEXT NOT NULL,
    binding_digest TEXT NOT NULL,
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL,
    finished_at    REAL,
    record         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_status ON approvals (status, expires_at);
CREATE INDEX IF NOT EXISTS approvals_by_binding ON approvals (binding_digest, status);
"""
_LIVE = ("pending", "approved")


class SqliteApprovalStore:
    """Approvals in one SQLite file; safe to share between threads (one connection, one lock)."""

    def __init__(
        self, path: str | Path, *, max_pending: int = 1000, keep_seconds: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time, busy_timeout_ms: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self._max_pending = max_pending
        self._keep = keep_seconds
        self._clock = clock
        self._conn = open_store(self.path, synchronous="FULL", busy_timeout_ms=busy_timeout_ms, rows=True)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def add(self, approval: Approval) -> None:
        with self._lock, immediate(self._conn):
            self._purge()
            pending = self._conn.execute("SELECT COUNT(*) FROM approvals WHERE status = 'pending'").fetchone()[0]
            if pending >= self._max_pending:
                raise ApprovalError(f"{pending} approvals are already waiting", code="too_many_pending")
            try:
                self._conn.execute(
                    "INSERT INTO approvals (id, status, mode, binding_digest, created_at, expires_at, finished_at, "
                    "record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (approval.id, approval.status.value, approval.mode, approval.binding.digest, approval.created_at,
                     approval.expires_at, None, _dump(approval)),
                )
            except sqlite3.IntegrityError:
                raise ApprovalError(f"approval `{approval.id}` exists already") from None

    def has_room(self) -> bool:
        with self._lock:
            pending = self._conn.execute("SELECT COUNT(*) FROM approvals WHERE status = 'pending'").fetchone()[0]
        return bool(pending < self._max_pending)

    def get(self, approval_id: str) -> Approval:
        with self._lock:
            return self._get(approval_id)

    def list(self, status: ApprovalStatus | None = None) -> Approvals:
        query = "SELECT record FROM approvals"
        params: tuple[str, ...] = ()
        if status is not None:
            query, params = query + " WHERE status = ?", (ApprovalStatus(status).value,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY created_at, id", params).fetchall()
        return [_load(row["record"]) for row in rows]

    def find_pending(self, binding: ApprovalBinding, mode: str) -> Approval | None:
        with self._lock:
            rows = self._conn.execute(
                "SELECT record FROM approvals WHERE binding_digest = ? AND status = 'pending' AND mode = ? "
                "AND expires_at > ? ORDER BY created_at",
                (binding.digest, mode, self._clock()),
            ).fetchall()
        found = [a for a in (_load(r["record"]) for r in rows) if a.binding == binding]
        return found[0] if found else None

    def answer(self, approval_id: str, *, approve: bool, by: str, how: str, comment: str | None = None) -> Approval:
        with self._lock, immediate(self._conn):
            before = self._get(approval_id)
            return self._set(before, answered(before, approve=approve, by=by, how=how, comment=comment,
                                              now=self._clock()))

    def expire(self, approval_id: str) -> Approval | None:
        with self._lock, immediate(self._conn):
            before = self._get(approval_id)
            after = expired(before)
            return self._set(before, after) if after is not None else None

    def expire_due(self) -> Approvals:
        now = self._clock()
        with self._lock:
            # the gateway sweeps every second: take the write lock only when there is work
            work = self._conn.execute(
                "SELECT 1 FROM approvals WHERE (status IN (?, ?) AND expires_at <= ?) "
                "OR (finished_at IS NOT NULL AND finished_at < ?) LIMIT 1", (*_LIVE, now, now - self._keep),
            ).fetchone()
        if work is None:
            return []
        with self._lock, immediate(self._conn):
            rows = self._conn.execute(
                "SELECT record FROM approvals WHERE status IN (?, ?) AND expires_at <= ?", (*_LIVE, self._clock())
            ).fetchall()
            flipped = []
            for row in rows:
                before = _load(row["record"])
                after = expired(before)
                if after is not None:
                    flipped.append(self._set(before, after))
            self._purge()
            return flipped

    def abandon(self, modes: Iterable[str]) -> Approvals:
        wanted = tuple(modes)
        if not wanted:
            return []
        with self._lock, immediate(self._conn):
            rows = self._conn.execute(
                f"SELECT record FROM approvals WHERE status = 'pending' AND mode IN ({', '.join('?' * len(wanted))})",
                wanted,
            ).fetchall()
            return [
                self._set(before, replace(before, status=ApprovalStatus.ABANDONED))
                for before in (_load(r["record"]) for r in rows)
            ]

    def consume(self, approval_id: str, binding: ApprovalBinding) -> Approval:
        with self._lock, immediate(self._conn):
            before = self._get(approval_id)
            return self._set(before, consumed(before, binding, self._clock()))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- helpers (called with the lock held) -----------------------------------------------------

    def _get(self, approval_id: str) -> Approval:
        row = self._conn.execute("SELECT record FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise not_found(approval_id)
        return _load(row["record"])

    def _set(self, before: Approval, after: Approval) -> Approval:
        finished = None if after.live else self._clock()
        cursor = self._conn.execute(
            "UPDATE approvals SET status = ?, finished_at = ?, record = ? WHERE id = ? AND status = ?",
            (after.status.value, finished, _dump(after), after.id, before.status.value),
        )
        if cursor.rowcount != 1:  # unreachable under BEGIN IMMEDIATE; kept as the invariant's check
            raise ApprovalError(f"approval `{after.id}` changed under this transition")
        return after

    def _purge(self) -> None:
        self._conn.execute(
            "DELETE FROM approvals WHERE finished_at IS NOT NULL AND finished_at < ?", (self._clock() - self._keep,)
        )


def _dump(approval: Approval) -> str:
    return json.dumps(approval.to_record(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _load(text: str) -> Approval:
    return Approval.from_record(json.loads(text))
