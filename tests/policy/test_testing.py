"""Operator policy tests (policy/testing.py): loading with located errors, pass, fail, the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy import PolicyLoadError, load_model_keys_text, load_policy_text
from policy.testing import find_test_files, load_policy_tests_text, run_policy_tests

POLICY = load_policy_text(
    "rules:\n"
    "  - id: search\n    model: gpt-4o\n    allow_tools: [search.*]\n"
    "  - id: short\n    model: gpt-4o\n    allow_tools: [cal.create]\n    when:\n      title: {max_length: 5}\n"
    "  - id: no-crash\n    model: '*'\n    deny_tools: ['*.crash']\n",
    "policies.yaml",
)
KEYS = load_model_keys_text("models:\n  gpt-4o: {key: k-gpt, tools: ['*']}\n", "model_keys.yaml")

PASSING = """\
tests:
  - name: search allowed
    model: gpt-4o
    tool: search.web
    expect: {allowed: true, reason_code: allowed, rule: search, matched_rules: [search]}
  - name: short titles only
    model: gpt-4o
    tool: cal.create
    arguments: {title: much too long}
    expect: {allowed: false, reason_code: default_deny}
  - name: crash is denied
    model: gpt-4o
    tool: search.crash
    expect: {allowed: false, reason_code: explicit_deny, rule: no-crash}
"""


def test_a_suite_that_matches_the_policy_passes() -> None:
    report = run_policy_tests([load_policy_tests_text(PASSING, "p.tests.yaml")], POLICY, KEYS)
    assert report.ok and report.total == 3
    assert report.render().endswith("ok: 3 passed, 0 failed")


def test_a_failing_case_names_its_line_and_shows_expected_against_got() -> None:
    text = PASSING + (
        "  - name: wrongly expected\n    model: gpt-4o\n    tool: cal.create\n    arguments: {title: hi}\n"
        "    expect: {allowed: false, reason_code: explicit_deny, rule: no-crash}\n"
    )
    report = run_policy_tests([load_policy_tests_text(text, "p.tests.yaml")], POLICY, KEYS)
    assert not report.ok
    [failure] = report.failures
    assert failure.where == "p.tests.yaml:15"
    assert {m.field: (m.expected, m.actual) for m in failure.mismatches} == {
        "allowed": ("false", "true"),
        "reason_code": ("explicit_deny", "allowed"),
        "rule": ("`no-crash` matched", "matched [short]"),
    }
    rendered = report.render()
    assert "FAIL p.tests.yaml:15 'wrongly expected' (gpt-4o → cal.create)" in rendered
    assert "allowed:     expected false, got true" in rendered
    assert rendered.endswith("FAILED: 3 passed, 1 failed")


def test_a_policy_change_that_breaks_an_expectation_is_caught() -> None:
    suite = load_policy_tests_text(PASSING, "p.tests.yaml")
    wider = load_policy_text(
        "rules:\n  - id: search\n    model: gpt-4o\n    allow_tools: ['*']\n", "policies.yaml"
    )
    report = run_policy_tests([suite], wider, KEYS)
    assert {f.test.name for f in report.failures} == {"short titles only", "crash is denied"}


@pytest.mark.parametrize(
    ("text", "located"),
    [
        ("tests: []\n", "t.yaml:1:1: tests: expected a non-empty list of tests"),
        ("tests:\n  - name: a\n    tool: x.y\n    expect: {allowed: true}\n", "t.yaml:2:5: tests[0].model: required"),
        ("tests:\n  - {name: a, model: m, tool: x.y, expect: {alowed: true}}\n", "tests[0].expect.alowed: unknown key"),
        ("tests:\n  - {name: a, model: m, tool: x.y, expect: {allowed: maybe}}\n", "expected true or false"),
        ("tests:\n  - {name: a, model: m, tool: x.y, expect: {reason_code: nope}}\n", "unknown reason code `nope`"),
        ("tests:\n  - {name: a, model: m, tool: x.y, expect: {}}\n", "tests[0].expect: expected a mapping"),
        ("tests:\n  - {name: a, model: m, tool: x.y, arguments: [1], expect: {allowed: true}}\n",
         "tests[0].arguments: expected a mapping"),
        ("tests:\n  - {name: a, model: m, tool: x.y, expect: {allowed: true}}\n"
         "  - {name: a, model: m, tool: x.y, expect: {allowed: true}}\n", "duplicate test name `a`"),
        ("tests: [\n", "t.yaml:2:1: <yaml>: syntax error"),
        ("now: yesterday\ntests:\n  - {name: a, model: m, tool: x.y, expect: {allowed: true}}\n",
         "now: expected a timestamp"),
    ],
)
def test_bad_test_files_are_refused_with_located_errors(text: str, located: str) -> None:
    with pytest.raises(PolicyLoadError) as info:
        load_policy_tests_text(text, "t.yaml")
    assert located in str(info.value)


def test_the_suite_clock_decides_rule_expiry() -> None:
    policy = load_policy_text(
        "rules:\n  - id: t\n    model: gpt-4o\n    allow_tools: [a.b]\n    expires: 2030-01-01T00:00:00Z\n", "p"
    )
    case = "tests:\n  - {name: a, model: gpt-4o, tool: a.b, expect: {allowed: true}}\n"
    before = load_policy_tests_text("now: 2029-12-31T00:00:00Z\n" + case, "t")
    after = load_policy_tests_text("now: 2030-01-02T00:00:00Z\n" + case, "t")
    assert run_policy_tests([before], policy, KEYS).ok
    assert not run_policy_tests([after], policy, KEYS).ok


def test_test_files_are_found_beside_the_policy(tmp_path: Path) -> None:
    (tmp_path / "policies.yaml").write_text("rules: []\n")
    (tmp_path / "b.tests.yaml").write_text(PASSING)
    (tmp_path / "a.tests.yaml").write_text(PASSING)
    (tmp_path / "other.yaml").write_text(PASSING)
    assert [p.name for p in find_test_files(tmp_path / "policies.yaml")] == ["a.tests.yaml", "b.tests.yaml"]


def test_the_demo_ships_passing_tests() -> None:
    from policy import load_model_keys, load_policy
    from policy.testing import load_policy_tests

    demo = Path(__file__).resolve().parents[2] / "demo"
    report = run_policy_tests(
        [load_policy_tests(demo / "policies.tests.yaml")],
        load_policy(demo / "policies.yaml"), load_model_keys(demo / "model_keys.yaml"),
    )
    assert report.ok, report.render()
    assert report.total >= 5
