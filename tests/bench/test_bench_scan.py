"""bench/bench_scan.py: it times both per-call scans of this checkout and prints every row."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_one_quick_round_prints_a_figure_for_every_payload() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_scan.py", "--quick", "--no-baseline", "--rounds", "1", "--batches", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("  ") and "payload" not in line]
    assert len(rows) == 9  # eight payloads and the tools/call total
    for row in rows:
        assert re.search(r"\d+\.\d\d$", row), row  # a figure, no baseline column
    assert "a tools/call of the benchmarks (both)" in rows[-1]
