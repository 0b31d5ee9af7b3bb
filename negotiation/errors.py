"""The negotiation package's errors: one root, a stable ``code`` on every instance.

::

    NegotiationError                 code "negotiation_error"
    ├── SigningError                 "signing_error", "key_exists", "key_invalid", "key_missing",
    │                                "key_mismatch", "unknown_algorithm", "verifier_required",
    │                                "signer_required"
    ├── ContractError                "contract_invalid"
    ├── PolicyTamperedError          "signature_invalid", "policy_unsigned", "chain_broken"
    ├── RepositoryError              "state_corrupt", "policy_conflict"
    ├── ProposalNotFoundError        "not_found"
    ├── InvalidStateError            "invalid_state"
    └── MergeConflictError           "merge_conflict"

A subclass sets its default ``code`` as a class attribute; a raise site may pass a more
specific one (``PolicyTamperedError(msg, code="policy_unsigned")``). Codes are part of
the public surface: callers, audit events and the admin API match on them, never on
messages. Add subclasses here, additively; keep the tree one level deep.
"""

from __future__ import annotations

__all__ = [
    "ContractError",
    "InvalidStateError",
    "MergeConflictError",
    "NegotiationError",
    "PolicyTamperedError",
    "ProposalNotFoundError",
    "RepositoryError",
    "SigningError",
]


class NegotiationError(Exception):
    """Root of every error the negotiation package raises on purpose."""

    code: str = "negotiation_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class SigningError(NegotiationError):
    """A key could not be created, read or used (never raised for a bad signature)."""

    code = "signing_error"


class ContractError(NegotiationError):
    """A stored contract record is malformed."""

    code = "contract_invalid"


class PolicyTamperedError(NegotiationError):
    """A policy or its history does not carry the signature the configuration demands."""

    code = "signature_invalid"


class RepositoryError(NegotiationError):
    """The policy repository's state directory is inconsistent, or a commit conflicts."""

    code = "state_corrupt"


class ProposalNotFoundError(NegotiationError):
    """No proposal has the given id."""

    code = "not_found"


class InvalidStateError(NegotiationError):
    """A proposal cannot make the requested move from its current status."""

    code = "invalid_state"


class MergeConflictError(NegotiationError):
    """A proposal no longer merges into the live policy (it moved on since the proposal)."""

    code = "merge_conflict"
