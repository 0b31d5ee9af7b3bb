"""The policy interceptor: every tools/call is decided, explained, audited, then forwarded or refused.

Fail closed, visibly: an exception while resolving identity, evaluating, or
writing the audit event turns into a deny with reason code ``gateway_error``;
it is logged and (where the audit log still works) audited, and the upstream is
never called. A denial is a tool result with ``isError: true`` that the model can
read and act on; it is never a JSON-RPC error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from policy import (
    CallRequest,
    Decision,
    KeyRing,
    Policy,
    evaluate,
    gateway_error_decision,
    scan_value,
)
from proxy.intercept import CallNext, ToolCall, ToolResult

log = structlog.get_logger("securegateway.enforce")

DECISION_META_KEY = "io.securegateway/decision"
SCAN_META_KEY = "io.securegateway/result_scan"

AuditFn = Callable[[dict[str, Any]], Awaitable[None]]
"""Durably records one audit event; raises if it cannot."""


@dataclass(frozen=True)
class PolicyView:
    """What one decision is made under: the live policy, its version, and the model keys."""

    policy: Policy
    version: int | None
    keys: KeyRing


class Enforcer:
    """``(call, call_next)`` interceptor deciding every tools/call against the live policy."""

    def __init__(
        self,
        current: Callable[[], PolicyView],
        audit: AuditFn,
        *,
        build_event: Callable[..., dict[str, Any]],
        trace_visibility: str = "full",
        result_scan: str = "flag",
        decision_meta: str = "full",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._current = current
        self._audit = audit
        self._build_event = build_event
        self._visibility = trace_visibility
        self._result_scan = result_scan
        self._compact = decision_meta == "compact"
        self._clock = clock

    async def __call__(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        started = time.perf_counter()
        view: PolicyView | None = None
        try:
            view = self._current()
            decision = self._decide(call, view)
        except Exception as exc:  # enforcement boundary: fail closed
            log.exception("evaluation failed", tool=call.qualified, session=call.session.id)
            decision = self._error(call, view, f"evaluation failed: {_one_line(exc)}")
        latency_ms = (time.perf_counter() - started) * 1000
        data = decision.to_dict()
        try:
            await self._audit(self._build_event(
                decision=data,
                session_id=call.session.id,
                server=call.server,
                tool=call.tool,
                arguments=dict(call.arguments),
                latency_ms=round(latency_ms, 3),
                policy_version=view.version if view else None,
                request={"input_schema": call.input_schema} if call.input_schema is not None else None,
            ))
        except Exception as exc:  # an unrecorded decision is never acted on
            log.exception("audit write failed", tool=call.qualified, decision_id=decision.decision_id)
            decision = self._error(call, view, f"audit log unavailable: {_one_line(exc)}")
            data = decision.to_dict()
        if not decision.allowed:
            return denial_result(decision, self._visibility, data)
        result = await call_next(call)
        result = await self._scan(call, decision, result)
        meta = dict(result.get("_meta") or {})
        meta[DECISION_META_KEY] = compact_view(data) if self._compact else decision_view(data, self._visibility)
        return {**result, "_meta": meta}

    def _decide(self, call: ToolCall, view: PolicyView) -> Decision:
        identity = call.session.identity
        model_id = getattr(identity, "model_id", None)
        if not isinstance(model_id, str):
            raise LookupError("the connection has no authenticated model identity")
        request = CallRequest(
            model=model_id,
            server=call.server,
            tool=call.tool,
            arguments=call.arguments,
            input_schema=call.input_schema,
        )
        risk = call.session.risk
        decision = evaluate(request, view.policy, view.keys, session=risk)
        if risk is not None:
            risk.record_decision(decision, self._clock())
        return decision

    def _error(self, call: ToolCall, view: PolicyView | None, error: str) -> Decision:
        model = getattr(call.session.identity, "model_id", None) or "unknown"
        return gateway_error_decision(
            model=str(model), tool=call.qualified, error=error,
            policy_digest=view.policy.digest if view else "unknown",
        )

    async def _scan(self, call: ToolCall, decision: Decision, result: ToolResult) -> ToolResult:
        if self._result_scan == "off":
            return result
        content = result.get("content")
        findings = scan_value(content, "content")
        structured = result.get("structuredContent")
        if structured is not None:
            # Structured results usually repeat the text content verbatim: scan only what is new.
            seen = {c.get("text") for c in content or () if isinstance(c, Mapping)}
            fresh = [s for s in _strings(structured) if s not in seen]
            if fresh:
                findings += scan_value(fresh, "structuredContent")
        if not findings:
            return result
        if call.session.risk is not None:
            call.session.risk.record_findings(findings, self._clock())
        summary = [{"code": f.code, "kind": f.kind, "path": f.path} for f in findings]
        log.warning("suspicious tool result", tool=call.qualified, findings=len(findings), action=self._result_scan)
        try:
            await self._audit({
                "type": "result.flagged",
                "decision_id": decision.decision_id,
                "session": call.session.id,
                "server": call.server,
                "tool": call.tool,
                "findings": summary,
                "action": self._result_scan,
            })
        except Exception:
            log.exception("audit write failed for result scan", decision_id=decision.decision_id)
            return _blocked(call, "the tool result was flagged and could not be audited")
        if self._result_scan == "block":
            return _blocked(call, "the tool result contained " + ", ".join(sorted({f.code for f in findings})))
        meta = dict(result.get("_meta") or {})
        meta[SCAN_META_KEY] = summary
        if self._result_scan == "redact":
            flagged = {f.path.split(".", 1)[0] for f in findings}
            content = [
                {"type": "text", "text": "[securegateway: content withheld: suspicious content]"}
                if f"content[{i}]" in flagged or any(p.startswith(f"content[{i}]") for p in flagged) else item
                for i, item in enumerate(result.get("content") or [])
            ]
            redacted = {**result, "content": content, "_meta": meta}
            if "structuredContent" in result and any(p.startswith("structuredContent") for p in flagged):
                redacted.pop("structuredContent")
            return redacted
        return {**result, "_meta": meta}


def decision_view(data: Mapping[str, Any], visibility: str) -> dict[str, Any]:
    """The decision (its ``to_dict()``) as the model sees it; the audit log always has all of it."""
    if visibility == "summary":
        return {**data, "rule_trace": [t for t in data.get("rule_trace", []) if t.get("matched")]}
    if visibility == "none":
        return {**data, "rule_trace": []}
    return dict(data)


def compact_view(data: Mapping[str, Any]) -> dict[str, Any]:
    """An allowed call's decision in brief (``decision_meta = "compact"``); the audit log has all of it."""
    return {key: data[key] for key in ("allowed", "reason", "decision_id", "risk_score")}


