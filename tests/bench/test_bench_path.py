"""bench/bench_path.py and its runner bench/path_probe.py: the hop's CPU on each stretch of a tools/call.

The cut of the probe records into calls and stretches is checked on records made by hand; one
short real run checks that the probes still find every step they time (a probe that no longer
finds its step fails the run) and that the report names each stretch for both sides.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_path import calls_of, steps, stretches
from bench.path_probe import CHAIN_STEPS, CLIENT_LINE, FORWARD, REPLY, UPSTREAM_LINE, install

ROOT = Path(__file__).resolve().parents[2]


def _trip(start: int, cpu: int) -> list[tuple[str, int, int]]:
    """One call: client line, 10 us of CPU to the forward, a 500 us wait with 3 us of CPU, 4 us to the reply."""
    return [(CLIENT_LINE, start, cpu), ("policy evaluation", start + 2_000, cpu + 2_000),
            (FORWARD, start + 10_000, cpu + 10_000), (UPSTREAM_LINE, start + 510_000, cpu + 13_000),
            (REPLY, start + 514_000, cpu + 17_000)]


def test_the_records_are_cut_into_calls_and_stretches() -> None:
    records = [rec for n in range(4) for rec in _trip(n * 1_000_000, n * 100_000)]
    trips = calls_of(records)
    assert len(trips) == 3  # the last call has no next request to end its after-the-reply stretch
    figures = stretches(trips)
    assert figures["before the forward"] == (10.0, 10.0)
    assert figures["while the upstream works"] == (3.0, 500.0)
    assert figures["reply"] == (4.0, 4.0)
    assert figures["after the reply"][0] == pytest.approx(100.0 - 17.0)
    assert steps(trips)[:2] == [(f"{CLIENT_LINE} -> policy evaluation", 2.0), (f"policy evaluation -> {FORWARD}", 8.0)]


def test_a_call_that_never_went_upstream_is_not_a_round_trip() -> None:
    denied = [(CLIENT_LINE, 0, 0), (REPLY, 5_000, 5_000)]  # a denial: answered without a forward
    records = denied + _trip(1_000_000, 100_000) + _trip(2_000_000, 200_000)
    trips = calls_of(records)
    assert len(trips) == 1 and trips[0][0] == (CLIENT_LINE, 1_000_000, 100_000)


def test_steps_seen_on_few_calls_are_left_out() -> None:
    records = [rec for n in range(11) for rec in _trip(n * 1_000_000, n * 100_000)]
    records.insert(3, ("rare", 2_500, 2_500))  # on the first call only
    names = [step for step, _ in steps(calls_of(records))]
    assert not any("rare" in step for step in names)


def test_every_chain_step_the_probe_times_exists() -> None:
    import importlib

    for module, cls, method, _ in CHAIN_STEPS:
        assert callable(getattr(getattr(importlib.import_module(module), cls), method)), (module, cls, method)


def test_a_probe_whose_step_is_gone_fails_instead_of_timing_nothing() -> None:
    with pytest.raises(AttributeError):
        install((("proxy.enforce", "Enforcer", "no_such_step", "gone"),))


def test_a_short_real_run_reports_every_stretch_of_both_sides() -> None:
    done = subprocess.run([sys.executable, "bench/bench_path.py", "--calls", "20", "--warmup", "5", "--rounds", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.count("  before the forward ") == 2 and out.count("  while the upstream works ") == 2
    assert "gateway: 20 calls" in out and "relay alone: 20 calls" in out
    assert "policy evaluation -> policy evaluation end" in out  # the chain's steps, timed in the gateway
    gateway = out.split("relay alone:")[0]
    before = float(gateway.split("before the forward")[1].split("CPU")[1].split("us")[0])
    assert before > 0


@pytest.mark.parametrize("argv", [["--calls", "1"], ["--rounds", "0"], ["--warmup", "-1"]])
def test_bad_arguments_are_refused_with_usage(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "bench/bench_path.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "usage:" in done.stderr
