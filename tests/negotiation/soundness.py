"""The soundness property of auto-approval, as a hypothesis strategy plus one check.

For every snippet the guardrails auto-approve: every call the merged policy allows is
allowed by the live policy, or lies inside the envelope grant (the proposer, a tool in
``read_only_tools`` and in no ``sensitive_tools`` glob, before now + ``max_expiry_hours``).
The same must hold after the operator removes any subset of the live deny rules from both
policies (no sleeper grants). Live policies mix allow and deny rules with globs,
conditions, expiries and ``max_risk`` for several models; snippets reuse live ids, copy
live rules without their limits, use globs and deny rules; calls range over listed and
unlisted tools, arguments, risk and time.

Shared by tests/negotiation/test_soundness.py (bounded, in CI) and bench/bench_soundness.py
(≥ 100,000 examples).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from negotiation.guardrails import GuardrailConfig, assess, in_envelope
from policy import (
    CallRequest,
    Condition,
    KeyRing,
    Policy,
    Rule,
    SessionRisk,
    evaluate,
    load_model_keys_text,
    tool_matches,
)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
PROPOSER = "m1"

KEYS: KeyRing = load_model_keys_text(
    """\
models:
  m1: {key: k1, tools: ["*"], can_propose: true}
  m2: {key: k2, tools: ["*"], can_propose: true}
  m3: {key: k3, tools: ["a.*", "c.*"]}
""",
    "keys.yaml",
)

# Tools some client may have listed, and tools nobody has listed yet.
TOOLS = ("a.x", "a.y", "a.list_1", "a.list_2", "b.x", "b.secret", "b.list_1", "c.new", "c.list_zz", "d.x")
GLOBS = ("a.x", "a.y", "a.*", "*.x", "a.list_*", "*.list_*", "b.?", "b.*", "c.*", "*", "b.secret", "a.list_1", "?.x")
MODELS = ("m1", "m2", "m3", "*")
CONDITIONS = (
    Condition("path", "under", "/srv"),
    Condition("path", "equals", "/srv/a"),
    Condition("n", "min", 3),
    Condition("n", "max", 5),
    Condition("n", "one_of", (1, 4)),
    Condition("path", "max_length", 8),
)
EXPIRIES = (None, None, NOW - timedelta(hours=1), NOW + timedelta(hours=1), NOW + timedelta(hours=20),
            NOW + timedelta(hours=30))
RISKS = (None, None, 0.2, 0.6)
LIVE_IDS = ("r1", "r2", "no-etc", "freeze")

CONFIGS = (
    GuardrailConfig(read_only_tools=("a.x", "a.list_*", "b.*"), sensitive_tools=("b.secret",)),
    GuardrailConfig(read_only_tools=("*.list_*", "a.?"), sensitive_tools=("a.list_2", "b.*"), max_expiry_hours=2),
    GuardrailConfig(read_only_tools=("*",), sensitive_tools=("*.secret",), max_expiry_hours=None),
)


class FixedRisk(SessionRisk):
    """A session whose risk is what the example says."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def score(self, now: float) -> float:
        return self.level


@st.composite
def rules(draw: st.DrawFn, *, ids: tuple[str, ...] | None = None) -> Rule:
    allow = draw(st.lists(st.sampled_from(GLOBS), max_size=2, unique=True))
    deny = draw(st.lists(st.sampled_from(GLOBS), max_size=2, unique=True))
    if not allow and not deny:
        allow = [draw(st.sampled_from(GLOBS))]
    when = draw(st.lists(st.sampled_from(CONDITIONS), max_size=2, unique=True))
    return Rule.build(
        id=draw(st.sampled_from(ids)) if ids else None,
        models=draw(st.lists(st.sampled_from(MODELS + ("*",)), min_size=1, max_size=2, unique=True)),
        allow_tools=allow,
        deny_tools=deny,
        when=when,
        expires=draw(st.sampled_from(EXPIRIES)),
        max_risk=draw(st.sampled_from(RISKS)) if allow else None,
    )


