"""The ``breaks_policy_tests`` guardrail (negotiation/policy_tests.py)."""

from __future__ import annotations

from pathlib import Path

from negotiation.guardrails import Assessment, assess
from negotiation.policy_tests import check_policy_tests
from policy.testing import load_policy_tests_text
from tests.negotiation.support import CONFIG, KNOWN_TOOLS, NOW, in_hours, make_world

SUITE = load_policy_tests_text(
    "tests:\n"
    "  - {name: gpt never reads fs, model: gpt-4o, tool: fs.read, expect: {allowed: false}}\n"
    "  - {name: docs readable, model: gpt-4o, tool: docs.read, expect: {allowed: true}}\n",
    "ops.tests.yaml",
)


def judged(tmp_path: Path, snippet: str) -> tuple[Assessment, Assessment]:
    world = make_world(tmp_path)
    live = world.live.current.policy
    proposer = world.keys.get("gpt-4o")
    assert proposer is not None
    assessment = assess(snippet, proposer=proposer, live=live, keys=world.keys,
                        known_tools=KNOWN_TOOLS, config=CONFIG, session_risk=0.0, now=NOW)
    return assessment, check_policy_tests(assessment, live, world.keys, [SUITE], now=NOW)


def test_an_otherwise_auto_approved_proposal_that_breaks_a_test_is_held(tmp_path: Path) -> None:
    snippet = f"rules:\n  - model: gpt-4o\n    allow_tools: [fs.read]\n    expires: {in_hours(2)}\n"
    before, after = judged(tmp_path, snippet)
    assert before.status == "approved"
    assert after.status == "pending"
    [verdict] = [v for v in after.verdicts if v.code == "breaks_policy_tests"]
    assert not verdict.ok and "ops.tests.yaml:2 'gpt never reads fs'" in verdict.message
    assert "auto_approved" not in {v.code for v in after.verdicts}


def test_a_proposal_that_keeps_every_test_green_is_unchanged(tmp_path: Path) -> None:
    snippet = f"rules:\n  - model: gpt-4o\n    allow_tools: [search.query]\n    expires: {in_hours(2)}\n"
    before, after = judged(tmp_path, snippet)
    assert after == before and after.status == "approved"


def test_rejected_proposals_and_empty_suites_are_left_alone(tmp_path: Path) -> None:
    before, after = judged(tmp_path, "models: {}\n")
    assert before.status == "rejected" and after == before
