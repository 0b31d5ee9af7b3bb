"""Auto-approval is sound: whatever it merges, the merged policy allows nothing beyond the live
policy plus the envelope grant — for every call, and after the operator lifts any deny rules.

The property and its strategies live in tests/negotiation/soundness.py; bench/bench_soundness.py
runs the same check with 100,000+ examples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from negotiation import guardrails
from policy import Condition, Policy, Rule
from tests.negotiation.soundness import CONFIGS, NOW, Call, Counterexample, Example, check, run_property

CI_EXAMPLES = 400


def test_every_auto_approved_snippet_stays_within_live_plus_envelope() -> None:
    stats: Counter[str] = Counter()
    run_property(CI_EXAMPLES, stats, seed=20300601)
    # The property is not vacuous: many snippets were approved and changed the policy, and
    # some calls were let through only because the envelope grants them.
    assert stats["approved_with_changes"] >= CI_EXAMPLES // 20, stats
    assert stats["granted_in_envelope"] > 0, stats
    assert stats["pending"] > 0 and stats["rejected"] >= 0


def test_the_property_catches_a_guardrail_that_forgets_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A judge that skips the expiry check must be caught: the check has teeth.
    real = guardrails._rule_verdicts

    def forgetful(rule, raw, proposer, keys, known, config, now, *, replaces):  # type: ignore[no-untyped-def]
        lax = replace(config, max_expiry_hours=None)
        return real(rule, raw, proposer, keys, known, lax, now, replaces=replaces)

    monkeypatch.setattr(guardrails, "_rule_verdicts", forgetful)
    with pytest.raises(Counterexample):
        run_property(3000, Counter(), shrink=False)


def test_the_check_catches_a_guardrail_that_lets_snippets_replace_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    real = guardrails._rule_verdicts

    def trusting(rule, raw, proposer, keys, known, config, now, *, replaces):  # type: ignore[no-untyped-def]
        return real(rule, raw, proposer, keys, known, config, now, replaces=False)

    live = Policy.from_rules([
        Rule.build(id="m2-reads", models=["m2"], allow_tools=["a.x"]),
        Rule.build(id="no-etc", models=["*"], deny_tools=["a.x"], when=[Condition("path", "under", "/etc")]),
    ])
    example = Example(
        live=live,
        yaml_text="rules:\n  - id: no-etc\n    model: m1\n    deny_tools: [b.x]\n",
        config=CONFIGS[0],
        session_risk=0.0,
        calls=(Call("m2", "a.x", {"path": "/etc/passwd"}, 0.0, NOW),),
        lifted=frozenset(),
    )
    check(example)  # the real guardrails send it to review
    monkeypatch.setattr(guardrails, "_rule_verdicts", trusting)
    with pytest.raises(Counterexample):
        check(example)
