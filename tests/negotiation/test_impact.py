"""Impact replay (negotiation/impact.py): real audit logs written by the audit sink, replayed
under the live policy and the policy a proposal would make."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from negotiation.errors import MergeConflictError
from negotiation.impact import proposal_impact, recent_decisions, replay
from policy import CallRequest, evaluate, load_policy_text
from policy.audit.decision import decision_event
from policy.audit.log import JsonlAuditLog
from tests.negotiation.support import NOW, Clock, make_world

WIDER = "rules:\n  - id: gpt-fs\n    model: gpt-4o\n    allow_tools: [fs.*]\n"
TIGHTER = "rules:\n  - id: base-read\n    model: [claude]\n    allow_tools: [docs.read]\n"


def write_log(path: Path, calls: list[tuple[str, str, dict[str, Any]]], world: Any, clock: Clock | None = None,
              step: timedelta = timedelta(minutes=1)) -> None:
    """Audit one decision per call, each ``step`` apart, as the enforcer would."""
    moments = Clock(NOW - step * len(calls))
    with JsonlAuditLog(path, clock=moments) as log:
        for model, tool, arguments in calls:
            server, _, name = tool.partition(".")
            decision = evaluate(CallRequest(model, server, name, arguments), world.live.current.policy, world.keys)
            log.append(decision_event(
                decision=decision.to_dict(), session_id="s", server=server, tool=name,
                arguments=arguments, latency_ms=0.1, policy_version=1,
            ))
            moments.advance(seconds=step.total_seconds())


def test_a_widening_proposal_reports_newly_allowed_calls_by_model_and_tool(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    log = tmp_path / "audit.jsonl"
    write_log(log, [("gpt-4o", "fs.delete", {"path": "/a"})] * 3 + [("gpt-4o", "fs.read", {})]
              + [("gpt-4o", "docs.read", {})] * 2 + [("intern", "fs.read", {})], world)
    proposal = world.store.get(world.service.propose("gpt-4o", WIDER, "files").proposal_id)

    impact = proposal_impact(proposal, world.live.current.policy, world.keys, log, now=NOW)

    assert impact.considered == 7
    assert (impact.newly_allowed, impact.newly_denied, impact.uncertain) == (4, 0, 0)
    assert impact.allowed_by == (("gpt-4o", "fs.delete", 3), ("gpt-4o", "fs.read", 1))
    assert [c.tool for c in impact.examples_allowed] == ["fs.delete"] * 3 + ["fs.read"]
    assert {(c.before, c.after) for c in impact.examples_allowed} == {("default_deny", "allowed")}
    assert "would newly allow 4, newly deny 0" in impact.summary


def test_a_tightening_proposal_reports_newly_denied_calls(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    log = tmp_path / "audit.jsonl"
    write_log(log, [("gpt-4o", "docs.read", {}), ("claude", "docs.read", {})], world)
    live = world.live.current.policy
    merged = load_policy_text(TIGHTER, "p")
    from negotiation.merge import merge

    impact = replay(recent_decisions(log, now=NOW), live, merge(live, merged).policy, world.keys, now=NOW)
    assert (impact.newly_allowed, impact.newly_denied) == (0, 1)
    assert impact.denied_by == (("gpt-4o", "docs.read", 1),)


def test_redacted_arguments_make_a_value_dependent_change_uncertain(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    log = tmp_path / "audit.jsonl"
    write_log(log, [("gpt-4o", "fs.delete", {"token": "ghp_" + "a" * 36}), ("gpt-4o", "fs.delete", {"path": "x"})],
              world)
    conditional = "rules:\n  - id: gpt-fs\n    model: gpt-4o\n    allow_tools: [fs.delete]\n" \
                  "    when:\n      token: {max_length: 50}\n"
    proposal = world.store.get(world.service.propose("gpt-4o", conditional, "files").proposal_id)
    events = recent_decisions(log, now=NOW)
    assert events[0]["masked"] == ["arguments.token"]  # the log never saw the token

    impact = proposal_impact(proposal, world.live.current.policy, world.keys, log, now=NOW)
    assert impact.uncertain == 1 and impact.newly_allowed == 0
    [masked] = [c for c in impact.examples_allowed if c.uncertain]
    assert masked.masked == ("arguments.token",)
    assert any("redacted" in note for note in impact.notes)


def test_the_window_and_the_limit_bound_what_is_replayed(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    log = tmp_path / "audit.jsonl"
    write_log(log, [("gpt-4o", f"fs.t{i}", {}) for i in range(30)], world, step=timedelta(hours=12))
    newest = recent_decisions(log, now=NOW, limit=5)
    assert [e["tool"] for e in newest] == [f"t{i}" for i in range(25, 30)]
    week = recent_decisions(log, now=NOW, window=timedelta(days=7))
    assert len(week) == 14
    assert recent_decisions(log, now=NOW, limit=0) == []
    assert recent_decisions(tmp_path / "missing.jsonl", now=NOW) == []


def test_rotated_files_are_read_newest_first_and_torn_lines_skipped(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    log = tmp_path / "audit.jsonl"
    write_log(log, [("gpt-4o", "fs.old", {})] * 2, world)
    log.rename(tmp_path / "audit.jsonl.1")
    write_log(log, [("gpt-4o", "fs.new", {})], world)
    with log.open("ab") as handle:
        handle.write(b'{"type":"decision","ts":"9999')  # a torn tail
    tools = [e["tool"] for e in recent_decisions(log, now=NOW + timedelta(minutes=5))]
    assert sorted(tools) == ["new", "old", "old"]


def test_a_proposal_that_no_longer_merges_is_a_merge_conflict(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    proposal = world.store.get(world.service.propose("gpt-4o", WIDER, "files").proposal_id)
    from dataclasses import replace

    broken = replace(proposal, yaml="rules: [\n")
    with pytest.raises(MergeConflictError):
        proposal_impact(broken, world.live.current.policy, world.keys, tmp_path / "audit.jsonl", now=NOW)


def test_gateway_local_calls_and_foreign_lines_are_not_replayed(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    events: list[dict[str, Any]] = [
        {"type": "decision", "model": "gpt-4o", "server": "", "tool": "propose_policy", "arguments": {}},
        {"type": "decision", "model": 7, "server": "fs", "tool": "read"},
        {"type": "decision", "model": "gpt-4o", "server": "fs", "tool": "read", "arguments": "not a mapping"},
    ]
    live = world.live.current.policy
    impact = replay(events, live, load_policy_text(WIDER, "p"), world.keys, now=NOW)
    assert impact.considered == 1
