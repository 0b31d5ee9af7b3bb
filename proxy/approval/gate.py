"""Settling an ``approval_required`` decision: ask the user or an operator, then re-check and bind.

Routes, by the asking rules' ``approver`` and what the client can do:

* ``user`` - a handshake-era client that declared ``elicitation`` gets ``elicitation/create``
  while the call waits; a 2026-era client that declares it gets an ``input_required`` result
  carrying the same form and a sealed handle as ``requestState``, and the call continues when
  it retries with the answer. A client that can do neither is refused (``approval_denied``).
* ``operator`` - the call waits (progress notifications if the caller sent a progress token)
  while the approval is listed by the admin API, the console and ``securegateway approvals``.
  With ``[approvals] operator_mode = "pending"`` a 2026-era (sessionless) client is not held:
  its call ends at once with a *pending approval* result carrying a sealed handle, and the
  client retries the same call with the handle in ``_meta["io.securegateway/approval"]`` (or
  as ``requestState``). Before the operator answers, a retry answers "pending" again (the same
  approval: nothing new is asked); after a yes, the retry runs the call once.
* ``any`` - the user route when the client has one (an operator may still answer first), the
  operator route otherwise.

Whatever the route, a yes is used once, for exactly the bound call: right before forwarding the
call is decided again against the live policy (a deny added meanwhile wins; a changed policy
digest voids the approval) and the approval is consumed with the binding of the call about to run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

import anyio
import structlog

from negotiation.approvals import (
    Approval,
    ApprovalBinding,
    ApprovalError,
    ApprovalStatus,
    HandleSealer,
    arguments_digest,
)
from policy import Decision
from policy.decision import approval_outcome
from proxy.approval.desk import ApprovalDesk
from proxy.approval.form import approval_form, is_yes
from proxy.enforce import DECISION_META_KEY
from proxy.intercept import ToolCall, ToolResult
from proxy.session import is_bridge

log = structlog.get_logger("securegateway.approval")

__all__ = ["APPROVAL_INPUT_KEY", "APPROVAL_META_KEY", "OPERATOR_MODES", "ApprovalGate", "DecisionPoint"]

APPROVAL_INPUT_KEY = "approval"
APPROVAL_META_KEY = "io.securegateway/approval"  # the handle on a retry; the pending state on a result
OPERATOR_MODES = ("wait", "pending")
_CAPS_KEY = "io.modelcontextprotocol/clientCapabilities"
_ROUND_KEYS = ("requestState", "inputResponses")


class _Verdict(Protocol):
    decision: Decision

    @property
    def allowed(self) -> bool: ...


class DecisionPoint(Protocol):
    """What the gate needs from the enforcer: decide a call again, record a derived decision."""

    async def decide_call(self, call: ToolCall) -> Any: ...

    async def record_call(self, call: ToolCall, decision: Decision, extra: Mapping[str, Any]) -> Any: ...

    def policy_version(self) -> int | None: ...


Settled = tuple[Any, ToolCall]  # (the final Verdict, the call to forward if it allows)


class ApprovalGate:
    """Turns a pending decision into ``approved_by``, ``approval_denied`` or ``approval_expired``."""

    def __init__(self, desk: ApprovalDesk, *, progress_interval: float = 5.0, operator_mode: str = "wait") -> None:
        if operator_mode not in OPERATOR_MODES:
            raise ValueError(f"operator_mode must be one of {', '.join(OPERATOR_MODES)}")
        self.desk = desk
        self._tick = progress_interval
        self._operator_mode = operator_mode

    async def settle(self, call: ToolCall, verdict: Any, point: DecisionPoint) -> Settled | ToolResult:
        """Return the settled verdict (and the call to forward), an ``input_required`` round or a pending result."""
        decision: Decision = verdict.decision
        handle = _handle_of(call)
        if handle is not None:
            return await self._resume(call, verdict, point, handle)
        assert decision.approval is not None
        route = _route(call, decision.approval.approver)
        if route is None:
            why = "the rule asks the user, and this client cannot show the user a question (no elicitation)"
            return await self._refuse(call, decision, point, "approval_denied", why=why, by="gateway")
        binding = self._binding(call, decision, point)
        if route == "operator" and self._operator_mode == "pending" and _sessionless(call):
            approval = await self.desk.find_or_open(binding, decision, call.arguments, mode="pending")
            log.info("approval pending", approval=approval.id, tool=call.qualified)
            return self._pending(call, verdict, approval)
        mode = {"operator": "wait"}.get(route, route)
        approval = await self.desk.open(binding, decision, call.arguments, mode=mode)
        log.info("approval requested", approval=approval.id, tool=call.qualified, route=route)
        if route == "input_required":
            return {
                "resultType": "input_required",
                "inputRequests": {
                    APPROVAL_INPUT_KEY: {"method": "elicitation/create", "params": approval_form(approval)},
                },
                "requestState": self.desk.handle(approval),
            }
        try:
            if route == "elicitation":
                approval = await self._elicit(call, approval)
            else:
                tick = self._progress(call, approval)
                if tick is not None:  # tell the caller at once why nothing happens yet
                    await tick(self.desk.remaining(approval))
                approval = await self.desk.wait(approval.id, on_tick=tick, tick=self._tick)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.desk.expire(approval.id, "the caller cancelled the call")  # nobody may answer for it now
            raise
        return await self._finish(call, decision, approval, point, fresh=None)

    def unheld(self, call: ToolCall) -> ToolCall:
        """A call that needs no approval (any more): drop a handle of ours before it goes upstream."""
        return _without_rounds(call) if _handle_of(call) is not None else call

    # ---- routes ----------------------------------------------------------------------------------

    async def _elicit(self, call: ToolCall, approval: Approval) -> Approval:
        """Ask the user at a handshake-era client; with ``approver: any`` an operator may answer first."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._ask_user, call, approval)
            settled = await self.desk.wait(approval.id, tick=self._tick)  # answered by anyone, or expired
            tg.cancel_scope.cancel()  # an elicitation still open is withdrawn
        return settled

    async def _ask_user(self, call: ToolCall, approval: Approval) -> None:
        remaining = max(self.desk.remaining(approval), 0.001)
        comment: str | None
        try:
            answer = await call.session.channel.send_raw_request(
                "elicitation/create", approval_form(approval), {"timeout": remaining}
            )
        except Exception as exc:  # the client refused or failed to ask
            if approval.approver == "any":
                log.info("elicitation failed; waiting for an operator", approval=approval.id, error=str(exc)[:200])
                return
            yes, comment = False, f"the client could not ask the user: {str(exc)[:200]}"
        else:
            yes = is_yes(answer)
            comment = None if yes else f"the user answered `{_action(answer)}`"
        with contextlib.suppress(ApprovalError):  # already answered (an operator) or expired
            await self.desk.answer(approval.id, approve=yes, by="user", how="elicitation", comment=comment)

    async def _resume(self, call: ToolCall, verdict: Any, point: DecisionPoint, handle: str) -> Settled | ToolResult:
        """A retry with a sealed handle: the user's answer to an ``input_required`` round, or a
        pending-approval retry (still pending, or approved and now run once)."""
        decision: Decision = verdict.decision
        try:
            approval = await self.desk.redeem(handle, decision.model)
        except ApprovalError as exc:
            return await self._refuse(call, decision, point, "approval_denied", why=exc.message, by="gateway")
        if approval.status is ApprovalStatus.PENDING and approval.mode == "pending":
            differs = approval.binding.differences(self._binding(call, decision, point))
            if differs:
                why = (f"approval {approval.id} was asked for another call (differs in {', '.join(differs)}); "
                       "call again without the handle to ask for this one")
                return await self._refuse(call, decision, point, "approval_denied", why=why, by="gateway",
                                          extra={"approval_id": approval.id})
            return self._pending(call, verdict, approval)  # not answered yet: the same request, nothing new
        if approval.status is ApprovalStatus.PENDING and approval.approver != "operator":
            responses = call.params.get("inputResponses")
            answer = responses.get(APPROVAL_INPUT_KEY) if isinstance(responses, Mapping) else None
            if answer is not None:
                yes = is_yes(answer)
                comment = None if yes else f"the user answered `{_action(answer)}`"
                with contextlib.suppress(ApprovalError):
                    approval = await self.desk.answer(
                        approval.id, approve=yes, by="user", how="elicitation (input_required)", comment=comment
                    )
        # this round was decided against the live policy just now: that is the re-evaluation
        return await self._finish(call, decision, approval, point, fresh=verdict)

    # ---- outcomes --------------------------------------------------------------------------------

    async def _finish(
        self, call: ToolCall, pending: Decision, approval: Approval, point: DecisionPoint, *, fresh: Any
    ) -> Settled:
        extra = {"approval_id": approval.id, "asked_by_decision": approval.decision_id}
        if approval.status is ApprovalStatus.DENIED:
            return await self._refuse(call, pending, point, "approval_denied", why=approval.comment,
                                      by=approval.answered_by, how=approval.answered_how, extra=extra)
        if approval.status is ApprovalStatus.EXPIRED:
            return await self._refuse(call, pending, point, "approval_expired", extra=extra)
        if approval.status is not ApprovalStatus.APPROVED:
            why = (f"approval {approval.id} was already used; an approval is used once"
                   if approval.status is ApprovalStatus.CONSUMED else
                   f"approval {approval.id} is {approval.status.value}; ask again")
            return await self._refuse(call, pending, point, "approval_denied", why=why, by="gateway", extra=extra)
        if fresh is None:
            fresh = await point.decide_call(call)  # right before forwarding: the live policy decides again
        current: Decision = fresh.decision
        if current.reason_code != "approval_required":
            return fresh, _without_rounds(call)  # a deny added meanwhile wins (or the ask was dropped)
        outcome = approval_outcome(current, "approved_by", by=approval.answered_by, how=approval.answered_how)
        try:
            await self.desk.consume(approval.id, self._binding(call, current, point), outcome.decision_id)
        except ApprovalError as exc:
            code = "approval_expired" if exc.code == "expired" else "approval_denied"
            return await self._refuse(call, current, point, code, why=exc.message, by="gateway", extra=extra)
        return await point.record_call(call, outcome, extra), _without_rounds(call)

    async def _refuse(
        self, call: ToolCall, pending: Decision, point: DecisionPoint, code: str, *, why: str | None = None,
        by: str | None = None, how: str | None = None, extra: Mapping[str, Any] | None = None,
    ) -> Settled:
        outcome = approval_outcome(pending, code, by=by, how=how, why=why)
        return await point.record_call(call, outcome, extra or {}), call

    def _pending(self, call: ToolCall, verdict: Any, approval: Approval) -> ToolResult:
        return pending_result(call, verdict.view, approval, self.desk.handle(approval), self.desk.remaining(approval))

    def _binding(self, call: ToolCall, decision: Decision, point: DecisionPoint) -> ApprovalBinding:
        # A sessionless (2026) client has no session that outlives one request: its calls are
        # bound to the model identity instead, so a handle works on any later request of it.
        return ApprovalBinding(
            model=decision.model,
            session=f"identity:{decision.model}" if _sessionless(call) else call.session.id,
            upstream=call.server,
            tool=call.tool,
            arguments_digest=arguments_digest(dict(call.arguments)),
            policy_digest=decision.policy_digest,
            policy_version=point.policy_version(),
        )

    def _progress(self, call: ToolCall, approval: Approval) -> Any:
        report = call.progress
        if report is None:
            return None
        total = approval.expires_at - approval.created_at

        async def tick(remaining: float) -> None:
            with contextlib.suppress(Exception):  # a caller that went away must not end the wait
                await report(total - remaining, total, f"waiting for an operator to approve {approval.id}")

        return tick