@st.composite
def live_policies(draw: st.DrawFn) -> Policy:
    count = draw(st.integers(0, 4))
    ids = draw(st.lists(st.sampled_from(LIVE_IDS), min_size=count, max_size=count, unique=True))
    return Policy.from_rules([draw(rules(ids=(rule_id,))) for rule_id in ids])


NEAR_EXPIRIES = (NOW + timedelta(hours=1), NOW + timedelta(hours=1), NOW + timedelta(hours=20), None)


@st.composite
def proposer_rules(draw: st.DrawFn) -> Rule:
    """A rule shaped like the ones the guardrails could approve: the proposer only, mostly
    inside some envelope, mostly with a near expiry."""
    rule = draw(rules())
    allow = rule.allow_tools
    if allow and draw(st.booleans()):
        allow = (draw(st.sampled_from(("a.x", "a.list_*", "b.x", "a.list_1", "*", "c.list_zz"))),)
    return replace(
        rule,
        models=(PROPOSER,),
        allow_tools=allow,
        max_risk=rule.max_risk if allow else None,
        expires=draw(st.sampled_from(NEAR_EXPIRIES)),
    )


@st.composite
def snippet_rules(draw: st.DrawFn, live: Policy) -> list[Rule]:
    out: list[Rule] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("fresh", "proposer", "proposer", "sibling", "reuse_id", "deny_only")))
        if kind == "fresh":
            out.append(draw(rules()))
        elif kind == "proposer":
            out.append(draw(proposer_rules()))
        elif kind == "deny_only":
            rule = draw(proposer_rules())
            out.append(replace(rule, allow_tools=(), deny_tools=rule.deny_tools or rule.allow_tools, max_risk=None))
        elif live.rules:
            base = draw(st.sampled_from(live.rules))
            if kind == "sibling":  # the same grant without the operator's limits
                sibling = Rule.build(
                    models=draw(st.sampled_from(((PROPOSER,), base.models))),
                    allow_tools=base.allow_tools or base.deny_tools,
                    expires=draw(st.sampled_from(EXPIRIES)),
                )
                out.append(sibling)
            else:  # a rule carrying a live rule's id
                out.append(replace(draw(proposer_rules()), id=base.id))
        else:
            out.append(draw(proposer_rules()))
    return out


def snippet_yaml(snippet: list[Rule], explicit_ids: list[bool]) -> str:
    body = []
    for rule, explicit in zip(snippet, explicit_ids, strict=True):
        data = rule.to_dict()
        if not explicit:
            data.pop("id")
        body.append(data)
    return yaml.safe_dump({"rules": body}, sort_keys=False)


@dataclass(frozen=True)
class Call:
    model: str
    tool: str
    arguments: dict[str, Any]
    risk: float
    at: datetime

    def request(self) -> CallRequest:
        server, _, name = self.tool.partition(".")
        return CallRequest(model=self.model, server=server, tool=name, arguments=self.arguments)


CALLERS = ("m1", "m1", "m2", "m3", "ghost")
ARGUMENTS = (
    {},
    {"path": "/srv/a"},
    {"path": "/etc/passwd"},
    {"path": "/srv/../etc/x"},
    {"n": 4},
    {"n": 1, "path": "/srv/b"},
    {"n": "four"},
    {"path": 7},
)


@st.composite
def calls(draw: st.DrawFn, tools: tuple[str, ...] = TOOLS, models: tuple[str, ...] = CALLERS) -> Call:
    return Call(
        model=draw(st.sampled_from(models)),
        tool=draw(st.sampled_from(tools)),
        arguments=dict(draw(st.sampled_from(ARGUMENTS))),
        risk=draw(st.sampled_from((0.0, 0.1, 0.3, 0.7))),
        at=NOW + timedelta(hours=draw(st.sampled_from((0.0, 0.5, 1.5, 3.0, 21.0, 25.0, 40.0)))),
    )


@dataclass(frozen=True)
class Example:
    live: Policy
    yaml_text: str
    config: GuardrailConfig
    session_risk: float
    calls: tuple[Call, ...]
    lifted: frozenset[str]  # live rules whose deny part the operator removes


