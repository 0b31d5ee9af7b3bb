"""policies.yaml -> Policy: the accepted language, located errors, hostile input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from policy import (
    Condition,
    LoadIssue,
    Policy,
    PolicyError,
    PolicyLoadError,
    PolicySettings,
    Rule,
    dump_policy_yaml,
    load_policy,
    load_policy_text,
)


def load(text: str) -> Policy:
    return load_policy_text(text, "policies.yaml")


def errors_of(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_text(text, "policies.yaml", **kwargs)  # type: ignore[arg-type]
    return [str(issue) for issue in caught.value.errors]


def test_the_form_operators_already_write_loads_unchanged() -> None:
    policy = load("rules:\n  - model: gpt-4o\n    allow_tools: [search.*]\n")
    (rule,) = policy.rules
    assert rule.models == ("gpt-4o",)
    assert rule.allow_tools == ("search.*",)
    assert rule.deny_tools == ()
    assert rule.id.startswith("r-") and len(rule.id) == 14
    assert policy.settings == PolicySettings()
    assert policy.digest.startswith("sha256:") and len(policy.digest) == 71


def test_generated_rule_id_does_not_change_when_other_rules_move_or_are_added() -> None:
    alone = load("rules:\n  - model: gpt-4o\n    allow_tools: [search.*]\n")
    crowded = load(
        "rules:\n"
        "  - model: claude\n    deny_tools: [fs.delete]\n"
        "  - model: gpt-4o\n    allow_tools: [search.*]\n"
    )
    assert alone.rules[0].id in {rule.id for rule in crowded.rules}


def test_generated_rule_id_changes_when_the_rule_itself_changes() -> None:
    first = load("rules:\n  - model: gpt-4o\n    allow_tools: [search.*]\n").rules[0].id
    second = load("rules:\n  - model: gpt-4o\n    allow_tools: [search.web]\n").rules[0].id
    assert first != second


def test_model_accepts_one_id_a_list_or_star() -> None:
    policy = load(
        "rules:\n"
        "  - {id: a, model: gpt-4o, allow_tools: [x.y]}\n"
        "  - {id: b, model: [gpt-4o, claude], allow_tools: [x.y]}\n"
        "  - {id: c, model: '*', allow_tools: [x.y]}\n"
    )
    assert [rule.models for rule in policy.rules] == [("gpt-4o",), ("gpt-4o", "claude"), ("*",)]


def test_every_rule_key_and_condition_is_understood() -> None:
    policy = load(
        """
rules:
  - id: fs-read
    description: read project docs
    model: gpt-4o
    allow_tools: [fs.read_file]
    when:
      path: {under: /srv/docs, regex: '.*\\.md', not_regex: '.*secret.*', max_length: 200}
      options.mode: {one_of: [fast, full], equals: fast}
      limit: {min: 1, max: 50}
    reason: "reading {args.path}"
    expires: 2030-01-01T00:00:00Z
    max_risk: 0.7
settings:
  deny_risk_above: 0.8
