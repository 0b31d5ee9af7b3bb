"""The stdio opening's trade: load the SDK lazily (first need) or warm it after the opening.

A script, not a test: ``python bench/bench_opening.py [--sessions N]``. The gateway answers a
stdio client's ``initialize``, ``tools/list`` and ``tools/call`` before ``import mcp``
(proxy/wire/opening.py); the first message that needs anything else brings the SDK up. This
compares, in alternating sessions against the same deployment as ``bench_start.py``:

- ``lazy``: the SDK is imported when a message first needs it (the default);
- ``warm``: it is imported in a worker thread right after the opening's first ``tools/list``
  (``SECUREGATEWAY_SDK_WARMUP=0``).

Per session: the start (connect + ``initialize`` + ``tools/list``, wall and process-tree CPU
for the whole session), the latency of ``tools/call`` in the first ~1 s after the opening
(while a warming gateway imports the SDK), and the latency of the first message that needs
the SDK (``ping``), sent right after the opening (``ping now``) or after those calls (``ping
later``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_gateway import MODEL_KEY, ROOT, gateway_argv, median, stdio_session, write_site

CALL_WINDOW = 1.0
"""Seconds of sequential tools/call right after the opening."""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_session(config: Path, log: object, env: dict[str, str], ping_first: bool) -> dict[str, object]:
    cpu = children_cpu()
    started = time.perf_counter()
    async with stdio_session(gateway_argv(config), log, env, cwd=ROOT) as client:  # type: ignore[arg-type]
        await client.list_tools()
        start = time.perf_counter() - started
        out: dict[str, object] = {"start": start}
        if ping_first:
            t = time.perf_counter()
            await client.send_ping()
            out["ping now"] = time.perf_counter() - t
        calls: list[float] = []
        until = time.perf_counter() + CALL_WINDOW
        while time.perf_counter() < until:
            t = time.perf_counter()
            await client.call_tool("bench.echo", {"text": "x"})
            calls.append(time.perf_counter() - t)
        out["calls"] = calls
        if not ping_first:
            t = time.perf_counter()
            await client.send_ping()
            out["ping later"] = time.perf_counter() - t
    out["cpu"] = children_cpu() - cpu
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=6, help="sessions per mode and ping timing (default 6)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # `ping` is legacy-only: the session is legacy
    modes = {"lazy": {"SECUREGATEWAY_MODEL_KEY": MODEL_KEY},
             "warm": {"SECUREGATEWAY_MODEL_KEY": MODEL_KEY, "SECUREGATEWAY_SDK_WARMUP": "0"}}
    results: dict[tuple[str, bool], list[dict[str, object]]] = {}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sg-opening-") as tmp_name:
        tmp = Path(tmp_name)
        config = write_site(tmp / "gateway", listen="stdio", upstream="stdio")
        with open(tmp / "processes.log", "w") as log:

            async def run() -> None:
                async with stdio_session(gateway_argv(config), log, modes["lazy"], cwd=ROOT) as client:
                    await client.list_tools()  # untimed: .pyc files, page cache, tool pins
                for i in range(args.sessions):
                    order = list(modes.items()) if i % 2 == 0 else list(modes.items())[::-1]
                    for ping_first in (True, False):
                        for name, env in order:
                            results.setdefault((name, ping_first), []).append(
                                await one_session(config, log, env, ping_first))

            anyio.run(run)
    load = os.getloadavg()
    print(f"stdio opening: lazy vs warm SDK, {args.sessions} sessions per row, {time.perf_counter() - began:.0f} s,"
          f" load {load[0]:.2f} {load[1]:.2f}")
    print(f"{'mode':5} {'ping':6} {'start ms':>9} {'tree CPU ms':>12} {'call p50':>9} {'call p99':>9}"
          f" {'call max':>9} {'calls':>6} {'first SDK msg ms':>17}")
    for (name, ping_first), rows in sorted(results.items()):
        calls = [c for r in rows for c in r["calls"]]  # type: ignore[attr-defined]
        ping = [float(r["ping now" if ping_first else "ping later"]) for r in rows]  # type: ignore[arg-type]
        print(f"{name:5} {'now' if ping_first else 'later':6} {median([float(r['start']) for r in rows]) * 1e3:9.1f}"  # type: ignore[arg-type]
              f" {median([float(r['cpu']) for r in rows]) * 1e3:12.1f}"  # type: ignore[arg-type]
              f" {median(calls) * 1e3:9.2f} {pct(calls, 0.99) * 1e3:9.2f} {max(calls) * 1e3:9.2f}"
              f" {len(calls) / len(rows):6.0f} {median(ping) * 1e3:17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
