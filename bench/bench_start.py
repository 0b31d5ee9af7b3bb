"""Session start over stdio, alone: direct vs the gateway (vs a baseline checkout), alternating.

A script, not a test: ``python bench/bench_start.py [--starts N] [--baseline DIR]``.
``bench_gateway.py`` measures session start (connect + ``initialize`` + the first
``tools/list``) with four starts per side after its call rounds; this measures only that,
with as many alternating starts as asked, in the same deployment (bench_gateway's
``write_site``: 120-rule policy, fsync'd audit, result scanning). Next to the wall-clock
figure it prints the CPU that each start cost its process tree (the gateway and the upstream
it spawned, or the upstream alone), from ``RUSAGE_CHILDREN`` once the session has exited:
on a two-core machine the gateway's start-up CPU competes with its upstream's own start.

``--budget`` instead prints where the gateway's own start-up CPU goes, stage by stage, in
fresh interpreters (the median of ``--starts`` runs of :data:`BUDGET_PROBE`): the command
line and config, logging, the policy and negotiation stacks, the rest of the gateway's
imports, and ``build()``; then, apart, the SDK (``import mcp``), which a stdio gateway loads
only when a message first needs it (proxy/wire/opening.py). ``--floor`` adds ``bench/floor_relay.py``
(a Python stdio hop that never imports the SDK) to the timed starts, as a bound.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_gateway import (
    MODEL_KEY,
    ROOT,
    gateway_argv,
    median,
    stdio_session,
    upstream_argv,
    write_site,
)

BUDGET_PROBE = """
import gc, json, sys, time
gc.disable()  # as `securegateway run` does until the gateway is built
clock = time.process_time
marks = [("interpreter", clock())]
from pathlib import Path
import proxy.cli, proxy.upstream.prespawn
config = proxy.cli.load_config(Path(sys.argv[1]))
marks.append(("command line + config", clock()))
proxy.cli.configure_logs("warning")
marks.append(("logging (structlog)", clock()))
import policy
marks.append(("policy (detectors, engine, loader)", clock()))
import negotiation
marks.append(("negotiation", clock()))
from proxy.bootstrap import build
marks.append(("rest of the gateway's imports", clock()))
build(config, model_key=sys.argv[2])
marks.append(("build()", clock()))
total = clock()
assert "mcp" not in sys.modules, "the gateway's start-up imported the SDK"
import mcp.server, proxy.wire.front  # what the first message needing the SDK loads (proxy/wire/opening.py)
sdk = clock() - total
print(json.dumps([(name, at - marks[i][1]) for i, (name, at) in enumerate(marks[1:])]
                 + [("total", total), ("later, at the first need: the SDK", sdk)]))
"""


UPSTREAM_PROBE = "import time, demo.testserver; print(time.process_time())"


def budget(config: Path, runs: int) -> None:
    """Print the median CPU of each start-up stage of the gateway at ``ROOT``."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", BUDGET_PROBE, str(config), MODEL_KEY], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=120)
        for name, seconds in json.loads(out.stdout.splitlines()[-1]):
            samples.setdefault(name, []).append(seconds)
    upstream = []
    for _ in range(runs):  # the direct side's own start, for scale: its imports (the SDK) dominate
        out = subprocess.run([sys.executable, "-c", UPSTREAM_PROBE], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=120)
        upstream.append(float(out.stdout.splitlines()[-1]))
    print(f"gateway start-up CPU by stage (ms, median of {runs} fresh interpreters; {ROOT})")
    for name, values in samples.items():
        print(f"  {name:38} {median(values) * 1e3:7.1f}")
    print(f"  {'for scale: the upstream (demo.testserver)':38} {median(upstream) * 1e3:7.1f}  (interpreter + imports)")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


Starters = list[tuple[str, Callable[[], Any]]]


async def measure(sides: Starters, starts: int) -> dict[str, tuple[list[float], list[float]]]:
    """``{side: (wall seconds, process-tree CPU seconds)}`` per start; the order reverses every pass."""
    figures: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in sides}
    for _, connect in sides:  # one untimed start each: page cache, .pyc files
        async with connect() as client:
            await client.list_tools()
    for i in range(starts):
        order = sides if i % 2 == 0 else sides[::-1]
        for name, connect in order:
            cpu = children_cpu()
            started = time.perf_counter()
            async with connect() as client:
                await client.list_tools()
                figures[name][0].append(time.perf_counter() - started)
            figures[name][1].append(children_cpu() - cpu)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20, help="timed starts per side (default 20)")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="also start the gateway from checkout DIR")
    parser.add_argument("--floor", action="store_true",
                        help="also start bench/floor_relay.py: the least a Python stdio hop (without the SDK) can do")
    parser.add_argument("--budget", action="store_true",
                        help="print the gateway's start-up CPU by stage instead of timing sessions")
    args = parser.parse_args()
    env = {"SECUREGATEWAY_MODEL_KEY": MODEL_KEY}
    if args.budget:
        with tempfile.TemporaryDirectory(prefix="sg-start-") as tmp_name:
            budget(write_site(Path(tmp_name) / "gateway", listen="stdio", upstream="stdio"), args.starts)
        return 0
    with tempfile.TemporaryDirectory(prefix="sg-start-") as tmp_name:
        tmp = Path(tmp_name)
        with open(tmp / "processes.log", "w") as log:
            config = write_site(tmp / "gateway", listen="stdio", upstream="stdio")
            sides: Starters = [
                ("direct", lambda: stdio_session(upstream_argv(), log)),
                ("gateway", lambda: stdio_session(gateway_argv(config), log, env, cwd=ROOT)),
            ]
            if args.baseline is not None:
                base = args.baseline.resolve()
                base_config = write_site(tmp / "baseline", listen="stdio", upstream="stdio")
                sides.append(("baseline", lambda: stdio_session(gateway_argv(base_config), log, env, cwd=base)))
            if args.floor:
                floor_env = {"FLOOR_UPSTREAM": json.dumps(upstream_argv())}
                sides.append(("floor", lambda: stdio_session([sys.executable, "-m", "bench.floor_relay"], log,
                                                             floor_env, cwd=ROOT)))
            started = time.perf_counter()
            figures = anyio.run(measure, sides, args.starts)
    load = os.getloadavg()
    print(f"session start over stdio, {args.starts} alternating starts per side,"
          f" {time.perf_counter() - started:.0f} s, load {load[0]:.2f} {load[1]:.2f}")
    direct_wall = median(figures["direct"][0])
    direct_cpu = median(figures["direct"][1])
    print(f"{'side':10} {'wall p50 ms':>12} {'ratio':>7} {'tree CPU ms':>12} {'ratio':>7} {'tree - direct':>14}")
    for name, (wall, cpu) in figures.items():
        print(f"{name:10} {median(wall) * 1e3:12.1f} {median(wall) / direct_wall:6.2f}x"
              f" {median(cpu) * 1e3:12.1f} {median(cpu) / direct_cpu:6.2f}x {(median(cpu) - direct_cpu) * 1e3:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
