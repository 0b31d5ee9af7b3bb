"""The one decision point: everything bound for an upstream is decided, explained, audited.

``tools/call`` runs through :class:`Enforcer` as an interceptor; ``prompts/get``,
``resources/read``, ``resources/subscribe``, ``resources/unsubscribe``,
``completion/complete`` and ``logging/setLevel`` (once per upstream) ask
:meth:`Enforcer.authorize` from the relay; a call naming no
known tool is recorded by :meth:`Enforcer.unknown_tool`. Each gets an identity check, a
policy decision and a ``decision`` audit event, in that order, before anything is forwarded.
What comes back (tool results, prompt messages, resource contents, completions) and what an
upstream asks of the client (sampling, elicitation) passes :meth:`Enforcer.screen`, which
applies ``result_scan`` and audits findings as ``result.flagged``.

Fail closed, visibly: an exception while resolving identity, evaluating, or writing the
audit event turns into a deny with reason code ``gateway_error``; it is logged and (where the
audit log still works) audited, and the upstream is never called. A denied tool call is a
tool result with ``isError: true`` that the model can read; a denied prompt, resource or
completion is a JSON-RPC error (:data:`POLICY_DENIED`) whose ``data`` is the decision. What
the model sees of a decision follows ``trace_visibility`` (:mod:`proxy.disclosure`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from policy import (
    CallRequest,
    Decision,
    Finding,
    KeyRing,
    Policy,
    evaluate,
    gateway_error_decision,
    unknown_tool_decision,
)
from policy.engine import scope_reaches
from proxy.disclosure import decision_view
from proxy.intercept import CallNext, ToolCall, ToolResult
from proxy.screen.result_scan import ScanOutcome, finding_summary, scan_payload

if TYPE_CHECKING:  # the classifier's module loads only when one is configured
    from proxy.screen.classify import ClassifierRunner

log = structlog.get_logger("securegateway.enforce")

__all__ = [
    "DECISION_META_KEY",
    "POLICY_DENIED",
    "RESULT_BLOCKED",
    "SCAN_META_KEY",
    "Enforcer",
    "PolicyView",
    "Verdict",
    "decision_view",
    "denial_result",
]

DECISION_META_KEY = "io.securegateway/decision"
SCAN_META_KEY = "io.securegateway/result_scan"
POLICY_DENIED = -32010
"""JSON-RPC error code of a policy denial of a non-tool request (``data`` holds the decision)."""
RESULT_BLOCKED = -32011
"""JSON-RPC error code of an upstream payload withheld by ``result_scan = "block"``."""

AuditFn = Callable[[dict[str, Any]], Awaitable[None]]
"""Durably records one audit event; raises if it cannot."""


@dataclass(frozen=True)
class PolicyView:
    """What one decision is made under: the live policy, its version, and the model keys."""

    policy: Policy
    version: int | None
    keys: KeyRing


@dataclass(frozen=True)
class Verdict:
    """A recorded decision and the view of it the model may see."""

    decision: Decision
    view: dict[str, Any]

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


class Enforcer:
    """Decides every upstream-bound request against the live policy and screens what comes back."""

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
        approvals: Any = None,
        classifier: ClassifierRunner | None = None,
    ) -> None:
        self._classifier = classifier  # the optional model-based detector (proxy.screen.classify)
        self._approvals = approvals  # a proxy.approval.ApprovalGate, or None: approval_required denies
        self._current = current
        self._audit = audit
        self._build_event = build_event
        self._visibility = trace_visibility
        self._result_scan = result_scan
        self._compact = decision_meta == "compact"
        self._clock = clock

    # ---- tools/call --------------------------------------------------------------------------------

    async def __call__(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        extra = await self._classifier.findings(call.arguments, "arguments", "arguments") if self._classifier else ()
        verdict = await self.decide(
            call.session, kind="tool", server=call.server, name=call.tool, arguments=call.arguments,
            method="tools/call", input_schema=call.input_schema, findings=extra,
        )
        if verdict.decision.reason_code == "approval_required" and self._approvals is not None:
            try:
                settled = await self._approvals.settle(call, verdict, self)
            except Exception as exc:  # enforcement boundary: a broken approval is a deny, never a run
                log.exception("approval failed", tool=call.qualified, decision_id=verdict.decision.decision_id)
                settled = await self._approval_failed(call, verdict, exc)
            if isinstance(settled, dict):
                return settled  # an input_required round: the client comes back with the answer
            verdict, call = settled
        elif self._approvals is not None:
            call = self._approvals.unheld(call)  # a retry whose hold the policy dropped meanwhile
        if not verdict.allowed:
            return denial_result(verdict.decision, self._visibility, verdict.view)
        result = await call_next(call)
        result = await self._screen_tool(call, verdict.decision, result)
        meta = dict(result.get("_meta") or {})
        meta[DECISION_META_KEY] = compact_view(verdict.view) if self._compact else verdict.view
        return {**result, "_meta": meta}

    # ---- the approval gate's view of the decision point (proxy.approval.DecisionPoint) ----------------

    async def decide_call(self, call: ToolCall) -> Verdict:
        """Decide a held call again against the live policy (audited like any decision)."""
        return await self.decide(
            call.session, kind="tool", server=call.server, name=call.tool, arguments=call.arguments,
            method="tools/call", input_schema=call.input_schema,
        )

    async def record_call(self, call: ToolCall, decision: Decision, extra: Mapping[str, Any]) -> Verdict:
        """Audit a decision derived from an approval (approved_by, approval_denied, approval_expired)."""
        view: PolicyView | None = None
        with contextlib.suppress(Exception):  # the digest is in the decision; the version is informative
            view = self._current()
        return await self._record(call.session, decision, view, call.server, call.tool, call.arguments,
                                  "tools/call", "tool", None, time.perf_counter(), extra)

    def policy_version(self) -> int | None:
        return self._current().version

    async def _approval_failed(self, call: ToolCall, verdict: Verdict, exc: Exception) -> tuple[Verdict, ToolCall]:
        decision = self._error(call.session, verdict.decision.tool, None, f"approval failed: {_one_line(exc)}")
        try:
            return await self.record_call(call, decision, {"asked_by_decision": verdict.decision.decision_id}), call
        except Exception:  # the audit log is what broke: still refuse
            return Verdict(decision, decision_view(decision.to_dict(), self._visibility)), call

    # ---- the decision point ------------------------------------------------------------------------

    async def decide(
        self,
        session: Any,
        *,
        kind: str,
        server: str,
        name: str,
        arguments: Mapping[str, Any],
        method: str,
        input_schema: Mapping[str, Any] | None = None,
        findings: tuple[Finding, ...] = (),
    ) -> Verdict:
        """Decide one request, audit it, and say what the model may see. Never raises.

        ``findings`` come from detectors outside policy (the classifier) and count like the
        argument scan's own."""
        started = time.perf_counter()
        view: PolicyView | None = None
        try:
            view = self._current()
            decision = self._evaluate(session, view, kind, server, name, arguments, input_schema, findings)
        except Exception as exc:  # enforcement boundary: fail closed
            target = name if kind == "resource" else f"{server}.{name}"
            log.exception("evaluation failed", target=target, method=method, session=session.id)
            decision = self._error(session, target, view, f"evaluation failed: {_one_line(exc)}")
        return await self._record(session, decision, view, server, name, arguments, method, kind, input_schema,
                                  started)

    async def authorize(
        self, session: Any, *, method: str, kind: str, server: str, name: str, arguments: Mapping[str, Any]
    ) -> Verdict:
        """The decision for a prompt, resource or completion request (see :meth:`decide`)."""
        return await self.decide(session, kind=kind, server=server, name=name, arguments=arguments, method=method)

    async def unknown_tool(self, session: Any, name: str) -> Verdict:
        """Record a tools/call naming no known tool: probing is audited like any decision."""
        view: PolicyView | None = None
        try:
            view = self._current()
        except Exception:  # the digest is only informative here; the call is refused anyway
            log.exception("policy view unavailable", tool=name)
        decision = unknown_tool_decision(
            model=_model_id(session) or "unknown", tool=name,
            policy_digest=view.policy.digest if view else "unknown",
        )
        server, _, tool = name.partition(".")
        return await self._record(session, decision, view, server, tool, {}, "tools/call", "tool", None,
                                  time.perf_counter())

    def reaches(self, session: Any, upstream: str) -> bool:
        """Whether the session's key scope reaches ``upstream`` (its prompts and resources are listed)."""
        try:
            model_id = _model_id(session)
            identity = self._current().keys.get(model_id) if model_id is not None else None
            return identity is not None and scope_reaches(identity.tools, upstream)
        except Exception:  # a list filter fails closed: hide what cannot be judged
            log.exception("list filter failed", upstream=upstream)
            return False

    def _evaluate(
        self,
        session: Any,
        view: PolicyView,
        kind: str,
        server: str,
        name: str,
        arguments: Mapping[str, Any],
        input_schema: Mapping[str, Any] | None,
        findings: tuple[Finding, ...] = (),
    ) -> Decision:
        model_id = _model_id(session)
        if model_id is None:
            raise LookupError("the connection has no authenticated model identity")
        request = CallRequest(
            model=model_id, server=server, tool=name, arguments=arguments, input_schema=input_schema, kind=kind,
            findings=findings,
        )
        risk = session.risk
        decision = evaluate(request, view.policy, view.keys, session=risk)
        if risk is not None:
            risk.record_decision(decision, self._clock())
        return decision

    async def _record(
        self,
        session: Any,
        decision: Decision,
        view: PolicyView | None,
        server: str,
        name: str,
        arguments: Mapping[str, Any],
        method: str,
        kind: str,
        input_schema: Mapping[str, Any] | None,
        started: float,
        extra: Mapping[str, Any] | None = None,
    ) -> Verdict:
        request: dict[str, Any] | None
        if extra is None and method == "tools/call" and kind == "tool":  # the usual call
            request = None if input_schema is None else {"input_schema": input_schema}
        else:
            request = dict(extra or {})
            if input_schema is not None:
                request["input_schema"] = input_schema
            if method != "tools/call":
                request["method"] = method
            if kind != "tool":
                request["kind"] = kind
        data = decision.to_dict()
        try:
            await self._audit(self._build_event(
                decision=data,
                session_id=session.id,
                server=server,
                tool=name,
                arguments=arguments if type(arguments) is dict else dict(arguments),  # written before the forward
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                policy_version=view.version if view else None,
                request=request or None,
                source=decision,  # ``data`` is its to_dict(): the builder may know it already
            ))
        except Exception as exc:  # an unrecorded decision is never acted on
            log.exception("audit write failed", target=decision.tool, decision_id=decision.decision_id)
            decision = self._error(session, decision.tool, view, f"audit log unavailable: {_one_line(exc)}")
            data = decision.to_dict()
        return Verdict(decision, decision_view(data, self._visibility, policy=view.policy if view else None))

    def _error(self, session: Any, target: str, view: PolicyView | None, error: str) -> Decision:
        return gateway_error_decision(
            model=_model_id(session) or "unknown", tool=target, error=error,
            policy_digest=view.policy.digest if view else "unknown",
        )

    # ---- upstream -> client payloads ---------------------------------------------------------------

    async def screen(
        self, session: Any, *, method: str, server: str, target: str, payload: Any, decision_id: str | None = None,
    ) -> ScanOutcome:
        """Scan one upstream -> client payload; findings are audited. Blocked (payload None) when
        the mode is ``block`` or the findings could not be audited."""
        extra: tuple[Finding, ...] = ()
        if self._classifier is not None and self._result_scan != "off":
            extra = await self._classifier.findings(payload, "", "results")
        outcome = scan_payload(payload, self._result_scan, extra=extra)
        if not outcome.findings:
            return outcome
        if session.risk is not None:
            session.risk.record_findings(outcome.findings, self._clock())
        log.warning("suspicious upstream payload", method=method, target=target, findings=len(outcome.findings),
                    action=self._result_scan)
        event: dict[str, Any] = {
            "type": "result.flagged",
            "decision_id": decision_id,
            "session": session.id,
            "model": _model_id(session),
            "server": server,
            "tool": target,
            "method": method,
            "findings": finding_summary(outcome.findings),
            "action": self._result_scan,
        }
        try:
            await self._audit(event)
        except Exception:
            log.exception("audit write failed for result scan", method=method, target=target)
            return ScanOutcome(None, outcome.findings)
        return outcome

    @property
    def result_scan(self) -> str:
        return self._result_scan

    async def _screen_tool(self, call: ToolCall, decision: Decision, result: ToolResult) -> ToolResult:
        outcome = await self.screen(
            call.session, method="tools/call", server=call.server, target=call.tool, payload=result,
            decision_id=decision.decision_id,
        )
        if not outcome.findings:
            return result
        if outcome.payload is None:
            if self._result_scan != "block":
                return _blocked("the tool result was flagged and could not be audited")
            return _blocked("the tool result contained " + ", ".join(sorted({f.code for f in outcome.findings})))
        meta = dict(outcome.payload.get("_meta") or {})
        meta[SCAN_META_KEY] = finding_summary(outcome.findings)
        return {**outcome.payload, "_meta": meta}


