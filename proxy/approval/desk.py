"""The approvals desk: where pending approvals wait and who may answer them.

Every transition is an audit event linked to the decision that asked (``approval.requested``,
``approval.answered``, ``approval.expired``, ``approval.abandoned``, ``approval.consumed``).
Intent before effect on the way to a yes: an answer the audit log cannot record is undone
(the approval expires) and the caller sees the failure, so no unrecorded yes lets a call run.

Lapsing is deterministic: nothing changes status behind the desk's back. Every read
(:meth:`get`, :meth:`list`, a handle brought back) first runs :meth:`sweep`, which expires
what is past its ``expires_at`` and writes one ``approval.expired`` per approval; the gateway
also sweeps every second, so an ``input_required`` question nobody answered is expired and
audited even if the client never comes back.

At start-up :meth:`recover` marks ``abandoned`` the pending approvals whose caller was
holding a request open (modes ``wait`` and ``elicitation``: that request died with the old
process). Approvals handed out as a sealed handle (``input_required``, ``pending``) are kept:
their client can still come back with the handle.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import structlog

from negotiation.approvals import (
    WAITING_MODES,
    Approval,
    ApprovalBinding,
    ApprovalError,
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

Approvals = list[Approval]  # (the stores\' ``list`` method shadows the builtin in class bodies)


class ApprovalDesk:
    """Approvals of one gateway: the store, a wake-up event per waiting call, the audit trail."""

    def __init__(
        self, sealer: HandleSealer, audit: AuditFn, *, store: ApprovalStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sealer = sealer
        self.store: ApprovalStore = store if store is not None else MemoryApprovalStore(clock=clock)
        self._audit = audit
        self._clock = clock
        self._answered: dict[str, anyio.Event] = {}

    async def open(
        self, binding: ApprovalBinding, decision: Decision, arguments: Mapping[str, Any], *, mode: str = "wait"
    ) -> Approval:
        """A new pending approval for the call ``decision`` held (audited before anyone can answer it)."""
        need = decision.approval
        if need is None:
            raise ValueError("the decision does not ask for approval")
        if not self.store.has_room():  # refuse before the audit log says anything was asked
            raise ApprovalError("too many approvals are already waiting", code="too_many_pending")
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
            mode=mode,
        )
        await self._audit({
            "type": "approval.requested", "decision_id": decision.decision_id, "approval_id": approval.id,
            "model": binding.model, "session": binding.session, "server": binding.upstream, "tool": binding.tool,
            "arguments_digest": binding.arguments_digest, "policy_digest": binding.policy_digest,
            "policy_version": binding.policy_version, "rules": list(need.rules), "approver": need.approver,
            "expires_at": approval.expires_at, "mode": mode,
        })
        try:
            self.store.add(approval)
        except ApprovalError as exc:  # another writer filled the store since has_room: close what we opened
            await self._audit({
                "type": "approval.expired", "decision_id": decision.decision_id, "approval_id": approval.id,
                "why": f"refused before anyone could answer it: {exc.message}",
            })
            raise
        if mode in WAITING_MODES:
            self._answered[approval.id] = anyio.Event()
        return approval

    async def find_or_open(
        self, binding: ApprovalBinding, decision: Decision, arguments: Mapping[str, Any], *, mode: str
    ) -> Approval:
        """The open approval for exactly this call, or a new one: asking twice is one request."""
        await self.sweep()
        found = self.store.find_pending(binding, mode)
        return found if found is not None else await self.open(binding, decision, arguments, mode=mode)

    def remaining(self, approval: Approval) -> float:
        return approval.expires_at - self._clock()

    def handle(self, approval: Approval) -> str:
        """The sealed handle a client brings back for ``approval`` (bound to its model)."""
        return self.sealer.seal(approval, approval.binding.model)

    async def redeem(self, handle: object, model: str) -> Approval:
        """The approval a handle names, as it stands now; ApprovalError ``forged`` unless we sealed it for ``model``."""
        approval_id = self.sealer.approval_id(handle)
        try:
            approval = await self.get(approval_id)
        except ApprovalError as exc:
            if exc.code != "not_found":
                raise
            raise ApprovalError("the approval handle was not issued by this gateway", code="forged") from None
        assert isinstance(handle, str)
        self.sealer.verify(handle, approval, model)
        return approval

    async def list(self, status: ApprovalStatus | None = None) -> Approvals:
        await self.sweep()
        return self.store.list(status)

    async def get(self, approval_id: str) -> Approval:
        await self.sweep()
        return self.store.get(approval_id)

    async def sweep(self) -> Approvals:
        """Expire every approval past its time, one ``approval.expired`` event each."""
        lapsed = self.store.expire_due()
        for approval in lapsed:
            self._wake(approval.id)
            why = "approved but not used in time" if approval.answered_at is not None else "nobody answered in time"
            await self._audit({
                "type": "approval.expired", "decision_id": approval.decision_id, "approval_id": approval.id,
                "why": why,
            })
        return lapsed

    async def recover(self) -> Approvals:
        """At start-up: abandon what waited in a request of the previous process, then sweep."""
        abandoned = self.store.abandon(WAITING_MODES)
        for approval in abandoned:
            await self._audit({
                "type": "approval.abandoned", "decision_id": approval.decision_id, "approval_id": approval.id,
                "mode": approval.mode, "why": "the gateway restarted while the call waited; the call was not run",
            })
        if abandoned:
            log.warning("approvals abandoned at start-up", count=len(abandoned))
        await self.sweep()
        return abandoned

    async def answer(
        self, approval_id: str, *, approve: bool, by: str, how: str, comment: str | None = None
    ) -> Approval:
        """Record one answer (operator, CLI, or the user through elicitation) and wake the waiting call."""
        await self.sweep()
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
            self._wake(approval_id)
        return answered

    async def operator_answer(
        self, approval_id: str, *, approve: bool, by: str, how: str, comment: str | None = None
    ) -> Approval:
        """An operator's yes or no (admin API, CLI, console); a call for its user (``approver: user``)
        is not theirs to answer."""
        if (await self.get(approval_id)).approver == "user":
            raise ApprovalError("this call waits for its user's answer (approver: user)")
        return await self.answer(approval_id, approve=approve, by=by, how=how, comment=comment)

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
        try:
            consumed = self.store.consume(approval_id, binding)
        except ApprovalError as exc:
            if exc.code == "expired":
                await self.sweep()  # it lapsed just now: the expiry is audited before the refusal
            raise
        self._answered.pop(approval_id, None)
        await self._audit({
            "type": "approval.consumed", "decision_id": consumed.decision_id, "approval_id": approval_id,
            "outcome_decision_id": outcome_decision_id, "by": consumed.answered_by, "how": consumed.answered_how,
        })
        return consumed

    def close(self) -> None:
        self.store.close()

    def _wake(self, approval_id: str) -> None:
        event = self._answered.get(approval_id)
        if event is not None:
            event.set()
