"""policy.decision: the decision's JSON form (``securegateway.decision/1``)."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, fields, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.decision import DECISION_SCHEMA, ApprovalRequirement, Counterfactual, Decision, TraceEntry, with_id
from policy.detect import Finding
from policy.risk import RiskFactor

_text = st.text(max_size=12)
_maybe = st.one_of(st.none(), _text)
_decisions = st.builds(
    Decision,
    decision_id=_text, allowed=st.booleans(), reason=_text, reason_code=_text, deny_kind=_maybe, model=_text,
    tool=_text, matched_rules=st.lists(_text, max_size=2).map(tuple),
    rule_trace=st.lists(st.builds(TraceEntry, _text, _text, st.booleans(), _maybe, _maybe), max_size=4).map(tuple),
    risk_score=st.floats(allow_nan=False), risk_factors=st.lists(
        st.builds(RiskFactor, _text, st.floats(allow_nan=False), _text), max_size=2).map(tuple),
    reasoning=st.lists(_text, max_size=3).map(tuple), errors=st.lists(_text, max_size=2).map(tuple),
    policy_digest=_text,
    counterfactual=st.one_of(st.none(), st.builds(Counterfactual, _text, st.one_of(
        st.none(), st.just({"model": "m", "allow_tools": ["a.b"]})), st.lists(_text, max_size=2).map(tuple))),
    findings=st.lists(st.builds(Finding, _text, _text, _text, _text, _text), max_size=2).map(tuple),
    kind=st.sampled_from(["tool", "prompt", "resource"]),
    approval=st.one_of(st.none(), st.builds(ApprovalRequirement, st.lists(_text, max_size=2).map(tuple), _text,
                                            st.floats(allow_nan=False))),
)


def _reference(decision: Decision) -> dict[str, Any]:
    """The schema as documented, each part by its own ``to_dict``."""
    data: dict[str, Any] = {
        "schema": DECISION_SCHEMA, "decision_id": decision.decision_id, "allowed": decision.allowed,
        "reason": decision.reason, "reason_code": decision.reason_code, "deny_kind": decision.deny_kind,
        "model": decision.model, "tool": decision.tool, "matched_rules": list(decision.matched_rules),
        "rule_trace": [entry.to_dict() for entry in decision.rule_trace],
        "risk_score": round(decision.risk_score, 4),
        "risk_factors": [factor.to_dict() for factor in decision.risk_factors],
        "reasoning": list(decision.reasoning), "errors": list(decision.errors),
        "policy_digest": decision.policy_digest,
        "counterfactual": None if decision.counterfactual is None else decision.counterfactual.to_dict(),
        "findings": [finding.to_dict() for finding in decision.findings],
    }
    if decision.kind != "tool":
        data["kind"] = decision.kind
    if decision.approval is not None:
        data["approval"] = decision.approval.to_dict()
    return data


@given(decision=_decisions)
def test_to_dict_is_the_documented_schema_in_its_order(decision: Decision) -> None:
    data = decision.to_dict()
    reference = _reference(decision)
    assert data == reference and list(data) == list(reference)
    assert json.dumps(data) == json.dumps(reference)  # the same text, key order included, on the wire


def test_to_dict_returns_fresh_containers_each_call() -> None:
    decision = Decision("d", True, "ok", "allowed", None, "m", "a.b", ("r",), (TraceEntry("r", "allow", True),), 0.0,
                        (), ("Fine.",), (), "sha256:" + "ab" * 32, None)
    first, second = decision.to_dict(), decision.to_dict()
    first["rule_trace"][0]["note"] = "changed"
    first["reasoning"].append("more")
    assert second == decision.to_dict() and second["rule_trace"][0]["note"] is None


@given(decision=_decisions, decision_id=_text)
def test_with_id_is_replace_of_the_id_with_every_other_field_the_same_object(
    decision: Decision, decision_id: str
) -> None:
    clone = with_id(decision, decision_id)
    assert type(clone) is Decision and clone == replace(decision, decision_id=decision_id)
    assert clone.decision_id is decision_id
    assert all(getattr(clone, f.name) is getattr(decision, f.name) for f in fields(Decision)[1:])
    assert clone.to_dict() == {**decision.to_dict(), "decision_id": decision_id}


def test_a_decision_made_by_with_id_stays_frozen() -> None:
    decision = Decision("d", True, "ok", "allowed", None, "m", "a.b", (), (), 0.0, (), ("Fine.",), (), "sha", None)
    with pytest.raises(FrozenInstanceError):
        with_id(decision, "e").reason = "changed"  # type: ignore[misc]
