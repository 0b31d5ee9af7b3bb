"""Properties that must hold for every policy and request (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import (
    CallRequest,
    Condition,
    KeyRing,
    ModelIdentity,
    Policy,
    PolicySettings,
    Rule,
    dump_policy_yaml,
    evaluate,
    load_policy_text,
)
from policy.keys import hash_key

from .policy_support import NOW

MODELS = ["a", "b"]
TOOLS = ["s.x", "s.y", "t.x", "t.read_file"]
GLOBS = ["s.*", "*.x", "*", "s.?", "t.read_*", "s.x", "t.x", "u.*"]
KEYS = KeyRing(
    [
        (ModelIdentity("a", ("*",)), hash_key("key-a")),
        (ModelIdentity("b", ("s.*", "t.x")), hash_key("key-b")),
    ]
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
plain_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)

conditions = st.one_of(
    st.builds(
        Condition, st.sampled_from(["p", "q.r", "n"]), st.just("under"), st.sampled_from(["/", "/srv", "/srv/d"])
    ),
    st.builds(
        Condition,
        st.sampled_from(["p", "q.r"]),
        st.sampled_from(["regex", "not_regex"]),
        st.sampled_from(["a.*", "[0-9]+", ".*"]),
    ),
    st.builds(Condition, st.sampled_from(["n", "p"]), st.sampled_from(["min", "max"]), st.integers(-10, 10)),
    st.builds(Condition, st.sampled_from(["p", "n"]), st.just("max_length"), st.integers(0, 5)),
    st.builds(Condition, st.sampled_from(["p", "n"]), st.just("equals"), json_scalars),
    st.builds(
        Condition,
        st.sampled_from(["p", "n"]),
        st.just("one_of"),
        st.lists(
            st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y"]), st.booleans(), st.none()), min_size=1, max_size=3
        ).map(tuple),
    ),
)
expiries = st.one_of(st.none(), st.sampled_from([NOW - timedelta(days=1), NOW + timedelta(days=1)]))


def _loadable(when: list[Condition]) -> bool:
    """The loader refuses `min` above `max` on one argument (nothing could match)."""
    bounds = {(c.arg, c.op): c.value for c in when if c.op in ("min", "max")}
    return all(
        bounds[(arg, "min")] <= bounds.get((arg, "max"), bounds[(arg, "min")]) for arg, op in bounds if op == "min"
    )


@st.composite
def rules(draw: st.DrawFn, effect: str | None = None) -> Rule:
    kind = effect or draw(st.sampled_from(["allow", "deny", "both"]))
    allow = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2)) if kind in ("allow", "both") else []
    deny = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2)) if kind in ("deny", "both") else []
    return Rule.build(
        id=None,
        description=draw(st.one_of(st.none(), plain_text)),
        models=draw(st.lists(st.sampled_from([*MODELS, "*"]), min_size=1, max_size=2, unique=True)),
        allow_tools=allow,
        deny_tools=deny,
        when=draw(st.lists(conditions, max_size=2, unique_by=lambda c: (c.arg, c.op)).filter(_loadable)),
        reason=draw(st.one_of(st.none(), plain_text)),
        expires=draw(expiries),
        max_risk=draw(st.one_of(st.none(), st.sampled_from([0.0, 0.3, 1.0]))) if allow else None,
    )


def policies(extra: int = 6) -> st.SearchStrategy[Policy]:
    return st.builds(
        lambda rules, limit: Policy.from_rules(rules, PolicySettings(deny_risk_above=limit)),
        st.lists(rules(), max_size=extra, unique_by=lambda rule: rule.id),
        st.one_of(st.none(), st.sampled_from([0.5, 0.9])),
    )


requests = st.builds(
    lambda model, tool, arguments: CallRequest(model, *tool.split(".", 1), arguments),
    st.sampled_from([*MODELS, "stranger"]),
    st.sampled_from(TOOLS),
    st.dictionaries(st.sampled_from(["p", "q", "n", "z"]), json_values, max_size=4),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), rules(effect="deny"), requests)
def test_adding_a_deny_rule_never_turns_a_deny_into_an_allow(base: Policy, deny: Rule, request: CallRequest) -> None:
    if any(rule.id == deny.id for rule in base.rules):
        return
    widened = Policy.from_rules((*base.rules, deny), base.settings)
    before = evaluate(request, base, KEYS, now=NOW)
    after = evaluate(request, widened, KEYS, now=NOW)
    if not before.allowed:
        assert not after.allowed
    if after.allowed:
        assert before.allowed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policies(),
    st.sampled_from([*MODELS, "stranger"]),
    st.sampled_from(TOOLS),
    st.dictionaries(st.text(max_size=6), json_values, max_size=5),
    st.one_of(st.none(), st.just({"type": "object", "properties": {"n": {"type": "integer"}}}), json_values),
)
def test_evaluate_never_raises_on_arbitrary_json_arguments(
    policy: Policy, model: str, tool: str, arguments: dict[str, Any], schema: Any
) -> None:
    server, name = tool.split(".", 1)
    decision = evaluate(CallRequest(model, server, name, arguments, schema), policy, KEYS, now=NOW)
    assert decision.reason_code != "gateway_error", decision.errors
    assert 0.0 <= decision.risk_score <= 1.0
    assert decision.allowed is (decision.reason_code == "allowed")
    data = decision.to_dict()
    assert data["schema"] == "securegateway.decision/1"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(extra=8))
def test_dump_round_trip_preserves_the_digest(policy: Policy) -> None:
    again = load_policy_text(dump_policy_yaml(policy))
    assert again.digest == policy.digest
    assert set(again.rules) == set(policy.rules)


@settings(max_examples=100, deadline=None)
@given(policies(), requests)
def test_decisions_do_not_depend_on_rule_order(policy: Policy, request: CallRequest) -> None:
    reordered = Policy.from_rules(tuple(reversed(policy.rules)), policy.settings)
    one = evaluate(request, policy, KEYS, now=NOW, decision_id="x").to_dict()
    two = evaluate(request, reordered, KEYS, now=NOW, decision_id="x").to_dict()
    assert one == two


def test_expiries_in_the_strategy_are_timezone_aware() -> None:
    assert NOW.tzinfo is UTC and isinstance(NOW, datetime)
