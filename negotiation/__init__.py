"""Policy negotiation: models propose policy changes; guardrails and reviewers decide.

The flow, one module per stage::

    tool.py (propose_policy) ─► review.py (NegotiationService) ─► guardrails.py ─► merge.py
                                      │     text_safety.py (scan,        (verdicts,   (add-only merge,
                                      │     redact, escape)              rule by rule) rule effects)
                                      ├─► store.py (proposals, SQLite) ◄─ proposal.py (status machine)
                                      └─► repository/ (signed versions) ─► live.py (hot swap)
                                              contracts.py, signing.py

``identity_risk.py`` keeps risk per model identity (``identity_risk_store.py``: on disk).
``cli_proposals.py`` is the reviewers' command line; the HTTP admin API lives in
``proxy/admin/app.py``. Errors: see ``negotiation.errors``.
"""

from negotiation.cli_policy import PolicyStorageConfig, open_repository
from negotiation.contracts import Contract, utc_now
from negotiation.errors import (
    ContractError,
    InvalidStateError,
    MergeConflictError,
    NegotiationError,
    PolicyTamperedError,
    ProposalNotFoundError,
    RepositoryError,
    SigningError,
)
from negotiation.guardrails import REJECTING_CODES, Assessment, GuardrailConfig, Verdict, assess
from negotiation.identity_risk import IdentityRiskStore, MemoryIdentityRiskStore
from negotiation.identity_risk_store import SqliteIdentityRiskStore
from negotiation.live import LivePolicy, watch_policy_file
from negotiation.merge import DiffEntry, MergeResult, effects, merge
from negotiation.proposal import TRANSITIONS, Proposal, ProposalStatus, new_proposal_id
from negotiation.repository import ActivePolicy, ChainReport, PolicyRepository
from negotiation.review import GUARDRAIL_REVIEWER, NegotiationService, ProposalOutcome
from negotiation.signing import (
    ALGORITHMS,
    Ed25519Signer,
    Ed25519Verifier,
    HmacSigner,
    HmacVerifier,
    Signer,
    Verifier,
    generate_ed25519_keypair,
    load_signing,
)
from negotiation.store import ProposalStore, SqliteProposalStore
from negotiation.tool import PROPOSE_POLICY_TOOL, handle_propose

__all__ = [
    "ALGORITHMS",
    "GUARDRAIL_REVIEWER",
    "PROPOSE_POLICY_TOOL",
    "REJECTING_CODES",
    "TRANSITIONS",
    "ActivePolicy",
    "Assessment",
    "ChainReport",
    "Contract",
    "ContractError",
    "DiffEntry",
    "Ed25519Signer",
    "Ed25519Verifier",
    "GuardrailConfig",
    "HmacSigner",
    "HmacVerifier",
    "IdentityRiskStore",
    "InvalidStateError",
    "LivePolicy",
    "MemoryIdentityRiskStore",
    "MergeConflictError",
    "MergeResult",
    "NegotiationError",
    "NegotiationService",
    "PolicyRepository",
    "PolicyStorageConfig",
    "PolicyTamperedError",
    "Proposal",
    "ProposalNotFoundError",
    "ProposalOutcome",
    "ProposalStatus",
    "ProposalStore",
    "RepositoryError",
    "Signer",
    "SigningError",
    "SqliteIdentityRiskStore",
    "SqliteProposalStore",
    "Verdict",
    "Verifier",
    "assess",
    "effects",
    "generate_ed25519_keypair",
    "handle_propose",
    "load_signing",
    "merge",
    "new_proposal_id",
    "open_repository",
    "utc_now",
    "watch_policy_file",
]
