"""negotiation.sqlite.CommitWatch: a commit by any other connection or process is seen, once; own writes are not."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from negotiation import sqlite as store_sqlite
from negotiation.sqlite import CommitWatch, open_store


def _store(path: Path) -> tuple[object, CommitWatch, threading.Lock]:
    db = open_store(path)
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)")
    lock = threading.Lock()
    return db, CommitWatch(db, path, lock), lock


def test_a_commit_by_another_connection_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _, watch, _ = _store(path)
    assert watch.changed() is False
    other = open_store(path)
    other.execute("INSERT INTO t VALUES ('a', 1)")
    assert watch.changed() is True
    assert watch.changed() is False
    other.execute("UPDATE t SET v = 2")
    other.execute("UPDATE t SET v = 3")
    assert watch.changed() is True and watch.changed() is False


def test_a_commit_by_another_process_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _, watch, _ = _store(path)
    assert watch.changed() is False
    code = (f"import sqlite3; c = sqlite3.connect({str(path)!r}, isolation_level=None); "
            "c.execute(\"INSERT INTO t VALUES ('p', 1)\")")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert watch.changed() is True


def test_own_commits_are_not_reported_but_a_foreign_one_between_them_is(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db, watch, lock = _store(path)
    with lock:
        db.execute("INSERT INTO t VALUES ('own', 1)")  # type: ignore[attr-defined]
    watch.wrote()
    assert watch.changed() is False
    other = open_store(path)
    with lock:
        db.execute("INSERT INTO t VALUES ('own2', 1)")  # type: ignore[attr-defined]
    other.execute("INSERT INTO t VALUES ('foreign', 1)")  # lands before the store's wrote()
    watch.wrote()
    assert watch.changed() is True


def test_without_a_readable_wal_index_every_look_asks_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db, _, lock = _store(path)
    watch = CommitWatch(db, tmp_path / "no-such.db", lock)  # type: ignore[arg-type]  # no -shm to read
    assert watch.changed() is False
    open_store(path).execute("INSERT INTO t VALUES ('a', 1)")
    assert watch.changed() is True


def test_the_backstop_asks_sqlite_even_when_the_header_looks_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    _, watch, _ = _store(path)
    open_store(path).execute("INSERT INTO t VALUES ('a', 1)")
    watch._header = watch._read_header()  # as if the header read had missed the commit
    assert watch.changed() is False  # within the backstop interval the header is believed
    monkeypatch.setattr(store_sqlite, "BACKSTOP_S", 0.0)
    assert watch.changed() is True


def _commit_in_another_process(path: Path, key: str) -> None:
    code = (f"import sqlite3; c = sqlite3.connect({str(path)!r}, isolation_level=None); "
            f"c.execute(\"INSERT INTO t VALUES ('{key}', 1)\")")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_header_is_read_through_the_mapping_and_shows_another_processs_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    _, watch, _ = _store(path)
    assert watch._map is not None  # a -shm file on a local filesystem maps
    monkeypatch.setattr(store_sqlite, "BACKSTOP_S", 1e9)  # only the header can tell
    monkeypatch.setattr(store_sqlite.os, "pread", lambda *_: pytest.fail("a look made a pread"))
    assert watch.changed() is False
    _commit_in_another_process(path, "p1")
    assert watch.changed() is True and watch.changed() is False
    _commit_in_another_process(path, "p2")
    assert watch.changed() is True


def test_the_mapped_header_is_the_files_header(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _, watch, _ = _store(path)
    shm = os.open(f"{path}-shm", os.O_RDONLY)
    try:
        for key in ("a", "b", "c"):
            _commit_in_another_process(path, key)
            assert watch._read_header() == os.pread(shm, store_sqlite.WAL_INDEX_HEADER, 0)
    finally:
        os.close(shm)


def test_without_a_mapping_a_pread_still_shows_another_processs_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    _, watch, _ = _store(path)
    assert watch._map is not None
    watch._map.close()
    watch._map = None  # as where the file cannot be mapped
    monkeypatch.setattr(store_sqlite, "BACKSTOP_S", 1e9)
    assert watch.changed() is False
    _commit_in_another_process(path, "p")
    assert watch.changed() is True and watch.changed() is False


def test_close_unmaps_and_closes_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _, watch, _ = _store(path)
    mapping = watch._map
    assert mapping is not None
    watch.close()
    assert mapping.closed and watch._map is None and watch._shm is None
