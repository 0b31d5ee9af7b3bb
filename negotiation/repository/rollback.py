"""No rollback: the newest policy version accepted, remembered outside the history.

The high-water mark (:mod:`negotiation.high_water`) is signed and raised after every commit
and load. With ``require_signature`` a history whose head is older than the mark (or the
same version with another digest), or a mark that is unsigned or forged, is refused
(``policy_rollback`` / ``policy_state_invalid``) by ``load()`` and reported by
``verify_chain()``; ``accept()`` is the operator's explicit way past it
(``securegateway policy verify --accept-rollback``).
"""

from __future__ import annotations

from negotiation.contracts import Contract
from negotiation.errors import PolicyTamperedError
from negotiation.high_water import HighWater, HighWaterStore
from negotiation.signing import Signer, Verifier

__all__ = ["RollbackGuard"]


class RollbackGuard:
    """Checks a history against the high-water mark and raises the mark."""

    def __init__(
        self, store: HighWaterStore, *, signer: Signer | None, verifier: Verifier | None, require_signature: bool
    ) -> None:
        self.store = store
        self._signer = signer
        self._verifier = verifier
        self._require_signature = require_signature

    def check(self, contracts: list[Contract]) -> None:
        """With require_signature: refuse a history that ends before the version last accepted."""
        if not self._require_signature:
            return
        mark = self.store.read()
        if mark is None:
            return  # first start, or an upgrade: the mark is set by this load (trust on first use)
        assert self._verifier is not None  # require_signature guarantees one
        if not mark.verifies(self._verifier):
            raise PolicyTamperedError(
                f"the policy high-water mark (v{mark.version}) is unsigned or its signature does not verify; "
                "restore it, or accept the current history with `securegateway policy verify --accept-rollback`",
                code="policy_state_invalid",
            )
        head = contracts[-1] if contracts else None
        version = head.version if head else 0
        if version > mark.version or (head is not None and (head.version, head.digest) == (mark.version, mark.digest)):
            return
        what = f"ends at v{version} ({head.digest})" if head else "is empty"
        raise PolicyTamperedError(
            f"policy rollback refused: the history {what} but v{mark.version} ({mark.digest}) was accepted "
            "before; restore the newer contracts.jsonl and policy file, or accept this version on purpose "
            "with `securegateway policy verify --accept-rollback`",
            code="policy_rollback",
        )

    def raise_to(self, contract: Contract) -> None:
        """Record ``contract`` as the newest accepted version if it is newer than the mark."""
        if self._signer is None:
            return
        try:
            mark = self.store.read()
        except PolicyTamperedError:
            if self._require_signature:
                raise
            mark = None
        if mark is not None and mark.version >= contract.version:
            return
        self.store.write(HighWater(contract.version, contract.digest).sign(self._signer))

    def accept(self, head: Contract) -> HighWater | None:
        """Set the mark to ``head`` whatever it was (the caller holds a signer); the previous mark."""
        assert self._signer is not None
        try:
            previous = self.store.read()
        except PolicyTamperedError:
            previous = None  # a mark that does not parse is replaced too: that is the point
        self.store.write(HighWater(head.version, head.digest).sign(self._signer))
        return previous
