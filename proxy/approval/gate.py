"""Settling an ``approval_required`` decision: ask the user or an operator, then re-check and bind.

Routes, by the asking rules' ``approver`` and what the client can do:

* ``user`` - a handshake-era client that declared ``elicitation`` gets ``elicitation/create``
  while the call waits; a 2026-era client that declares it gets an ``input_required`` result
  carrying the same form and a sealed handle as ``requestState``, and the call continues when
  it retries with the answer. A client that can do neither is refused (``approval_denied``).
* ``operator`` - the call waits (progress notifications if the caller sent a progress token)
  while the approval is listed by the admin API and ``securegateway approvals``.
* ``any`` - the user route when the client has one (an operator may still answer first), the
  operator route otherwise.

Whatever the route, a yes is used once, for exactly the bound call: right before forwarding the
call is decided again against the live policy (a deny added meanwhile wins; a changed policy
digest voids the approval) and the approval is consumed with the binding of the call about to run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

import anyio
import structlog

from negotiation.approvals import Approval, ApprovalBinding, ApprovalError, ApprovalStatus, arguments_digest
from policy import Decision
from policy.decision import approval_outcome
from proxy.approval.desk import ApprovalDesk
from proxy.approval.form import approval_form, is_yes
from proxy.intercept import ToolCall, ToolResult
from proxy.mrtr import InputBridge

log = structlog.get_logger("securegateway.approval")

__all__ = ["APPROVAL_INPUT_KEY", "ApprovalGate", "DecisionPoint"]

APPROVAL_INPUT_KEY = "approval"
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

    def __init__(self, desk: ApprovalDesk, *, progress_interval: float = 5.0) -> None:
        self.desk = desk
        self._tick = progress_interval

    async def settle(self, call: ToolCall, verdict: Any, point: DecisionPoint) -> Settled | ToolResult:
        """Return the settled verdict (and the call to forward), or an ``input_required`` round."""
        decision: Decision = verdict.decision
        if self.desk.sealer.is_handle(call.params.get("requestState")):
            return await self._resume(call, verdict, point)
        assert decision.approval is not None
        route = _route(call, decision.approval.approver)
        if route is None:
            why = "the rule asks the user, and this client cannot show the user a question (no elicitation)"
            return await self._refuse(call, decision, point, "approval_denied", why=why, by="gateway")
        approval = await self.desk.open(self._binding(call, decision, point), decision, call.arguments)
        log.info("approval requested", approval=approval.id, tool=call.qualified, route=route)
        if route == "input_required":
            return {
                "resultType": "input_required",
                "inputRequests": {
                    APPROVAL_INPUT_KEY: {"method": "elicitation/create", "params": approval_form(approval)},
                },
                "requestState": self.desk.sealer.seal(approval.id, decision.model),
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
        return _without_rounds(call) if self.desk.sealer.is_handle(call.params.get("requestState")) else call

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

    async def _resume(self, call: ToolCall, verdict: Any, point: DecisionPoint) -> Settled:
        """A 2026 client's retry with the sealed handle and (maybe) the user's answer."""
        decision: Decision = verdict.decision
        try:
            approval_id = self.desk.sealer.open(call.params.get("requestState"), decision.model)
            approval = self.desk.get(approval_id)
        except ApprovalError as exc:
            return await self._refuse(call, decision, point, "approval_denied", why=exc.message, by="gateway")
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
            why = f"approval {approval.id} is {approval.status.value}; an approval is used once"
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

    def _binding(self, call: ToolCall, decision: Decision, point: DecisionPoint) -> ApprovalBinding:
        return ApprovalBinding(
            model=decision.model,
            session=call.session.id,
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


def _route(call: ToolCall, approver: str) -> str | None:
    """``input_required``, ``elicitation``, ``operator`` or None (nobody can be asked)."""
    modern = isinstance(call.session.channel, InputBridge)
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
    """The call as it goes upstream: the gateway's own round keys never leave it."""
    if not any(key in call.params for key in _ROUND_KEYS):
        return call
    from dataclasses import replace

    params = {k: v for k, v in call.params.items() if k not in _ROUND_KEYS}
    return replace(call, params=params)


def _action(answer: Any) -> str:
    return str(answer.get("action", "?"))[:20] if isinstance(answer, Mapping) else "?"
