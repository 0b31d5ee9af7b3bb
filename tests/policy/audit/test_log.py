"""policy.audit.log: append-only, chained, rotated, recovered after crashes, one writer."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from policy.audit.event import GENESIS_HASH, AuditError, canonical_event, event, event_hash
from policy.audit.log import AuditSink, Head, JsonlAuditLog, head_path, log_files, read_head
from policy.audit.verify import verify_log
from tests.policy.audit.test_checkpoint import Hmac


def ticking_clock() -> Callable[[], datetime]:
    start = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    counter = itertools.count()
    return lambda: start + timedelta(microseconds=next(counter))


def open_log(path: Path, **options: Any) -> JsonlAuditLog:
    return JsonlAuditLog(path, fsync=options.pop("fsync", False), clock=ticking_clock(), **options)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(path)]


def started(n: int) -> dict[str, Any]:
    return event("gateway.started", n=n)


def test_jsonl_audit_log_is_an_audit_sink(tmp_path: Path) -> None:
    with open_log(tmp_path / "audit.jsonl") as log:
        sink: AuditSink = log
        assert sink.append(started(0))["seq"] == 1


def test_appends_form_a_hash_chain_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        written = [log.append(started(n)) for n in range(4)]
    on_disk = events(path)
    assert on_disk == written
    assert [e["seq"] for e in on_disk] == [1, 2, 3, 4]
    assert on_disk[0]["prev_hash"] == GENESIS_HASH
    for previous, current in itertools.pairwise(on_disk):
        assert current["prev_hash"] == previous["hash"]
    for record in on_disk:
        assert record["hash"] == event_hash(record)
    assert [e["ts"] for e in on_disk[:2]] == ["2025-01-31T12:00:00.000000Z", "2025-01-31T12:00:00.000001Z"]


def test_each_line_is_the_canonical_form_of_its_event(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        log.append(event("gateway.started", text="naïve \ud800", nested={"b": 1, "a": [float("nan")]}))
    (line,) = lines(path)
    assert line == canonical_event(json.loads(line)).encode("ascii")
    assert json.loads(line)["nested"] == {"a": ["nan"], "b": 1}


def test_the_sink_fills_in_schema_and_event_id_of_a_plain_dict(tmp_path: Path) -> None:
    with open_log(tmp_path / "audit.jsonl") as log:
        written = log.append({"type": "result.flagged", "decision_id": "d", "findings": []})
    assert written["schema"] == "securegateway.audit/1"
    assert written["event_id"]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"type": "nope"}, "unknown_event_type"),
        ({"type": "gateway.started", "hash": "sha256:x"}, "reserved_field"),
        ({"type": "gateway.started", "seq": 9}, "reserved_field"),
        ({"type": "gateway.started", "schema": "other/1"}, "reserved_field"),
        ({"type": "gateway.started", "when": object()}, "unserializable"),
    ],
)
def test_append_refuses_malformed_events_and_writes_nothing(tmp_path: Path, bad: dict[str, Any], code: str) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        with pytest.raises(AuditError) as error:
            log.append(bad)
        assert error.value.code == code
    assert path.read_bytes() == b""


def test_the_head_sidecar_names_the_last_event_after_each_append(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        assert read_head(path) == Head(0, GENESIS_HASH)
        for n in range(3):
            written = log.append(started(n))
            assert read_head(path) == Head(written["seq"], written["hash"]) == log.head
    assert len(head_path(path).read_bytes()) == 512


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        last = log.append(started(0))
    with open_log(path) as log:
        assert log.head == Head(1, last["hash"])
        following = log.append(started(1))
    assert (following["seq"], following["prev_hash"]) == (2, last["hash"])
    assert verify_log(path).ok


def test_a_second_writer_on_the_same_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path):
        with pytest.raises(AuditError) as error:
            open_log(path)
        assert error.value.code == "locked"
    with open_log(path) as log:  # released on close
        log.append(started(0))


def test_append_after_close_is_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path / "audit.jsonl")
    log.close()
    log.close()
    with pytest.raises(AuditError) as error:
        log.append(started(0))
    assert error.value.code == "closed"


def test_rotation_renames_by_size_and_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path, max_bytes=1000) as log:
        written = [log.append(event("gateway.started", pad="x" * 200)) for _ in range(12)]
    files = log_files(path)
    assert [file.name for file in files[:3]] == ["audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    assert files[-1] == path
    assert all(file.stat().st_size <= 1000 for file in files)
    chained = [record for file in files for record in events(file)]
    assert chained == written
    first_of_second = events(files[1])[0]
    assert first_of_second["prev_hash"] == events(files[0])[-1]["hash"]
    report = verify_log(path)
    assert report.ok, report.message
    assert report.events == 12
    assert report.files == tuple(str(file) for file in files)


def test_an_event_larger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path, max_bytes=500) as log:
        log.append(started(0))
        log.append(event("gateway.started", pad="x" * 2000))
        log.append(started(2))
    assert [len(events(file)) for file in log_files(path)] == [1, 1, 1]
    assert verify_log(path).ok


def test_reopening_after_a_crash_between_rotation_and_first_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path, max_bytes=600) as log:
        for n in range(4):
            log.append(event("gateway.started", n=n, pad="x" * 200))
        last = log.head
    # The rename happened, the fresh file was never created.
    path.rename(tmp_path / f"audit.jsonl.{len(log_files(path))}")
    with open_log(path, max_bytes=600) as log:
        assert log.head == last
        log.append(started(5))
    assert verify_log(path).ok


def test_a_torn_last_line_is_left_in_place_and_recorded_on_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        log.append(started(0))
        good = log.append(started(1))
    fragment = canonical_event(started(2)).encode("ascii")[:40]
    with path.open("ab") as handle:  # a crash part-way through the third write
        handle.write(fragment)
    assert verify_log(path).torn_tail

    with open_log(path) as log:
        log.append(started(3))
    raw = lines(path)
    assert raw[2] == fragment  # untouched, now ended by a newline
    recovered = json.loads(raw[3])
    assert recovered["type"] == "audit.recovered"
    assert recovered["reason"] == "torn_tail"
    assert recovered["torn_bytes"] == len(fragment)
    assert recovered["torn_sha256"] == "sha256:" + hashlib.sha256(fragment).hexdigest()
    assert recovered["prev_hash"] == good["hash"]
    assert json.loads(raw[4])["prev_hash"] == recovered["hash"]
    report = verify_log(path)
    assert report.ok, report.message
    assert not report.torn_tail
    assert report.events == 4
    assert report.warnings == ("recovered torn write at audit.jsonl:3",)


def test_a_complete_event_missing_only_its_newline_is_kept_as_the_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        log.append(started(0))
        last = log.append(started(1))
    path.write_bytes(path.read_bytes()[:-1])
    with open_log(path) as log:
        assert log.head == Head(2, last["hash"])
        log.append(started(2))
    assert [e["type"] for e in events(path)] == ["gateway.started"] * 3
    assert verify_log(path).ok


def test_a_sidecar_ahead_of_the_log_is_recorded_as_truncation_on_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        for n in range(3):
            log.append(started(n))
    path.write_bytes(b"".join(line + b"\n" for line in lines(path)[:2]))  # the last event is lost
    with open_log(path) as log:
        log.append(started(3))
    recovered = events(path)[2]
    assert recovered["type"] == "audit.recovered"
    assert recovered["reason"] == "truncated"
    assert recovered["sidecar"]["seq"] == 3
    report = verify_log(path)
    assert not report.ok
    assert report.first_bad is not None
    assert (report.first_bad.problem, report.first_bad.line, report.first_bad.seq) == ("truncated", 3, 3)


def test_a_missing_sidecar_is_recorded_as_a_warning_on_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        log.append(started(0))
    head_path(path).unlink()
    with open_log(path) as log:
        log.append(started(1))
    assert events(path)[1]["reason"] == "head_missing"
    report = verify_log(path)
    assert report.ok, report.message
    assert report.warnings == ("head sidecar was missing on reopening, at audit.jsonl:2",)


class FailingWrites:
    """A file stand-in that writes ``keep`` bytes of the next write, then fails like a full disk."""

    def __init__(self, real: Any, keep: int) -> None:
        self.real, self.keep = real, keep

    def write(self, data: memoryview) -> int:
        self.real.write(bytes(data[: self.keep]))
        raise OSError(28, "No space left on device")

    def fileno(self) -> int:
        return int(self.real.fileno())

    def close(self) -> None:
        self.real.close()


def test_a_failed_write_raises_and_the_next_append_recovers_the_fragment(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        log.append(started(0))
        log._file = FailingWrites(log._file, keep=25)  # type: ignore[assignment]
        with pytest.raises(AuditError) as error:
            log.append(started(1))
        assert error.value.code == "write_failed"
        assert log.head.seq == 1
        after = log.append(started(2))
    raw = lines(path)
    assert len(raw[1]) == 25  # the fragment of the failed write, ended by a newline
    recovered = json.loads(raw[2])
    assert (recovered["type"], recovered["torn_bytes"]) == ("audit.recovered", 25)
    assert json.loads(raw[3]) == after
    assert after["seq"] == 3
    report = verify_log(path)
    assert report.ok, report.message


def test_concurrent_appends_from_threads_form_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    per_thread, threads = 50, 8
    with open_log(path, max_bytes=20_000) as log:
        barrier = threading.Barrier(threads)

        def worker(index: int) -> None:
            barrier.wait()
            for n in range(per_thread):
                log.append(event("gateway.started", thread=index, n=n))

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    report = verify_log(path)
    assert report.ok, report.message
    assert report.events == per_thread * threads
    assert len(report.files) > 1
    recorded = [(e["thread"], e["n"]) for file in log_files(path) for e in events(file)]
    assert sorted(recorded) == [(i, n) for i in range(threads) for n in range(per_thread)]


def test_fsync_mode_writes_the_same_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path, fsync=True, max_bytes=400) as log:
        for n in range(5):
            log.append(event("gateway.started", n=n, pad="y" * 100))
    assert verify_log(path).ok


def test_append_many_writes_consecutive_links_with_one_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path, fsync=True) as log:
        first = log.append(started(0))
        syncs: list[int] = []
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
        written = log.append_many([started(n) for n in range(1, 6)])
    assert len(syncs) == 1
    assert [e["seq"] for e in written] == [2, 3, 4, 5, 6]
    assert written[0]["prev_hash"] == first["hash"]
    assert events(path) == [first, *written]
    assert read_head(path) == Head(6, written[-1]["hash"])
    assert verify_log(path).ok


def test_append_many_rotates_inside_a_batch_and_keeps_files_under_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path, max_bytes=1000, fsync=True) as log:
        written = log.append_many([event("gateway.started", pad="x" * 200) for _ in range(12)])
    files = log_files(path)
    assert len(files) > 3
    assert all(file.stat().st_size <= 1000 for file in files)
    assert [record for file in files for record in events(file)] == written
    assert verify_log(path).ok


def test_append_many_with_one_malformed_event_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        with pytest.raises(AuditError) as error:
            log.append_many([started(0), {"type": "nope"}])
        assert error.value.code == "unknown_event_type"
        assert log.append_many([]) == []
    assert path.read_bytes() == b""


# ---- one encoding: the bytes written are the bytes hashed; logs from before still verify -------------

def test_a_decision_event_is_written_as_the_bytes_its_hash_covers(tmp_path: Path) -> None:
    from policy.audit.decision import decision_event
    from policy.audit.event import PlainEvent

    built = decision_event(
        decision={"decision_id": "d-1", "allowed": True, "reason": "ok", "risk_score": 0.5, "reasoning": ["fine"]},
        session_id="s", server="search", tool="web", arguments={"q": "weather", "n": 2.5, "big": 2**70},
        latency_ms=0.125, policy_version=1, request={"input_schema": {"type": "object"}},
    )
    assert isinstance(built, PlainEvent)
    path = tmp_path / "audit.jsonl"
    with open_log(path) as log:
        written = log.append(built)
        log.append(decision_event(decision={"decision_id": "d-2", "reasoning": ["café ✓"]}, session_id="s",
                                  server="search", tool="web", arguments={"q": "\ud800 lone", "tiny": 1e-07},
                                  latency_ms=1e-05, policy_version=1))
    first, second = lines(path)
    parsed = json.loads(first)
    assert parsed == written and parsed["hash"] == event_hash(parsed)
    member = f',"hash":"{parsed["hash"]}"'.encode()
    assert parsed["hash"] == "sha256:" + hashlib.sha256(first.replace(member, b"")).hexdigest()
    for line in (first, second):
        assert line == canonical_event(json.loads(line)).encode("ascii")
    assert b'"tiny":1e-07' in second and b"\\u00e9" in second and b"\\ud800" in second
    assert verify_log(path).ok


SAMPLE = Path(__file__).parent / "data" / "pre_orjson"


class _SampleKey:
    """The HMAC key the checked-in sample's checkpoints were signed with (data/pre_orjson/README.md)."""

    algorithm = "hmac-sha256"
    _secret = b"the pre-orjson sample's checkpoint secret"
    key_id = hashlib.sha256(_secret).hexdigest()[:16]

    def sign(self, data: bytes) -> str:
        import base64
        import hmac

        return base64.b64encode(hmac.digest(self._secret, data, "sha256")).decode("ascii")

    def verify(self, data: bytes, signature: str, key_id: str, algorithm: str) -> bool:
        import hmac

        return (algorithm, key_id) == (self.algorithm, self.key_id) and hmac.compare_digest(signature, self.sign(data))


