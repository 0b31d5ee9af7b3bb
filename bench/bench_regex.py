"""Policy regexes on RE2 versus a backtracking engine: prints figures, asserts nothing.

    python bench/bench_regex.py

For the ReDoS pattern ``(a+)+b`` against ``a``*n + ``c`` it times Python's ``re`` (which
doubles with every character) for small n, and the policy's compiled condition (RE2, linear)
for n up to 1,000,000, each as the best of three runs.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy import Condition
from policy.match import compile_condition


def best(fn: object, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    backtracking = re.compile("(a+)+b", re.DOTALL)
    check = compile_condition(Condition("text", "regex", "(a+)+b"))
    print("pattern (a+)+b, input 'a'*n + 'c'")
    print(f"{'n':>9} {'python re (ms)':>15} {'policy RE2 (ms)':>16}")
    for n in (16, 18, 20, 22, 24):
        text = "a" * n + "c"
        slow = best(lambda text=text: backtracking.fullmatch(text), runs=1) * 1000
        fast = best(lambda text=text: check({"text": text})) * 1000
        print(f"{n:>9} {slow:>15.2f} {fast:>16.4f}")
    for n in (1_000, 100_000, 1_000_000):
        text = "a" * n + "c"
        fast = best(lambda text=text: check({"text": text})) * 1000
        print(f"{n:>9} {'(skipped)':>15} {fast:>16.4f}")


if __name__ == "__main__":
    main()