@st.composite
def examples(draw: st.DrawFn) -> Example:
    live = draw(live_policies())
    snippet = draw(snippet_rules(live))
    explicit = [draw(st.booleans()) if rule.id not in {r.id for r in live.rules} else True for rule in snippet]
    deny_ids = sorted(rule.id for rule in live.rules if rule.deny_tools)
    # Calls aimed at what the snippet grants, so that approved grants are exercised.
    targets = tuple(t for t in TOOLS if any(tool_matches(g, t) for r in snippet for g in r.allow_tools))
    lifted = frozenset(draw(st.lists(st.sampled_from(deny_ids), unique=True))) if deny_ids else frozenset()
    return Example(
        live=live,
        yaml_text=snippet_yaml(snippet, explicit),
        config=draw(st.sampled_from(CONFIGS)),
        session_risk=draw(st.sampled_from((0.0, 0.0, 0.7))),
        calls=tuple(draw(st.lists(calls(), min_size=4, max_size=10)))
        + (tuple(draw(st.lists(calls(targets, ("m1",)), min_size=4, max_size=8))) if targets else ()),
        lifted=lifted,
    )


def without_denies(policy: Policy, ids: frozenset[str]) -> Policy:
    """``policy`` after the operator lifts the deny part of the rules ``ids``."""
    kept = []
    for rule in policy.rules:
        if rule.id in ids:
            if not rule.allow_tools:
                continue
            rule = replace(rule, deny_tools=())
        kept.append(rule)
    return Policy.from_rules(kept, settings=policy.settings)


def allowed(policy: Policy, call: Call) -> bool:
    decision = evaluate(call.request(), policy, KEYS, now=call.at, session=FixedRisk(call.risk))
    assert decision.reason_code != "gateway_error", decision.errors
    return decision.allowed


class Counterexample(AssertionError):
    """An auto-approved snippet that lets a call through that nobody granted."""


def check(example: Example, stats: Counter[str] | None = None) -> None:
    """Raise ``Counterexample`` if the guardrails auto-approve an unsound snippet."""
    proposer = KEYS.get(PROPOSER)
    assert proposer is not None
    assessment = assess(
        example.yaml_text,
        proposer=proposer,
        live=example.live,
        keys=KEYS,
        known_tools=TOOLS[:4],  # only some tools were ever listed
        config=example.config,
        session_risk=example.session_risk,
        now=NOW,
    )
    if stats is not None:
        stats[assessment.status] += 1
    if assessment.status != "approved":
        return
    assert assessment.merged is not None
    merged = assessment.merged.policy
    if stats is not None and not assessment.changes_nothing:
        stats["approved_with_changes"] += 1
    for lifted in (frozenset(), example.lifted, frozenset(r.id for r in example.live.rules if r.deny_tools)):
        live_now = without_denies(example.live, lifted)
        merged_now = without_denies(merged, lifted)
        for call in example.calls:
            if not allowed(merged_now, call):
                continue
            if allowed(live_now, call):
                continue
            if in_envelope(example.config, PROPOSER, call.model, call.tool, call.at, NOW):
                if stats is not None:
                    stats["granted_in_envelope"] += 1
                continue
            raise Counterexample(
                f"auto-approved snippet lets {call} through (denies lifted: {sorted(lifted)})\n"
                f"live: {example.live.canonical()}\nsnippet:\n{example.yaml_text}\n"
                f"verdicts: {[v.to_dict() for v in assessment.verdicts]}"
            )


def run_property(max_examples: int, stats: Counter[str], *, shrink: bool = True, seed: int | None = None) -> None:
    """Run ``check`` on ``max_examples`` hypothesis examples; raises ``Counterexample``."""

    @settings(
        max_examples=max_examples,
        phases=(Phase.generate, Phase.shrink) if shrink else (Phase.generate,),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(examples())
    def prop(example: Example) -> None:
        stats["examples"] += 1
        check(example, stats)

    (prop if seed is None else hypothesis_seed(seed)(prop))()