def test_a_log_written_before_the_one_encoding_change_still_verifies_and_continues(tmp_path: Path) -> None:
    key = _SampleKey()
    report = verify_log(SAMPLE / "audit.jsonl", verifier=key)
    assert report.ok, report.message
    assert len(report.files) == 5 and report.checkpointed == report.head.seq
    raw = b"".join(file.read_bytes() for file in log_files(SAMPLE / "audit.jsonl"))
    assert b"1e-05" in raw and b"1e+22" in raw and b"\\u00ef" in raw  # the spellings the verifier recomputes
    copy = tmp_path / "audit.jsonl"
    for file in [*log_files(SAMPLE / "audit.jsonl"), head_path(SAMPLE / "audit.jsonl")]:
        (tmp_path / file.name).write_bytes(file.read_bytes())
    with JsonlAuditLog(copy, fsync=False, signer=key, verifier=key, checkpoint_every=4) as log:
        log.append(event("gateway.started", pi=3.25, text="naïve"))
    continued = verify_log(copy, verifier=key)
    assert continued.ok, continued.message
    assert continued.events > report.events and not any(e["type"] == "audit.recovered" for e in events(copy))


PRE_SLOT = Path(__file__).parent / "data" / "pre_slot"


def _pre_slot_generator() -> Any:
    """data/pre_slot/generate.py, the script that wrote that sample (README.md there)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pre_slot_generate", PRE_SLOT / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_log_written_before_the_one_slot_encoding_verifies_by_api_and_cli() -> None:
    import subprocess
    import sys

    key = _pre_slot_generator().SampleKey()
    report = verify_log(PRE_SLOT / "audit.jsonl", verifier=key)
    assert report.ok, report.message
    assert len(report.files) == 3 and report.events == 13 and report.checkpointed == report.head.seq
    argv = [sys.executable, "-m", "proxy.cli", "audit", "verify", "--json", str(PRE_SLOT / "audit.jsonl")]
    cli = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["ok"] is True


def test_the_writer_writes_byte_for_byte_what_the_two_part_encoding_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same events, clock and event ids as the sample's (written by main before the one-slot encoding,
    the sidecar's record formatting, the cached-second timestamps, the batched ids): the same files."""
    import importlib

    ids = iter([json.loads(line)["event_id"] for file in log_files(PRE_SLOT / "audit.jsonl") for line in lines(file)])
    for name in ("policy.audit.event", "policy.audit.decision"):  # every module that mints event ids
        monkeypatch.setattr(importlib.import_module(name), "new_event_id", lambda: next(ids))
    monkeypatch.setattr(importlib.import_module("policy.audit.log"), "now_ts",
                        lambda: pytest.fail("the sample's clock is its own"))
    _pre_slot_generator().write(tmp_path)
    assert next(ids, None) is None  # as many events as the sample's
    for name in ("audit.jsonl.1", "audit.jsonl.2", "audit.jsonl", "audit.jsonl.head"):
        assert (tmp_path / name).read_bytes() == (PRE_SLOT / name).read_bytes(), name
    sample = b"".join(file.read_bytes() for file in log_files(PRE_SLOT / "audit.jsonl"))
    assert b"\\u00e9" in sample and b"\\u007f" in sample and b"\\ud800" in sample and b"1e+22" in sample
    assert b"AKIAIOSFODNN7EXAMPLE" not in sample and b"hunter22" not in sample


