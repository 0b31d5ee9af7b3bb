"""How every embedded SQLite store opens its file and writes: one place, one set of rules.

Autocommit mode (explicit transactions only), WAL so readers never block the writer and the CLI
can read while the gateway runs, a busy timeout so two processes wait instead of failing, and the
``synchronous`` level the store's durability needs: ``FULL`` where a lost write would undo a
decision someone relied on (proposals, approvals, tool pins and releases), ``NORMAL`` where a
power loss could at worst drop the last few updates of a decaying signal (taint marks, identity
risk) — never a process crash, which WAL survives at either level.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal

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


WAL_INDEX_HEADER = 48
"""Bytes of the first copy of the wal-index header at the start of ``<db>-shm`` (sqlite.org/walformat.html)."""

BACKSTOP_S = 1.0
"""However quiet the header looks, ``PRAGMA data_version`` is asked at least this often."""


class CommitWatch:
    """Whether another connection (this process or another) committed since the last look, cheaply.

    ``PRAGMA data_version`` answers exactly, but each statement takes SQLite's WAL read locks
    (several ``fcntl`` calls) and releases the GIL: too dear for a per-call check. Every commit
    to a WAL database rewrites the wal-index header at the start of the ``-shm`` file (its change
    counter, frame count and checksums; a WAL reset its salts), and a commit is visible to
    readers only once it has. So one look at that header decides the common case: unchanged
    header, nothing committed; any difference (a torn read included) asks ``data_version``. With
    no readable ``-shm`` (another VFS, locking_mode exclusive) every look asks ``data_version``;
    and it is asked at least every :data:`BACKSTOP_S` seconds whatever the header says.

    The header is read through a read-only shared mapping of the ``-shm`` file's first page,
    the same pages SQLite's own connections map and write (a look costs no system call), or,
    where the file cannot be mapped, by one ``pread``. The mapping is safe against SIGBUS
    because SQLite only ever truncates a ``-shm`` file when it opens it with no other connection
    attached, and the store's own connection stays attached (it holds the wal-index's shared
    DMS lock) until :meth:`close`, which unmaps first. The descriptor stays open as long as the
    mapping: closing any descriptor of a file drops every POSIX lock the process holds on it,
    SQLite's own included.

    ``lock`` guards the connection; :meth:`wrote` must follow the store's own commits (they do
    not change ``data_version``, but they do change the header).
    """

    def __init__(self, conn: sqlite3.Connection, path: str | Path, lock: AbstractContextManager[Any]) -> None:
        self._conn = conn
        self._lock = lock
        self._map: mmap.mmap | None = None
        try:
            self._shm: int | None = os.open(f"{path}-shm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self._shm = None
        if self._shm is not None:
            try:
                if os.fstat(self._shm).st_size >= WAL_INDEX_HEADER:
                    self._map = mmap.mmap(self._shm, WAL_INDEX_HEADER, mmap.MAP_SHARED, mmap.PROT_READ)
            except (OSError, ValueError):  # no mapping here: every look is a pread
                self._map = None
        self._header = self._read_header()
        self._version = self._data_version()
        self._asked_at = time.monotonic()

    def _read_header(self) -> bytes | None:
        if self._map is not None:
            return self._map[:WAL_INDEX_HEADER]
        if self._shm is None:
            return None
        try:
            header = os.pread(self._shm, WAL_INDEX_HEADER, 0)
        except OSError:
            return None
        return header if len(header) == WAL_INDEX_HEADER else None

    def _data_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def changed(self) -> bool:
        """True once for each look after which another connection's commit became visible."""
        mapped = self._map  # the usual look, without a call
        header = mapped[:WAL_INDEX_HEADER] if mapped is not None else self._read_header()
        now = time.monotonic()
        if header is not None and header == self._header and now - self._asked_at < BACKSTOP_S:
            return False
        self._header = header
        self._asked_at = now
        version = self._data_version()
        if version == self._version:
            return False
        self._version = version
        return True

    def wrote(self) -> None:
        """The store committed through its own connection: the next look asks ``data_version``
        (which a foreign commit in between does change, so none is missed)."""
        self._header = None

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._shm is not None:
            os.close(self._shm)
            self._shm = None
