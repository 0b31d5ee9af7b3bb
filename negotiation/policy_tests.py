"""The operator's policy tests as a guardrail: a proposal that breaks one waits for a person.

``check_policy_tests`` runs the operator's suites (policy/testing.py) on the live policy and
on the merged one. A test that passes now and fails after the merge is the proposal's doing:
the assessment gets a failing ``breaks_policy_tests`` verdict (not in ``REJECTING_CODES``,
so the proposal is held for review, never auto-approved). Tests already failing on the live
policy are not held against a proposal. Same suites and policies, same answer.

``PolicyTestFiles`` is where the suites come from in a running gateway: the files are
found and read again at each check, and re-parsed when their content changed (by digest,
so an edit within one mtime tick is not missed), so an operator's edit counts from the
next proposal on, without a restart. A file that no longer loads holds every proposal
(``policy_tests_unloadable``, with the located error) until it is fixed: a guardrail that
cannot judge does not approve.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from negotiation.guardrails import Assessment, Verdict, status_of
from policy import KeyRing, Policy, PolicyError
from policy.testing import TestSuite, load_policy_tests_text, run_policy_tests
from policy.yaml_safe import DEFAULT_MAX_BYTES, read_capped

__all__ = ["BREAKS_POLICY_TESTS", "UNLOADABLE", "PolicyTestFiles", "check_policy_tests"]

BREAKS_POLICY_TESTS = "breaks_policy_tests"
UNLOADABLE = "policy_tests_unloadable"
_MAX_NAMED = 5


class PolicyTestFiles:
    """The operator's test files, read again at each check and re-parsed when changed."""

    def __init__(self, find: Callable[[], Sequence[Path]], *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._find = find
        self._max_bytes = max_bytes
        self._parsed: dict[Path, tuple[str, TestSuite]] = {}  # path -> (digest, suite)
        self._lock = threading.Lock()

    def suites(self) -> tuple[TestSuite, ...]:
        """The suites as the files are now; raise ``PolicyError`` (located) for one that does not load."""
        with self._lock:
            paths = list(self._find())
            out: list[TestSuite] = []
            for path in paths:
                text = read_capped(path, self._max_bytes)
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
                cached = self._parsed.get(path)
                if cached is None or cached[0] != digest:
                    cached = self._parsed[path] = (digest, load_policy_tests_text(text, str(path),
                                                                                   max_bytes=self._max_bytes))
                out.append(cached[1])
            for gone in set(self._parsed) - set(paths):
                del self._parsed[gone]
            return tuple(out)


def check_policy_tests(
    assessment: Assessment,
    live: Policy,
    keys: KeyRing,
    suites: Sequence[TestSuite],
    *,
    now: datetime,
    files: PolicyTestFiles | None = None,
) -> Assessment:
    """``assessment`` with a ``breaks_policy_tests`` verdict when the merge breaks a test
    (``suites`` plus those ``files`` hold now)."""
    if assessment.merged is None or assessment.status == "rejected":
        return assessment
    if files is not None:
        try:
            suites = (*suites, *files.suites())
        except PolicyError as exc:
            first = str(exc).splitlines()[0][:300]
            return _held(assessment, Verdict(UNLOADABLE, False, f"the operator's policy tests do not load: {first}"))
    if not suites:
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
    return _held(assessment, Verdict(BREAKS_POLICY_TESTS, False, message))


def _held(assessment: Assessment, verdict: Verdict) -> Assessment:
    kept = tuple(v for v in assessment.verdicts if v.code != "auto_approved")
    verdicts = (*kept, verdict)
    return replace(assessment, status=status_of(verdicts), verdicts=verdicts)