@pytest.mark.parametrize("sample", ["pre_orjson", "pre_slot"])
def test_every_line_of_a_sample_is_the_one_slot_encoding_of_what_it_parses_to(sample: str) -> None:
    from policy.audit.event import HASH_SLOT, seal, sealed_line

    for file in log_files(Path(__file__).parent / "data" / sample / "audit.jsonl"):
        for line in lines(file):
            parsed = json.loads(line)
            body = {key: value for key, value in parsed.items() if key != "hash"}
            assert sealed_line(body) == (parsed["hash"], line + b"\n")
            sealed = seal({**body, "hash": HASH_SLOT})
            if sealed is not None:  # orjson's bytes kept: they are the line's, the hash in the slot
                hashed, out, slot = sealed
                assert hashed == parsed["hash"] and out[:slot] + f'"{hashed}"'.encode() + out[slot + 1:] == line


def _strings_of(value: Any) -> list[str]:
    from policy.redact import collect_strings

    return collect_strings(value, [])


def test_decision_events_are_written_as_the_reference_encoding_with_no_secret_left(tmp_path_factory: Any) -> None:
    """Generated decisions (the engine's memo shape: every field but the id shared), arguments with secrets,
    nesting, unicode, odd numbers, and input schemas: every line is the reference canonical form of what it
    parses to, a PlainEvent is written exactly as built, the chain verifies, and no secret is on disk."""
    from dataclasses import fields

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from policy.audit.decision import decision_event
    from policy.audit.event import PlainEvent, format_ts
    from policy.decision import Decision, new_decision_id
    from policy.redact import contains_secret
    from tests.policy.audit.test_event import _ALL_SECRETS, _arg_keys, _arg_values, _decisions

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(decision=_decisions, calls=st.lists(st.dictionaries(_arg_keys, _arg_values, max_size=4), min_size=1,
                                               max_size=4),
           schema_keys=st.lists(_arg_keys, max_size=3), batched=st.booleans())
    def check(decision: Decision, calls: list[dict[str, Any]], schema_keys: list[str], batched: bool) -> None:
        path = tmp_path_factory.mktemp("log") / "audit.jsonl"
        schema = {"type": "object", "properties": {key: {"type": "string"} for key in schema_keys}}
        built = []
        for arguments in calls:
            same = Decision(new_decision_id(), *[getattr(decision, field.name) for field in fields(Decision)[1:]])
            built.append(decision_event(decision=same.to_dict(), source=same, session_id="s-1", server="search",
                                        tool="web", arguments=arguments, latency_ms=0.125, policy_version=2,
                                        request={"input_schema": schema}, max_string_bytes=30))
        with open_log(path) as log:
            if batched:
                log.write_many(built)
            else:
                for item in built:
                    log.write_many([item])
            log.sync()
        expected_clock = ticking_clock()
        previous = GENESIS_HASH
        raw = path.read_bytes()
        for line, item in zip(lines(path), built, strict=True):
            parsed = json.loads(line)
            assert line == canonical_event(parsed).encode("ascii") and parsed["hash"] == event_hash(parsed)
            assert parsed["prev_hash"] == previous and parsed["ts"] == format_ts(expected_clock())
            previous = parsed["hash"]
            if isinstance(item, PlainEvent):  # written exactly as built: the reference line of it
                body = {**item, "seq": parsed["seq"], "ts": parsed["ts"], "prev_hash": parsed["prev_hash"]}
                assert line == canonical_event({**body, "hash": event_hash(body)}).encode("ascii")
            assert not any(contains_secret(text) for text in _strings_of(parsed))
        assert not any(secret.encode() in raw for secret in _ALL_SECRETS)
        assert verify_log(path).ok

    check()


