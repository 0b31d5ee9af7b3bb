"""The gateway (or the relay alone) with timestamps along every tools/call: ``bench_path.py``'s runner.

``python -m bench.path_probe OUT CONFIG [--relay]`` serves ``CONFIG`` as ``securegateway run
--config CONFIG`` does (with ``--relay``: as ``bench/relay_only.py CONFIG`` does), with probes
on the message path: each records ``(probe, perf_counter_ns, thread_time_ns)`` when a line
arrives from the client or the upstream, when a line is forwarded, when a reply is written,
and on entry to and exit from each step of the tools/call chain. At exit the records go to
``OUT`` as JSON. A probe costs about a microsecond, so the figures run a little high.
Instrumentation for a benchmark, not a deployment: the probes patch the classes they time.
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import inspect
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Record = tuple[str, int, int]
RECORDS: list[Record] = []

# (module, class, method, probe name): the chain's steps, outermost first. Each must exist: a
# probe that no longer finds its step fails the run instead of timing nothing.
CHAIN_STEPS = (
    ("proxy.relay", "Relay", "call_tool", "relay.call_tool"),
    ("proxy.metrics", "GatewayMetrics", "interceptor", "metrics"),
    ("proxy.audit.hold", "DurableReplies", "__call__", "durable replies"),
    ("proxy.tools.quarantine", "Quarantine", "__call__", "quarantine"),
    ("proxy.screen.taint", "Taint", "__call__", "taint"),
    ("proxy.suggestions", "SuggestionVetting", "__call__", "suggestion vetting"),
    ("proxy.enforce", "Enforcer", "__call__", "enforcer"),
    ("proxy.enforce", "Enforcer", "_evaluate", "policy evaluation"),
    ("proxy.enforce", "Enforcer", "_record", "decision recorded"),
    ("proxy.enforce", "Enforcer", "screen", "result scan"),
    ("proxy.upstream.link", "UpstreamLink", "request", "upstream request"),
)
RELAY_STEPS = CHAIN_STEPS[:1] + CHAIN_STEPS[-1:]

CLIENT_LINE = "client line"  # a line from the client arrived (its read callback)
UPSTREAM_LINE = "upstream line"  # a line from the upstream arrived
FORWARD = "forward"  # a line written to the upstream's stdin
REPLY = "reply"  # a line written to the client


def _mark(name: str) -> None:
    RECORDS.append((name, time.perf_counter_ns(), time.thread_time_ns()))


def _timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            _mark(name)
            try:
                return await method(*args, **kwargs)
            finally:
                _mark(name + " end")

        return timed_async

    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        _mark(name)
        try:
            return method(*args, **kwargs)
        finally:
            _mark(name + " end")

    return timed


def install(steps: tuple[tuple[str, str, str, str], ...]) -> None:
    """Patch the message path's edges and ``steps`` with probes."""
    from proxy.wire import framing, upstream

    upstream_feeds: set[int] = set()
    feed_data = framing.LineFeed.feed_data

    def probed_feed(self: Any, data: bytes) -> None:
        _mark(UPSTREAM_LINE if id(self) in upstream_feeds else CLIENT_LINE)
        feed_data(self, data)

    take_over = upstream._take_over_stdout

    def probed_take_over(process: Any, limit: int) -> Any:
        feed = take_over(process, limit)
        if feed is None:
            raise RuntimeError("path_probe: the upstream's stdout is not read through a LineFeed any more")
        upstream_feeds.add(id(feed))
        return feed

    pipe_send = upstream.StdioPipe.send

    async def probed_pipe_send(self: Any, data: bytes) -> None:
        _mark(FORWARD)
        await pipe_send(self, data)

    writer_send = framing.LineWriter.send

    async def probed_writer_send(self: Any, data: bytes) -> None:
        _mark(REPLY)
        await writer_send(self, data)

    framing.LineFeed.feed_data = probed_feed  # type: ignore[method-assign]
    upstream._take_over_stdout = probed_take_over
    upstream.StdioPipe.send = probed_pipe_send  # type: ignore[method-assign]
    framing.LineWriter.send = probed_writer_send  # type: ignore[method-assign]
    for module_name, class_name, method_name, name in steps:
        cls = getattr(importlib.import_module(module_name), class_name)
        setattr(cls, method_name, _timed(name, getattr(cls, method_name)))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    relay = "--relay" in args
    args = [a for a in args if a != "--relay"]
    if len(args) != 2:
        print("usage: python -m bench.path_probe OUT CONFIG [--relay]", file=sys.stderr)
        return 2
    out, config = Path(args[0]), args[1]

    def dump() -> None:
        out.write_text(json.dumps(RECORDS))

    atexit.register(dump)
    gc.disable()  # as proxy.cli's entry point: the run turns it back on once built
    install(RELAY_STEPS if relay else CHAIN_STEPS)
    if relay:
        from bench.relay_only import main as relay_main

        return relay_main([config])
    from proxy.cli import console

    sys.argv = ["securegateway", "run", "--config", config]
    console()
    return 0


if __name__ == "__main__":
    sys.exit(main())
