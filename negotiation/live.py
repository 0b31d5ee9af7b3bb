"""The policy the gateway is enforcing right now, and the watcher that hot-reloads it.

``LivePolicy.current`` is a plain attribute: the enforcement path reads it once per call
with no lock, and a swap replaces the reference in one assignment, so a call sees the
old policy or the new one, never a mix. Versions only move forward: a swap to a version
not newer than the current one is refused, so a slow reload that raced a commit cannot
put an older policy back.

``watch_policy_file`` polls the live file. A change in ``(mtime_ns, size, inode)`` must
hold still for one more poll (an editor writing in place is not read half-way), then
the bytes are hashed so a touch without a change costs nothing, then ``repo.load()``
runs in a worker thread. Success swaps and reports ``policy.activated``; any failure
keeps the old policy live and reports ``policy.reload_failed``. The watcher itself never
stops on a bad file, only when cancelled.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from negotiation.errors import NegotiationError
from negotiation.repository import ActivePolicy, PolicyRepository
from policy import PolicyError

__all__ = ["LivePolicy", "watch_policy_file"]

Subscriber = Callable[[ActivePolicy], None]
EventSink = Callable[[str, dict[str, Any]], None]
_UNSEEN = object()  # compares unequal to any stat key or hash


class LivePolicy:
    """A holder for the active policy: lock-free reads, serialised forward-only swaps."""

    def __init__(self, initial: ActivePolicy) -> None:
        self.current: ActivePolicy = initial
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(new_active)`` after every swap; returns the function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def swap(self, active: ActivePolicy) -> bool:
        """Make ``active`` current if it is a newer version; whether it was.

        Subscribers run under the swap lock, so they see versions in order; they must be
        quick and must not swap themselves.
        """
        with self._lock:
            if active.version <= self.current.version:
                return False
            self.current = active
            for callback in list(self._subscribers):
                callback(active)
        return True


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _content_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _error_code(exc: Exception) -> str:
    if isinstance(exc, NegotiationError):
        return exc.code
    if isinstance(exc, PolicyError):
        return "policy_invalid"
    if isinstance(exc, OSError):
        return "io_error"
    return "internal_error"


async def watch_policy_file(
    repo: PolicyRepository,
    live: LivePolicy,
    *,
    on_event: EventSink,
    interval: float = 1.0,
) -> None:
    """Reload ``repo``'s live file into ``live`` whenever it changes; runs until cancelled.

    The first poll compares the file's bytes with those the live policy was loaded from
    (``ActivePolicy.source_sha256``): an edit made between start-up and the watcher's start
    is reloaded, the very file already serving is not parsed a second time. A live policy
    with no source hash (a commit, a test) gets one reload, which for an unchanged file
    lands on the same version and reports nothing.
    """
    path = repo.policy_path
    seen: object = _UNSEEN
    settling: object = _UNSEEN
    seen_hash: object = live.current.source_sha256 or _UNSEEN
    while True:
        await anyio.sleep(interval)
        key = _stat_key(path)
        if key == seen:
            continue
        if key != settling:  # changed since the last poll: let it settle one interval
            settling = key
            continue
        seen = key
        content = await anyio.to_thread.run_sync(_content_hash, path)  # up to 1 MB: off the loop
        if content == seen_hash:
            continue
        seen_hash = content
        await _reload(repo, live, on_event)


async def _reload(repo: PolicyRepository, live: LivePolicy, on_event: EventSink) -> None:
    previous = live.current
    try:
        active = await anyio.to_thread.run_sync(repo.load)
    except Exception as exc:  # the watcher is a boundary: a bad file must not stop the gateway
        on_event(
            "policy.reload_failed",
            {
                "path": str(repo.policy_path),
                "code": _error_code(exc),
                "error": str(exc),
                "live_version": previous.version,
                "live_digest": previous.digest,
            },
        )
        return
    if live.swap(active):
        contract = active.contract
        on_event(
            "policy.activated",
            {
                "path": str(repo.policy_path),
                "version": active.version,
                "digest": active.digest,
                "previous_version": previous.version,
                "previous_digest": previous.digest,
                "approver": contract.approver if contract else None,
                "proposal_id": contract.proposal_id if contract else None,
                "signed": bool(contract and contract.signature),
            },
        )
    elif active.version < previous.version:
        on_event(
            "policy.reload_failed",
            {
                "path": str(repo.policy_path),
                "code": "stale_version",
                "error": f"the repository is at v{active.version}, older than the live v{previous.version}",
                "live_version": previous.version,
                "live_digest": previous.digest,
            },
        )
