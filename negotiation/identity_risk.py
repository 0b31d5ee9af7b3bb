"""Risk per model identity: one decaying score per model, shared by all its connections.

The guardrails' ``session_risk_high`` check and the policy's ``deny_risk_above`` both read
this score, so a model cannot shed its risk by reconnecting: every connection of one
identity raises and reads the same ``SessionRisk`` (which decays by half every
``half_life_s``). ``IdentityRiskStore`` is the seam; the gateway's default is
``SqliteIdentityRiskStore`` (negotiation/identity_risk_store.py, in the state directory, so
a restart does not reset anyone); ``MemoryIdentityRiskStore`` lives as long as the process
(tests, embedding).
"""

from __future__ import annotations

import threading
from typing import Protocol

from policy import SessionRisk

__all__ = ["IdentityRiskStore", "MemoryIdentityRiskStore"]


class IdentityRiskStore(Protocol):
    """Where each model identity's risk lives."""

    def for_identity(self, model_id: str) -> SessionRisk:
        """The one risk object of ``model_id`` (created at zero the first time)."""
        ...

    def score(self, model_id: str, now: float) -> float:
        """The decayed score of ``model_id`` at ``now`` (0 for a model never seen)."""
        ...

    def close(self) -> None:
        """Release the store (the gateway stops)."""
        ...


class MemoryIdentityRiskStore:
    """Identity risk in process memory."""

    def __init__(self, half_life_s: float = 600.0) -> None:
        self._half_life_s = half_life_s
        self._risks: dict[str, SessionRisk] = {}
        self._lock = threading.Lock()

    def for_identity(self, model_id: str) -> SessionRisk:
        with self._lock:
            risk = self._risks.get(model_id)
            if risk is None:
                risk = self._risks[model_id] = SessionRisk(self._half_life_s)
            return risk

    def score(self, model_id: str, now: float) -> float:
        with self._lock:
            risk = self._risks.get(model_id)
        return 0.0 if risk is None else risk.score(now)

    def close(self) -> None:
        """Nothing to release."""
