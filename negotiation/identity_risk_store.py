"""Identity risk on disk: ``SqliteIdentityRiskStore``, the gateway's default.

A model must not shed its risk by reconnecting (negotiation/identity_risk.py), nor by
waiting for a restart: each identity's ``(level, at)`` is kept in SQLite under the state
directory (``<state_dir>/identity_risk.db``) and read back the first time the identity is
seen after a start. Decay runs on wall-clock time, so a gateway that was down for an hour
finds the score an hour decayed, as if it had stayed up.

Writes happen only when a score rises (a denial or a finding), never for an allowed,
clean call, in WAL mode with ``synchronous=NORMAL``: a commit costs no fsync, and a crash
can lose at most the last few raises, never corrupt the file. A row that is not a valid
snapshot (edited by hand) is never read as zero: it is logged and the identity starts at
full risk, which then decays (fail closed, visibly).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from negotiation.sqlite import open_store
from policy import SessionRisk

if TYPE_CHECKING:
    from policy.decision import Decision
    from policy.detect.finding import Finding

__all__ = ["SqliteIdentityRiskStore"]

log = structlog.get_logger("securegateway.identity_risk")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_risk (
    model_id TEXT PRIMARY KEY,
    level    REAL NOT NULL CHECK (level >= 0 AND level <= 1),
    at       REAL
)
"""


class _StoredRisk(SessionRisk):
    """A ``SessionRisk`` that writes itself through to its store whenever it rises."""

    def __init__(self, half_life_s: float, save: Callable[[SessionRisk], None]) -> None:
        super().__init__(half_life_s)
        self._save = save

    def record_decision(self, decision: Decision, now: float) -> None:
        if decision.allowed and not decision.findings:
            return  # the usual call changes nothing (SessionRisk.record_decision): no snapshot to compare
        before = self.snapshot()
        super().record_decision(decision, now)
        if self.snapshot() != before:
            self._save(self)

    def record_findings(self, findings: Sequence[Finding], now: float) -> None:
        before = self.snapshot()
        super().record_findings(findings, now)
        if self.snapshot() != before:
            self._save(self)


class SqliteIdentityRiskStore:
    """Identity risk in one SQLite file; the live objects are cached per process."""

    def __init__(self, path: str | Path, half_life_s: float = 600.0) -> None:
        self.path = Path(path)
        self._half_life_s = half_life_s
        self._lock = threading.Lock()
        self._risks: dict[str, _StoredRisk] = {}
        self._db = open_store(self.path, synchronous="NORMAL")
        self._db.execute(_SCHEMA)

    def for_identity(self, model_id: str) -> SessionRisk:
        with self._lock:
            risk = self._risks.get(model_id)
            if risk is None:
                risk = _StoredRisk(self._half_life_s, partial(self._write, model_id))
                row = self._row(model_id)
                if row is not None:
                    _restore(risk, model_id, row)
                self._risks[model_id] = risk
            return risk

    def score(self, model_id: str, now: float) -> float:
        with self._lock:
            risk = self._risks.get(model_id)
            row = self._row(model_id) if risk is None else None
        if risk is not None:
            return risk.score(now)
        if row is None:
            return 0.0
        probe = SessionRisk(self._half_life_s)
        _restore(probe, model_id, row)
        return probe.score(now)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, model_id: str) -> tuple[float, float | None] | None:
        found = self._db.execute("SELECT level, at FROM identity_risk WHERE model_id = ?", (model_id,)).fetchone()
        return None if found is None else (found[0], found[1])

    def _write(self, model_id: str, risk: SessionRisk) -> None:
        level, at = risk.snapshot()
        with self._lock:
            self._db.execute(
                "INSERT INTO identity_risk (model_id, level, at) VALUES (?, ?, ?) "
                "ON CONFLICT(model_id) DO UPDATE SET level = excluded.level, at = excluded.at",
                (model_id, level, at),
            )


def _restore(risk: SessionRisk, model_id: str, row: tuple[float, float | None]) -> None:
    try:
        risk.restore(*row)
    except (TypeError, ValueError) as exc:
        log.error("stored identity risk is invalid; starting at full risk", model=model_id, error=str(exc))
        risk.restore(1.0, time.time())
