"""The approvals desk: where pending approvals wait and who may answer them.

Every transition is an audit event linked to the decision that asked
(``approval.requested``, ``approval.answered``, ``approval.expired``, ``approval.consumed``).
Intent before effect on the way to a yes: an answer the audit log cannot record is undone
(the approval expires) and the caller sees the failure, so no unrecorded yes lets a call run.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import structlog

from negotiation.approvals import (
    Approval,
    ApprovalBinding,
    ApprovalStatus,
    ApprovalStore,
    HandleSealer,
    MemoryApprovalStore,
)
from policy import Decision
from policy.redact import redact

log = structlog.get_logger("securegateway.approval")

AuditFn = Callable[[dict[str, Any]], Awaitable[None]]

__all__ = ["ApprovalDesk"]


class ApprovalDesk:
    """Approvals of one gateway process: the store, a wake-up event per pending one, the audit trail."""

    def __init__(
        self, sealer: HandleSealer, audit: AuditFn, *, store: ApprovalStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sealer = sealer
        self.store: ApprovalStore = store if store is not None else MemoryApprovalStore(clock=clock)
        self._audit = audit
        self._clock = clock
        self._answered: dict[str, anyio.Event] = {}

    async def open(self, binding: ApprovalBinding, decision: Decision, arguments: Mapping[str, Any]) -> Approval:
        """A new pending approval for the call ``decision`` held (audited before anyone can answer it)."""
        need = decision.approval
        if need is None:
            raise ValueError("the decision does not ask for approval")
        now = self._clock()
        approval = Approval(
            id=secrets.token_hex(12),
            binding=binding,
            decision_id=decision.decision_id,
            rules=need.rules,
            approver=need.approver,
            reason=decision.reason,
            arguments=redact(dict(arguments), root="arguments").value,
            created_at=now,
            expires_at=now + need.ttl,
        )
        await self._audit({
            "type": "approval.requested", "decision_id": decision.decision_id, "approval_id": approval.id,
            "model": binding.model, "session": binding.session, "server": binding.upstream, "tool": binding.tool,
            "arguments_digest": binding.arguments_digest, "policy_digest": binding.policy_digest,
            "policy_version": binding.policy_version, "rules": list(need.rules), "approver": need.approver,
            "expires_at": approval.expires_at,
        })
        self.store.add(approval)
        self._answered[approval.id] = anyio.Event()
        return approval

    def remaining(self, approval: Approval) -> float:
        return approval.expires_at - self._clock()

    def list(self, status: ApprovalStatus | None = None) -> list[Approval]:
        return self.store.list(status)

    def get(self, approval_id: str) -> Approval:
        return self.store.get(approval_id)

    async def answer(
        self, approval_id: str, *, approve: bool, by: str, how: str, comment: str | None = None
    ) -> Approval:
        """Record one answer (operator, CLI, or the user through elicitation) and wake the waiting call."""
        answered = self.store.answer(approval_id, approve=approve, by=by, how=how, comment=comment)
        try:
            await self._audit({
                "type": "approval.answered", "decision_id": answered.decision_id, "approval_id": approval_id,
                "approved": approve, "by": by, "how": how, "comment": comment,
            })
        except BaseException:
            self.store.expire(approval_id)  # an unrecorded yes is no yes
            raise
        finally:
            event = self._answered.get(approval_id)
            if event is not None:
                event.set()
        return answered

    async def wait(self, approval_id: str, *, on_tick: Callable[[float], Awaitable[None]] | None = None,
                   tick: float = 5.0) -> Approval:
        """Block until the approval is answered or its time is up (then it is expired and audited)."""
        approval = self.store.get(approval_id)
        event = self._answered.setdefault(approval_id, anyio.Event())
        while approval.status is ApprovalStatus.PENDING:
            remaining = approval.expires_at - self._clock()
            if remaining <= 0:
                break
            with anyio.move_on_after(min(tick, remaining)):
                await event.wait()
            approval = self.store.get(approval_id)
            if approval.status is ApprovalStatus.PENDING and on_tick is not None:
                await on_tick(approval.expires_at - self._clock())
        if approval.status in (ApprovalStatus.PENDING, ApprovalStatus.EXPIRED):
            return await self.expire(approval_id)
        self._answered.pop(approval_id, None)  # answered: nobody waits on it any more
        return approval

    async def expire(self, approval_id: str, why: str = "nobody answered in time") -> Approval:
        expired = self.store.expire(approval_id)
        self._answered.pop(approval_id, None)
        approval = expired if expired is not None else self.store.get(approval_id)
        if expired is not None:
            await self._audit({
                "type": "approval.expired", "decision_id": approval.decision_id, "approval_id": approval_id,
                "why": why,
            })
        return approval

    async def consume(self, approval_id: str, binding: ApprovalBinding, outcome_decision_id: str) -> Approval:
        """Use an approval once, for exactly the call it was given for (ApprovalError otherwise)."""
        consumed = self.store.consume(approval_id, binding)
        self._answered.pop(approval_id, None)
        await self._audit({
            "type": "approval.consumed", "decision_id": consumed.decision_id, "approval_id": approval_id,
            "outcome_decision_id": outcome_decision_id, "by": consumed.answered_by, "how": consumed.answered_how,
        })
        return consumed
