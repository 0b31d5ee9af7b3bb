"""Random bytes for identifiers, drawn from the OS CSPRNG a page at a time.

Every tools/call needs two fresh ids (the decision's and its audit event's); one
``os.urandom(16)`` each is a ``getrandom`` system call per id, which costs more than the rest of
building the id. The bytes are the same CSPRNG output, read 4 KiB at a time and handed out in
order, never twice. A forked child starts with an empty pool, so parent and child never share
ids. Ids are unique and unguessable, not secret keys: nothing here is used for signing.
"""

from __future__ import annotations

import os
import threading

__all__ = ["random_bytes"]

_CHUNK = 4096
_lock = threading.Lock()  # the negotiation worker thread builds events too
_pool = bytearray()


def random_bytes(count: int) -> bytearray:
    """``count`` fresh random bytes (a new, mutable buffer)."""
    global _pool
    with _lock:
        if len(_pool) < count:
            _pool = bytearray(os.urandom(max(_CHUNK, count)))
        out = _pool[-count:]
        del _pool[-count:]
    return out


def _reset_after_fork() -> None:
    global _pool, _lock
    _lock = threading.Lock()
    _pool = bytearray()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