def pending_result(
    call: ToolCall, view: Mapping[str, Any], approval: Approval, handle: str, remaining: float
) -> ToolResult:
    """A call held for an operator, ended now: what is pending and how to come back (nothing ran)."""
    state = {
        "status": "pending", "approval_id": approval.id, "handle": handle, "expires_at": approval.expires_at,
        "expires_in_s": max(0, round(remaining)), "approver": approval.approver, "rules": list(approval.rules),
        "retry": {"name": call.name, "arguments": "the same arguments, unchanged",
                  "_meta": {APPROVAL_META_KEY: handle}},
    }
    rules = ", ".join(approval.rules)
    text = "\n".join([
        f"Pending approval: `{call.qualified}` waits for an operator's yes (rule {rules}). Nothing ran.",
        f"Approval {approval.id}; it lapses in {state['expires_in_s']}s.",
        f"When an operator has approved it, call `{call.name}` again with exactly the same arguments and",
        f'`_meta: {{"{APPROVAL_META_KEY}": "{handle}"}}`; the call then runs once. Until then the same retry',
        "answers pending again; other arguments need their own approval.",
        f"Decision id: {view.get('decision_id', approval.decision_id)}",
    ])
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": {**view, "pending_approval": state},
        "isError": True,
        "_meta": {DECISION_META_KEY: dict(view), APPROVAL_META_KEY: state},
    }


