"""What tracing costs per tools/call: the interceptor plus the audit observer, with spans
exported to an in-memory exporter through a batch processor (as console/otlp do).

Interleaved rounds of the same trivial chain with and without the hooks; prints the added
microseconds per call (p50 over rounds). With ``traces = "off"`` none of this runs: the
chain is the plain one. Run: ``python bench/bench_telemetry.py [--calls N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace
from typing import Any

import anyio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.telemetry import Tracing

EVENT = {"type": "decision", "decision_id": "d" * 32, "model": "gpt-4o", "server": "search", "tool": "echo",
         "policy_version": 3, "decision": {"allowed": True, "reason_code": "allowed"}}


async def main(calls: int, rounds: int) -> None:
    tracing = Tracing("bench")
    exporter = InMemorySpanExporter()
    tracing.add_exporter(exporter)

    async def audit(item: Any) -> None:
        return None

    observed = tracing.observe_audit(audit)
    call = SimpleNamespace(server="search", tool="echo", qualified="search.echo", params={},
                           session=SimpleNamespace(identity=SimpleNamespace(model_id="gpt-4o")))

    async def terminal(c: Any) -> dict[str, Any]:
        await audit(EVENT)
        return {}

    async def traced_terminal(c: Any) -> dict[str, Any]:
        await observed(EVENT)
        return {}

    async def plain() -> None:
        for _ in range(calls):
            await terminal(call)

    async def traced() -> None:
        for _ in range(calls):
            await tracing.interceptor(call, traced_terminal)  # type: ignore[arg-type]

    base, with_hooks = [], []
    for _ in range(rounds):
        for target, out in ((plain, base), (traced, with_hooks)):
            started = time.perf_counter()
            await target()
            out.append((time.perf_counter() - started) / calls * 1e6)
        exporter.clear()
    tracing.shutdown()
    b, h = statistics.median(base), statistics.median(with_hooks)
    print(f"calls/round {calls}, rounds {rounds}")
    print(f"without tracing: {b:.2f} us/call   with tracing: {h:.2f} us/call   added: {h - b:.2f} us/call")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    anyio.run(main, args.calls, args.rounds)
