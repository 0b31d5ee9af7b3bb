"""Risk factors, how they combine into one score, and the per-session risk memory.

Every check contributes coded :class:`RiskFactor` values with a weight in ``[0, 1]``. They
combine like independent probabilities ("noisy-OR")::

    risk_score = 1 - (1 - w1) * (1 - w2) * ... * (1 - wn)

so one strong signal counts for most of its weight, several weak ones add up, and the
score never leaves ``[0, 1]``. The session's own score enters as one more factor (``session``).

:class:`SessionRisk` remembers a session's history: each denial and each suspicious finding
raises it (combined the same noisy-OR way), and it decays exponentially with a half-life.
Time is always passed in (POSIX seconds), so it is deterministic under test. ``evaluate``
only *reads* a session; the caller records the decision afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .decision import Decision
    from .detect.finding import Finding

__all__ = [
    "DENIAL_WEIGHTS",
    "FINDING_WEIGHTS",
    "RiskFactor",
    "SessionRisk",
    "combine",
    "finding_factors",
    "finding_weight",
    "risk_label",
]

# Weight of a call-level factor for each kind of finding (code, or code:kind when it differs).
FINDING_WEIGHTS: dict[str, float] = {
    "prompt_injection": 0.6,
    "hidden_unicode": 0.3,
    "hidden_unicode:bidi_control": 0.4,
    "hidden_unicode:tag_character": 0.5,
    "secret": 0.5,
}
# How much a denial with this reason code raises the session's risk.
DENIAL_WEIGHTS: dict[str, float] = {
    "unknown_model": 0.2,
    "out_of_scope": 0.15,
    "explicit_deny": 0.15,
    "risk_threshold": 0.2,
    "default_deny": 0.1,
    "schema_violation": 0.1,
    "rule_error": 0.05,
    "gateway_error": 0.0,
}
# A finding raises the session by this fraction of its call-level weight.
SESSION_FINDING_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class RiskFactor:
    """One reason a call is risky: a stable ``code``, its ``weight`` and a human ``detail``."""

    code: str
    weight: float
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "weight": round(self.weight, 4), "detail": self.detail}


def combine(weights: Iterable[float]) -> float:
    """Noisy-OR of weights, each clamped into ``[0, 1]``."""
    keep = 1.0
    for weight in weights:
        keep *= 1.0 - min(1.0, max(0.0, weight))
    return 1.0 - keep


def finding_weight(code: str, kind: str) -> float:
    return FINDING_WEIGHTS.get(f"{code}:{kind}", FINDING_WEIGHTS.get(code, 0.3))


def finding_factors(findings: Sequence[Finding]) -> tuple[RiskFactor, ...]:
    """One factor per distinct (code, kind), naming where it was found."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for finding in findings:
        grouped.setdefault((finding.code, finding.kind), []).append(finding.path)
    return tuple(
        RiskFactor(
            code,
            finding_weight(code, kind),
            f"{kind} at {', '.join(paths[:3])}" + (" ..." if len(paths) > 3 else ""),
        )
        for (code, kind), paths in grouped.items()
    )


def risk_label(score: float) -> str:
    if score < 0.25:
        return "low"
    if score < 0.6:
        return "elevated"
    return "high"


class SessionRisk:
    """A session's accumulated risk: raised by denials and findings, halved every ``half_life_s``.

    Mutable by design (one per connected session, owned by its caller); not thread-safe.
    """

    def __init__(self, half_life_s: float = 600.0) -> None:
        if not half_life_s > 0:
            raise ValueError("half_life_s must be positive")
        self.half_life_s = float(half_life_s)
        self._level = 0.0
        self._at: float | None = None

    def score(self, now: float) -> float:
        """The decayed score at ``now`` (a clock running backwards counts as no time passing)."""
        if self._at is None or self._level == 0.0:
            return 0.0
        elapsed = max(0.0, now - self._at)
        return self._level * 0.5 ** (elapsed / self.half_life_s)

    def _raise_by(self, weight: float, now: float) -> None:
        if weight <= 0.0:
            return
        current = self.score(now)
        self._level = combine((current, weight))
        self._at = now if self._at is None else max(self._at, now)

    def record_decision(self, decision: Decision, now: float) -> None:
        """Account for one decision: its denial (if any) and the findings in its arguments."""
        if decision.allowed and not decision.findings:
            return  # the usual call: nothing raises the risk
        if not decision.allowed:
            self._raise_by(DENIAL_WEIGHTS.get(decision.reason_code, 0.1), now)
        self.record_findings(decision.findings, now)

    def record_findings(self, findings: Sequence[Finding], now: float) -> None:
        """Account for suspicious findings, e.g. in a tool's result."""
        seen: set[tuple[str, str]] = set()
        for finding in findings:
            if (finding.code, finding.kind) in seen:
                continue
            seen.add((finding.code, finding.kind))
            self._raise_by(finding_weight(finding.code, finding.kind) * SESSION_FINDING_SHARE, now)

    def snapshot(self) -> tuple[float, float | None]:
        """``(level, at)``: all a store keeps to bring this risk back later (:meth:`restore`)."""
        return self._level, self._at

    def restore(self, level: float, at: float | None) -> None:
        """Take back a :meth:`snapshot`; values outside the range a score can have are refused."""
        valid_at = math.isfinite(at) if at is not None else level == 0.0  # a level needs a time to decay from
        if not (0.0 <= level <= 1.0 and valid_at):
            raise ValueError(f"not a risk snapshot: level={level!r}, at={at!r}")
        self._level, self._at = float(level), at

    def __repr__(self) -> str:
        return f"SessionRisk(half_life_s={self.half_life_s}, level={self._level:.3f}, at={self._at})"
