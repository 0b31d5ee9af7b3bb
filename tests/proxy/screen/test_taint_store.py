"""proxy.screen.taint_store: marks by identity, the latest wins, expired marks dropped, SQLite survives a reopen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.screen.taint_store import MemoryTaintStore, SqliteTaintStore, TaintMark, TaintStore


def memory(_: Path) -> TaintStore:
    return MemoryTaintStore()


def sqlite(path: Path) -> TaintStore:
    return SqliteTaintStore(path / "taint.db")


@pytest.fixture(params=[memory, sqlite], ids=["memory", "sqlite"])
def make(request: pytest.FixtureRequest) -> Callable[[Path], TaintStore]:
    return request.param  # type: ignore[no-any-return]


def test_the_latest_mark_per_identity_wins(tmp_path: Path, make: Callable[[Path], TaintStore]) -> None:
    store = make(tmp_path)
    store.mark("m", TaintMark("a.b", "d1", ("x",), 1.0))
    store.mark("m", TaintMark("a.c", "d2", ("y", "z"), 2.0))
    assert store.get("m") == TaintMark("a.c", "d2", ("y", "z"), 2.0)
    assert store.get("other") is None


def test_expire_drops_only_marks_older_than_the_cutoff(tmp_path: Path, make: Callable[[Path], TaintStore]) -> None:
    store = make(tmp_path)
    store.mark("old", TaintMark("a.b", "d1", ("x",), 10.0))
    store.mark("new", TaintMark("a.b", "d2", ("x",), 20.0))
    assert store.expire(15.0) == 1
    assert store.get("old") is None and store.get("new") is not None


def test_sqlite_marks_survive_reopening_the_file(tmp_path: Path) -> None:
    first = SqliteTaintStore(tmp_path / "state" / "taint.db")
    first.mark("gpt-4o", TaintMark("search.page", "dec-1", ("ignore_previous_instructions",), 5.0))
    first.close()
    again = SqliteTaintStore(tmp_path / "state" / "taint.db")
    assert again.get("gpt-4o") == TaintMark("search.page", "dec-1", ("ignore_previous_instructions",), 5.0)


def test_sqlite_a_mark_written_through_another_connection_is_seen_at_once(tmp_path: Path) -> None:
    gateway = SqliteTaintStore(tmp_path / "taint.db")
    assert gateway.get("gpt-4o") is None  # remembered as unmarked
    other = SqliteTaintStore(tmp_path / "taint.db")  # e.g. a second gateway process on the state dir
    other.mark("gpt-4o", TaintMark("search.page", "dec-9", ("role_override",), 7.0))
    assert gateway.get("gpt-4o") == TaintMark("search.page", "dec-9", ("role_override",), 7.0)
    assert other.expire(8.0) == 1
    assert gateway.get("gpt-4o") is None


def test_sqlite_a_mark_written_by_another_process_is_seen(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "taint.db"
    gateway = SqliteTaintStore(path)
    assert gateway.get("m") is None
    code = (
        "import sys; from pathlib import Path; from proxy.screen.taint_store import SqliteTaintStore, TaintMark; "
        f"SqliteTaintStore(Path({str(path)!r})).mark('m', TaintMark('a.b', 'dec-p', ('x',), 3.0))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert gateway.get("m") == TaintMark("a.b", "dec-p", ("x",), 3.0)


def test_sqlite_own_marks_and_expiry_are_read_back_without_a_reopen(tmp_path: Path) -> None:
    store = SqliteTaintStore(tmp_path / "taint.db")
    assert store.get("m") is None
    store.mark("m", TaintMark("a.b", "d1", ("x",), 1.0))
    assert store.get("m") == TaintMark("a.b", "d1", ("x",), 1.0)
    store.expire(2.0)
    assert store.get("m") is None
