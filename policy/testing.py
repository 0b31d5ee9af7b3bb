"""Operator policy tests: YAML cases kept beside ``policies.yaml``, run against a policy.

A test file (``policies.tests.yaml``, or any ``*.tests.yaml`` next to the policy) is::

    now: 2026-01-01T00:00:00Z        # optional: the clock for rule expiry
    tests:
      - name: gpt-4o may search
        model: gpt-4o
        tool: search.echo              # dotted <upstream>.<tool>, as in rules
        arguments: {text: hi}          # optional
        expect:
          allowed: true                # every key of expect is optional, at least one given
          reason_code: allowed
          rule: gpt4o-search           # this rule is among the matched rules
          matched_rules: [gpt4o-search]  # exactly these, in trace order

Like the engine, this is pure: loading a file raises ``PolicyLoadError`` with every problem
located (``file:line:col``); running a suite never raises because of its content and returns
data (:class:`TestReport`) whose ``render()`` is the readable diff.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .decision import REASON_CODES
from .engine import evaluate
from .keys import KeyRing
from .loader import check_keys, parse_expires, type_name
from .model import CallRequest, Policy
from .yaml_safe import DEFAULT_MAX_BYTES, Issues, Node, key_path, parse_yaml, plain, read_capped

__all__ = [
    "Expectation",
    "Mismatch",
    "PolicyTest",
    "TestFailure",
    "TestReport",
    "TestSuite",
    "find_test_files",
    "load_policy_tests",
    "load_policy_tests_text",
    "run_policy_tests",
]

_TOP_KEYS = ("now", "tests")
_TEST_KEYS = ("name", "model", "tool", "arguments", "input_schema", "expect")
_EXPECT_KEYS = ("allowed", "reason_code", "rule", "matched_rules")


@dataclass(frozen=True)
class Expectation:
    """What a test expects; ``None`` means "not checked"."""

    allowed: bool | None = None
    reason_code: str | None = None
    rule: str | None = None
    matched_rules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PolicyTest:
    __test__ = False  # a "Test*" name, not a pytest class

    name: str
    model: str
    tool: str
    arguments: Mapping[str, Any]
    expect: Expectation
    input_schema: Mapping[str, Any] | None = None
    line: int = 0

    @property
    def call(self) -> str:
        return f"{self.model} → {self.tool}"


@dataclass(frozen=True)
class TestSuite:
    __test__ = False  # a "Test*" name, not a pytest class

    source: str
    tests: tuple[PolicyTest, ...]
    now: dt.datetime | None = None


@dataclass(frozen=True)
class Mismatch:
    field: str
    expected: str
    actual: str


@dataclass(frozen=True)
class TestFailure:
    __test__ = False  # a "Test*" name, not a pytest class

    source: str
    test: PolicyTest
    mismatches: tuple[Mismatch, ...]
    reason: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.test.line}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "name": self.test.name,
            "model": self.test.model,
            "tool": self.test.tool,
            "mismatches": [{"field": m.field, "expected": m.expected, "actual": m.actual} for m in self.mismatches],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class TestReport:
    """The outcome of running suites: which tests passed, how the others failed."""

    passed: tuple[str, ...]
    failures: tuple[TestFailure, ...]

    __test__ = False  # a "Test*" name, not a pytest class

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def total(self) -> int:
        return len(self.passed) + len(self.failures)

    def render(self) -> str:
        """Readable: one block per failure (expected vs. got), then a summary line."""
        lines: list[str] = []
        for failure in self.failures:
            lines.append(f"FAIL {failure.where} {failure.test.name!r} ({failure.test.call})")
            width = max(len(m.field) for m in failure.mismatches)
            for m in failure.mismatches:
                lines.append(f"    {m.field + ':':<{width + 1}} expected {m.expected}, got {m.actual}")
            lines.append(f"    decision: {failure.reason}")
        verdict = "ok" if self.ok else "FAILED"
        lines.append(f"{verdict}: {len(self.passed)} passed, {len(self.failures)} failed")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "passed": list(self.passed), "failures": [f.to_dict() for f in self.failures]}


def find_test_files(policy_path: str | Path) -> list[Path]:
    """The test files kept beside ``policy_path``: every ``*.tests.yaml`` in its directory."""
    directory = Path(policy_path).parent
    return sorted(p for p in directory.glob("*.tests.yaml") if p.is_file())


def load_policy_tests(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> TestSuite:
    return load_policy_tests_text(read_capped(path, max_bytes), str(path), max_bytes=max_bytes)


def load_policy_tests_text(text: str, source: str = "<string>", *, max_bytes: int = DEFAULT_MAX_BYTES) -> TestSuite:
    """Parse a test file; raise ``PolicyLoadError`` listing every located problem."""
    root = parse_yaml(text, source, max_bytes=max_bytes)
    issues = Issues(source)
    if root is None or not isinstance(root.value, dict):
        issues.add(root or (1, 1), "<root>", "expected a mapping with a `tests:` list")
        issues.raise_if_any()
        raise AssertionError("unreachable")
    check_keys(issues, root, _TOP_KEYS, ())
    now: dt.datetime | None = None
    if "now" in root.value:
        try:
            now = parse_expires(root.value["now"].value)
        except (TypeError, ValueError) as exc:
            issues.add(root.value["now"], "now", f"expected a timestamp: {exc}")
    tests_node = root.value.get("tests")
    tests: list[PolicyTest] = []
    if tests_node is None or not isinstance(tests_node.value, list) or not tests_node.value:
        issues.add(tests_node or root, "tests", "expected a non-empty list of tests")
    else:
        seen: set[str] = set()
        for index, node in enumerate(tests_node.value):
            test = _test(issues, node, index)
            if test is None:
                continue
            if test.name in seen:
                issues.add(node, key_path("tests", index, "name"), f"duplicate test name `{test.name}`")
            seen.add(test.name)
            tests.append(test)
    issues.raise_if_any()
    return TestSuite(source=source, tests=tuple(tests), now=now)


def _string(issues: Issues, parent: Node, key: str, path: tuple[str | int, ...], *, required: bool) -> str | None:
    node = parent.value.get(key)
    if node is None:
        if required:
            issues.add(parent, key_path(*path, key), "required")
        return None
    if not isinstance(node.value, str) or not node.value.strip():
        issues.add(node, key_path(*path, key), f"expected a non-empty string, got {type_name(node.value)}")
        return None
    return node.value


def _test(issues: Issues, node: Node, index: int) -> PolicyTest | None:
    path: tuple[str | int, ...] = ("tests", index)
    if not isinstance(node.value, dict):
        issues.add(node, key_path(*path), f"expected a mapping, got {type_name(node.value)}")
        return None
    check_keys(issues, node, _TEST_KEYS, path)
    before = len(issues.items)
    name = _string(issues, node, "name", path, required=True)
    model = _string(issues, node, "model", path, required=True)
    tool = _string(issues, node, "tool", path, required=True)
    arguments: Any = {}
    if "arguments" in node.value:
        arguments = plain(node.value["arguments"])
        if not isinstance(arguments, dict):
            issues.add(node.value["arguments"], key_path(*path, "arguments"),
                       f"expected a mapping, got {type_name(arguments)}")
    schema: Any = None
    if "input_schema" in node.value:
        schema = plain(node.value["input_schema"])
        if not isinstance(schema, dict):
            issues.add(node.value["input_schema"], key_path(*path, "input_schema"), "expected a mapping")
    expect = _expect(issues, node.value.get("expect"), node, (*path, "expect"))
    if len(issues.items) != before or name is None or model is None or tool is None or expect is None:
        return None
    return PolicyTest(name, model, tool, arguments, expect, schema, line=node.line)


def _expect(issues: Issues, node: Node | None, parent: Node, path: tuple[str | int, ...]) -> Expectation | None:
    if node is None or not isinstance(node.value, dict) or not node.value:
        wanted = ", ".join(_EXPECT_KEYS)
        issues.add(node or parent, key_path(*path), f"expected a mapping with at least one of: {wanted}")
        return None
    check_keys(issues, node, _EXPECT_KEYS, path)
    values = node.value
    allowed = None
    if "allowed" in values:
        allowed = values["allowed"].value
        if not isinstance(allowed, bool):
            issues.add(values["allowed"], key_path(*path, "allowed"), f"expected true or false, got `{allowed}`")
            allowed = None
    reason_code = _string(issues, node, "reason_code", path, required=False)
    if reason_code is not None and reason_code not in REASON_CODES:
        issues.add(values["reason_code"], key_path(*path, "reason_code"),
                   f"unknown reason code `{reason_code}`; one of: {', '.join(REASON_CODES)}")
    rule = _string(issues, node, "rule", path, required=False)
    matched: tuple[str, ...] | None = None
    if "matched_rules" in values:
        raw = plain(values["matched_rules"])
        if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
            issues.add(values["matched_rules"], key_path(*path, "matched_rules"), "expected a list of rule ids")
        else:
            matched = tuple(raw)
    return Expectation(allowed, reason_code, rule, matched)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(value) + "]"
    return str(value)


def run_policy_tests(
    suites: Iterable[TestSuite],
    policy: Policy,
    keys: KeyRing,
    *,
    now: dt.datetime | None = None,
) -> TestReport:
    """Run every test of ``suites`` against ``policy``; a suite's own ``now`` wins over ``now``."""
    passed: list[str] = []
    failures: list[TestFailure] = []
    for suite in suites:
        for test in suite.tests:
            failure = _run(suite, test, policy, keys, suite.now or now)
            if failure is None:
                passed.append(f"{suite.source}:{test.line} {test.name}")
            else:
                failures.append(failure)
    return TestReport(tuple(passed), tuple(failures))


