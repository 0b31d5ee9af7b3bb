"""Vetting the rule a denial suggests, so the model is never told to propose what will stall.

The policy engine's counterfactual suggests a rule (keeping the operator's conditions); it
does not know the operator's envelope. ``vet_suggestion`` completes it the way an
auto-approvable proposal must look (an ``expires`` within ``max_expiry_hours``) and runs the
guardrails on it against the live policy: the answer says whether proposing it as suggested
is approved at once, or needs a reviewer and why. The gateway adds that to the denial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml

from negotiation.guardrails import GuardrailConfig, assess
from policy import KeyRing, Policy
from policy.model import format_timestamp

__all__ = ["SuggestionReview", "vet_suggestion"]

# Suggested grants ask for at most this long, even when the operator allows more.
_SUGGESTED_HOURS = 1.0


@dataclass(frozen=True)
class SuggestionReview:
    """The suggested rule as it should be proposed, and what the guardrails would say."""

    rule: Mapping[str, Any]
    auto_approvable: bool
    codes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"auto_approvable": self.auto_approvable, "needs_review_for": list(self.codes)}

    def sentence(self) -> str:
        if self.auto_approvable:
            return "Proposed as suggested, the guardrails would approve this rule at once."
        return (
            "Proposed as suggested, this rule needs a human reviewer ("
            + ", ".join(f"`{code}`" for code in self.codes)
            + ")."
        )


def vet_suggestion(
    rule: Mapping[str, Any],
    *,
    model_id: str,
    live: Policy,
    keys: KeyRing,
    config: GuardrailConfig,
    session_risk: float,
    now: datetime,
) -> SuggestionReview | None:
    """Judge a suggested rule as a proposal from ``model_id``; None if there is no such model."""
    proposer = keys.get(model_id)
    if proposer is None:
        return None
    completed = dict(rule)
    if rule.get("allow_tools") and "expires" not in completed and config.max_expiry_hours is not None:
        hours = min(_SUGGESTED_HOURS, config.max_expiry_hours)
        completed["expires"] = format_timestamp((now + timedelta(hours=hours)).replace(second=0, microsecond=0))
    text = yaml.safe_dump({"rules": [completed]}, sort_keys=False)
    assessment = assess(
        text,
        proposer=proposer,
        live=live,
        keys=keys,
        known_tools=(),
        config=config,
        session_risk=session_risk,
        now=now,
    )
    codes = tuple(dict.fromkeys(v.code for v in assessment.verdicts if not v.ok))
    if not proposer.can_propose:
        codes = ("model_not_authorized", *codes)
    return SuggestionReview(completed, assessment.status == "approved" and proposer.can_propose, codes)
