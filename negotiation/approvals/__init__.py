"""Per-call approvals as state: what a "yes" is bound to, how its handle is sealed, where it lives.

::

    binding.py   ApprovalBinding (model, session, upstream, tool, argument digest, policy) and Approval
    seal.py      HandleSealer: MAC'd handles with a key kept in the state directory
    store.py     ApprovalStore (the seam), the pure transitions, MemoryApprovalStore (tests, embedding)
    sqlite_store.py  SqliteApprovalStore: the default, <state_dir>/approvals.db, survives restarts

Synchronous and free of I/O beyond the key file and the database; the waiting (events, timeouts, elicitation)
lives in :mod:`proxy.approval`. Errors are :class:`ApprovalError` with a stable ``code``.
"""

from negotiation.approvals.binding import (
    MODES,
    WAITING_MODES,
    Approval,
    ApprovalBinding,
    ApprovalStatus,
    arguments_digest,
)
from negotiation.approvals.seal import HandleSealer
from negotiation.approvals.sqlite_store import SqliteApprovalStore
from negotiation.approvals.store import ApprovalError, ApprovalStore, MemoryApprovalStore

__all__ = [
    "MODES",
    "WAITING_MODES",
    "Approval",
    "ApprovalBinding",
    "ApprovalError",
    "ApprovalStatus",
    "ApprovalStore",
    "HandleSealer",
    "MemoryApprovalStore",
    "SqliteApprovalStore",
    "arguments_digest",
]