def _run(
    suite: TestSuite, test: PolicyTest, policy: Policy, keys: KeyRing, now: dt.datetime | None
) -> TestFailure | None:
    server, _, tool = test.tool.partition(".")
    request = CallRequest(test.model, server, tool, test.arguments, test.input_schema)
    decision = evaluate(request, policy, keys, now=now)
    expect = test.expect
    mismatches: list[Mismatch] = []
    if expect.allowed is not None and decision.allowed != expect.allowed:
        mismatches.append(Mismatch("allowed", _shown(expect.allowed), _shown(decision.allowed)))
    if expect.reason_code is not None and decision.reason_code != expect.reason_code:
        mismatches.append(Mismatch("reason_code", expect.reason_code, decision.reason_code))
    if expect.rule is not None and expect.rule not in decision.matched_rules:
        mismatches.append(Mismatch("rule", f"`{expect.rule}` matched", "matched " + _shown(decision.matched_rules)))
    if expect.matched_rules is not None and tuple(decision.matched_rules) != expect.matched_rules:
        mismatches.append(Mismatch("matched_rules", _shown(expect.matched_rules), _shown(decision.matched_rules)))
    if not mismatches:
        return None
    return TestFailure(suite.source, test, tuple(mismatches), f"{decision.reason_code}: {decision.reason}")


def suites_from(paths: Sequence[str | Path]) -> list[TestSuite]:
    """Load several test files (each raising its own located ``PolicyLoadError``)."""
    return [load_policy_tests(p) for p in paths]
