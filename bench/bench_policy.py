"""Benchmark ``policy.evaluate`` (and ``scan_value``) on realistic policies and arguments.

A script, not a test: ``python bench/bench_policy.py [--calls N]``. For 10, 100 and 1,000
rules it prints p50 / p99 latency in microseconds and calls per second for ``evaluate`` with
the full rule trace, schema validation, pattern scanning and a session. Arguments vary from
call to call (no two consecutive calls share strings), so nothing is measured from a warm
per-value cache. Target on the 2-core CI machine: p50 <= 30 us, p99 <= 100 us at 1,000 rules.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy import (
    CallRequest,
    Condition,
    KeyRing,
    ModelIdentity,
    Policy,
    PolicySettings,
    Rule,
    SessionRisk,
    evaluate,
    scan_value,
)
from policy.keys import hash_key

MODELS = [f"model-{index}" for index in range(20)]
SERVERS = [f"srv{index}" for index in range(60)]
VERBS = ["search", "read_file", "list", "get", "create_event", "update", "delete", "send", "query", "fetch"]
SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "maxLength": 2000},
        "path": {"type": "string"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        "mode": {"type": "string", "enum": ["fast", "full"]},
    },
    "required": ["query"],
    "additionalProperties": False,
}
WORDS = ["quarterly", "revenue", "report", "customer", "invoice", "meeting", "notes", "design", "review", "budget"]


def build_policy(size: int, rng: random.Random) -> Policy:
    """``size`` rules in the shapes operators write: mostly per-server globs and exact tools."""
    now = datetime.now(UTC)
    rules: list[Rule] = []
    for index in range(size):
        server = rng.choice(SERVERS)
        shape = rng.random()
        models = (rng.choice(MODELS),) if rng.random() < 0.95 else ("*",)
        when: tuple[Condition, ...] = ()
        if shape < 0.4:
            tools: tuple[str, ...] = (f"{server}.*",)
        elif shape < 0.8:
            tools = (f"{server}.{rng.choice(VERBS)}", f"{server}.{rng.choice(VERBS)}")
        else:
            tools = (f"{server}.read_*",)
            when = (Condition("path", "under", f"/srv/{server}"), Condition("query", "max_length", 500))
        deny = rng.random() < 0.2
        expires = now + timedelta(days=30) if rng.random() < 0.1 else None
        rules.append(
            Rule.build(
                id=f"rule-{index}",
                models=models,
                allow_tools=() if deny else tools,
                deny_tools=tools if deny else (),
                when=when if not deny else (Condition("path", "regex", r".*\.(env|pem|key)"),),
                expires=expires,
                max_risk=0.9 if not deny and rng.random() < 0.2 else None,
            )
        )
    return Policy.from_rules(rules, PolicySettings(deny_risk_above=0.95))


def build_keys() -> KeyRing:
    return KeyRing(
        (ModelIdentity(model, ("srv*",), can_propose=False), hash_key(f"key-{model}")) for model in MODELS
    )


def build_requests(count: int, rng: random.Random) -> list[CallRequest]:
    requests = []
    for index in range(count):
        server = rng.choice(SERVERS)
        arguments: dict[str, Any] = {
            "query": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + f" #{index}",
            "path": f"/srv/{server}/docs/{rng.choice(WORDS)}-{index}.md",
            "limit": rng.randint(1, 100),
        }
        if rng.random() < 0.3:
            arguments["mode"] = rng.choice(["fast", "full"])
        requests.append(CallRequest(rng.choice(MODELS), server, rng.choice(VERBS), arguments, SCHEMA))
    return requests


def measure(policy: Policy, keys: KeyRing, requests: list[CallRequest], calls: int) -> tuple[float, float, float]:
    session = SessionRisk()
    now = datetime.now(UTC)
    clock = time.perf_counter_ns
    for request in requests[:2000]:  # warm: compile schema validator, fill the candidate cache
        evaluate(request, policy, keys, now=now, session=session)
    samples = []
    gc.collect()
    started = clock()
    for index in range(calls):
        request = requests[index % len(requests)]
        before = clock()
        evaluate(request, policy, keys, now=now, session=session)
        samples.append(clock() - before)
    elapsed = (clock() - started) / 1e9
    samples.sort()
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[int(len(samples) * 0.99)] / 1000
    return p50, p99, calls / elapsed


def scan_comparison() -> None:
    """scan_value on ~1 MB of tool output against plain copies of the same value."""
    rng = random.Random(7)
    items = [
        {"type": "text", "text": " ".join(rng.choice(WORDS) for _ in range(150))} for _ in range(1000)
    ]
    value = {"content": items}
    size = len(json.dumps(value))

    def best(function: Any) -> float:
        return min(timed(function) for _ in range(5))

    def timed(function: Any) -> float:
        started = time.perf_counter()
        function()
        return time.perf_counter() - started

    scan = best(lambda: scan_value(value, "result"))
    deep = best(lambda: copy.deepcopy(value))
    round_trip = best(lambda: json.loads(json.dumps(value)))
    print(
        f"scan_value on {size / 1e6:.2f} MB of text: {scan * 1e3:.1f} ms "
        f"(copy.deepcopy {deep * 1e3:.1f} ms -> {scan / deep:.2f}x; "
        f"json round trip {round_trip * 1e3:.1f} ms -> {scan / round_trip:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(42)
    keys = build_keys()
    requests = build_requests(5000, rng)
    print(f"evaluate: {args.calls} calls each, full trace, schema + pattern scan + session")
    print(f"{'rules':>6} {'p50 us':>8} {'p99 us':>8} {'calls/s':>9} {'avg trace':>9}")
    for size in (10, 100, 1000):
        policy = build_policy(size, rng)
        p50, p99, rate = measure(policy, keys, requests, args.calls)
        sample = [evaluate(request, policy, keys) for request in requests[:500]]
        trace = statistics.mean(len(decision.rule_trace) for decision in sample)
        print(f"{size:>6} {p50:>8.1f} {p99:>8.1f} {rate:>9.0f} {trace:>9.1f}")
    scan_comparison()


if __name__ == "__main__":
    main()
