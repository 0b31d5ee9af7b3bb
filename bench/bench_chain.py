"""The tools/call interceptor chain alone, in-process: CPU per call of enforcement, audit and screening.

``python bench/bench_chain.py [--calls N] [--upstream-ms MS] [--no-fsync] [--stages]``

Builds the same deployment as ``bench_gateway.py`` (120-rule policy, hash-chained audit log,
``result_scan = "flag"``, durability before-response), composes the gateway's real chain
(metrics, durable replies, quarantine, taint, suggestion vetting, the enforcer) exactly as
``securegateway run`` does, and drives sequential ``bench.echo`` calls through it, the upstream
replaced by a stub that answers after ``--upstream-ms`` (the group commit's fsync overlaps it,
as it overlaps a real upstream's work). No message path, no processes: what it prints is the
chain's own cost, steadier than a whole-gateway run on a busy machine. ``--no-fsync`` leaves the
disk out (user CPU only); ``--stages`` adds the wall time per call of the main stages (timed by
wrappers, so the total grows a little). ``PYTHONPATH=../other-checkout python bench/bench_chain.py``
measures another checkout's chain with this script (alternate the two runs on a busy machine).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio

sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH first: it picks the checkout measured

from bench.bench_gateway import MODEL_KEY, UPSTREAM, write_site

SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


class StubLink:
    """The upstream, answering ``echo`` after a fixed delay."""

    name = UPSTREAM
    ready = True

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def request(self, method: str, params: dict[str, Any], **_: Any) -> dict[str, Any]:
        await anyio.sleep(self.delay)
        return {"content": [{"type": "text", "text": params["arguments"]["text"]}], "isError": False}


def _stage_timers() -> collections.Counter[str]:
    """Wrap the main synchronous stages with wall-clock accumulators (``--stages``)."""
    import policy.audit.log as log
    import proxy.enforce as enforce
    import proxy.screen.taint_store as taint_store
    import proxy.tools.guard as guard
    from policy.audit import decision as audit_decision
    from proxy.audit import writer

    spent: collections.Counter[str] = collections.Counter()

    def wrap(owner: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter_ns() - started

        setattr(owner, name, timed)

    wrap(enforce, "evaluate", "policy evaluate")
    wrap(audit_decision, "decision_event", "decision event built")
    writer.AuditWriter.decision_event = staticmethod(audit_decision.decision_event)
    wrap(log.JsonlAuditLog, "write_many", "audit write (chained, one write())")
    wrap(log.JsonlAuditLog, "sync", "audit sync (fdatasync + head)")
    wrap(enforce, "scan_payload", "result scan")
    wrap(guard.ToolGuard, "suspended", "tool guard check")
    wrap(taint_store.SqliteTaintStore, "get", "taint lookup")
    return spent


async def run(calls: int, delay: float, fsync: bool, stages: bool) -> None:
    from proxy import bootstrap
    from proxy.config import load_config
    from proxy.intercept import ToolCall

    spent = _stage_timers() if stages else None
    site = write_site(Path(tempfile.mkdtemp()) / "site", listen="stdio", upstream="stdio")
    if not fsync:
        site.write_text(site.read_text().replace("[audit]\n", "[audit]\nfsync = false\n"))
    app = bootstrap.build(load_config(site), model_key=MODEL_KEY)
    runtime, chain, link = app.runtime, app.gateway.tool_chain, StubLink(delay)
    session = SimpleNamespace(
        id="bench", identity=runtime.keys.authenticate(MODEL_KEY), risk=None, channel=None,
        catalog=SimpleNamespace(tool_definition=lambda name: {"name": "echo", "inputSchema": SCHEMA}),
    )
    app._on_session(session)  # type: ignore[arg-type]  # risk and guard, as for a connected client

    def one(i: int) -> ToolCall:
        arguments = {"text": f"hello {i}"}
        return ToolCall(session=session, name=f"{UPSTREAM}.echo", server=UPSTREAM, tool="echo",  # type: ignore[arg-type]
                        arguments=arguments, params={"name": f"{UPSTREAM}.echo", "arguments": arguments},
                        link=link, input_schema=SCHEMA)  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        await tg.start(runtime.audit.run)
        for i in range(300):  # warm-up: caches, the first signature, the schema's validator
            result = await chain(one(i))
        if result.get("isError"):
            raise SystemExit(f"the warm-up call was refused: {result}")
        if spent is not None:
            spent.clear()
        user, cpu, wall = os.times().user, time.process_time(), time.perf_counter()
        for i in range(calls):
            await chain(one(i))
        user, cpu, wall = os.times().user - user, time.process_time() - cpu, time.perf_counter() - wall
        tg.cancel_scope.cancel()
    runtime.audit.close()
    print(f"chain, {calls} sequential calls, upstream stub {delay * 1000:g} ms, fsync {'on' if fsync else 'off'}:")
    print(f"  CPU per call {cpu / calls * 1e6:7.1f} us (user {user / calls * 1e6:.1f} us), "
          f"wall per call {wall / calls * 1e6:.1f} us, group commits {runtime.audit.syncs}")
    for label, total in sorted((spent or {}).items(), key=lambda item: -item[1]):
        print(f"  {label:38s} {total / calls / 1000:7.1f} us wall per call")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--upstream-ms", type=float, default=0.3)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--stages", action="store_true")
    args = parser.parse_args()
    from proxy import logs

    logs.configure()
    anyio.run(run, args.calls, args.upstream_ms / 1000, not args.no_fsync, args.stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
