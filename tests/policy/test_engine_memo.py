"""policy.engine's decision memo is exact: a memoised decision is the one the full procedure makes.

For random policies (conditions that fail, hold or error, expiring rules, risk caps, ask rules,
reasons quoting ``{args.*}``, ``{model}`` or nothing, prompt and resource grants) and a random
sequence of calls to few targets at moments either side of the expiries (so the memo is filled,
hit, and its windows crossed, back and forth in time), each decision equals
:func:`policy.engine._evaluate_uncached`'s for the same call and decision id.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policy.engine as engine
import policy.memo as memo
from policy import CallRequest, Policy, PolicySettings, Rule, SessionRisk, evaluate
from policy.decision import Decision

from .policy_support import NOW
from .test_properties import KEYS, MODELS, conditions, json_values

TOOLS = ["s.x", "s.y", "t.x", "t.read_file"]
GLOBS = ["s.*", "*.x", "*", "s.?", "t.read_*", "s.x", "t.x"]
MOMENTS = [NOW - timedelta(days=2), NOW, NOW + timedelta(hours=1), NOW + timedelta(days=2)]
EXPIRIES = st.one_of(st.none(), st.sampled_from([NOW - timedelta(days=1), NOW + timedelta(minutes=30),
                                                 NOW + timedelta(days=1)]))
REASONS = st.one_of(st.none(), st.sampled_from(["no {tool} for {model}", "path {args.p} refused", "plain words",
                                                "{args.q.r} and {unknown}"]))
SCHEMAS = st.sampled_from([
    None,
    {"type": "object", "properties": {"p": {"type": "string"}}},
    {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    {"type": "nonsense-type"},
])


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    kind = draw(st.sampled_from(["allow", "deny", "both", "ask", "prompts"]))
    allow = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2)) if kind in ("allow", "both") else []
    deny = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2)) if kind in ("deny", "both") else []
    ask = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2)) if kind == "ask" else []
    return Rule.build(
        models=draw(st.lists(st.sampled_from([*MODELS, "*"]), min_size=1, max_size=2, unique=True)),
        allow_tools=allow,
        deny_tools=deny,
        ask_tools=ask,
        allow_prompts=["s.*"] if kind == "prompts" else [],
        deny_resources=["file:///secret*"] if kind == "prompts" else [],
        when=draw(st.lists(conditions, max_size=2)),
        expires=draw(EXPIRIES),
        reason=draw(REASONS),
        max_risk=draw(st.one_of(st.none(), st.sampled_from([0.0, 0.5]))) if allow else None,
    )


policies = st.builds(
    lambda rules, limit, required: Policy.from_rules(
        rules, PolicySettings(deny_risk_above=limit, require_rules_for=required)
    ),
    st.lists(rules(), max_size=10, unique_by=lambda rule: rule.id),
    st.one_of(st.none(), st.just(0.9)),
    st.sampled_from([(), ("prompts",), ("prompts", "resources")]),
)

targets = st.one_of(
    st.tuples(st.just("tool"), st.sampled_from(TOOLS)),
    st.tuples(st.just("prompt"), st.sampled_from(["s.p", "t.p"])),
    st.tuples(st.just("resource"), st.sampled_from(["file:///secret.txt", "file:///open.txt"])),
)
arguments = st.one_of(
    st.dictionaries(st.sampled_from(["p", "q", "n"]), json_values, max_size=3),
    st.fixed_dictionaries({"p": st.sampled_from(["/srv/d/a", "/etc", "abc", "12", "x" * 7])}),
    st.fixed_dictionaries({"n": st.integers(-12, 12)}),
    st.fixed_dictionaries({"p": st.sampled_from(["/srv", "a1"]), "n": st.sampled_from([0, 11, "3"])}),
    st.just({"p": "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----"}),  # a finding
)


@st.composite
def sequences(draw: st.DrawFn) -> list[Any]:
    """Calls to one or two targets of one or two models, so that the memo is filled and hit."""
    who = draw(st.lists(st.sampled_from([*MODELS, "stranger"]), min_size=1, max_size=2, unique=True))
    what = draw(st.lists(targets, min_size=1, max_size=2, unique=True))
    call = st.tuples(st.sampled_from(who), st.sampled_from(what), arguments, SCHEMAS, st.sampled_from(MOMENTS),
                     st.sampled_from([0.0, 0.0, 0.004, 0.3]))
    return draw(st.lists(call, min_size=1, max_size=12))


def _request(model: str, target: tuple[str, str], args: dict[str, Any], schema: Any) -> CallRequest:
    kind, name = target
    if kind == "resource":
        return CallRequest(model, "s", name, {"uri": name, **args}, kind="resource")
    server, tool = name.split(".", 1)
    return CallRequest(model, server, tool, args, input_schema=schema if kind == "tool" else None, kind=kind)


def _session(level: float) -> SessionRisk | None:
    if level == 0.0:
        return None
    risk = SessionRisk()
    risk._raise_by(level, NOW.timestamp())
    return risk


@pytest.fixture(autouse=True)
def _empty_memo() -> None:
    memo.clear_memo()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies, sequences())
def test_every_decision_equals_the_full_procedure(policy: Policy, sequence: list[Any]) -> None:
    memo.clear_memo()
    for index, (model, target, args, schema, moment, level) in enumerate(sequence):
        request = _request(model, target, args, schema)
        decision_id = f"d{index}"
        memoised = evaluate(request, policy, KEYS, now=moment, session=_session(level), decision_id=decision_id)
        reference = engine._evaluate_uncached(request, policy, KEYS, moment, _session(level), decision_id)
        assert memoised == reference
        assert memoised.to_dict() == reference.to_dict()


def test_a_repeated_call_is_answered_from_the_memo_with_its_own_id() -> None:
    policy = Policy.from_rules((Rule.build(id="open", models=["a"], allow_tools=["s.*"]),), PolicySettings())
    first = evaluate(CallRequest("a", "s", "x", {"p": "one"}), policy, KEYS, now=NOW, decision_id="d1")
    second = evaluate(CallRequest("a", "s", "x", {"p": "two"}), policy, KEYS, now=NOW, decision_id="d2")
    assert (first.allowed, second.allowed) == (True, True)
    assert second.decision_id == "d2" and first.decision_id == "d1"
    (table,) = memo.TABLES.values()
    (shape,) = table.shapes.values()
    assert len(shape.decisions) == 1  # the second came from it
    assert isinstance(second, Decision)


def test_a_rule_expiring_between_two_calls_is_seen_expired() -> None:
    policy = Policy.from_rules(
        (Rule.build(id="open", models=["a"], allow_tools=["s.*"], expires=NOW + timedelta(minutes=5)),),
        PolicySettings(),
    )
    request = CallRequest("a", "s", "x", {})
    assert evaluate(request, policy, KEYS, now=NOW).allowed
    later = evaluate(request, policy, KEYS, now=NOW + timedelta(minutes=5))
    assert (later.allowed, later.reason_code) == (False, "default_deny")
    assert evaluate(request, policy, KEYS, now=NOW).allowed  # a clock set back: the window is two-sided


def test_a_reason_quoting_the_arguments_is_never_memoised() -> None:
    policy = Policy.from_rules(
        (Rule.build(id="no", models=["a"], deny_tools=["s.*"], reason="refused {args.p}"),), PolicySettings()
    )
    one = evaluate(CallRequest("a", "s", "x", {"p": "alpha"}), policy, KEYS, now=NOW)
    two = evaluate(CallRequest("a", "s", "x", {"p": "beta"}), policy, KEYS, now=NOW)
    assert "alpha" in one.reason and "beta" in two.reason
    assert all(shape.conditional is None for table in memo.TABLES.values() for shape in table.shapes.values())


def test_the_memo_stays_bounded_whatever_the_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memo, "DECISIONS_PER_TABLE", 5)
    policy = Policy.from_rules((Rule.build(id="open", models=["a"], allow_resources=["file:///*"]),), PolicySettings())
    for index in range(40):  # resource URIs are the caller's to choose
        uri = f"file:///{index}"
        decision = evaluate(CallRequest("a", "s", uri, {"uri": uri}, kind="resource"), policy, KEYS, now=NOW)
        assert decision == engine._evaluate_uncached(CallRequest("a", "s", uri, {"uri": uri}, kind="resource"),
                                                     policy, KEYS, NOW, None, decision.decision_id)
    (table,) = memo.TABLES.values()
    assert table.stored <= 5 and sum(len(shape.decisions) for shape in table.shapes.values()) <= 5
