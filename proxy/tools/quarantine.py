"""The quarantine interceptor: calls to a suspended tool are refused before policy is consulted.

A tool is suspended while the :class:`~proxy.tools.guard.ToolGuard` has it quarantined
(``tool_quarantined``: its definition was flagged), changed (``tool_changed``: its
definition differs from the pinned one, a possible rug-pull) or awaiting approval
(``tool_unapproved``). The refusal is a decision like any other -- returned to the model
as an ``isError`` result, audited -- naming the findings or the diff. Only an operator can
lift it (``POST /api/tools/{name}/release`` or ``securegateway tools release``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from policy import Decision, Finding
from policy.decision import refusal_decision
from proxy.enforce import AuditFn, PolicyView, denial_result
from proxy.intercept import CallNext, ToolCall, ToolResult
from proxy.tools.guard import ToolGuard
from proxy.tools.store import ToolRecord

log = structlog.get_logger("securegateway.quarantine")

_CODES = {"quarantined": "tool_quarantined", "changed": "tool_changed", "unapproved": "tool_unapproved"}
_REMEDY = "an operator must release the tool (POST /api/tools/{name}/release or `securegateway tools release {name}`)"


class Quarantine:
    """``(call, call_next)`` interceptor refusing calls to suspended tools."""

    def __init__(
        self,
        guard: ToolGuard,
        current: Callable[[], PolicyView],
        audit: AuditFn,
        *,
        build_event: Callable[..., dict[str, Any]],
        trace_visibility: str = "full",
    ) -> None:
        self._guard = guard
        self._current = current
        self._audit = audit
        self._build_event = build_event
        self._visibility = trace_visibility

    def bypass(self, call: ToolCall) -> bool:
        """The hot case, decided without a coroutine: a gateway-local tool, or one not suspended
        (a guard that fails is not bypassed: :meth:`__call__` turns the failure into a denial)."""
        return not call.server or self._guard.suspended(call.qualified) is None

    async def __call__(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        if not call.server:
            return await call_next(call)  # gateway-local tools are not listed by an upstream
        try:
            record = self._guard.suspended(call.qualified)
        except Exception as exc:  # enforcement boundary: a broken store denies
            log.exception("tool guard failed", tool=call.qualified)
            return _error(call, f"tool state unavailable: {str(exc)[:200]}")
        if record is None:
            return await call_next(call)
        started = time.perf_counter()
        decision = refusal(call, record, self._current().policy.digest)
        data = decision.to_dict()
        try:
            await self._audit(self._build_event(
                decision=data, session_id=call.session.id, server=call.server, tool=call.tool,
                arguments=dict(call.arguments), latency_ms=round((time.perf_counter() - started) * 1000, 3),
                policy_version=self._current().version, request=None,
            ))  # fmt: skip
        except Exception:  # the call is refused either way; the failure is logged
            log.exception("audit write failed", tool=call.qualified, decision_id=decision.decision_id)
        return denial_result(decision, self._visibility, policy=self._current().policy)


def refusal(call: ToolCall, record: ToolRecord, policy_digest: str) -> Decision:
    code = _CODES.get(record.status, "tool_quarantined")
    findings = tuple(_finding(f) for f in record.findings)
    if code == "tool_quarantined":
        what = "; ".join(f"{f.kind} at {f.path}" for f in findings[:5]) or "suspicious content"
        reason = f"tool `{call.qualified}` is quarantined: its definition contains {what}"
        reasoning = (
            f"The definition of `{call.qualified}` was flagged when it was listed ({what}), so the tool is "
            "quarantined: not listed and not callable.",
        )
    elif code == "tool_changed":
        reason = f"tool `{call.qualified}` is suspended: its definition changed since it was pinned"
        reasoning = (
            f"The definition of `{call.qualified}` differs from the one pinned when it was first trusted "
            f"(pinned {record.pinned_digest}, now {record.digest}); changes:\n{record.diff}",
        )
    else:
        reason = f"tool `{call.qualified}` has not been approved by an operator yet"
        reasoning = (f"Tool pinning is set to `approve` and `{call.qualified}` has no approved definition.",)
    model = str(getattr(call.session.identity, "model_id", None) or "unknown")
    return refusal_decision(
        model=model, tool=call.qualified, reason_code=code, reason=reason, reasoning=reasoning,
        policy_digest=policy_digest, findings=findings, remedy=_REMEDY.format(name=call.qualified),
    )  # fmt: skip


def _finding(data: Mapping[str, Any]) -> Finding:
    return Finding(
        str(data.get("code", "")), str(data.get("kind", "")), str(data.get("path", "")),
        str(data.get("excerpt", "")), str(data.get("severity", "medium")),
    )  # fmt: skip


def _error(call: ToolCall, why: str) -> ToolResult:
    return {"content": [{"type": "text", "text": f"Denied: gateway error: {why}"}], "isError": True}
