"""Benchmark the per-event cost of the audit log: building a decision event and writing it.

A script, not a test: ``python bench/bench_audit.py [--events N]``. The decision is a real one:
``evaluate`` of a ``bench.echo`` call against the 120-rule policy of bench_gateway.py, with the
tool's input schema. Per event it times (CPU time of this thread, best of several repeats,
so a busy machine moves the figures less):

- ``decision_event``: redaction of the arguments and request, the secret check of the decision;
- ``write_many``: the log's normalisation and secret check, the hash and the line (one
  encoding), and the ``write()`` (no fsync: that is the disk's, timed on its own below);
- ``fdatasync`` of one small append, the cost a group commit shares between its events;
- the group commit's flush both ways it can be issued (``--flush``): ``os.fdatasync`` on the
  event loop, and Linux AIO (proxy.audit.flush), each an append and its flush, interleaved:
  wall time per flush (median, p99) and this process's CPU per flush (user + system; the AIO
  flush's kernel work runs in a kernel worker and is not charged here).
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
    parser.add_argument("--flush", type=int, default=1000, metavar="N",
                        help="rounds of the flush comparison (loop fdatasync vs linux aio); 0 skips it")
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
    if args.flush:
        import uvloop

        uvloop.run(flushes(args.flush, len(line)))
    return 0


async def flushes(rounds: int, size: int) -> None:
    """Append ``size`` bytes and flush them, ``rounds`` times per way, the two ways interleaved."""
    from proxy.audit.flush import open_flusher

    line = b"x" * (size - 1) + b"\n"
    wall: dict[str, list[float]] = {"loop": [], "aio": []}
    cpu = dict.fromkeys(wall, 0.0)
    with tempfile.TemporaryDirectory(prefix="sg-bench-flush-") as tmp, open_flusher() as flusher:
        if flusher is None:
            print("linux aio unavailable here: no flush comparison")
            return
        fds = {way: os.open(Path(tmp) / way, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) for way in wall}
        for _ in range(rounds):
            for way, fd in fds.items():
                before, started = os.times(), time.perf_counter()
                os.write(fd, line)
                if way == "loop":
                    os.fdatasync(fd)
                else:
                    await flusher.flush(fd)
                wall[way].append(time.perf_counter() - started)
                after = os.times()
                cpu[way] += after.user - before.user + after.system - before.system
        for fd in fds.values():
            os.close(fd)
    print(f"group-commit flush of one {size}-byte append, {rounds} rounds interleaved (µs):")
    for way, times in wall.items():
        times.sort()
        print(f"  {way:4s} wall p50 {times[len(times) // 2] * 1e6:7.1f}  p99 {times[int(len(times) * 0.99)] * 1e6:8.1f}"
              f"  process CPU {cpu[way] / rounds * 1e6:6.1f}")


if __name__ == "__main__":
    sys.exit(main())
