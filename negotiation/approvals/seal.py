"""Sealed approval handles: what a client may hold and hand back, and nothing it could forge.

A handle is ``sga1.<approval id>.<mac>``; the MAC (HMAC-SHA256, truncated to 128 bits) covers
the id, the model identity it was issued to, the digest of the bound call (model, session or
identity, upstream, tool, argument digest, policy digest and version) and the expiry, under a
key generated once into the state directory (``approvals.key``, mode 0600) so handles survive
a restart of the gateway but not a change of key. The handle carries no grant by itself: the
store still checks the approval's status, expiry and binding when it is used, and uses it once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from negotiation.approvals.binding import Approval
from negotiation.approvals.store import ApprovalError

__all__ = ["HANDLE_PREFIX", "HandleSealer"]

HANDLE_PREFIX = "sga1"
_KEY_BYTES = 32
_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_MAC = re.compile(r"[0-9a-f]{32}")


class HandleSealer:
    """Mints and opens approval handles with one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("an approval key needs at least 16 bytes")
        self._key = key

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> HandleSealer:
        """The key in ``state_dir/approvals.key``, generated (0600) on first use."""
        path = state_dir / "approvals.key"
        state_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: use theirs
            else:
                with os.fdopen(fd, "wb") as out:
                    out.write(secrets.token_bytes(_KEY_BYTES))
        key = path.read_bytes()
        if len(key) < 16:
            raise ValueError(f"{path}: the approval key is truncated; delete it to generate a new one")
        return cls(key)

    def seal(self, approval: Approval, model: str) -> str:
        """The handle of ``approval`` for ``model`` (the identity that will bring it back)."""
        return f"{HANDLE_PREFIX}.{approval.id}.{self._mac(approval, model)}"

    @staticmethod
    def approval_id(handle: object) -> str:
        """The approval id a handle names (its form only; :meth:`verify` says whether it is ours)."""
        parts = handle.split(".") if isinstance(handle, str) else []
        if len(parts) != 3 or parts[0] != HANDLE_PREFIX or not _ID.fullmatch(parts[1]) or not _MAC.fullmatch(parts[2]):
            raise ApprovalError("the approval handle was not issued by this gateway", code="forged")
        return parts[1]

    def verify(self, handle: str, approval: Approval, model: str) -> None:
        """ApprovalError ``forged`` unless this gateway sealed ``handle`` for this approval and ``model``."""
        mac = handle.rsplit(".", 1)[-1]
        if not hmac.compare_digest(self._mac(approval, model), mac):
            raise ApprovalError("the approval handle was not issued by this gateway to this model", code="forged")

    @staticmethod
    def is_handle(value: object) -> bool:
        return isinstance(value, str) and value.startswith(HANDLE_PREFIX + ".")

    def _mac(self, approval: Approval, model: str) -> str:
        # the id, the identity it is handed to, the exact call (binding digest) and its expiry
        message = f"approval:{approval.id}:{model}:{approval.binding.digest}:{approval.expires_at!r}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]
