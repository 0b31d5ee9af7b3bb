"""Benchmark the per-event cost of the audit log: building a decision event and writing it.

A script, not a test: ``python bench/bench_audit.py [--events N]``. The decision is a real one:
``evaluate`` of a ``bench.echo`` call against the 120-rule policy of bench_gateway.py, with the
tool's input schema. Per event it times (CPU time of this thread, best of several repeats,
so a busy machine moves the figures less):

- ``decision_event``: redaction of the arguments and request, the secret check of the decision;
- ``write_many``: the log's normalisation and secret check, the hash and the line (one
  encoding), and the ``write()`` (no fsync: that is the disk's, timed on its own below);
- ``fdatasync`` of one small append, the cost a group commit shares between its events.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import MODEL, MODEL_KEYS_YAML, policy_yaml

from policy import CallRequest, SessionRisk, evaluate, load_model_keys_text, load_policy_text
from policy.audit.decision import decision_event
from policy.audit.log import JsonlAuditLog

SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def best_us(fn: Callable[[], Any], number: int, repeat: int = 7, timer: Callable[[], float] = time.thread_time
            ) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=timer)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="events per timed repeat")
    args = parser.parse_args()
    policy, keys = load_policy_text(policy_yaml()), load_model_keys_text(MODEL_KEYS_YAML)
    request = CallRequest(model=MODEL, server="bench", tool="echo", arguments={"text": "hello"}, input_schema=SCHEMA,
                          kind="tool")
    decision = evaluate(request, policy, keys, session=SessionRisk()).to_dict()
    counter = iter(range(10**9))

    def build() -> dict[str, Any]:
        return decision_event(decision=decision, session_id="s1", server="bench", tool="echo",
                              arguments={"text": f"hello {next(counter)}"}, latency_ms=0.05, policy_version=1,
                              request={"input_schema": SCHEMA})

    built = build()
    with tempfile.TemporaryDirectory(prefix="sg-bench-audit-") as tmp:
        log = JsonlAuditLog(Path(tmp) / "audit.jsonl", fsync=False)
        build_us = best_us(build, args.events)
        write = getattr(log, "write_many", log.append_many)  # (before write_many, append_many without fsync)
        write_us = best_us(lambda: write([built]), args.events)
        log.close()
        synced = JsonlAuditLog(Path(tmp) / "synced.jsonl", fsync=True)
        sync_us = best_us(lambda: synced.append(built), max(20, args.events // 20), timer=time.perf_counter)
        synced.close()
        line = (Path(tmp) / "audit.jsonl").read_text().splitlines()[0]
    print(f"audit event cost per decision ({len(line)} bytes on disk), CPU µs, best of 7 x {args.events}:")
    print(f"  decision_event          {build_us:8.1f}")
    print(f"  write_many (no fsync)   {write_us:8.1f}")
    print(f"  total per event         {build_us + write_us:8.1f}")
    print(f"append with fdatasync (wall µs, one event per sync): {sync_us:8.1f}  (pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