"""
    )
    (rule,) = policy.rules
    assert rule.description == "read project docs"
    assert rule.reason == "reading {args.path}"
    assert rule.expires == datetime(2030, 1, 1, tzinfo=UTC)
    assert rule.max_risk == 0.7
    assert policy.settings.deny_risk_above == 0.8
    assert rule.when == (
        Condition("path", "under", "/srv/docs"),
        Condition("path", "regex", ".*\\.md"),
        Condition("path", "not_regex", ".*secret.*"),
        Condition("path", "max_length", 200),
        Condition("options.mode", "one_of", ("fast", "full")),
        Condition("options.mode", "equals", "fast"),
        Condition("limit", "min", 1),
        Condition("limit", "max", 50),
    )
    assert [condition.to_text() for condition in rule.when[:2]] == ["path under /srv/docs", "path regex .*\\.md"]


def test_a_wrong_type_is_reported_at_file_line_col_with_the_key_path() -> None:
    text = "rules:\n  - id: r1\n    model: gpt-4o\n    allow_tools: 5\n"
    assert errors_of(text) == ["policies.yaml:4:5: rules[0].allow_tools: expected a list of strings, got int"]


def test_every_error_in_the_file_is_listed_in_file_order() -> None:
    text = (
        "rules:\n"  # 1
        "  - model: gpt-4o\n"  # 2
        "    allow_tools: [search.*]\n"  # 3
        "    colour: red\n"  # 4
        "  - model: 3\n"  # 5
        "    deny_tools: [fs.*]\n"  # 6
        "    when: {path: {under: relative/dir, regex: '('}}\n"  # 7
        "settings: {deny_risk_above: 2, extra: 1}\n"  # 8
    )
    assert errors_of(text) == [
        "policies.yaml:4:5: rules[0].colour: unknown key; expected one of: id, description, model, "
        "allow_tools, deny_tools, allow_prompts, deny_prompts, allow_resources, deny_resources, "
        "when, reason, expires, max_risk, ask_tools, approver, approval_ttl",
        "policies.yaml:5:5: rules[1].model: expected a model id or a list of them, got int",
        "policies.yaml:7:19: rules[1].when.path.under: expected an absolute path such as `/srv/docs`, "
        "got `relative/dir`",
        "policies.yaml:7:40: rules[1].when.path.regex: invalid regex `(`: RE2 cannot compile it: "
        "missing ): (",
        "policies.yaml:8:12: settings.deny_risk_above: expected a number between 0 and 1, got `2`",
        "policies.yaml:8:32: settings.extra: unknown key; expected one of: deny_risk_above, require_rules_for, "
        "tolerate_findings",
    ]


def test_str_of_a_load_error_is_one_line_per_issue() -> None:
    with pytest.raises(PolicyLoadError) as caught:
        load("rules:\n  - model: gpt-4o\n  - model: claude\n")
    assert isinstance(caught.value, PolicyError)
    lines = str(caught.value).splitlines()
    assert lines == [str(issue) for issue in caught.value.errors]
    assert lines == [
        "policies.yaml:2:5: rules[0]: a rule needs `allow_tools` or `deny_tools` "
        "(or `ask_tools`, `allow_prompts`, `deny_prompts`, `allow_resources`, `deny_resources`)",
        "policies.yaml:3:5: rules[1]: a rule needs `allow_tools` or `deny_tools` "
        "(or `ask_tools`, `allow_prompts`, `deny_prompts`, `allow_resources`, `deny_resources`)",
    ]


def test_load_issue_renders_source_line_col_key_message() -> None:
    assert str(LoadIssue("p.yaml", 3, 7, "rules[2].model", "bad")) == "p.yaml:3:7: rules[2].model: bad"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rule: []\n", "policies.yaml:1:1: rule: unknown key; expected one of: rules, settings"),
        (
            "rules:\n  - model: a\n    allow_tools: [x]\n    when: {p: {inside: /x}}\n",
            "policies.yaml:4:16: rules[0].when.p.inside: unknown key; expected one of: equals, one_of, min, "
            "max, max_length, under, regex, not_regex",
        ),
        (
            "rules:\n  - model: a\n    deny_tool: [x]\n",
            "policies.yaml:3:5: rules[0].deny_tool: unknown key; expected one of: id, description, model, "
            "allow_tools, deny_tools, allow_prompts, deny_prompts, allow_resources, deny_resources, "
        "when, reason, expires, max_risk, ask_tools, approver, approval_ttl",
        ),
    ],
)
def test_unknown_keys_are_errors_at_every_level(text: str, expected: str) -> None:
    assert expected in errors_of(text)


def test_duplicate_yaml_keys_are_errors() -> None:
    text = "rules:\n  - model: a\n    allow_tools: [x]\n    allow_tools: [y]\n"
    assert errors_of(text) == ["policies.yaml:4:5: rules[0].allow_tools: duplicate key"]


def test_duplicate_rule_ids_are_errors() -> None:
    text = "rules:\n  - {id: same, model: a, allow_tools: [x]}\n  - {id: same, model: b, allow_tools: [y]}\n"
    assert errors_of(text) == ["policies.yaml:3:5: rules[1]: duplicate rule id `same` (also rules[0])"]


def test_two_identical_rules_without_ids_are_reported_as_duplicates() -> None:
    text = "rules:\n  - {model: a, allow_tools: [x]}\n  - {model: a, allow_tools: [x]}\n"
    assert errors_of(text) == ["policies.yaml:3:5: rules[1]: rule is identical to rules[0]"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2030-01-01T00:00:00", "timestamp needs a timezone, e.g. `2030-01-31T00:00:00Z`"),
        ("2030-01-01", "expected a full timestamp such as `2030-01-01T00:00:00Z`, got a date"),
        ("soon", "expected an ISO-8601 timestamp, got `soon`"),
    ],
)
def test_expires_needs_a_full_timestamp_with_timezone(value: str, message: str) -> None:
    text = f"rules:\n  - model: a\n    allow_tools: [x]\n    expires: {value}\n"
    assert errors_of(text) == [f"policies.yaml:4:5: rules[0].expires: {message}"]


def test_expires_accepts_quoted_iso_strings_and_offsets_and_stores_utc() -> None:
    policy = load("rules:\n  - model: a\n    allow_tools: [x]\n    expires: '2030-01-01T02:00:00+02:00'\n")
    assert policy.rules[0].expires == datetime(2030, 1, 1, tzinfo=UTC)


def test_max_risk_only_applies_to_allow_rules_and_must_be_a_fraction() -> None:
    assert errors_of("rules:\n  - model: a\n    deny_tools: [x]\n    max_risk: 0.5\n") == [
        "policies.yaml:4:5: rules[0].max_risk: `max_risk` only applies to rules with `allow_tools` "
        "(or `allow_prompts`, `allow_resources`)"
    ]
    assert errors_of("rules:\n  - model: a\n    allow_tools: [x]\n    max_risk: 1.5\n") == [
        "policies.yaml:4:5: rules[0].max_risk: expected a number between 0 and 1, got `1.5`"
    ]


def test_condition_operands_are_validated() -> None:
    text = (
        "rules:\n"
        "  - model: a\n"
        "    allow_tools: [x]\n"
        "    when:\n"
        "      n: {min: ten, max_length: -1}\n"
        "      m: {one_of: []}\n"
        "      k: {equals: [1, 2]}\n"
        "      r: {min: 5, max: 1}\n"
        "      s: exact\n"
    )
    assert errors_of(text) == [
        "policies.yaml:5:11: rules[0].when.n.min: expected a number, got str",
        "policies.yaml:5:21: rules[0].when.n.max_length: expected a non-negative integer, got `-1`",
        "policies.yaml:6:11: rules[0].when.m.one_of: expected a non-empty list of strings, numbers, booleans "
        "or nulls",
        "policies.yaml:7:11: rules[0].when.k.equals: expected a string, number, boolean or null, got list",
        "policies.yaml:8:7: rules[0].when.r: `min` is greater than `max`; nothing can match",
        "policies.yaml:9:7: rules[0].when.s: expected a mapping of conditions (equals, one_of, min, max, "
        "max_length, under, regex, not_regex), got str",
    ]


def test_a_rule_needs_a_model_and_at_least_one_tool_list() -> None:
    assert errors_of("rules:\n  - allow_tools: [x]\n") == [
        "policies.yaml:2:5: rules[0]: missing required key `model` (a model id, a list of them, or `*`)"
    ]
    assert errors_of("rules:\n  - model: a\n    allow_tools: []\n") == [
        "policies.yaml:3:5: rules[0].allow_tools: expected a non-empty list of tool globs"
    ]


def test_missing_rules_and_empty_files_are_errors_and_an_empty_list_is_allowed() -> None:
    assert errors_of("settings: {}\n") == [
        "policies.yaml:1:1: <root>: missing required key `rules` (use `rules: []` to deny everything)"
    ]
    assert errors_of("") == ["policies.yaml:1:1: <root>: the policy is empty; expected a mapping with `rules`"]
    assert load("rules: []\n").rules == ()


def test_yaml_syntax_errors_are_located() -> None:
    assert errors_of("rules:\n  - model: [a, b\n  - x: 1\n") == [
        "policies.yaml:3:6: <yaml>: syntax error: while parsing a flow sequence expected ',' or ']', "
        "but got ':'"
    ]


def test_a_file_over_the_size_cap_is_refused_before_parsing() -> None:
    text = "rules: []\n" + "#" * 2000 + "\n"
    assert errors_of(text, max_bytes=1000) == [
        f"policies.yaml:1:1: <file>: file is {len(text)} bytes, over the 1000-byte limit"
    ]


def test_the_default_size_cap_is_one_mebibyte(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("rules: []\n" + "#" * (1 << 20) + "\n")
    with pytest.raises(PolicyLoadError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}:1:1: <file>: file is larger than 1048576 bytes"


def test_an_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    text = "\n".join(lines) + "\nrules: *a9\n"
    (error,) = errors_of(text)
    assert error.endswith("<file>: aliases expand the document beyond the node limit (alias bomb?)")


def test_a_recursive_alias_is_refused() -> None:
    (error,) = errors_of("rules: &r [*r]\n")
    assert "<file>:" in error and ("nesting is deeper than 32 levels" in error or "alias bomb" in error)


def test_deep_nesting_is_refused_without_exhausting_the_stack() -> None:
    text = "rules: " + "[" * 5000 + "]" * 5000 + "\n"
    assert errors_of(text) == ["policies.yaml:1:39: <file>: nesting is deeper than 32 levels"]


def test_arbitrary_python_tags_are_refused() -> None:
    (error,) = errors_of("rules: !!python/object/apply:os.system ['echo hi']\n")
    assert error == "policies.yaml:1:1: rules: unsupported YAML tag `tag:yaml.org,2002:python/object/apply:os.system`"


def test_more_than_one_document_is_refused() -> None:
    (error,) = errors_of("rules: []\n---\nrules: []\n")
    assert error.startswith("policies.yaml:2:1: <yaml>: syntax error: expected a single document")


def test_load_policy_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("rules:\n  - model: gpt-4o\n    allow_tools: [search.*]\n")
    assert load_policy(path).source == str(path)
    path.write_text("rules: 5\n")
    with pytest.raises(PolicyLoadError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}:1:1: rules: expected a list of rules, got int"


def test_a_missing_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        load_policy(tmp_path / "absent.yaml")
    assert "cannot read file" in str(caught.value)


def test_digest_ignores_rule_order_and_source() -> None:
    one = load_policy_text("rules:\n  - {id: a, model: m, allow_tools: [x]}\n  - {id: b, model: m, deny_tools: [y]}\n")
    two = load_policy_text(
        "rules:\n  - {id: b, model: m, deny_tools: [y]}\n  - {id: a, model: m, allow_tools: [x]}\n", "other.yaml"
    )
    assert one.digest == two.digest
    assert [rule["id"] for rule in one.canonical()["rules"]] == ["a", "b"]


def test_dump_round_trips_to_the_same_digest_and_rules() -> None:
    policy = load(
        """
