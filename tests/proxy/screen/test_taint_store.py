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
