"""trace_visibility holds everywhere the model reads: no hidden rule id or operand survives."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy import CallRequest, Condition, Policy, Rule, evaluate, load_model_keys_text, load_policy_text
from proxy.disclosure import decision_view
from proxy.enforce import denial_result

POLICY = """\
rules:
  - id: docs-under-secret-root
    model: gpt-4o
    allow_tools: [files.read_file]
    when:
      path: {under: /srv/secret-root-7f3a}
  - id: no-shadow-files
    model: "*"
    deny_tools: [files.*]
    when:
      path: {regex: ".*shadow-marker.*"}
  - id: flaky-deny
    model: "*"
    deny_tools: [files.stat]
    when:
      size: {min: 4096}
  - id: allow-stat
    model: gpt-4o
    allow_tools: [files.stat]
"""
KEYS = 'models:\n  gpt-4o:\n    key: k-123456789\n    tools: ["files.*"]\n'
RULE_IDS = ("docs-under-secret-root", "no-shadow-files", "flaky-deny", "allow-stat")
OPERANDS = ("/srv/secret-root-7f3a", "shadow-marker", "4096")


def decide(tool: str, arguments: dict[str, Any]) -> Any:
    policy, keys = load_policy_text(POLICY), load_model_keys_text(KEYS)
    request = CallRequest(model="gpt-4o", server="files", tool=tool, arguments=arguments)
    return policy, evaluate(request, policy, keys)


CALLS = [
    pytest.param("read_file", {"path": "/etc/passwd"}, id="near-miss"),
    pytest.param("read_file", {"path": "/srv/secret-root-7f3a/shadow-marker"}, id="explicit-deny"),
    pytest.param("stat", {"size": "big"}, id="rule-error"),
    pytest.param("read_file", {"path": "/srv/secret-root-7f3a/ok.md"}, id="allowed"),
]


@pytest.mark.parametrize(("tool", "arguments"), CALLS)
def test_none_shows_no_rule_id_and_no_operand_anywhere(tool: str, arguments: dict[str, Any]) -> None:
    policy, decision = decide(tool, arguments)
    full = json.dumps(decision.to_dict())
    assert any(rule_id in full for rule_id in RULE_IDS), "the audit form names rules"
    view = decision_view(decision.to_dict(), "none", policy=policy)
    shown = json.dumps(view) + json.dumps(denial_result(decision, "none", view))
    shown = shown.replace(policy.digest, "<policy digest>").replace(decision.decision_id, "<decision id>")
    shown_without_arguments = shown.replace(json.dumps(arguments)[1:-1], "")
    for rule_id in RULE_IDS:
        assert rule_id not in shown, rule_id
    for operand in OPERANDS:
        if operand not in json.dumps(arguments):
            assert operand not in shown_without_arguments, operand
    assert view["reason_code"] == decision.reason_code and view["allowed"] is decision.allowed


def test_none_still_tells_the_model_what_kind_of_denial_it_was() -> None:
    policy, decision = decide("read_file", {"path": "/etc/passwd"})
    view = decision_view(decision.to_dict(), "none", policy=policy)
    assert view["reason"] == "no rule allows model `gpt-4o` to call `files.read_file`"
    assert view["counterfactual"]["text"] and view["counterfactual"]["remove_rules"] == []
    suggested = view["counterfactual"]["suggested_rule"]
    assert suggested is None or set(suggested) <= {"model", "allow_tools", "expires"}


def test_summary_names_matched_rules_only() -> None:
    policy, decision = decide("read_file", {"path": "/srv/secret-root-7f3a/shadow-marker"})
    view = decision_view(decision.to_dict(), "summary", policy=policy)
    assert view["reason"].startswith("denied by rule no-shadow-files")
    assert {entry["rule_id"] for entry in view["rule_trace"]} <= set(decision.matched_rules)
    policy, near = decide("read_file", {"path": "/etc/passwd"})
    shown = json.dumps(decision_view(near.to_dict(), "summary", policy=policy))
    assert "docs-under-secret-root" not in shown and "/srv/secret-root-7f3a" not in shown
    policy, erroring = decide("stat", {"size": "big"})
    shown = json.dumps(decision_view(erroring.to_dict(), "summary", policy=policy))
    shown = shown.replace(policy.digest, "<policy digest>").replace(erroring.decision_id, "<decision id>")
    assert "flaky-deny" not in shown and "4096" not in shown and "allow-stat" in shown


def test_full_is_the_whole_decision() -> None:
    policy, decision = decide("read_file", {"path": "/etc/passwd"})
    assert decision_view(decision.to_dict(), "full", policy=policy) == decision.to_dict()


def test_an_operator_reason_that_quotes_a_hidden_operand_is_scrubbed() -> None:
    text = POLICY.replace(
        "      path: {regex: \".*shadow-marker.*\"}\n",
        "      path: {regex: \".*shadow-marker.*\"}\n    reason: \"paths matching .*shadow-marker.* are off limits\"\n",
    )
    policy, keys = load_policy_text(text), load_model_keys_text(KEYS)
    request = CallRequest(model="gpt-4o", server="files", tool="read_file", arguments={"path": "/x/shadow-marker"})
    decision = evaluate(request, policy, keys)
    view = decision_view(decision.to_dict(), "none", policy=policy)
    assert view["reason"].startswith("denied by policy")
    assert ".*shadow-marker.*" not in json.dumps(view)
    assert view["reason"] == "denied by policy"  # the message quoted an operand: dropped


# ---- the invariant, over generated policies and calls (hypothesis) ---------------------------


_IDS = ["rid-alpha-1", "rid-bravo-2", "rid-charlie-3", "rid-delta-4"]
_CONDITIONS = st.sampled_from([
    Condition("path", "under", "/srv/opq-root"),
    Condition("path", "regex", ".*zyx-marker.*"),
    Condition("mode", "one_of", ("fastwqv", "slowwqv")),
    Condition("size", "min", 77331),
    Condition("mode", "equals", "modekpq"),
])
_OPERANDS = ["/srv/opq-root", ".*zyx-marker.*", "fastwqv", "slowwqv", "77331", "modekpq"]


@st.composite
def _policies(draw: Any) -> Policy:
    rules = []
    for rule_id in draw(st.lists(st.sampled_from(_IDS), min_size=1, max_size=4, unique=True)):
        target = draw(st.sampled_from(["files.read_file", "files.*", "*.stat"]))
        allow = draw(st.booleans())
        rules.append(Rule.build(
            id=rule_id, models=[draw(st.sampled_from(["gpt-4o", "*"]))],
            allow_tools=[target] if allow else [], deny_tools=[] if allow else [target],
            when=draw(st.lists(_CONDITIONS, max_size=2, unique_by=lambda c: (c.arg, c.op))),
            max_risk=draw(st.sampled_from([None, 0.5])) if allow else None,
        ))
    return Policy.from_rules(rules)


_ARGUMENTS = st.fixed_dictionaries({}, optional={
    "path": st.sampled_from(["/etc/passwd", "/srv/x", 5, ["/srv/x"]]),
    "mode": st.sampled_from(["fast", 1, None]),
    "size": st.sampled_from([1, "big"]),
})


@settings(max_examples=300, deadline=None)
@given(_policies(), st.sampled_from(["read_file", "stat"]), _ARGUMENTS, st.sampled_from(["none", "summary"]))
def test_no_hidden_rule_id_or_operand_reaches_the_model(
    policy: Policy, tool: str, arguments: dict[str, Any], visibility: str
) -> None:
    keys = load_model_keys_text(KEYS)
    decision = evaluate(CallRequest(model="gpt-4o", server="files", tool=tool, arguments=arguments), policy, keys)
    view = decision_view(decision.to_dict(), visibility, policy=policy)
    shown = json.dumps(view) + json.dumps(denial_result(decision, visibility, view)["content"])
    # the digest and the decision id are hex the model may see; a numeric operand can occur in them
    shown = shown.replace(policy.digest, "<policy digest>").replace(decision.decision_id, "<decision id>")
    visible = set(decision.matched_rules) if visibility == "summary" else set()
    for rule in policy.rules:
        if rule.id not in visible:
            assert rule.id not in shown, (rule.id, view)
            for condition in rule.when:
                values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
                for operand in map(str, values):
                    assert operand in _OPERANDS and operand not in shown, (operand, view)
