"""The tools/call chain as composed once at start-up.

Invariants: interceptors run outermost first and see each other's results; an interceptor
whose ``bypass`` says a call needs nothing from it is not entered, and the call and its
result are exactly what they would be had it passed them through; a ``bypass`` that raises
never skips (the interceptor runs and handles the failure); composing adds no coroutine
of its own per layer.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.intercept import CallNext, ToolCall, ToolResult, compose

pytestmark = pytest.mark.anyio


def a_call(name: str = "up.tool") -> ToolCall:
    return ToolCall(session=None, name=name, server="up", tool="tool", arguments={}, params={})  # type: ignore[arg-type]


class Tagging:
    """Appends its tag on the way in (to the call's log) and on the way out (to the result)."""

    def __init__(self, tag: str, log: list[str]) -> None:
        self.tag, self.log = tag, log

    async def __call__(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        self.log.append(f"in:{self.tag}")
        result = await call_next(call)
        return {**result, "path": [*result["path"], self.tag]}


class Skippable(Tagging):
    def __init__(self, tag: str, log: list[str], skip: Any) -> None:
        super().__init__(tag, log)
        self.skip = skip

    def bypass(self, call: ToolCall) -> bool:
        if isinstance(self.skip, Exception):
            raise self.skip
        return bool(self.skip(call))


async def terminal(call: ToolCall) -> ToolResult:
    return {"path": [f"upstream:{call.name}"]}


async def test_interceptors_run_outermost_first_and_unwind_in_reverse() -> None:
    log: list[str] = []
    chain = compose([Tagging("a", log), Tagging("b", log), Tagging("c", log)], terminal)
    result = await chain(a_call())
    assert log == ["in:a", "in:b", "in:c"]
    assert result == {"path": ["upstream:up.tool", "c", "b", "a"]}


@given(skips=st.lists(st.booleans(), min_size=1, max_size=6), name=st.sampled_from(["up.x", "up.y"]))
async def test_a_bypassed_interceptor_is_not_entered_and_the_rest_run_as_before(skips: list[bool], name: str) -> None:
    log: list[str] = []
    chain = compose([Skippable(str(i), log, lambda call, s=s: s) for i, s in enumerate(skips)], terminal)
    result = await chain(a_call(name))
    ran = [str(i) for i, s in enumerate(skips) if not s]
    assert log == [f"in:{tag}" for tag in ran]
    assert result == {"path": [f"upstream:{name}", *reversed(ran)]}


async def test_bypass_is_decided_per_call() -> None:
    log: list[str] = []
    chain = compose([Skippable("q", log, lambda call: call.name != "up.suspended")], terminal)
    assert (await chain(a_call("up.fine")))["path"] == ["upstream:up.fine"]
    assert (await chain(a_call("up.suspended")))["path"] == ["upstream:up.suspended", "q"]
    assert log == ["in:q"]


async def test_a_bypass_that_raises_never_skips_the_interceptor() -> None:
    log: list[str] = []
    chain = compose([Skippable("guard", log, RuntimeError("store unavailable"))], terminal)
    assert (await chain(a_call()))["path"] == ["upstream:up.tool", "guard"]
    assert log == ["in:guard"]


async def test_composing_adds_no_coroutine_per_layer() -> None:
    outer = Tagging("outer", [])
    chain = compose([outer, Tagging("inner", [])], terminal)
    started = chain(a_call())
    try:  # the step hands back the interceptor's own coroutine, not a wrapper around it
        assert started.cr_code is Tagging.__call__.__code__  # type: ignore[attr-defined]
    finally:
        await started
