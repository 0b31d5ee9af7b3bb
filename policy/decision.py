"""The decision: a frozen, self-explaining record of one allow/deny, and its JSON form.

``Decision.to_dict()`` is the stable, versioned wire/audit schema
(``securegateway.decision/1``, documented field by field in docs/policy-language.md).
Fields are only ever added to it; a changed meaning gets a new schema version.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any

from .detect.finding import Finding
from .entropy import uuid4_hex
from .risk import RiskFactor

__all__ = [
    "APPROVAL_CODES",
    "DECISION_SCHEMA",
    "DENY_KINDS",
    "REASON_CODES",
    "ApprovalRequirement",
    "Counterfactual",
    "Decision",
    "TraceEntry",
    "approval_outcome",
    "gateway_error_decision",
    "new_decision_id",
    "refusal_decision",
    "unknown_tool_decision",
    "with_id",
]

DECISION_SCHEMA = "securegateway.decision/1"
REASON_CODES: tuple[str, ...] = (
    "allowed",
    "default_deny",
    "explicit_deny",
    "out_of_scope",
    "unknown_model",
    "schema_violation",
    "risk_threshold",
    "rule_error",
    "gateway_error",
    # Detection (docs/detection.md): findings that deny, suspended tools, session taint.
    "suspicious_arguments",
    "tool_quarantined",
    "tool_changed",
    "tool_unapproved",
    "session_tainted",
    "unknown_tool",
    "approval_required",
    "approved_by",
    "approval_denied",
    "approval_expired",
)
# deny_kind per reason code: "default" when nothing granted the call, "explicit" when
# something (a rule, a check, the gateway) refused it.
DENY_KINDS: dict[str, str | None] = {
    "allowed": None,
    "default_deny": "default",
    "unknown_model": "default",
    "out_of_scope": "default",
    "explicit_deny": "explicit",
    "rule_error": "explicit",
    "schema_violation": "explicit",
    "risk_threshold": "explicit",
    "gateway_error": "explicit",
    "suspicious_arguments": "explicit",
    "tool_quarantined": "explicit",
    "tool_changed": "explicit",
    "tool_unapproved": "explicit",
    "session_tainted": "explicit",
    "unknown_tool": "default",
    # a call waiting for a yes is not allowed yet, and nothing refused it either
    "approval_required": "approval",
    "approved_by": None,
    "approval_denied": "explicit",
    "approval_expired": "explicit",
}


def new_decision_id() -> str:
    """A random (version 4) UUID as 32 hex digits: ``uuid.uuid4().hex``, made in batches (policy.entropy)."""
    return uuid4_hex()


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """How one considered rule fared: ``failed`` is the first failing condition's text."""

    rule_id: str
    effect: str  # "allow" | "deny"
    matched: bool
    failed: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "effect": self.effect,
            "matched": self.matched,
            "failed": self.failed,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Counterfactual:
    """The smallest change that would have allowed a denied call.

    ``suggested_rule`` is a rule (YAML form) to add, or None when no policy rule can help
    (schema violation, key scope, unknown model); ``remove_rules`` names deny rules in the way.
    """

    text: str
    suggested_rule: dict[str, Any] | None = None
    remove_rules: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "suggested_rule": None if self.suggested_rule is None else dict(self.suggested_rule),
            "remove_rules": list(self.remove_rules),
        }


APPROVAL_CODES = ("approved_by", "approval_denied", "approval_expired")


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    """Why and from whom a call needs a yes: the asking rules, the approver and the time it may wait."""

    rules: tuple[str, ...]
    approver: str  # "user" | "operator" | "any"
    ttl: float

    def to_dict(self) -> dict[str, Any]:
        return {"rules": list(self.rules), "approver": self.approver, "ttl": self.ttl}


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision. ``reasoning`` holds one plain sentence per check, in a fixed order."""

    decision_id: str
    allowed: bool
    reason: str
    reason_code: str
    deny_kind: str | None
    model: str
    tool: str
    matched_rules: tuple[str, ...]
    rule_trace: tuple[TraceEntry, ...]
    risk_score: float
    risk_factors: tuple[RiskFactor, ...]
    reasoning: tuple[str, ...]
    errors: tuple[str, ...]
    policy_digest: str
    counterfactual: Counterfactual | None
    findings: tuple[Finding, ...] = ()
    kind: str = "tool"  # what ``tool`` names: a tool, a prompt (dotted) or a resource (its URI)
    approval: ApprovalRequirement | None = None  # set on ``approval_required`` and its outcomes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON in the ``securegateway.decision/1`` schema (``kind`` only when not a tool)."""
        # The trace entries' dicts inline (TraceEntry.to_dict, written out): a decision lists several.
        data = {
            "schema": DECISION_SCHEMA,
            "decision_id": self.decision_id,
            "allowed": self.allowed,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "deny_kind": self.deny_kind,
            "model": self.model,
            "tool": self.tool,
            "matched_rules": list(self.matched_rules),
            "rule_trace": [
                {"rule_id": entry.rule_id, "effect": entry.effect, "matched": entry.matched, "failed": entry.failed,
                 "note": entry.note}
                for entry in self.rule_trace
            ],
            "risk_score": round(self.risk_score, 4),
            "risk_factors": [factor.to_dict() for factor in self.risk_factors] if self.risk_factors else [],
            "reasoning": list(self.reasoning),
            "errors": list(self.errors),
            "policy_digest": self.policy_digest,
            "counterfactual": None if self.counterfactual is None else self.counterfactual.to_dict(),
            "findings": [finding.to_dict() for finding in self.findings] if self.findings else [],
        }
        if self.kind != "tool":
            data["kind"] = self.kind
        if self.approval is not None:
            data["approval"] = self.approval.to_dict()
        return data


