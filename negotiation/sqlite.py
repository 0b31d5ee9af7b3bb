"""How every embedded SQLite store opens its file and writes: one place, one set of rules.

Autocommit mode (explicit transactions only), WAL so readers never block the writer and the CLI
can read while the gateway runs, a busy timeout so two processes wait instead of failing, and the
``synchronous`` level the store's durability needs: ``FULL`` where a lost write would undo a
decision someone relied on (proposals, approvals, tool pins and releases), ``NORMAL`` where a
power loss could at worst drop the last few updates of a decaying signal (taint marks, identity
risk) — never a process crash, which WAL survives at either level.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Synchronous = Literal["FULL", "NORMAL"]


def open_store(
    path: str | Path, *, synchronous: Synchronous = "FULL", busy_timeout_ms: int = 10_000, rows: bool = False,
) -> sqlite3.Connection:
    """A connection to the store at ``path`` (its directory created), shareable between threads.

    Callers guard it with their own lock. Raises ``RuntimeError`` when SQLite refuses WAL
    mode (a filesystem without shared memory), rather than running with weaker guarantees.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if rows:
        conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise RuntimeError(f"sqlite refused WAL mode for `{path}` (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception.

    IMMEDIATE takes the write lock up front, so a compare-and-set read and its write see
    the same database even when another process writes between them.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
