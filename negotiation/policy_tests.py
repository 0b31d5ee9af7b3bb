"""The operator's policy tests as a guardrail: a proposal that breaks one waits for a person.

``check_policy_tests`` runs the operator's suites (policy/testing.py) on the live policy and
on the merged one. A test that passes now and fails after the merge is the proposal's doing:
the assessment gets a failing ``breaks_policy_tests`` verdict (not in ``REJECTING_CODES``,
so the proposal is held for review, never auto-approved). Tests already failing on the live
policy are not held against a proposal. Pure: same inputs, same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from negotiation.guardrails import Assessment, Verdict, status_of
from policy import KeyRing, Policy
from policy.testing import TestSuite, run_policy_tests

__all__ = ["BREAKS_POLICY_TESTS", "check_policy_tests"]

BREAKS_POLICY_TESTS = "breaks_policy_tests"
_MAX_NAMED = 5


def check_policy_tests(
    assessment: Assessment,
    live: Policy,
    keys: KeyRing,
    suites: Sequence[TestSuite],
    *,
    now: datetime,
) -> Assessment:
    """``assessment`` with a ``breaks_policy_tests`` verdict when the merge breaks a test."""
    if not suites or assessment.merged is None or assessment.status == "rejected":
        return assessment
    before = run_policy_tests(suites, live, keys, now=now)
    after = run_policy_tests(suites, assessment.merged.policy, keys, now=now)
    already = {(f.source, f.test.name) for f in before.failures}
    broken = [f for f in after.failures if (f.source, f.test.name) not in already]
    if not broken:
        return assessment
    named = "; ".join(
        f"{f.where} {f.test.name!r}: " + ", ".join(f"{m.field} expected {m.expected}, got {m.actual}"
                                                   for m in f.mismatches)
        for f in broken[:_MAX_NAMED]
    )
    more = f" and {len(broken) - _MAX_NAMED} more" if len(broken) > _MAX_NAMED else ""
    message = f"the merged policy fails {len(broken)} operator test(s): {named}{more}"
    kept = tuple(v for v in assessment.verdicts if v.code != "auto_approved")
    verdicts = (*kept, Verdict(BREAKS_POLICY_TESTS, False, message))
    return replace(assessment, status=status_of(verdicts), verdicts=verdicts)
