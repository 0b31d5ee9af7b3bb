"""The per-call CPU of recording a decision, stage by stage, as the gateway records one.

``python bench/bench_record.py [--calls N] [--repeat R] [--baseline DIR [--rounds K]]``

What ``Enforcer._record`` and the audit writer do for every tools/call once the policy has
decided (the decision itself is excluded: it is made before the clock starts, by the engine's
memo as in the gateway, so each decision has a fresh id and otherwise shared fields):

- ``to_dict``: ``Decision.to_dict()``;
- ``decision_event``: the audit event built from it (arguments fresh per call, the tool's input
  schema in the request, ``source`` given as the enforcer gives it);
- ``write_many``: chained, encoded, hashed and written (one ``write()``, ``keep=False`` as the
  writer calls it);
- ``sync``: the group commit's bookkeeping with fsync off (begin and finish: the head sidecar's
  ``pwrite``, its signature once per interval), one per call as under sequential load;
- ``decision_view``: the view the model sees (``full``).

Each stage is timed over ``--calls`` calls in its own loop, and all of them together per call
(``total``, the figure that counts: caches behave as in the gateway); CPU time of this thread,
best of ``--repeat``. ``--baseline DIR`` runs this script on the checkout at ``DIR`` and on this
one in alternating subprocesses (``--rounds`` each) and prints both sides' medians with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
STAGES = ("to_dict", "decision_event", "write_many", "sync", "decision_view", "total")


def measure(calls: int, repeat: int) -> dict[str, float]:
    """Best CPU microseconds per call of each stage (this process's checkout, from ``sys.path``)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_gateway import MODEL, MODEL_KEYS_YAML, policy_yaml

    from negotiation.signing import HmacSigner
    from policy import CallRequest, SessionRisk, evaluate, load_model_keys_text, load_policy_text
    from policy.audit.decision import decision_event
    from policy.audit.log import JsonlAuditLog
    from proxy.disclosure import decision_view

    policy, keys = load_policy_text(policy_yaml()), load_model_keys_text(MODEL_KEYS_YAML)

    def decided(i: int) -> Any:
        request = CallRequest(model=MODEL, server="bench", tool="echo", arguments={"text": f"hello {i}"},
                              input_schema=SCHEMA, kind="tool")
        return evaluate(request, policy, keys, session=SessionRisk())

    best = dict.fromkeys(STAGES, float("inf"))
    with tempfile.TemporaryDirectory(prefix="sg-bench-record-") as tmp:
        log = JsonlAuditLog(Path(tmp) / "audit.jsonl", fsync=False, signer=HmacSigner(b"bench-record-secret-0123"))
        serial = iter(range(10**9))

        def event_of(decision: Any, data: dict[str, Any]) -> dict[str, Any]:
            return decision_event(decision=data, session_id="bench", server="bench", tool="echo",
                                  arguments={"text": f"hello {next(serial)}"}, latency_ms=0.042, policy_version=1,
                                  request={"input_schema": SCHEMA}, source=decision)

        def timed(fn: Callable[[], object]) -> float:
            started = time.thread_time()
            fn()
            return (time.thread_time() - started) / calls * 1e6

        def one_round() -> dict[str, float]:
            decisions = [decided(i) for i in range(calls)]
            datas: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            figures = {
                "to_dict": timed(lambda: datas.extend(d.to_dict() for d in decisions)),
                "decision_event": timed(lambda: events.extend(map(event_of, decisions, datas))),
                "write_many": timed(lambda: [log.write_many([e], keep=False) for e in events]),
                "sync": 0.0,
            }
            for e in events:  # one sync per write, as under sequential load; only the syncs are timed
                log.write_many([e], keep=False)
                started = time.thread_time()
                log.sync()
                figures["sync"] += (time.thread_time() - started) / calls * 1e6
            figures["decision_view"] = timed(lambda: [decision_view(d, "full", policy=policy) for d in datas])
            fresh = [decided(i) for i in range(calls)]

            def whole() -> None:
                for decision in fresh:
                    data = decision.to_dict()
                    log.write_many([event_of(decision, data)], keep=False)
                    log.sync()
                    decision_view(data, "full", policy=policy)

            figures["total"] = timed(whole)
            return figures

        one_round()  # warms the caches up; not counted
        for _ in range(repeat):
            for stage, value in one_round().items():
                best[stage] = min(best[stage], value)
        log.close()
    return best


def compare(baseline: str, rounds: int, calls: int, repeat: int) -> None:
    sides = {"baseline": baseline, "this tree": str(ROOT)}
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, path in sides.items():
            env = {**os.environ, "PYTHONPATH": path}
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", "--calls", str(calls),
                                  "--repeat", str(repeat)], env=env, cwd=path, check=True, capture_output=True,
                                 text=True).stdout
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
    print(f"recording a decision, CPU us per call (best of {repeat} x {calls} per run; median of {rounds} runs "
          f"per side, alternated; baseline {baseline}):")
    print(f"  {'stage':16s} {'baseline':>9s} {'this tree':>10s} {'ratio':>7s}   runs (baseline | this tree)")
    for stage in STAGES:
        base = statistics.median(run[stage] for run in runs["baseline"])
        mine = statistics.median(run[stage] for run in runs["this tree"])
        spread = " ".join(f"{run[stage]:.1f}" for run in runs["baseline"]) + " | " + " ".join(
            f"{run[stage]:.1f}" for run in runs["this tree"])
        print(f"  {stage:16s} {base:9.1f} {mine:10.1f} {mine / base:7.2f}   {spread}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as one json line")
    parser.add_argument("--baseline", metavar="DIR", help="another checkout to measure in alternating runs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.baseline:
        compare(args.baseline, args.rounds, args.calls, args.repeat)
        return 0
    figures = measure(args.calls, args.repeat)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"recording a decision, CPU us per call (best of {args.repeat} x {args.calls}):")
    for stage in STAGES:
        print(f"  {stage:16s} {figures[stage]:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
