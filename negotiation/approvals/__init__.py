"""Per-call approvals as state: what a "yes" is bound to, how its handle is sealed, where it lives.

::

    binding.py   ApprovalBinding (model, session, upstream, tool, argument digest, policy) and Approval
    seal.py      HandleSealer: MAC'd handles with a key kept in the state directory
    store.py     ApprovalStore (the seam) and MemoryApprovalStore: pending -> approved/denied/expired -> consumed

Synchronous and free of I/O beyond the key file; the waiting (events, timeouts, elicitation)
lives in :mod:`proxy.approval`. Errors are :class:`ApprovalError` with a stable ``code``.
"""

from negotiation.approvals.binding import Approval, ApprovalBinding, ApprovalStatus, arguments_digest
from negotiation.approvals.seal import HandleSealer
from negotiation.approvals.store import ApprovalError, ApprovalStore, MemoryApprovalStore

__all__ = [
    "Approval",
    "ApprovalBinding",
    "ApprovalError",
    "ApprovalStatus",
    "ApprovalStore",
    "HandleSealer",
    "MemoryApprovalStore",
    "arguments_digest",
]
