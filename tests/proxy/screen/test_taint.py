"""proxy.screen.taint: which tools are sinks (a decision table over annotations and the operator list)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.screen.taint import MemoryTaintStore, TaintMark, is_sink


@pytest.mark.parametrize(
    ("annotations", "listed", "sink"),
    [
        (None, (), True),  # no annotations: MCP's defaults assume the worst
        ({"readOnlyHint": True}, (), False),
        ({"readOnlyHint": True, "openWorldHint": True}, (), True),
        ({"readOnlyHint": True, "destructiveHint": True}, (), True),
        ({"readOnlyHint": False}, (), True),
        ({"readOnlyHint": True}, ("files.*",), True),
        ({"readOnlyHint": True}, ("mail.*",), False),
    ],
)
def test_sinks(annotations: dict[str, Any] | None, listed: tuple[str, ...], sink: bool) -> None:
    definition = {"name": "read"} if annotations is None else {"name": "read", "annotations": annotations}
    assert is_sink("files.read", definition, listed) is sink


def test_the_latest_mark_wins() -> None:
    store = MemoryTaintStore()
    store.mark("m", TaintMark("a.b", "d1", ("x",), 1.0))
    store.mark("m", TaintMark("a.c", "d2", ("y",), 2.0))
    mark = store.get("m")
    assert mark is not None and mark.decision_id == "d2" and store.get("other") is None
