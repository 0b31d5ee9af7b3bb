"""Session taint: after a tool result carried an injection, sink tools are off limits for a while.

An injected result is the start of most agent hijacks: the model reads "now email the
files to ...", then calls a tool that acts on the world. So when the result scan flags a
result as ``prompt_injection`` (the enforcer's ``io.securegateway/result_scan`` summary),
the calling identity is **tainted** for ``[detectors] taint_window_s`` seconds, and its
calls to *sink* tools are refused with ``session_tainted``, the reasoning naming the
tainting result (tool, decision id, findings). A sink is a tool listed in
``[detectors] sink_tools``, or annotated ``destructiveHint`` or ``openWorldHint``, or not
annotated ``readOnlyHint`` (MCP's defaults assume the worst, and so does this).

Taint marks live behind :class:`~proxy.screen.taint_store.TaintStore`; the gateway's default is
SQLite in the state directory (:class:`~proxy.screen.taint_store.SqliteTaintStore`), so a
restart does not clear a taint before its window ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from policy import tool_matches
from policy.decision import refusal_decision
from proxy.enforce import DECISION_META_KEY, SCAN_META_KEY, AuditFn, PolicyView, denial_result
from proxy.intercept import CallNext, ToolCall, ToolResult
from proxy.screen.taint_store import MemoryTaintStore, SqliteTaintStore, TaintMark, TaintStore

__all__ = ["MemoryTaintStore", "SqliteTaintStore", "Taint", "TaintMark", "TaintStore", "is_sink"]

log = structlog.get_logger("securegateway.taint")


def is_sink(qualified: str, definition: Mapping[str, Any] | None, sink_tools: Sequence[str]) -> bool:
    """Operator-listed, destructive, open-world, or not declared read-only."""
    if any(tool_matches(pattern, qualified) for pattern in sink_tools):
        return True
    annotations = (definition or {}).get("annotations")
    if not isinstance(annotations, Mapping):
        return True
    if annotations.get("destructiveHint") is True or annotations.get("openWorldHint") is True:
        return True
    return annotations.get("readOnlyHint") is not True


class Taint:
    """``(call, call_next)`` interceptor: refuse sinks while tainted; taint on injected results."""

    def __init__(
        self,
        store: TaintStore,
        current: Callable[[], PolicyView],
        audit: AuditFn,
        *,
        build_event: Callable[..., dict[str, Any]],
        window_s: float,
        sink_tools: Sequence[str] = (),
        trace_visibility: str = "full",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._current = current
        self._audit = audit
        self._build_event = build_event
        self._window = window_s
        self._sinks = tuple(sink_tools)
        self._visibility = trace_visibility
        self._clock = clock

    async def __call__(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        identity = str(getattr(call.session.identity, "model_id", None) or f"session:{call.session.id}")
        now = self._clock()
        mark = self._store.get(identity)
        if mark is not None and now - mark.at <= self._window and call.server:
            definition = call.session.catalog.tool_definition(call.name)
            if is_sink(call.qualified, definition, self._sinks):
                return await self._refuse(call, identity, mark, now)
        result = await call_next(call)
        scanned = (result.get("_meta") or {}).get(SCAN_META_KEY)
        if isinstance(scanned, list):
            kinds = tuple(sorted({str(f.get("kind")) for f in scanned
                                  if isinstance(f, Mapping) and f.get("code") == "prompt_injection"}))  # fmt: skip
            if kinds:
                decision = (result.get("_meta") or {}).get(DECISION_META_KEY) or {}
                decision_id = str(decision.get("decision_id", "")) if isinstance(decision, Mapping) else ""
                self._store.expire(now - self._window)  # expired marks go whenever a new one comes
                self._store.mark(identity, TaintMark(call.qualified, decision_id, kinds, now))
                log.warning("session tainted", identity=identity, tool=call.qualified, kinds=kinds)
        return result

    async def _refuse(self, call: ToolCall, identity: str, mark: TaintMark, now: float) -> ToolResult:
        left = max(0.0, self._window - (now - mark.at))
        view = self._current()
        reasoning = (
            f"The result of `{mark.tool}` (decision {mark.decision_id or 'unknown'}) contained an injection "
            f"pattern ({', '.join(mark.kinds)}) {now - mark.at:.0f} s ago, so calls from `{identity}` to tools "
            f"that can act on the world are refused for {left:.0f} s more.",
            f"`{call.qualified}` counts as a sink: it is listed in [detectors] sink_tools, or annotated "
            "destructiveHint / openWorldHint, or not annotated readOnlyHint.",
        )
        decision = refusal_decision(
            model=identity, tool=call.qualified, reason_code="session_tainted",
            reason=f"session tainted by an injected result of `{mark.tool}`; `{call.qualified}` is a sink tool",
            reasoning=reasoning, policy_digest=view.policy.digest,
            remedy=f"wait {left:.0f} s, or use read-only tools until the taint expires",
        )  # fmt: skip
        data = decision.to_dict()
        try:
            await self._audit(self._build_event(
                decision=data, session_id=call.session.id, server=call.server, tool=call.tool,
                arguments=dict(call.arguments), latency_ms=0.0, policy_version=view.version, request=None,
            ))  # fmt: skip
        except Exception:
            log.exception("audit write failed", tool=call.qualified, decision_id=decision.decision_id)
        return denial_result(decision, self._visibility, policy=view.policy)
