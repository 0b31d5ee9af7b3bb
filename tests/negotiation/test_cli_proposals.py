from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from negotiation.cli_proposals import register
from negotiation.proposal import ProposalStatus
from tests.negotiation.support import World, make_world

WIDE = "rules:\n  - id: gpt-writes\n    model: gpt-4o\n    allow_tools: [fs.delete]\n"


def run(world: World, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="securegateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args, world.service)
    return code


def test_list_shows_pending_proposals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(tmp_path)
    proposal_id = world.service.propose("gpt-4o", WIDE, "cleanup").proposal_id

    assert run(world, "proposals", "list", "--status", "pending") == 0
    table = capsys.readouterr().out
    assert run(world, "proposals", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)

    assert proposal_id in table and "pending" in table and "outside_envelope" in table
    assert [p["id"] for p in listed] == [proposal_id]


def test_a_cli_approval_in_another_process_is_picked_up_by_the_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = make_world(tmp_path)
    proposal_id = gateway.service.propose("gpt-4o", WIDE, "cleanup").proposal_id
    cli = make_world(tmp_path)  # the reviewer's CLI opens the same files

    assert run(cli, "proposals", "approve", proposal_id, "--reviewer", "alice", "--comment", "ok") == 0

    assert "merged as policy version 2" in capsys.readouterr().out
    assert gateway.store.get(proposal_id).status is ProposalStatus.MERGED
    assert gateway.repo.load().version == 2  # what the gateway's file watcher reloads


def test_show_prints_snippet_verdicts_and_current_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(tmp_path)
    proposal_id = world.service.propose("gpt-4o", WIDE, "cleanup").proposal_id

    assert run(world, "proposals", "show", proposal_id) == 0

    shown = json.loads(capsys.readouterr().out)
    assert shown["yaml"] == WIDE and shown["verdicts"]
    assert shown["current_diff"][0]["tool"] == "fs.delete"


def test_reject_and_errors_exit_nonzero_with_a_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(tmp_path)
    proposal_id = world.service.propose("gpt-4o", WIDE, "cleanup").proposal_id

    assert run(world, "proposals", "reject", proposal_id, "--reviewer", "bob") == 0
    assert run(world, "proposals", "approve", proposal_id, "--reviewer", "alice") == 1
    assert "invalid_state" in capsys.readouterr().err
    assert run(world, "proposals", "show", "prop_000000000000") == 1
    assert "not_found" in capsys.readouterr().err


def test_approve_requires_a_reviewer(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with pytest.raises(SystemExit):
        run(world, "proposals", "approve", "prop_000000000000")


def test_reviewer_views_escape_bidi_and_invisible_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = make_world(tmp_path)
    proposal_id = world.service.propose("gpt-4o", WIDE, "harmless \u202eevil\u202c\u200b").proposal_id

    assert run(world, "proposals", "show", proposal_id) == 0
    shown = json.loads(capsys.readouterr().out)
    assert run(world, "proposals", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)

    assert shown["justification"] == "harmless <U+202E>evil<U+202C><U+200B>"
    assert listed[0]["justification"] == shown["justification"]
    assert any(v["code"] == "suspicious_text" and v["ok"] for v in shown["verdicts"])