_FIELDS = tuple(field.name for field in fields(Decision))
assert _FIELDS[0] == "decision_id"
_SET_ID = Decision.__dict__["decision_id"].__set__  # the slots' member descriptors
_SETTERS = tuple(Decision.__dict__[name].__set__ for name in _FIELDS[1:])
_ALL_BUT_ID = attrgetter(*_FIELDS[1:])
_NEW = object.__new__


def with_id(decision: Decision, decision_id: str) -> Decision:
    """``dataclasses.replace(decision, decision_id=decision_id)``: every other field the very same object.

    The engine's memo answers most calls with a decision reached before under a new id
    (policy.memo). A frozen dataclass's ``__init__`` sets each of the 18 fields through
    ``object.__setattr__`` by name; the slots' own descriptors set them in ~3/4 of the time.
    """
    clone = _NEW(Decision)
    _SET_ID(clone, decision_id)
    for setter, value in zip(_SETTERS, _ALL_BUT_ID(decision), strict=True):
        setter(clone, value)
    return clone


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unknown_tool_decision(*, model: str, tool: str, policy_digest: str, decision_id: str | None = None) -> Decision:
    """A tools/call naming no tool any upstream lists: refused, and recorded like any decision."""
    name = one_line(tool, 200)
    return Decision(
        decision_id=decision_id or new_decision_id(),
        allowed=False,
        reason=f"unknown tool `{name}`",
        reason_code="unknown_tool",
        deny_kind=DENY_KINDS["unknown_tool"],
        model=model,
        tool=name,
        matched_rules=(),
        rule_trace=(),
        risk_score=0.0,
        risk_factors=(),
        reasoning=(f"No upstream lists a tool named {name}, so nothing was called.",),
        errors=(),
        policy_digest=policy_digest,
        counterfactual=Counterfactual("no policy change can allow this: no upstream serves this tool"),
    )


def gateway_error_decision(
    *, model: str, tool: str, error: str, policy_digest: str, decision_id: str | None = None
) -> Decision:
    """A fail-closed deny for when enforcement itself broke (reason code ``gateway_error``)."""
    message = one_line(error)
    return Decision(
        decision_id=decision_id or new_decision_id(),
        allowed=False,
        reason=f"gateway error: {message}",
        reason_code="gateway_error",
        deny_kind=DENY_KINDS["gateway_error"],
        model=model,
        tool=tool,
        matched_rules=(),
        rule_trace=(),
        risk_score=0.0,
        risk_factors=(),
        reasoning=("The gateway could not evaluate this call, so it was denied (fail closed).",),
        errors=(message,),
        policy_digest=policy_digest,
        counterfactual=Counterfactual(
            "no policy change can allow this: the gateway failed while enforcing; see errors"
        ),
    )


def approval_outcome(
    pending: Decision, code: str, *, by: str | None = None, how: str | None = None, why: str | None = None,
    decision_id: str | None = None,
) -> Decision:
    """The decision that follows an ``approval_required`` one once it is answered or times out.

    ``code`` is one of :data:`APPROVAL_CODES`; ``by`` names who answered and ``how`` the channel
    (``elicitation``, ``admin_api`` ...). Only ``approved_by`` allows.
    """
    if code not in APPROVAL_CODES:
        raise ValueError(f"unknown approval outcome `{code}`")
    need = pending.approval
    rules = ", ".join(need.rules) if need is not None else "?"
    approver = need.approver if need is not None else "?"
    who = one_line(by or "unknown", 120)
    channel = f" via {how}" if how else ""
    if code == "approved_by":
        reason = f"approved by {who}{channel} (rule {rules} asks the {approver})"
        sentence = f"Rule {rules} requires approval by the {approver}; {who} approved this call{channel}."
    elif code == "approval_denied":
        reason = f"approval denied by {who}{channel}" + (f": {one_line(why, 200)}" if why else "")
        sentence = f"Rule {rules} requires approval by the {approver}; {who} refused this call{channel}."
    else:
        reason = "approval expired: " + (one_line(why, 200) if why else "nobody answered in time")
        sentence = f"Rule {rules} requires approval by the {approver}; no valid yes arrived, so the call was refused."
    reasoning = (sentence, *pending.reasoning[1:])
    counterfactual = None if code == "approved_by" else Counterfactual(
        "no policy change is needed: ask again and get a yes from the approver"
    )
    return replace(
        pending,
        decision_id=decision_id or new_decision_id(),
        allowed=code == "approved_by",
        reason=reason,
        reason_code=code,
        deny_kind=DENY_KINDS[code],
        reasoning=reasoning,
        counterfactual=counterfactual,
    )


def refusal_decision(
    *,
    model: str,
    tool: str,
    reason_code: str,
    reason: str,
    reasoning: tuple[str, ...],
    policy_digest: str,
    findings: tuple[Finding, ...] = (),
    remedy: str,
) -> Decision:
    """A deny made before the rules are consulted (a suspended tool, a tainted session).

    ``remedy`` says who can lift it (an operator, time); no policy proposal can.
    """
    return Decision(
        decision_id=new_decision_id(),
        allowed=False,
        reason=one_line(reason),
        reason_code=reason_code,
        deny_kind=DENY_KINDS[reason_code],
        model=model,
        tool=tool,
        matched_rules=(),
        rule_trace=(),
        risk_score=1.0,
        risk_factors=(),
        reasoning=reasoning,
        errors=(),
        policy_digest=policy_digest,
        counterfactual=Counterfactual(remedy),
        findings=findings,
    )