def test_a_log_the_current_writer_writes_verifies_by_the_cli(tmp_path: Path) -> None:
    """The sample's events (decisions through the builder's fast path, secrets, non-ASCII, rotation,
    checkpoints) written by this code with the wall clock and fresh ids: `securegateway audit verify` passes."""
    import subprocess
    import sys

    from policy.audit.log import _utcnow

    generator = _pre_slot_generator()
    generator.ticking = lambda: _utcnow  # the default clock: the writer's cached-second ts (now_ts)
    generator.write(tmp_path)
    argv = [sys.executable, "-m", "proxy.cli", "audit", "verify", "--json", str(tmp_path / "audit.jsonl")]
    cli = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    report = json.loads(cli.stdout)
    assert report["ok"] is True and report["events"] == 13 and len(report["files"]) == 3
    assert verify_log(tmp_path / "audit.jsonl", verifier=generator.SampleKey()).ok


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_flush_uses_the_log_file_itself_and_opens_no_descriptor_per_batch(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open_log(path, fsync=True) as log:
        log.append(started(0))
        before = _open_fds()
        for n in range(3):
            log.write_many([started(n)])
            pending = log.begin_sync()
            assert pending is not None and pending.fd >= 0
            assert os.fstat(pending.fd).st_ino == path.stat().st_ino
            assert _open_fds() == before
            os.fdatasync(pending.fd)
            log.finish_sync(pending)
            assert read_head(path) == pending.target
        assert _open_fds() == before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_rotation_while_a_flush_is_in_flight_keeps_its_file_open_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = open_log(path, fsync=True, max_bytes=600)
    log.append(started(0))
    baseline = _open_fds()
    log.write_many([started(1)])
    pending = log.begin_sync()
    assert pending is not None
    flushed_inode = os.fstat(pending.fd).st_ino
    log.append_many([started(n) for n in range(2, 8)])  # rotates, and syncs by itself meanwhile
    assert len(log_files(path)) > 2
    # The descriptor of the flush in flight still names the file it began on, now rotated away.
    assert os.fstat(pending.fd).st_ino == flushed_inode != path.stat().st_ino
    os.fdatasync(pending.fd)
    log.finish_sync(pending)
    assert read_head(path) == log.head  # a late finish never moves the sidecar back
    assert _open_fds() == baseline  # ... and the rotated file is closed once no flush uses it
    log.close()
    report = verify_log(path)
    assert report.ok, report
    assert report.events == 8


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_closing_while_a_flush_is_in_flight_closes_the_file_once_it_finishes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    before = _open_fds()
    log = open_log(path, fsync=True)
    log.write_many([started(0), started(1)])
    pending = log.begin_sync()
    assert pending is not None
    log.close()  # syncs and names the head itself
    assert read_head(path) == pending.target
    os.fdatasync(pending.fd)  # still the log's file, not a closed or reused descriptor
    assert os.fstat(pending.fd).st_ino == path.stat().st_ino
    log.finish_sync(pending)
    assert _open_fds() == before
    assert verify_log(path).ok


def test_the_sidecar_never_names_a_head_that_no_finished_flush_covers(tmp_path: Path) -> None:
    """Whatever interleaves (later writes, rotations, failed flushes), the sidecar names at most
    the target of the last flush that finished without error."""
    path = tmp_path / "audit.jsonl"
    with open_log(path, fsync=True, max_bytes=900) as log:
        log.append(started(0))
        durable = log.head
        for n in range(12):
            if n % 4 == 0 and n:  # a flush failed: the next write recovers, syncing all it finds first
                durable = log.head
            log.write_many([started(n)])
            pending = log.begin_sync()
            assert pending is not None
            log.write_many([started(100 + n)])  # written after the flush began: not covered by it
            assert read_head(path) == durable
            if n % 4 == 3:
                with pytest.raises(AuditError) as failed:
                    log.finish_sync(pending, OSError(5, "Input/output error"))
                assert failed.value.code == "write_failed"
            else:
                os.fdatasync(pending.fd)
                log.finish_sync(pending)
                durable = pending.target
            assert read_head(path) == durable != log.head
    assert verify_log(path).ok


def test_one_event_at_a_time_is_written_byte_for_byte_as_a_batch_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's path (one event, no copy kept) and the general one write the same files:
    across rotations, with checkpoints due, for an event the reference encoder must write."""
    import importlib

    from policy.audit import decision as decision_module
    from policy.audit.decision import decision_event

    event_module = importlib.import_module("policy.audit.event")  # the package exports a function `event`

    def written(name: str, one_at_a_time: bool) -> list[bytes]:
        ids = (f"e{n}" for n in itertools.count())
        monkeypatch.setattr(event_module, "new_event_id", lambda: next(ids))
        monkeypatch.setattr(decision_module, "new_event_id", lambda: next(ids))
        path = tmp_path / name / "audit.jsonl"
        path.parent.mkdir()
        log = open_log(path, max_bytes=2500, signer=Hmac(b"pinned-secret-0123456789"), checkpoint_every=3)
        items: list[Any] = [
            decision_event(decision={"decision_id": f"d{n}", "allowed": n % 2 == 0, "reason": "r"}, session_id="s",
                           server="up", tool="echo", arguments={"text": f"hello {n}", "big": 1e16 if n == 4 else n},
                           latency_ms=0.25, policy_version=1)
            for n in range(10)
        ] + [{"type": "gateway.started", "n": n} for n in range(5)]
        if one_at_a_time:
            for item in items:
                log.write_many([item], keep=False)
                log.sync()
        else:
            for item in items:
                assert log.write_many([item], keep=True)
                log.sync()
        log.close()
        assert verify_log(path).ok
        return [file.read_bytes() for file in log_files(path)]

    taken: list[bool] = []
    real_write_one = JsonlAuditLog._write_one

    def counted(self: JsonlAuditLog, body: dict[str, Any], tame: bool) -> bool:
        taken.append(real_write_one(self, body, tame))
        return taken[-1]

    monkeypatch.setattr(JsonlAuditLog, "_write_one", counted)
    fast = written("fast", True)
    assert True in taken and False in taken  # the short path, and the general one when a checkpoint is due
    general = written("general", False)
    assert len(fast) > 2  # rotated
    assert fast == general
