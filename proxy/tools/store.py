"""Where tool pins, quarantines and releases live: a small store interface and its SQLite default.

One :class:`ToolRecord` per listed item (tool, prompt or resource template), keyed by its
dotted name (``files.read``; ``prompt:files.summarise``; ``template:files:file:///{path}``).
The gateway and the ``securegateway tools`` CLI may use the same file at once (SQLite
serialises writers); :meth:`SqliteToolStore.changed` tells the gateway cheaply (one read of
the WAL index header; ``PRAGMA data_version`` only when it moved, see
:class:`negotiation.sqlite.CommitWatch`) that another process wrote, so a CLI release takes
effect at the gateway's next check. A server database can implement :class:`ToolStore` later.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from negotiation.sqlite import CommitWatch, open_store

__all__ = ["STATUSES", "SqliteToolStore", "ToolRecord", "ToolStore"]

# trusted: listed and callable; the others are suspended (not listed, calls denied).
STATUSES = ("trusted", "quarantined", "changed", "unapproved")


@dataclass(frozen=True)
class ToolRecord:
    name: str
    kind: str  # tool | prompt | resource_template
    status: str
    digest: str  # of the definition last seen
    definition: dict[str, Any]
    pinned_digest: str | None = None
    pinned_definition: dict[str, Any] | None = None
    released_digest: str | None = None  # a flagged definition an operator accepted
    findings: tuple[dict[str, Any], ...] = ()
    diff: str = ""
    updated_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def suspended(self) -> bool:
        return self.status != "trusted"

    def with_(self, **changes: Any) -> ToolRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "status": self.status, "digest": self.digest,
            "pinned_digest": self.pinned_digest, "released_digest": self.released_digest,
            "findings": list(self.findings), "diff": self.diff, "updated_at": self.updated_at,
            "definition": self.definition,
        }  # fmt: skip


class ToolStore(Protocol):
    """Durable tool records; every method is synchronous and quick (call off the loop if not)."""

    def get(self, name: str) -> ToolRecord | None: ...

    def put(self, record: ToolRecord) -> None: ...

    def all(self) -> list[ToolRecord]: ...

    def changed(self) -> bool: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tools (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    digest TEXT NOT NULL,
    definition TEXT NOT NULL,
    pinned_digest TEXT,
    pinned_definition TEXT,
    released_digest TEXT,
    findings TEXT NOT NULL,
    diff TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""


class SqliteToolStore:
    """:class:`ToolStore` in one SQLite file (WAL), safe to share with the CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_store(path, synchronous="FULL")
        self._db.execute(_SCHEMA)
        self._watch = CommitWatch(self._db, path, self._lock)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def changed(self) -> bool:
        """Whether another connection committed since the last call (a ``-shm`` header read, mostly)."""
        return self._watch.changed()

    def get(self, name: str) -> ToolRecord | None:
        with self._locked() as db:
            row = db.execute("SELECT * FROM tools WHERE name = ?", (name,)).fetchone()
        return _record(row) if row is not None else None

    def all(self) -> list[ToolRecord]:
        with self._locked() as db:
            rows = db.execute("SELECT * FROM tools ORDER BY name").fetchall()
        return [_record(row) for row in rows]

    def put(self, record: ToolRecord) -> None:
        with self._locked() as db:
            db.execute(
                "INSERT OR REPLACE INTO tools VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.name, record.kind, record.status, record.digest, json.dumps(record.definition),
                    record.pinned_digest,
                    None if record.pinned_definition is None else json.dumps(record.pinned_definition),
                    record.released_digest, json.dumps(list(record.findings)), record.diff, record.updated_at,
                ),
            )  # fmt: skip
        self._watch.wrote()

    def close(self) -> None:
        with self._locked() as db:
            self._watch.close()
            db.close()


def _record(row: tuple[Any, ...]) -> ToolRecord:
    name, kind, status, digest, definition, pinned_digest, pinned_definition, released, findings, diff, at = row
    return ToolRecord(
        name=name, kind=kind, status=status, digest=digest, definition=json.loads(definition),
        pinned_digest=pinned_digest,
        pinned_definition=None if pinned_definition is None else json.loads(pinned_definition),
        released_digest=released, findings=tuple(json.loads(findings)), diff=diff, updated_at=at,
    )  # fmt: skip
