from __future__ import annotations

from negotiation.merge import DiffEntry, assign_id, effects, merge
from policy import Policy, load_policy_text

LIVE = load_policy_text(
    """\
rules:
  - id: a-read
    model: a
    allow_tools: [fs.read]
  - id: b-search
    model: b
    allow_tools: [search.query]
    expires: 2030-06-02T00:00:00Z
""",
    "live.yaml",
)


def snippet(text: str) -> Policy:
    return load_policy_text(text, "snippet.yaml")


def test_added_rules_get_gateway_ids_and_same_id_rules_replace() -> None:
    proposed = snippet(
        "rules:\n  - id: a-read\n    model: a\n    allow_tools: [fs.write]\n"
        "  - id: extra\n    model: b\n    deny_tools: [fs.read]\n"
    )
    result = merge(LIVE, proposed)

    extra = assign_id(proposed.rules[1])
    assert result.added == (extra.id,) and extra.id.startswith("r-") and extra.id != "extra"
    assert result.replaced == ("a-read",)
    rules = {rule.id: rule for rule in result.policy.rules}
    assert set(rules) == {"a-read", "b-search", extra.id}
    assert rules["a-read"].allow_tools == ("fs.write",)
    assert result.policy.settings == LIVE.settings


def test_the_assigned_id_depends_only_on_the_rule_content() -> None:
    one = snippet("rules:\n  - id: mine\n    model: a\n    allow_tools: [fs.write]\n").rules[0]
    two = snippet("rules:\n  - id: theirs\n    model: a\n    allow_tools: [fs.write]\n").rules[0]
    other = snippet("rules:\n  - id: mine\n    model: a\n    allow_tools: [fs.delete]\n").rules[0]
    assert assign_id(one).id == assign_id(two).id != assign_id(other).id


def test_a_rule_added_twice_is_merged_once() -> None:
    rule = "  - model: a\n    allow_tools: [fs.write]\n"
    once = merge(LIVE, snippet("rules:\n" + rule))
    again = merge(once.policy, snippet("rules:\n" + rule + rule.replace("model: a", "id: x\n    model: a")))
    assert again.added == () and again.policy.digest == once.policy.digest


def test_merge_is_pure() -> None:
    digest = LIVE.digest
    first = merge(LIVE, snippet("rules:\n  - id: x\n    model: a\n    allow_tools: [fs.write]\n"))
    second = merge(LIVE, snippet("rules:\n  - id: x\n    model: a\n    allow_tools: [fs.write]\n"))
    assert LIVE.digest == digest
    assert first.policy.digest == second.policy.digest


def test_effects_describe_each_rule_with_its_limits() -> None:
    proposed = snippet(
        "rules:\n  - model: a\n    allow_tools: [fs.read]\n    when: {path: {under: /srv}}\n"
        "    max_risk: 0.2\n    expires: 2030-06-01T13:00:00Z\n"
        "  - model: a\n    deny_tools: [fs.write]\n"
        "  - id: b-search\n    model: b\n    allow_tools: [search.query]\n"
    )
    entries = effects(LIVE, proposed.rules)
    assert entries[0] == DiffEntry(
        "a", "fs.read", "wider", "granted when path under /srv, at risk ≤ 0.2, until 2030-06-01T13:00:00Z"
    )
    assert entries[1] == DiffEntry("a", "fs.write", "tighter", "denied with no expiry")
    assert entries[2].change == "replaced" and "b-search" in entries[2].detail


def test_diff_entries_round_trip() -> None:
    for change in ("wider", "tighter", "replaced"):
        entry = DiffEntry("a", "fs.read", change, "x")  # type: ignore[arg-type]
        assert DiffEntry.from_dict(entry.to_dict()) == entry


def test_effects_show_reviewers_what_an_ask_rule_holds_and_for_whom() -> None:
    proposed = snippet("rules:\n  - model: a\n    ask_tools: [mail.send]\n    approver: user\n")
    assert effects(LIVE, proposed.rules) == (
        DiffEntry("a", "mail.send", "tighter", "held for a yes from the user with no expiry"),
    )
