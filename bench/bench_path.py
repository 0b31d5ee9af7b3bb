"""Where a stdio tools/call spends the gateway's CPU: before the forward, while the upstream works, on the reply.

``python bench/bench_path.py [--calls N] [--warmup N] [--rounds N]``

Runs ``bench_gateway.py``'s deployment (120-rule policy, durable audit, result scanning) as
``securegateway run`` and, beside it, the relay alone, each under ``bench/path_probe.py``
(timestamps on the message path and the chain's steps), drives ``N`` sequential ``bench.echo``
calls through each with a real MCP client (one session per side, the sides alternating in
rounds), and prints per call the median CPU (and wall time)
of the hop on each stretch of the call:

- **before the forward**: from the client's request line arriving to its forward being written.
  Nothing else runs meanwhile (the client waits, the upstream has nothing yet): every
  microsecond is one of the caller's latency.
- **while the upstream works**: from the forward to the upstream's answer. The hop's CPU here
  (the group commit's flush submission, its bookkeeping) overlaps the upstream's work.
- **reply**: from the answer arriving to the reply being written: latency again.
- **after the reply**: from the reply to the next request (CPU only; the wall time is the client's).

Then the steps of each stretch, probe to probe (median CPU per call; steps on fewer than 90% of
calls are left out). The gateway's p50 above the relay's is about the difference of the two
latency stretches (bench/README.md, "The latency path"). The probes cost ~1 us each, so every
figure runs a little high; compare the two sides, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gateway import MODEL_KEY, UPSTREAM, call, stdio_session, timed_calls, write_site
from bench.path_probe import CLIENT_LINE, FORWARD, REPLY, UPSTREAM_LINE, Record

STRETCHES = (
    ("before the forward", CLIENT_LINE, FORWARD),
    ("while the upstream works", FORWARD, UPSTREAM_LINE),
    ("reply", UPSTREAM_LINE, REPLY),
    ("after the reply", REPLY, "next " + CLIENT_LINE),
)
LATENCY = ("before the forward", "reply")  # the stretches the caller waits for
GATEWAY_SIDE, RELAY_SIDE = "gateway", "relay alone"
SIDES = (GATEWAY_SIDE, RELAY_SIDE)
TOOL = f"{UPSTREAM}.echo"


def calls_of(records: Sequence[Record]) -> list[list[Record]]:
    """The records cut into tools/call round trips: each from a client line to the next one, keeping
    those that forwarded a line, got an upstream line after it, and wrote a reply after that."""
    cut: list[list[Record]] = []
    for record in records:
        if record[0] == CLIENT_LINE:
            cut.append([])
        if cut:
            cut[-1].append(record)
    complete = []
    for index, trip in enumerate(cut[:-1]):
        names = [name for name, _, _ in trip]
        if FORWARD in names and UPSTREAM_LINE in names[names.index(FORWARD):] and REPLY in names[names.index(FORWARD):]:
            complete.append([*trip, ("next " + CLIENT_LINE, cut[index + 1][0][1], cut[index + 1][0][2])])
    return complete


def _at(trip: list[Record], name: str, after: int = 0) -> int:
    return next(i for i in range(after, len(trip)) if trip[i][0] == name)


def stretches(trips: list[list[Record]]) -> dict[str, tuple[float, float]]:
    """Median (CPU us, wall us) per call of each stretch."""
    out: dict[str, tuple[float, float]] = {}
    for label, start, end in STRETCHES:
        cpu, wall = [], []
        for trip in trips:
            forward = _at(trip, FORWARD)
            first = _at(trip, start) if start == CLIENT_LINE else _at(trip, start, forward)
            last = _at(trip, end, first)
            cpu.append((trip[last][2] - trip[first][2]) / 1000)
            wall.append((trip[last][1] - trip[first][1]) / 1000)
        out[label] = (statistics.median(cpu), statistics.median(wall))
    return out


def steps(trips: list[list[Record]], share: float = 0.9) -> list[tuple[str, float]]:
    """Median CPU (us) of each probe-to-probe step, in the order of a typical call; steps seen on
    fewer than ``share`` of the calls are left out."""
    seen: dict[str, list[float]] = {}
    order: dict[str, int] = {}
    for trip in trips:
        for position, (a, b) in enumerate(itertools.pairwise(trip)):
            step = f"{a[0]} -> {b[0]}"
            seen.setdefault(step, []).append((b[2] - a[2]) / 1000)
            order.setdefault(step, position)
    kept = [step for step, values in seen.items() if len(values) >= share * len(trips)]
    return [(step, statistics.median(seen[step])) for step in sorted(kept, key=lambda s: order[s])]


async def probe_runs(tmp: Path, log: TextIO, calls: int, warmup: int, rounds: int) -> dict[str, list[Record]]:
    """The records of the gateway and the relay alone, one session each, their calls in alternating rounds."""
    outs: dict[str, Path] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for side in SIDES:
            config = write_site(tmp / side.replace(" ", "-"), listen="stdio", upstream="stdio")
            outs[side] = out = tmp / f"{side.replace(' ', '-')}-records.json"
            argv = [sys.executable, "-m", "bench.path_probe", str(out), str(config),
                    *(["--relay"] if side == RELAY_SIDE else [])]
            clients[side] = await stack.enter_async_context(
                stdio_session(argv, log, {"SECUREGATEWAY_MODEL_KEY": MODEL_KEY}))
            await timed_calls(clients[side], TOOL, [f"warm {i}" for i in range(warmup)])
        for round_ in range(rounds):
            for side in SIDES:
                for i in range(calls // rounds):
                    await call(clients[side], TOOL, f"hello {round_}-{i}")
    records: dict[str, list[Record]] = {}
    for side, out in outs.items():  # the sessions are closed: each probe wrote its records on exit
        if not out.exists():
            raise RuntimeError(f"{side}: the probe left no records (see {tmp / 'processes.log'})")
        raw: list[Any] = json.loads(out.read_text())
        records[side] = [(str(name), int(wall), int(cpu)) for name, wall, cpu in raw]
    return records


def report(side: str, trips: list[list[Record]]) -> list[str]:
    lines = [f"{side}: {len(trips)} calls"]
    for label, (cpu, wall) in stretches(trips).items():
        wall_text = "" if label == "after the reply" else f"   wall {wall:8.1f} us"
        lines.append(f"  {label:28s} CPU {cpu:7.1f} us{wall_text}")
    lines.append("  steps (CPU per call):")
    lines += [f"    {step:52s} {cpu:7.1f} us" for step, cpu in steps(trips)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_path.py", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="measured sequential calls per side")
    parser.add_argument("--warmup", type=int, default=200, help="calls per side before the measured ones")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds the measured calls are split into")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 2 * args.rounds or args.warmup < 0:
        parser.error("--rounds: at least 1; --calls: at least 2 per round; --warmup: 0 or more")
    figures: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sg-path-") as name, open(Path(name) / "processes.log", "w") as log:
        records = anyio.run(probe_runs, Path(name), log, args.calls, args.warmup, args.rounds)
    for side in SIDES:
        trips = calls_of(records[side])[-args.calls:]
        if len(trips) < args.calls // 2:
            print(f"{side}: only {len(trips)} complete calls in the records", file=sys.stderr)
            return 1
        figures[side] = stretches(trips)
        print("\n".join(report(side, trips)), flush=True)
    gateway, relay_alone = figures[GATEWAY_SIDE], figures[RELAY_SIDE]
    extra = sum(gateway[s][0] - relay_alone[s][0] for s in LATENCY)
    print(f"latency stretches (before the forward + reply), gateway - relay alone: {extra:.1f} us of CPU per call"
          f" ({os.cpu_count()} CPUs, {args.rounds} alternating rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
