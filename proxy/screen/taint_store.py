"""Where session-taint marks live: a small store interface, in memory or in SQLite.

A mark says which result tainted an identity and when (:class:`TaintMark`); the latest
mark per identity wins. :class:`SqliteTaintStore` is the gateway's default
(``<state_dir>/taint.db``), so a restart does not clear a taint that has not expired:
restarting the gateway is not a way out of it. Marks older than the taint window are
dropped whenever a new mark is written. A server database can implement
:class:`TaintStore` later; :class:`MemoryTaintStore` serves tests and embedders.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from negotiation.sqlite import CommitWatch, open_store

__all__ = ["MemoryTaintStore", "SqliteTaintStore", "TaintMark", "TaintStore"]


@dataclass(frozen=True)
class TaintMark:
    """Which result tainted an identity, and when."""

    tool: str
    decision_id: str
    kinds: tuple[str, ...]
    at: float


class TaintStore(Protocol):
    """Taint marks by identity; synchronous and quick (one indexed row)."""

    def get(self, identity: str) -> TaintMark | None: ...

    def mark(self, identity: str, mark: TaintMark) -> None: ...

    def expire(self, before: float) -> int: ...


class MemoryTaintStore:
    """Taint marks in memory, one per identity (the latest wins); a restart clears them."""

    def __init__(self) -> None:
        self._marks: dict[str, TaintMark] = {}

    def get(self, identity: str) -> TaintMark | None:
        return self._marks.get(identity)

    def mark(self, identity: str, mark: TaintMark) -> None:
        self._marks[identity] = mark

    def expire(self, before: float) -> int:
        old = [identity for identity, mark in self._marks.items() if mark.at < before]
        for identity in old:
            del self._marks[identity]
        return len(old)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS taint (
    identity TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    kinds TEXT NOT NULL,
    at REAL NOT NULL
)
"""
_CACHE_LIMIT = 4096  # identities whose mark (or its absence) is kept in memory


class SqliteTaintStore:
    """:class:`TaintStore` in one SQLite file (WAL); marks survive restarts.

    Reads come from an in-memory copy (every call asks, almost none is tainted): this store's
    own writes update it, and a commit by any other connection (another gateway process on the
    same state directory) drops it, detected by :class:`~negotiation.sqlite.CommitWatch`
    without a statement on the hot path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_store(path, synchronous="NORMAL")
        self._db.execute(_SCHEMA)
        self._watch = CommitWatch(self._db, path, self._lock)
        self._cache: dict[str, TaintMark | None] = {}  # identity -> its mark (None: known unmarked)

    def get(self, identity: str) -> TaintMark | None:
        if self._watch.changed():
            self._cache.clear()
        try:
            return self._cache[identity]
        except KeyError:
            pass
        with self._lock:
            row = self._db.execute(
                "SELECT tool, decision_id, kinds, at FROM taint WHERE identity = ?", (identity,)
            ).fetchone()
        mark = None
        if row is not None:
            kinds = json.loads(row[2])
            mark = TaintMark(str(row[0]), str(row[1]), tuple(str(kind) for kind in kinds), float(row[3]))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[identity] = mark
        return mark

    def mark(self, identity: str, mark: TaintMark) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO taint VALUES (?, ?, ?, ?, ?)",
                    (identity, mark.tool, mark.decision_id, json.dumps(list(mark.kinds)), mark.at),
                )
        finally:  # whatever the outcome, the next read asks the file
            self._cache.pop(identity, None)
            self._watch.wrote()
        self._cache[identity] = mark

    def expire(self, before: float) -> int:
        try:
            with self._lock:
                return int(self._db.execute("DELETE FROM taint WHERE at < ?", (before,)).rowcount)
        finally:
            self._cache.clear()
            self._watch.wrote()

    def close(self) -> None:
        with self._lock:
            self._watch.close()
            self._db.close()
