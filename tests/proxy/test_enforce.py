"""How much of a decision the model sees, by configuration."""

from __future__ import annotations

from policy import CallRequest, evaluate, load_model_keys_text, load_policy_text
from proxy.enforce import decision_view, denial_result

POLICY = """\
rules:
  - id: allow-search
    model: gpt-4o
    allow_tools: [search.*]
  - id: no-web
    model: "*"
    deny_tools: [search.web]
  - id: short-queries
    model: gpt-4o
    allow_tools: [search.*]
    when:
      q: {max_length: 2}
"""
KEYS = 'models:\n  gpt-4o:\n    key: k-123456789\n    tools: ["search.*"]\n    can_propose: true\n'


def denied():
    policy, keys = load_policy_text(POLICY), load_model_keys_text(KEYS)
    return evaluate(CallRequest(model="gpt-4o", server="search", tool="web", arguments={"q": "long"}), policy, keys)


def test_full_visibility_shows_every_rule_considered() -> None:
    decision = denied()
    assert {t["rule_id"] for t in decision_view(decision.to_dict(), "full")["rule_trace"]} == {
        "allow-search", "no-web", "short-queries"}


def test_summary_shows_only_matched_rules_and_none_hides_the_trace() -> None:
    data = denied().to_dict()
    summary = decision_view(data, "summary")["rule_trace"]
    assert summary and all(t["matched"] for t in summary)
    assert len(summary) < len(data["rule_trace"])
    assert decision_view(data, "none")["rule_trace"] == []
    assert data["rule_trace"], "the original is left intact for the audit log"


def test_a_denial_is_a_tool_error_naming_the_reason_and_the_decision_id() -> None:
    decision = denied()
    full = denial_result(decision, "full")
    assert full["isError"] is True and decision.reason in full["content"][0]["text"]
    result = denial_result(decision, "none")
    assert result["isError"] is True
    assert result["structuredContent"]["decision_id"] == decision.decision_id
    assert "Denied: denied by policy" in result["content"][0]["text"]
    assert result["structuredContent"]["rule_trace"] == []
    assert "no-web" not in str(result)
