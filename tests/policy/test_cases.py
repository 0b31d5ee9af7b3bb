"""The decision-table corpus: tests/policy/cases/*.yaml, one test per case.

Each file holds a ``policy`` (the YAML form, loaded through the real loader), ``model_keys``,
optional ``now``, optional named ``schemas``, and ``cases``. Each case names a ``tool``
(``server.tool``), optional ``model`` (default gpt-4o), ``arguments`` and ``input_schema``
(a name from ``schemas`` or an inline schema), and ``expect``:

* ``allowed``, ``reason_code`` - always checked;
* ``matched_rules`` (default ``[]``) and ``errors`` (substrings, default ``[]``) - always
  checked, so an unexpected match or error fails the case;
* ``trace`` - entries that must appear in the rule trace (only the keys given are compared);
* ``findings`` - the exact ``[code, kind]`` pairs found in the arguments;
* ``suggested_rule`` - whether the counterfactual carries a suggested rule.

A case may set ``kind: prompt`` (``tool`` is then ``server.prompt``) or ``kind: resource``
with ``server`` and ``uri`` (the arguments become ``{uri: ...}``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy import CallRequest, evaluate, load_model_keys_text, load_policy_text
from policy.model import CONDITION_OPS

from .policy_support import NOW

CASES_DIR = Path(__file__).parent / "cases"


def _load_cases() -> list[Any]:
    params = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        table = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in table["cases"]:
            params.append(pytest.param(table, case, id=f"{path.stem}:{case['name']}"))
    return params


CASES = _load_cases()


def test_the_corpus_is_not_empty_and_names_are_unique() -> None:
    ids = [param.id for param in CASES]
    assert len(ids) >= 50
    assert len(ids) == len(set(ids))


def test_every_operator_is_tabled_against_every_json_type() -> None:
    table = yaml.safe_load((CASES_DIR / "operand_types.yaml").read_text(encoding="utf-8"))
    ops = {
        next(iter(rule["when"]["v"])): rule["deny_tools"][0]
        for rule in table["policy"]["rules"]
        if "when" in rule and "v" in rule["when"]
    }
    assert set(ops) == set(CONDITION_OPS)
    kinds = {"string", "number", "bool", "null", "array", "object", "missing"}
    for op, tool in ops.items():
        cases = [case["name"] for case in table["cases"] if case["tool"] == tool]
        named = {name.removeprefix(tool[2:] + "_").split("_")[0] for name in cases}
        assert kinds <= named, (op, kinds - named)


@pytest.mark.parametrize(("table", "case"), CASES)
def test_case(table: dict[str, Any], case: dict[str, Any]) -> None:
    policy = load_policy_text(yaml.safe_dump(table["policy"]), "policies.yaml")
    keys = load_model_keys_text(yaml.safe_dump(table["model_keys"]), "model_keys.yaml")
    now = datetime.fromisoformat(table["now"]) if "now" in table else NOW
    schema = case.get("input_schema")
    if isinstance(schema, str):
        schema = table["schemas"][schema]
    kind = case.get("kind", "tool")
    if kind == "resource":
        server, tool, arguments = case["server"], case["uri"], {"uri": case["uri"]}
    else:
        server, _, tool = case["tool"].partition(".")
        arguments = case.get("arguments", {})
    request = CallRequest(case.get("model", "gpt-4o"), server, tool, arguments, schema, kind)
    decision = evaluate(request, policy, keys, now=now)
    expect = case["expect"]
    summary = decision.to_dict()

    assert (decision.allowed, decision.reason_code) == (expect["allowed"], expect["reason_code"]), summary
    assert list(decision.matched_rules) == expect.get("matched_rules", []), summary
    wanted_errors = expect.get("errors", [])
    assert len(decision.errors) == len(wanted_errors), summary
    for wanted, actual in zip(wanted_errors, decision.errors, strict=True):
        assert wanted in actual
    trace = summary["rule_trace"]
    for wanted in expect.get("trace", []):
        assert any(all(entry[key] == value for key, value in wanted.items()) for entry in trace), (wanted, trace)
    if "findings" in expect:
        assert [[f.code, f.kind] for f in decision.findings] == expect["findings"]
    if "suggested_rule" in expect:
        assert decision.counterfactual is not None
        assert (decision.counterfactual.suggested_rule is not None) is expect["suggested_rule"]
    if "approval" in expect:
        assert summary.get("approval") == expect["approval"], summary
    else:
        assert "approval" not in summary, summary
    if decision.allowed:
        assert decision.counterfactual is None and decision.deny_kind is None
    elif decision.reason_code == "approval_required":
        assert decision.counterfactual is not None and decision.counterfactual.suggested_rule is None
        assert decision.deny_kind == "approval"
    else:
        assert decision.counterfactual is not None and decision.deny_kind in ("explicit", "default")
