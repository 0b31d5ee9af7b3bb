"""The approval store: one seam, the transitions every implementation shares, an in-memory store.

Transitions (anything else is ``invalid_state``)::

    pending --answer(yes)--> approved --consume--> consumed
    pending --answer(no)---> denied
    pending/approved --expire, or expire_due past expires_at--> expired
    pending (a waiting mode) --abandon, at start-up--> abandoned

The transitions are pure functions (:func:`answered`, :func:`expired`, :func:`consumed`); a
store loads the approval, applies one and writes the result back under its lock or
transaction, so two answers or two retries racing with one handle cannot both win.
Nothing changes status silently: an approval past its ``expires_at`` stays as stored until
:meth:`ApprovalStore.expire_due` flips it, so whoever flips it (the desk) audits it exactly once.
``answer`` and ``consume`` refuse an approval past its expiry all the same (code ``expired``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from negotiation.approvals.binding import LIVE, Approval, ApprovalBinding, ApprovalStatus
from negotiation.errors import NegotiationError

__all__ = [
    "ApprovalError",
    "ApprovalStore",
    "MemoryApprovalStore",
    "answered",
    "consumed",
    "expired",
]

Approvals = list[Approval]  # (the stores\' ``list`` method shadows the builtin in class bodies)


class ApprovalError(NegotiationError):
    """An approval cannot be used or changed: ``not_found``, ``invalid_state``, ``expired``,
    ``binding_mismatch``, ``forged`` or ``too_many_pending``."""

    code = "invalid_state"


class ApprovalStore(Protocol):
    """Where approvals live. Every method returns only after the change is stored."""

    def add(self, approval: Approval) -> None:
        """Store a new pending approval; ApprovalError ``too_many_pending`` when the store is full."""
        ...

    def has_room(self) -> bool:
        """Whether :meth:`add` would take one more pending approval now (a hint: ``add`` decides)."""
        ...

    def get(self, approval_id: str) -> Approval: ...

    def list(self, status: ApprovalStatus | None = None) -> Approvals: ...

    def find_pending(self, binding: ApprovalBinding, mode: str) -> Approval | None:
        """A pending approval of ``mode`` for exactly this call, if one is open (no duplicate asks)."""
        ...

    def answer(self, approval_id: str, *, approve: bool, by: str, how: str, comment: str | None = None) -> Approval:
        ...

    def expire(self, approval_id: str) -> Approval | None:
        """Expire a live approval now; None if it had already finished otherwise."""
        ...

    def expire_due(self) -> Approvals:
        """Expire every live approval past its ``expires_at``; return those this call flipped."""
        ...

    def abandon(self, modes: Iterable[str]) -> Approvals:
        """Mark pending approvals whose mode is one of ``modes`` abandoned; return them."""
        ...

    def consume(self, approval_id: str, binding: ApprovalBinding) -> Approval: ...

    def close(self) -> None: ...


# ---- the transitions -----------------------------------------------------------------------------


def answered(
    approval: Approval, *, approve: bool, by: str, how: str, comment: str | None, now: float
) -> Approval:
    if approval.status is not ApprovalStatus.PENDING:
        raise ApprovalError(f"approval `{approval.id}` is {approval.status.value}, not pending")
    if now >= approval.expires_at:
        raise ApprovalError(f"approval `{approval.id}` expired before it was answered", code="expired")
    return replace(
        approval,
        status=ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED,
        answered_by=by,
        answered_how=how,
        comment=comment or None,
        answered_at=now,
    )


def expired(approval: Approval) -> Approval | None:
    return replace(approval, status=ApprovalStatus.EXPIRED) if approval.status in LIVE else None


def consumed(approval: Approval, binding: ApprovalBinding, now: float) -> Approval:
    if approval.status is ApprovalStatus.EXPIRED or (approval.live and now >= approval.expires_at):
        raise ApprovalError(f"approval `{approval.id}` expired", code="expired")
    if approval.status is not ApprovalStatus.APPROVED:
        raise ApprovalError(f"approval `{approval.id}` is {approval.status.value}, not approved")
    differs = approval.binding.differences(binding)
    if differs:
        raise ApprovalError(
            f"approval `{approval.id}` was given for another call (differs in {', '.join(differs)}); "
            "this call needs its own approval",
            code="binding_mismatch",
        )
    return replace(approval, status=ApprovalStatus.CONSUMED)


def not_found(approval_id: str) -> ApprovalError:
    return ApprovalError(f"no approval `{approval_id[:80]}`", code="not_found")


# ---- in memory -----------------------------------------------------------------------------------


class MemoryApprovalStore:
    """Approvals in a dict under one lock: for tests and embedding (nothing survives the process)."""

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
            self._purge()
            pending = sum(1 for a in self._items.values() if a.status is ApprovalStatus.PENDING)
            if pending >= self._max_pending:
                raise ApprovalError(f"{pending} approvals are already waiting", code="too_many_pending")
            if approval.id in self._items:
                raise ApprovalError(f"approval `{approval.id}` exists already")
            self._items[approval.id] = approval

    def has_room(self) -> bool:
        with self._lock:
            self._purge()
            return sum(1 for a in self._items.values() if a.status is ApprovalStatus.PENDING) < self._max_pending

    def get(self, approval_id: str) -> Approval:
        with self._lock:
            return self._get(approval_id)

    def list(self, status: ApprovalStatus | None = None) -> Approvals:
        with self._lock:
            self._purge()
            items = list(self._items.values())
        return sorted((a for a in items if status is None or a.status is status), key=lambda a: a.created_at)

    def find_pending(self, binding: ApprovalBinding, mode: str) -> Approval | None:
        with self._lock:
            now = self._clock()
            return next((a for a in self._items.values() if a.status is ApprovalStatus.PENDING and a.mode == mode
                         and a.binding == binding and now < a.expires_at), None)

    def answer(self, approval_id: str, *, approve: bool, by: str, how: str, comment: str | None = None) -> Approval:
        with self._lock:
            new = answered(self._get(approval_id), approve=approve, by=by, how=how, comment=comment,
                           now=self._clock())
            self._items[approval_id] = new
            return new

    def expire(self, approval_id: str) -> Approval | None:
        with self._lock:
            new = expired(self._get(approval_id))
            if new is not None:
                self._items[approval_id] = new
            return new

    def expire_due(self) -> Approvals:
        with self._lock:
            now = self._clock()
            flipped = []
            for approval in list(self._items.values()):
                if approval.live and now >= approval.expires_at:
                    new = replace(approval, status=ApprovalStatus.EXPIRED)
                    self._items[approval.id] = new
                    flipped.append(new)
            return flipped

    def abandon(self, modes: Iterable[str]) -> Approvals:
        wanted = set(modes)
        with self._lock:
            flipped = []
            for approval in list(self._items.values()):
                if approval.status is ApprovalStatus.PENDING and approval.mode in wanted:
                    new = replace(approval, status=ApprovalStatus.ABANDONED)
                    self._items[approval.id] = new
                    flipped.append(new)
            return flipped

    def consume(self, approval_id: str, binding: ApprovalBinding) -> Approval:
        with self._lock:
            new = consumed(self._get(approval_id), binding, self._clock())
            self._items[approval_id] = new
            return new

    def close(self) -> None:
        pass

    def _get(self, approval_id: str) -> Approval:
        approval = self._items.get(approval_id)
        if approval is None:
            raise not_found(approval_id)
        return approval

    def _purge(self) -> None:
        horizon = self._clock() - self._keep
        for approval_id, approval in list(self._items.items()):
            if not approval.live and (approval.answered_at or approval.expires_at) < horizon:
                del self._items[approval_id]