def compact_view(view: Mapping[str, Any]) -> dict[str, Any]:
    """An allowed call's decision in brief (``decision_meta = "compact"``); the audit log has all of it."""
    return {key: view[key] for key in ("allowed", "reason", "decision_id", "risk_score") if key in view}


def denial_result(
    decision: Decision, visibility: str, view: Mapping[str, Any] | None = None, *, policy: Policy | None = None
) -> ToolResult:
    """A refused call as a tool result: readable text for the model, the decision as structured data.

    Everything shown is taken from the visibility-filtered view, never from the decision itself.
    """
    shown = dict(view) if view is not None else decision_view(decision.to_dict(), visibility, policy=policy)
    lines = [f"Denied: {shown.get('reason', '')}"]
    lines += [f"- {sentence}" for sentence in shown.get("reasoning") or ()]
    counterfactual = shown.get("counterfactual") if isinstance(shown.get("counterfactual"), Mapping) else None
    suggested = counterfactual.get("suggested_rule") if counterfactual is not None else None
    if counterfactual is not None:
        lines.append(f"What would allow it: {str(counterfactual.get('text', '')).rstrip('.')}.")
        if suggested is not None:
            lines.append(
                "To ask for access, call the `propose_policy` tool with a justification and this YAML:\n"
                + _rule_yaml(suggested)
            )
    if decision.reason_code != "gateway_error" and suggested is None:
        lines.append("A policy proposal cannot allow this call; an operator must change it.")
    lines.append(f"Decision id: {decision.decision_id}")
    # the decision rides in _meta as on allowed calls (a task-augmented denial keeps only _meta)
    return {"content": [{"type": "text", "text": "\n".join(lines)}], "structuredContent": shown, "isError": True,
            "_meta": {DECISION_META_KEY: shown}}


def _model_id(session: Any) -> str | None:
    model_id = getattr(getattr(session, "identity", None), "model_id", None)
    return model_id if isinstance(model_id, str) else None


def _blocked(why: str) -> ToolResult:
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
