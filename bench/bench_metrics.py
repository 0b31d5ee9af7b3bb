"""What the metrics hooks cost per tools/call: the interceptor and the audit observer.

Interleaved rounds of the same trivial chain with and without the hooks; prints the added
microseconds per call (p50 over rounds). Run: ``python bench/bench_metrics.py [--calls N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace
from typing import Any

import anyio

from proxy.metrics import GatewayMetrics

EVENT = {"type": "decision", "model": "gpt-4o", "server": "search", "latency_ms": 0.03,
         "decision": {"allowed": True, "reason_code": "allowed"}}


async def main(calls: int, rounds: int) -> None:
    metrics = GatewayMetrics(models=["gpt-4o", "claude"], upstreams=["search", "calendar"])

    async def audit(item: Any) -> None:
        return None

    observed = metrics.observe_audit(audit)
    call = SimpleNamespace(server="search")

    async def terminal(c: Any) -> dict[str, Any]:
        await audit(EVENT)
        return {}

    async def hooked_terminal(c: Any) -> dict[str, Any]:
        await observed(EVENT)
        return {}

    async def plain() -> None:
        for _ in range(calls):
            await terminal(call)

    async def hooked() -> None:
        for _ in range(calls):
            await metrics.interceptor(call, hooked_terminal)  # type: ignore[arg-type]

    base, with_hooks = [], []
    for _ in range(rounds):
        for target, out in ((plain, base), (hooked, with_hooks)):
            started = time.perf_counter()
            await target()
            out.append((time.perf_counter() - started) / calls * 1e6)
    b, h = statistics.median(base), statistics.median(with_hooks)
    print(f"calls/round {calls}, rounds {rounds}")
    print(f"without hooks: {b:.2f} us/call   with hooks: {h:.2f} us/call   added: {h - b:.2f} us/call")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    anyio.run(main, args.calls, args.rounds)
