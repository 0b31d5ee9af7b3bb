"""policy.audit.verify: a clean log verifies; every edit, deletion, reorder or cut is named."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.audit.decision import decision_event
from policy.audit.event import event, event_hash
from policy.audit.log import Head, JsonlAuditLog, head_path, log_files
from policy.audit.verify import PROBLEMS, find_events, verify_log


def ticking_clock() -> Callable[[], datetime]:
    start = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    counter = itertools.count()
    return lambda: start + timedelta(microseconds=next(counter))


def decision(n: int) -> dict[str, Any]:
    return decision_event(
        decision={"decision_id": f"dec-{n}", "effect": "allow" if n % 2 else "deny", "reasoning": ["r"]},
        session_id="s-1",
        server="fs",
        tool="read_file",
        arguments={"path": f"/tmp/{n}", "token": "t0k3n"},
        latency_ms=0.5,
        policy_version=1,
    )


def write_log(path: Path, count: int = 6, **options: Any) -> JsonlAuditLog:
    log = JsonlAuditLog(path, fsync=False, clock=ticking_clock(), **options)
    for n in range(count):
        log.append(decision(n))
    log.close()
    return log


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def bad(path: Path) -> tuple[str, int, int | None]:
    report = verify_log(path)
    assert not report.ok
    assert report.first_bad is not None
    assert report.message.startswith(report.first_bad.problem)
    return report.first_bad.problem, report.first_bad.line, report.first_bad.seq


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path)
    return path


def test_a_clean_log_verifies(log_path: Path) -> None:
    report = verify_log(log_path)
    assert report.ok
    assert report.events == 6
    assert report.first_bad is None
    assert not report.torn_tail
    assert report.files == (str(log_path),)
    assert report.message == "ok: 6 events in 1 file(s), head seq 6"
    last = json.loads(read_lines(log_path)[-1])
    assert report.head == Head(6, last["hash"])


def test_an_empty_or_absent_log_verifies(tmp_path: Path) -> None:
    assert verify_log(tmp_path / "never.jsonl").ok
    JsonlAuditLog(tmp_path / "empty.jsonl", fsync=False).close()
    assert verify_log(tmp_path / "empty.jsonl").events == 0


def test_editing_a_field_is_a_hash_mismatch_naming_line_and_seq(log_path: Path) -> None:
    lines = read_lines(log_path)
    edited = lines[2].replace(b'"effect":"deny"', b'"effect":"allow"')
    assert edited != lines[2]
    lines[2] = edited
    write_lines(log_path, lines)
    assert bad(log_path) == ("hash_mismatch", 3, 3)
    assert verify_log(log_path).first_bad.event_id == json.loads(lines[2])["event_id"]  # type: ignore[union-attr]


def test_reformatting_a_line_without_changing_its_content_is_detected(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines[1] = json.dumps(json.loads(lines[1]), indent=None).encode()  # ", " and ": " separators
    write_lines(log_path, lines)
    assert bad(log_path) == ("hash_mismatch", 2, 2)
    assert "canonical" in verify_log(log_path).message


def test_a_duplicated_key_that_parses_to_the_original_is_detected(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines[2] = lines[2][:-1] + b',"tool":"rm_rf","tool":"read_file"}'
    write_lines(log_path, lines)
    assert bad(log_path) == ("hash_mismatch", 3, 3)


def test_an_edit_with_a_recomputed_hash_breaks_the_chain_at_the_next_event(log_path: Path) -> None:
    lines = read_lines(log_path)
    forged = json.loads(lines[2])
    forged["decision"]["effect"] = "allow"
    forged["hash"] = event_hash(forged)
    lines[2] = json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()
    write_lines(log_path, lines)
    assert bad(log_path) == ("chain_break", 4, 4)


def test_deleting_a_middle_line_is_a_seq_gap(log_path: Path) -> None:
    lines = read_lines(log_path)
    del lines[2]
    write_lines(log_path, lines)
    assert bad(log_path) == ("seq_gap", 3, 4)
    assert "seq 3 to 3 missing" in verify_log(log_path).message


def test_deleting_the_first_line_is_a_seq_gap(log_path: Path) -> None:
    write_lines(log_path, read_lines(log_path)[1:])
    assert bad(log_path) == ("seq_gap", 1, 2)


def test_deleting_the_last_line_is_caught_by_the_head_sidecar(log_path: Path) -> None:
    write_lines(log_path, read_lines(log_path)[:-1])
    assert bad(log_path) == ("truncated", 6, 6)
    assert "names seq 6 but the log ends at seq 5" in verify_log(log_path).message


def test_deleting_the_last_line_and_the_sidecar_is_head_missing(log_path: Path) -> None:
    write_lines(log_path, read_lines(log_path)[:-1])
    head_path(log_path).unlink()
    assert bad(log_path)[0] == "head_missing"
    assert verify_log(log_path, require_head=False).ok


def test_swapping_two_lines_is_named_reordered(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(log_path, lines)
    assert bad(log_path) == ("reordered", 3, 4)


def test_a_repeated_line_is_named_reordered(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines.insert(3, lines[1])
    write_lines(log_path, lines)
    assert bad(log_path) == ("reordered", 4, 2)


def test_a_garbage_line_in_the_middle_is_invalid_json(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines.insert(2, b'{"schema":"securegateway.au')
    write_lines(log_path, lines)
    assert bad(log_path) == ("invalid_json", 3, None)


def test_a_line_of_another_schema_is_a_schema_problem(log_path: Path) -> None:
    lines = read_lines(log_path)
    record = json.loads(lines[0])
    record["schema"] = "securegateway.audit/0"
    lines[0] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    write_lines(log_path, lines)
    assert bad(log_path) == ("schema", 1, 1)


def test_a_sidecar_naming_another_hash_is_head_mismatch(log_path: Path) -> None:
    head_path(log_path).write_text(
        json.dumps({"schema": "securegateway.audit-head/1", "seq": 4, "hash": "sha256:" + "1" * 64})
    )
    assert bad(log_path) == ("head_mismatch", 4, 4)


def test_an_unreadable_sidecar_is_head_mismatch(log_path: Path) -> None:
    head_path(log_path).write_text("garbage")
    assert bad(log_path)[0] == "head_mismatch"


def test_a_sidecar_one_event_behind_is_accepted(log_path: Path) -> None:
    previous = json.loads(read_lines(log_path)[-2])
    head_path(log_path).write_text(
        json.dumps({"schema": "securegateway.audit-head/1", "seq": 5, "hash": previous["hash"]})
    )
    assert verify_log(log_path).ok


def test_an_anchor_held_outside_the_log_is_checked(log_path: Path) -> None:
    head = verify_log(log_path).head
    assert verify_log(log_path, anchor=(head.seq, head.hash)).ok
    assert verify_log(log_path, anchor=(3, head.hash)).first_bad.problem == "anchor_mismatch"  # type: ignore[union-attr]
    assert verify_log(log_path, anchor=(9, head.hash)).first_bad.problem == "truncated"  # type: ignore[union-attr]


def test_an_anchor_catches_a_rebuilt_tail_that_fools_the_sidecar(log_path: Path) -> None:
    anchor = verify_log(log_path).head
    lines = read_lines(log_path)
    write_lines(log_path, lines[:-1])
    previous = json.loads(lines[-2])
    head_path(log_path).write_text(
        json.dumps({"schema": "securegateway.audit-head/1", "seq": 5, "hash": previous["hash"]})
    )
    assert verify_log(log_path).ok  # consistent on its own ...
    assert not verify_log(log_path, anchor=(anchor.seq, anchor.hash)).ok  # ... but not with the anchor


def test_a_torn_last_line_is_a_warning_not_a_failure(log_path: Path) -> None:
    with log_path.open("ab") as handle:
        handle.write(b'{"arguments":{"path":"/tm')
    report = verify_log(log_path)
    assert report.ok, report.message
    assert report.torn_tail
    assert report.events == 6
    assert report.warnings == ("torn last line at audit.jsonl:7 (crash mid-write)",)


def test_a_torn_line_not_followed_by_its_recovery_event_is_invalid(log_path: Path) -> None:
    with log_path.open("ab") as handle:
        handle.write(b'{"arguments":{"path":"/tm')
    with JsonlAuditLog(log_path, fsync=False) as log:
        log.append(decision(7))
    lines = read_lines(log_path)
    assert json.loads(lines[7])["type"] == "audit.recovered"
    lines[6] = b'{"arguments":{"path":"/XX'  # same length, other bytes
    write_lines(log_path, lines)
    assert bad(log_path) == ("invalid_json", 7, None)


def test_rotated_files_are_walked_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, count=20, max_bytes=2000)
    files = log_files(path)
    assert len(files) > 3
    report = verify_log(path)
    assert report.ok, report.message
    assert report.events == 20
    assert report.files == tuple(str(file) for file in files)


def test_a_deleted_rotated_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, count=20, max_bytes=2000)
    middle = log_files(path)[1]
    first_after = json.loads(read_lines(log_files(path)[2])[0])
    middle.unlink()
    problem, line, seq = bad(path)
    assert (problem, line, seq) == ("seq_gap", 1, first_after["seq"])
    assert verify_log(path).first_bad.file == str(log_files(path)[1])  # type: ignore[union-attr]


def test_swapped_rotated_files_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, count=20, max_bytes=2000)
    first, second = log_files(path)[:2]
    shutil.move(first, tmp_path / "tmp")
    shutil.move(second, first)
    shutil.move(tmp_path / "tmp", second)
    assert bad(path)[0] == "reordered"


def test_find_events_by_decision_id_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlAuditLog(path, fsync=False, max_bytes=2000) as log:
        for n in range(12):
            log.append(decision(n))
        log.append({"type": "result.flagged", "decision_id": "dec-3", "findings": []})
    assert len(log_files(path)) > 2
    found = find_events(path, decision_id="dec-3")
    assert [e["type"] for e in found] == ["decision", "result.flagged"]
    assert found[0]["arguments"] == {"path": "/tmp/3", "token": "[REDACTED]"}
    assert [e["decision_id"] for e in find_events(path, event_type="decision")] == [f"dec-{n}" for n in range(12)]
    assert find_events(path, decision_id="dec-3", event_type="result.flagged") == found[1:]
    assert find_events(path, decision_id="dec-99") == []


def test_find_events_skips_torn_and_garbage_lines(log_path: Path) -> None:
    with log_path.open("ab") as handle:
        handle.write(b'garbage "decision_id":"dec-1"\n{"decision_id":"dec-1"')
    assert [e["seq"] for e in find_events(log_path, decision_id="dec-1")] == [2]


def test_problem_codes_are_the_documented_set() -> None:
    assert set(PROBLEMS) == {
        "invalid_json", "schema", "hash_mismatch", "seq_gap", "reordered", "chain_break",
        "truncated", "head_missing", "head_mismatch", "anchor_mismatch",
        "head_unsigned", "head_forged", "checkpoint_invalid",
    }  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "audit.jsonl"
    write_log(path, count=4)
    return path


@settings(max_examples=150, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0x20, max_value=0x7E))
def test_any_single_byte_change_is_detected(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, position: int, byte: int
) -> None:
    data = bytearray(pristine.read_bytes())
    offsets = [i for i, value in enumerate(data) if value != ord("\n")]
    index = offsets[position % len(offsets)]
    if data[index] == byte:
        return
    data[index] = byte
    copy = tmp_path_factory.mktemp("edit") / "audit.jsonl"
    copy.write_bytes(bytes(data))
    shutil.copy(head_path(pristine), head_path(copy))
    assert not verify_log(copy).ok


def test_events_from_a_fresh_event_builder_verify_after_a_reopen_cycle(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for round_ in range(3):
        with JsonlAuditLog(path, fsync=False) as log:
            log.append(event("gateway.started", round=round_))
            log.append(decision(round_))
            log.append(event("gateway.stopped", round=round_))
    report = verify_log(path)
    assert report.ok, report.message
    assert report.events == 9


def test_dressing_the_last_event_up_as_a_torn_line_is_caught_by_the_sidecar(log_path: Path) -> None:
    lines = read_lines(log_path)
    forged = lines[-1].replace(b'"effect":"allow"', b'"effect":"deny"')[:-10]
    log_path.write_bytes(b"".join(line + b"\n" for line in lines[:-1]) + forged)
    assert bad(log_path)[0] == "truncated"
    with JsonlAuditLog(log_path, fsync=False) as log:  # reopening records it, it does not launder it
        log.append(decision(9))
    assert bad(log_path) == ("truncated", 7, 6)


def test_a_sidecar_far_behind_the_log_verifies_with_a_warning(log_path: Path) -> None:
    second = json.loads(read_lines(log_path)[1])
    head_path(log_path).write_text(
        json.dumps({"schema": "securegateway.audit-head/1", "seq": 2, "hash": second["hash"]})
    )
    report = verify_log(log_path)
    assert report.ok
    assert report.warnings == ("head sidecar is 4 events behind the log",)


def test_an_empty_line_in_the_middle_is_invalid_json(log_path: Path) -> None:
    lines = read_lines(log_path)
    lines.insert(1, b"")
    write_lines(log_path, lines)
    assert bad(log_path) == ("invalid_json", 2, None)


def test_a_report_has_a_plain_json_form(log_path: Path) -> None:
    write_lines(log_path, read_lines(log_path)[:-1])
    data = json.loads(json.dumps(verify_log(log_path).to_dict()))
    assert data["ok"] is False
    assert data["first_bad"] == {"file": str(log_path), "line": 6, "seq": 6, "event_id": None, "problem": "truncated"}
    assert data["head"]["seq"] == 5
    assert data["files"] == [str(log_path)]
