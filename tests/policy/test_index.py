"""policy.index: the candidate index is exact — deciding over every rule gives the same decision.

The engine looks only at the rules the index returns for ``(model, tool)``. Against a
brute-force engine that considers every rule of the policy, for random policies and calls:
each rule of the model the index leaves out says nothing but its "tool mismatch" (so it could not have
changed the outcome), and the decision — reason, matched rules, risk, reasoning,
counterfactual — is identical, its ``rule_trace`` being the brute-force trace restricted to
the candidates.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy import CallRequest, Policy, PolicySettings, Rule, evaluate
from policy.index import CompiledRule

from .policy_support import NOW
from .test_properties import KEYS, MODELS, conditions, expiries, json_values

TOOLS = ["s.x", "s.xy", "s.y", "t.x", "t.read_file", "t.read_files", "u.v.w", "sx.y"]
GLOBS = ["s.*", "*.x", "*", "s.?", "s.x*", "t.read_*", "t.read_fi*", "s.x", "t.x", "u.*", "u.v.*", "*e", "s*"]


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    kind = draw(st.sampled_from(["allow", "deny", "both"]))
    allow = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3)) if kind != "deny" else []
    deny = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2)) if kind != "allow" else []
    return Rule.build(
        id=None,
        models=draw(st.lists(st.sampled_from([*MODELS, "*", "c"]), min_size=1, max_size=2, unique=True)),
        allow_tools=allow,
        deny_tools=deny,
        when=draw(st.lists(conditions, max_size=1)),
        expires=draw(expiries),
        max_risk=draw(st.one_of(st.none(), st.sampled_from([0.0, 1.0]))) if allow else None,
    )


policies = st.builds(
    lambda rules, limit: Policy.from_rules(rules, PolicySettings(deny_risk_above=limit)),
    st.lists(rules(), max_size=12, unique_by=lambda rule: rule.id),
    st.one_of(st.none(), st.just(0.9)),
)


def _brute_force(policy: Policy) -> Policy:
    """The same policy, its index replaced by "every rule of the model with a tool pattern", in id order
    (the engine leaves the model to the index: a rule of another model is never a candidate)."""
    brute = Policy.from_rules(policy.rules, policy.settings)

    def every(model: str, tool: str, kind: str = "tool") -> tuple[CompiledRule, ...]:
        return tuple(c for c in brute.compiled.rules if (model in c.rule.models or "*" in c.rule.models)
                     and (c.rule.allow_tools or c.rule.deny_tools or c.rule.ask_tools))

    brute.compiled.candidates = every  # type: ignore[method-assign]
    return brute


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policies,
    st.sampled_from([*MODELS, "c", "stranger"]),
    st.sampled_from(TOOLS),
    st.dictionaries(st.sampled_from(["p", "q", "n"]), json_values, max_size=3),
)
def test_the_index_never_leaves_out_a_rule_that_could_speak(
    policy: Policy, model: str, tool: str, arguments: dict[str, object]
) -> None:
    server, name = tool.split(".", 1)
    request = CallRequest(model, server, name, arguments)
    indexed = evaluate(request, policy, KEYS, now=NOW, decision_id="d").to_dict()
    brute = evaluate(request, _brute_force(policy), KEYS, now=NOW, decision_id="d").to_dict()
    candidates = {c.rule.id for c in policy.compiled.candidates(model, tool)}
    left_out = [entry for entry in brute["rule_trace"] if entry["rule_id"] not in candidates]
    assert all(not entry["matched"] and entry.get("note") == "tool mismatch" for entry in left_out), left_out
    brute["rule_trace"] = [entry for entry in brute["rule_trace"] if entry["rule_id"] in candidates]
    assert indexed == brute