def denial_result(decision: Decision, visibility: str, data: Mapping[str, Any] | None = None) -> ToolResult:
    """A refused call as a tool result: readable text for the model, the decision as structured data."""
    view = decision_view(data if data is not None else decision.to_dict(), visibility)
    lines = [f"Denied: {decision.reason}"]
    lines += [f"- {sentence}" for sentence in decision.reasoning]
    counterfactual = decision.counterfactual
    if counterfactual is not None:
        lines.append(f"What would allow it: {counterfactual.text.rstrip('.')}.")
        if counterfactual.suggested_rule is not None:
            lines.append(
                "To ask for access, call the `propose_policy` tool with a justification and this YAML:\n"
                + _rule_yaml(counterfactual.suggested_rule)
            )
    if decision.reason_code != "gateway_error" and (counterfactual is None or counterfactual.suggested_rule is None):
        lines.append("A policy proposal cannot allow this call; an operator must change it.")
    lines.append(f"Decision id: {decision.decision_id}")
    # the decision rides in _meta as on allowed calls (a task-augmented denial keeps only _meta)
    return {"content": [{"type": "text", "text": "\n".join(lines)}], "structuredContent": view, "isError": True,
            "_meta": {DECISION_META_KEY: view}}


def _strings(value: Any, depth: int = 0) -> list[str]:
    if isinstance(value, str):
        return [value]
    if depth > 64:
        return []
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v, depth + 1)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, depth + 1)]
    return []


def _blocked(call: ToolCall, why: str) -> ToolResult:
    return {
        "content": [{"type": "text", "text": f"Blocked by the gateway: {why}."}],
        "isError": True,
        "_meta": {SCAN_META_KEY: "blocked"},
    }


def _rule_yaml(rule: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump({"rules": [dict(rule)]}, sort_keys=False).rstrip()


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