rules:
  - model: gpt-4o
    allow_tools: [search.*]
  - id: fs
    model: [gpt-4o, claude]
    allow_tools: [fs.read_file]
    deny_tools: [fs.delete]
    when:
      path: {under: /srv/docs}
      opts.flag: {equals: 'yes', one_of: ['no', 1, 2.5, true, null]}
    reason: "no {args.path}"
    expires: 2030-01-01T00:00:00Z
    max_risk: 0.25
settings: {deny_risk_above: 0.9}
"""
    )
    again = load_policy_text(dump_policy_yaml(policy))
    assert again.digest == policy.digest
    assert set(again.rules) == set(policy.rules)
    assert again.settings == policy.settings


def test_policy_from_rules_computes_the_same_digest_as_the_loader() -> None:
    loaded = load("rules:\n  - {id: a, model: m, allow_tools: [x.*]}\n")
    built = Policy.from_rules([Rule.build(id="a", models=["m"], allow_tools=["x.*"])])
    assert built.digest == loaded.digest
    assert built == Policy.from_rules(loaded.rules, source=None)


def test_policy_rejects_duplicate_rule_ids_when_built_in_code() -> None:
    rule = Rule.build(id="a", models=["m"], allow_tools=["x"])
    with pytest.raises(PolicyError, match="duplicate rule id `a`"):
        Policy.from_rules([rule, rule])


def test_prompt_and_resource_lists_load_and_keep_old_digests_unchanged() -> None:
    old = load("rules:\n  - id: a\n    model: m\n    allow_tools: [x.y]\n")
    assert "allow_prompts" not in old.rules[0].to_dict() and old.canonical()["settings"] == {}
    policy = load(
        "rules:\n"
        "  - id: p\n    model: m\n    allow_prompts: [calendar.greet]\n    deny_resources: ['raw://*']\n"
        "settings:\n  require_rules_for: [resources, prompts]\n"
    )
    (rule,) = policy.rules
    assert rule.allow_prompts == ("calendar.greet",) and rule.deny_resources == ("raw://*",)
    assert rule.to_dict() == {"id": "p", "model": "m", "allow_prompts": ["calendar.greet"], "deny_resources": ["raw://*"]}
    assert policy.settings.require_rules_for == ("prompts", "resources")
    assert load(dump_policy_yaml(policy)).digest == policy.digest


def test_require_rules_for_names_only_prompts_or_resources() -> None:
    assert errors_of("rules: []\nsettings:\n  require_rules_for: [tools, prompts]\n") == [
        "policies.yaml:3:23: settings.require_rules_for[0]: expected `prompts` or `resources`, got `tools`"
    ]


@pytest.mark.parametrize(
    ("pattern", "detail"),
    [
        ("(?=x)", "invalid perl operator: (?="),
        ("(a)\\1", "invalid escape sequence: \\1"),
        ("a{1001}", "invalid repetition size: {1001}"),
    ],
)
def test_patterns_re2_cannot_compile_are_load_errors_with_their_location(pattern: str, detail: str) -> None:
    text = f"rules:\n  - model: m\n    deny_tools: [x.*]\n    when: {{q: {{regex: '{pattern}'}}}}\n"
    (error,) = errors_of(text)
    assert error.startswith("policies.yaml:4:16: rules[0].when.q.regex: invalid regex")
    assert detail in error


def test_ask_fields_load_and_round_trip_without_touching_older_digests() -> None:
    plain = load("rules:\n  - model: gpt-4o\n    allow_tools: [mail.*]\n")
    asked = load(
        "rules:\n  - model: gpt-4o\n    allow_tools: [mail.*]\n"
        "  - id: ask-send\n    model: gpt-4o\n    ask_tools: [mail.send]\n    approver: user\n    approval_ttl: 5m\n"
    )
    rule = next(r for r in asked.rules if r.id == "ask-send")
    assert (rule.ask_tools, rule.approver, rule.approval_ttl) == (("mail.send",), "user", 300.0)
    assert rule.to_dict() == {
        "id": "ask-send", "model": "gpt-4o", "ask_tools": ["mail.send"], "approver": "user", "approval_ttl": 300,
    }
    assert "ask_tools" not in plain.rules[0].to_dict() and "approver" not in plain.rules[0].to_dict()
    from policy import dump_policy_yaml

    assert load(dump_policy_yaml(asked)).digest == asked.digest


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("    ask_tools: [mail.send]\n    approver: boss\n", "rules[0].approver: expected one of: user, operator, any"),
        ("    ask_tools: [mail.send]\n    approval_ttl: 0\n", "rules[0].approval_ttl: expected between 1 second"),
        ("    ask_tools: [mail.send]\n    approval_ttl: 3d\n", "rules[0].approval_ttl: expected seconds or a duration"),
        ("    ask_tools: [mail.send]\n    approval_ttl: true\n", "rules[0].approval_ttl: expected seconds"),
        ("    allow_tools: [mail.send]\n    approver: user\n", "rules[0].approver: `approver` only applies"),
        ("    ask_tools: []\n", "rules[0].ask_tools: expected a non-empty list"),
    ],
)
def test_bad_ask_fields_are_located_errors(snippet: str, message: str) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        load("rules:\n  - model: gpt-4o\n" + snippet)
    assert any(message in str(issue) for issue in caught.value.errors), str(caught.value)
