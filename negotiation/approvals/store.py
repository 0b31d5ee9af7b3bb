"""The approval store: one seam, an in-memory default.

Transitions (anything else is ``invalid_state``)::

    pending --answer(yes)--> approved --consume--> consumed
    pending --answer(no)---> denied
    pending/approved --expire or past expires_at--> expired

``consume`` is the single use: it checks the binding of the call about to run against the
approved one and flips the approval to ``consumed`` under the store's lock, so two retries
racing with one handle cannot both run. Finished approvals are kept for ``keep_seconds`` so
operators can read what happened; pending ones are capped per store (``max_pending``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from negotiation.approvals.binding import Approval, ApprovalBinding, ApprovalStatus
from negotiation.errors import NegotiationError

__all__ = ["ApprovalError", "ApprovalStore", "MemoryApprovalStore"]


class ApprovalError(NegotiationError):
    """An approval cannot be used or changed: ``not_found``, ``invalid_state``, ``expired``,
    ``binding_mismatch``, ``forged`` or ``too_many_pending``."""

    code = "invalid_state"


class ApprovalStore(Protocol):
    """Where approvals live (memory now; a database when gateways share approvals)."""

    def add(self, approval: Approval) -> None: ...

    def get(self, approval_id: str) -> Approval: ...

    def list(self, status: ApprovalStatus | None = None) -> list[Approval]: ...

    def answer(self, approval_id: str, *, approve: bool, by: str, how: str, comment: str | None = None) -> Approval: ...

    def expire(self, approval_id: str) -> Approval | None: ...

    def consume(self, approval_id: str, binding: ApprovalBinding) -> Approval: ...


class MemoryApprovalStore:
    """Approvals in a dict under one lock (the admin API and the gateway share a process)."""

    def __init__(
        self, *, max_pending: int = 1000, keep_seconds: float = 3600.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._items: dict[str, Approval] = {}
        self._lock = threading.Lock()
        self._max_pending = max_pending
        self._keep = keep_seconds
        self._clock = clock

    def add(self, approval: Approval) -> None:
        with self._lock:
            self._sweep()
            pending = sum(1 for a in self._items.values() if a.status is ApprovalStatus.PENDING)
            if pending >= self._max_pending:
                raise ApprovalError(f"{pending} approvals are already waiting", code="too_many_pending")
            if approval.id in self._items:
                raise ApprovalError(f"approval `{approval.id}` exists already")
            self._items[approval.id] = approval

    def get(self, approval_id: str) -> Approval:
        with self._lock:
            return self._current(approval_id)

    def list(self, status: ApprovalStatus | None = None) -> list[Approval]:
        with self._lock:
            self._sweep()
            items = [self._current(i) for i in list(self._items)]
        return sorted((a for a in items if status is None or a.status is status), key=lambda a: a.created_at)

    def answer(self, approval_id: str, *, approve: bool, by: str, how: str, comment: str | None = None) -> Approval:
        with self._lock:
            approval = self._current(approval_id)
            if approval.status is not ApprovalStatus.PENDING:
                raise ApprovalError(f"approval `{approval_id}` is {approval.status.value}, not pending")
            answered = replace(
                approval,
                status=ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED,
                answered_by=by,
                answered_how=how,
                comment=comment or None,
                answered_at=self._clock(),
            )
            self._items[approval_id] = answered
            return answered

    def expire(self, approval_id: str) -> Approval | None:
        """Mark a pending or approved-but-unused approval expired; None if it had already finished."""
        with self._lock:
            approval = self._current(approval_id)
            if approval.status not in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED):
                return approval if approval.status is ApprovalStatus.EXPIRED else None
            expired = replace(approval, status=ApprovalStatus.EXPIRED)
            self._items[approval_id] = expired
            return expired

    def consume(self, approval_id: str, binding: ApprovalBinding) -> Approval:
        with self._lock:
            approval = self._current(approval_id)
            if approval.status is ApprovalStatus.EXPIRED:
                raise ApprovalError(f"approval `{approval_id}` expired", code="expired")
            if approval.status is not ApprovalStatus.APPROVED:
                raise ApprovalError(f"approval `{approval_id}` is {approval.status.value}, not approved")
            differs = approval.binding.differences(binding)
            if differs:
                raise ApprovalError(
                    f"approval `{approval_id}` was given for another call (differs in {', '.join(differs)}); "
                    "this call needs its own approval",
                    code="binding_mismatch",
                )
            consumed = replace(approval, status=ApprovalStatus.CONSUMED)
            self._items[approval_id] = consumed
            return consumed

    def _current(self, approval_id: str) -> Approval:
        approval = self._items.get(approval_id)
        if approval is None:
            raise ApprovalError(f"no approval `{approval_id[:80]}`", code="not_found")
        live = (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)
        if approval.status in live and self._clock() >= approval.expires_at:
            approval = replace(approval, status=ApprovalStatus.EXPIRED)
            self._items[approval_id] = approval
        return approval

    def _sweep(self) -> None:
        horizon = self._clock() - self._keep
        for approval_id, approval in list(self._items.items()):
            if approval.status not in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED) and (
                (approval.answered_at or approval.expires_at) < horizon
            ):
                del self._items[approval_id]
