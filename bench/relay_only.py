"""The relay alone: a gateway composed with no policy, no audit, no scanning, no interceptors.

``python bench/relay_only.py CONFIG [--burn-us N [--burn-at WHEN]]`` serves ``CONFIG``'s listener and upstreams
through :class:`proxy.gateway.Gateway` exactly as ``securegateway run`` composes it, minus
everything :mod:`proxy.bootstrap` adds (the enforcer and its audit log, result scanning,
detectors, quarantine, taint, negotiation, metrics). ``bench_gateway.py`` runs it beside
the full gateway for the "relay alone (no policy)" mark: the cost of the message path
itself. Not a deployment: nothing is decided or recorded.

``--burn-us N`` adds one interceptor that spends ``N`` microseconds of this thread's CPU on
every ``tools/call`` before forwarding it, and does nothing else: the relay plus a known
amount of pure CPU (``bench_gateway.py --burn N``). Set to what the gateway spends above the
relay, it tells whether the gateway's latency above the relay is that CPU (the two sides
measure alike) or time spent waiting (the gateway is slower than the burn).

``--burn-at`` moves the same CPU: ``after-forward`` spends it in the loop turn right after the
call went upstream (while the upstream works), ``after-reply`` right after the call's reply
was written (while the client reads it and the upstream is idle). Beside the default
(``before-forward``, where every microsecond is on the caller's critical path) these tell what
moving work off the critical path buys on the machine measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from proxy import logs
from proxy.cli import event_loop_options
from proxy.config import load_config
from proxy.gateway import Gateway
from proxy.intercept import CallNext, ToolCall, ToolResult

WHEN = ("before-forward", "after-forward", "after-reply")
"""Where a burn spends its CPU: before the call goes upstream, in the loop turn after it went
(the forward is written before the call's task first yields), or after its reply was written
(the lane encodes and writes the reply in the step that gets the result, before the loop runs
the callbacks queued meanwhile)."""


class Burn:
    """Interceptor: ``us`` microseconds of this thread's CPU per call, at ``at`` (:data:`WHEN`);
    the call itself and its result unchanged."""

    def __init__(self, us: int, at: str = WHEN[0]) -> None:
        if at not in WHEN:
            raise ValueError(f"unknown burn position `{at}`")
        self.ns = us * 1000
        self.at = at
        self.spent_ns = 0  # CPU burnt so far (this thread's clock): what the tests check

    async def __call__(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        at = self.at
        if at == "before-forward":
            self.spin()
            return await call_next(call)
        if at == "after-forward":
            asyncio.get_running_loop().call_soon(self.spin)
            return await call_next(call)
        result = await call_next(call)
        asyncio.get_running_loop().call_soon(self.spin)
        return result

    def spin(self) -> None:
        clock = time.thread_time_ns  # CPU time, not wall time: a preempted spin still burns its share
        started = clock()
        end = started + self.ns
        now = started
        while now < end:
            for _ in range(20):
                pass
            now = clock()
        self.spent_ns += now - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay_only.py", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--burn-us", type=int, default=0, metavar="N",
                        help="spend N microseconds of CPU on every tools/call before forwarding it")
    parser.add_argument("--burn-at", choices=WHEN, default=WHEN[0],
                        help="when the burn runs: before the forward (default), right after it, or after the reply")
    args = parser.parse_args(argv)
    if args.burn_us < 0:
        parser.error("--burn-us: must be 0 or more")
    logs.configure()
    config = load_config(args.config)
    interceptors: list[Any] = [Burn(args.burn_us, args.burn_at)] if args.burn_us else []
    gateway = Gateway(config, interceptors=interceptors)
    gc.freeze()  # what start-up made is never scanned again, as `securegateway run` does once built
    anyio.run(gateway.run, backend_options=event_loop_options(config.event_loop, config.path.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
