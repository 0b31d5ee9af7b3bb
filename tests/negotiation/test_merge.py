from __future__ import annotations

from datetime import UTC, datetime

from negotiation.merge import DiffEntry, merge, semantic_diff
from policy import Policy, load_model_keys_text, load_policy_text

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
KEYS = load_model_keys_text(
    """\
models:
  a: {key: ka, tools: ["*"]}
  b: {key: kb, tools: ["*"]}
""",
    "keys.yaml",
)
TOOLS = ("fs.read", "fs.write", "search.query")

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


def diff_of(text: str) -> tuple[DiffEntry, ...]:
    return semantic_diff(LIVE, merge(LIVE, snippet(text)).policy, KEYS, TOOLS, now=NOW)


def test_new_rules_are_added_and_same_id_rules_replace() -> None:
    result = merge(
        LIVE,
        snippet(
            "rules:\n  - id: a-read\n    model: a\n    allow_tools: [fs.write]\n"
            "  - id: extra\n    model: b\n    deny_tools: [fs.read]\n"
        ),
    )

    assert result.added == ("extra",)
    assert result.replaced == ("a-read",)
    rules = {rule.id: rule for rule in result.policy.rules}
    assert set(rules) == {"a-read", "b-search", "extra"}
    assert rules["a-read"].allow_tools == ("fs.write",)
    assert result.policy.settings == LIVE.settings


def test_merge_is_pure() -> None:
    digest = LIVE.digest
    first = merge(LIVE, snippet("rules:\n  - id: x\n    model: a\n    allow_tools: [fs.write]\n"))
    second = merge(LIVE, snippet("rules:\n  - id: x\n    model: a\n    allow_tools: [fs.write]\n"))
    assert LIVE.digest == digest
    assert first.policy.digest == second.policy.digest


def test_identical_policies_have_an_empty_diff() -> None:
    assert semantic_diff(LIVE, LIVE, KEYS, TOOLS, now=NOW) == ()


def test_a_new_grant_is_wider_for_that_model_only() -> None:
    assert diff_of("rules:\n  - model: a\n    allow_tools: [fs.write]\n") == (
        DiffEntry("a", "fs.write", "wider", "newly allowed"),
    )


def test_a_deny_is_tighter() -> None:
    assert diff_of("rules:\n  - model: a\n    deny_tools: [fs.read]\n") == (
        DiffEntry("a", "fs.read", "tighter", "no longer allowed"),
    )


def test_a_replacement_with_the_same_effect_is_equal_and_left_out() -> None:
    assert diff_of("rules:\n  - id: a-read\n    model: a\n    allow_tools: [fs.read]\n    reason: same\n") == ()


def test_literal_tools_outside_the_catalog_are_probed_too() -> None:
    assert diff_of("rules:\n  - model: a\n    allow_tools: [mail.send]\n") == (
        DiffEntry("a", "mail.send", "wider", "newly allowed"),
    )


def test_a_glob_is_probed_through_the_catalog() -> None:
    entries = diff_of("rules:\n  - model: b\n    allow_tools: [fs.*]\n")
    assert {(e.model, e.tool, e.change) for e in entries} == {("b", "fs.read", "wider"), ("b", "fs.write", "wider")}


def test_dropping_argument_conditions_is_wider_even_when_the_tool_set_is_equal() -> None:
    live = load_policy_text(
        "rules:\n  - id: a-read\n    model: a\n    allow_tools: [fs.read]\n    when:\n      path: {under: /srv/docs}\n",
        "live.yaml",
    )
    loose = merge(live, snippet("rules:\n  - id: a-read\n    model: a\n    allow_tools: [fs.read]\n"))

    entries = semantic_diff(live, loose.policy, KEYS, TOOLS, now=NOW)

    assert [(e.model, e.tool, e.change) for e in entries] == [("a", "fs.read", "wider")]
    assert "conditions" in entries[0].detail


def test_adding_argument_conditions_is_not_wider() -> None:
    tighter = "rules:\n  - id: a-read\n    model: a\n    allow_tools: [fs.read]\n    when:\n      path: {under: /srv}\n"
    assert all(e.change != "wider" for e in diff_of(tighter))


def test_a_later_or_removed_expiry_is_wider() -> None:
    later = diff_of(
        "rules:\n  - id: b-search\n    model: b\n    allow_tools: [search.query]\n    expires: 2030-07-01T00:00:00Z\n"
    )
    removed = diff_of("rules:\n  - id: b-search\n    model: b\n    allow_tools: [search.query]\n")

    assert [(e.model, e.tool, e.change, e.detail) for e in later] == [
        ("b", "search.query", "wider", "rule `b-search`: expiry extended")
    ]
    assert [(e.tool, e.change, e.detail) for e in removed] == [
        ("search.query", "wider", "rule `b-search`: expiry removed")
    ]


def test_an_earlier_expiry_is_not_wider() -> None:
    earlier = diff_of(
        "rules:\n  - id: b-search\n    model: b\n    allow_tools: [search.query]\n    expires: 2030-06-01T18:00:00Z\n"
    )
    assert earlier == ()


def test_an_expired_grant_is_tighter_now() -> None:
    gone = diff_of(
        "rules:\n  - id: b-search\n    model: b\n    allow_tools: [search.query]\n    expires: 2030-06-01T00:00:00Z\n"
    )
    assert [(e.tool, e.change) for e in gone] == [("search.query", "tighter")]


def test_diff_entries_round_trip_through_json() -> None:
    entry = DiffEntry("a", "fs.read", "wider", "newly allowed")
    assert DiffEntry.from_dict(entry.to_dict()) == entry


def test_a_deny_that_lapses_sooner_is_wider_even_while_it_still_denies() -> None:
    keys = load_model_keys_text("models:\n  a: {key: ka, tools: ['*']}\n", "keys.yaml")
    live = load_policy_text(
        "rules:\n  - id: a-all\n    model: a\n    allow_tools: [fs.*]\n"
        "  - id: no-write\n    model: a\n    deny_tools: [fs.write]\n",
        "live.yaml",
    )
    lapsing = merge(
        live,
        snippet(
            "rules:\n  - id: no-write\n    model: a\n    deny_tools: [fs.write]\n"
            "    expires: 2030-06-01T12:05:00Z\n"
        ),
    )

    entries = semantic_diff(live, lapsing.policy, keys, TOOLS, now=NOW)

    assert [(e.model, e.tool, e.change, e.detail) for e in entries] == [
        ("a", "fs.write", "wider", "rule `no-write`: deny expires sooner")
    ]


def test_a_deny_made_conditional_is_wider() -> None:
    keys = load_model_keys_text("models:\n  a: {key: ka, tools: ['*']}\n", "keys.yaml")
    live = load_policy_text(
        "rules:\n  - id: a-all\n    model: a\n    allow_tools: [fs.*]\n"
        "  - id: no-write\n    model: a\n    deny_tools: [fs.write]\n",
        "live.yaml",
    )
    conditional = merge(
        live,
        snippet(
            "rules:\n  - id: no-write\n    model: a\n    deny_tools: [fs.write]\n"
            "    when:\n      path: {under: /x}\n"
        ),
    )

    entries = semantic_diff(live, conditional.policy, keys, TOOLS, now=NOW)

    assert [(e.tool, e.change) for e in entries] == [("fs.write", "wider")]