def _handle_of(call: ToolCall) -> str | None:
    """A handle of ours on a retry: ``_meta["io.securegateway/approval"]`` or ``requestState``."""
    meta = call.params.get("_meta")
    carried = meta.get(APPROVAL_META_KEY) if isinstance(meta, Mapping) else None
    if carried is not None:
        return carried if isinstance(carried, str) else repr(carried)[:100]  # present but malformed: refused
    state = call.params.get("requestState")
    return state if HandleSealer.is_handle(state) else None


def _sessionless(call: ToolCall) -> bool:
    return is_bridge(call.session.channel)


def _route(call: ToolCall, approver: str) -> str | None:
    """``input_required``, ``elicitation``, ``operator`` or None (nobody can be asked)."""
    modern = _sessionless(call)
    if modern:
        meta = call.params.get("_meta")
        caps = meta.get(_CAPS_KEY) if isinstance(meta, Mapping) else None
        user = isinstance(caps, Mapping) and caps.get("elicitation") is not None
    else:
        user = "elicitation" in (call.session.hello.capabilities or {})
    if approver == "operator" or (approver == "any" and not user):
        return "operator"
    if not user:
        return None
    return "input_required" if modern else "elicitation"


def _without_rounds(call: ToolCall) -> ToolCall:
    """The call as it goes upstream: the gateway's own round keys and handle never leave it."""
    meta = call.params.get("_meta")
    ours = isinstance(meta, Mapping) and APPROVAL_META_KEY in meta
    if not ours and not any(key in call.params for key in _ROUND_KEYS):
        return call
    params = {k: v for k, v in call.params.items() if k not in _ROUND_KEYS}
    if ours:
        assert isinstance(meta, Mapping)
        params["_meta"] = {k: v for k, v in meta.items() if k != APPROVAL_META_KEY}
    return replace(call, params=params)


def _action(answer: Any) -> str:
    return str(answer.get("action", "?"))[:20] if isinstance(answer, Mapping) else "?"
