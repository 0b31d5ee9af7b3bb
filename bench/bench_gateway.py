"""Benchmark the gateway as a relay: the same workload straight to an upstream and through it.

A script, not a test: ``python bench/bench_gateway.py [--quick] [--transport stdio|http|both]``.
The gateway runs as a separate ``securegateway run`` process, configured as it would be in
production: a generated policy of 120 rules (one of which allows the benchmarked tool),
the hash-chained audit log with fsync, and result scanning (``result_scan = "flag"``). For
each transport pair (stdio client -> stdio upstream, Streamable HTTP client -> Streamable
HTTP upstream) it measures, in rounds that alternate direct and gateway so that machine
drift hits both sides alike:

- sequential ``tools/call`` of ``echo``: p50 / p99 latency;
- calls per second with 8 concurrent callers on one session;
- the gateway process's own CPU time (user + system, from ``/proc/<pid>/stat``, upstream
  children excluded) per call, next to the upstream server's own for scale;
- over the sequential calls, the CPU per call of the processes on either side of the hop: the
  upstream behind it and the client (this process), each next to its figure without the hop.
  A hop's CPU competes with theirs for the machine's cores, so these show what it costs its
  neighbours;
- ``echo`` of 1 KB / 100 KB / 1 MB: p50 latency;
- session start: connect + initialize + first ``tools/list``.

On stdio a third side runs in the same interleaved rounds: the **relay alone**
(``bench/relay_only.py``: :class:`proxy.gateway.Gateway` composed with no policy, no audit,
no scanning and no interceptors, the same message path otherwise), judged on its p50
against the issue's "relay alone (no policy)" mark; ``--no-relay`` leaves it out.

``--burn N`` adds the relay alone plus ``N`` microseconds of pure CPU per ``tools/call``
(``bench/relay_only.py --burn-us N``), spent before the forward: a side whose only extra work is
known CPU. Set to the gateway's CPU above the relay's, it tells whether the gateway's latency
above the relay is that CPU or something else (waiting, wake-ups). ``--burn-at`` lists where
the burn runs, one side per position (``before-forward``, ``after-forward``, ``after-reply``,
bench/relay_only.py ``--burn-at``): what the same CPU costs off the critical path.

It prints one table with gateway/direct ratios and the targets, marked PASS or MISS.
Everything runs on 127.0.0.1 inside a temporary directory that is removed at exit, and every
process it starts is stopped in a ``finally``. ``--profile FILE`` instead runs the sequential
workload through a gateway started under ``cProfile`` and prints its hottest functions.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import pstats
import random
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
MODEL_KEY = "modelkey-bench-0123456789"
UPSTREAM = "bench"  # through the gateway the tool is `bench.echo`
POLICY_RULES = 120
SIZES = (1024, 100 * 1024, 1024 * 1024)
CALLERS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")
DURABILITY = ("before-response", "before-forward")  # [audit] durability; the first is the default
BURN_POSITIONS = ("before-forward", "after-forward", "after-reply")  # bench/relay_only.py --burn-at (its WHEN)


@dataclass(frozen=True)
class Counts:
    """How much work each round does, per side (direct or gateway)."""

    rounds: int
    sequential: int  # sequential echo calls per round
    callers: int  # concurrent callers on one session
    per_caller: int  # calls per concurrent caller per round
    payload: tuple[int, int, int]  # echo calls per round for 1 KB, 100 KB, 1 MB
    starts: int  # session starts per side in total
    warmup: int  # untimed calls on each fresh session


QUICK = Counts(rounds=2, sequential=60, callers=CALLERS, per_caller=8, payload=(6, 3, 1), starts=1, warmup=20)
DEFAULT = Counts(rounds=6, sequential=400, callers=CALLERS, per_caller=40, payload=(30, 12, 4), starts=10, warmup=100)


@dataclass(frozen=True)
class Target:
    """A pass mark for one figure: a ratio bound (gateway/direct) or an absolute one."""

    text: str
    check: Callable[[float], bool]


# Issue #12's targets for stdio with policy, durable audit and result scanning on (how this
# script always runs the gateway); the relay-only mark (no policy) is p50 <= 1.15x.
P50 = Target("<=1.3x", lambda r: r <= 1.3)
P99 = Target("<=1.6x", lambda r: r <= 1.6)
RATE = Target(">=0.8x", lambda r: r >= 0.8)
CPU = Target("<=0.6 ms", lambda ms: ms <= 0.6)
MB = Target("<=1.6x", lambda r: r <= 1.6)
START = Target("<=1.3x", lambda r: r <= 1.3)
# Streamable HTTP front to an HTTP upstream (issue #12), judged with policy and scanning on.
HTTP_P50 = Target("<=1.5x", lambda r: r <= 1.5)
HTTP_RATE = Target(">=0.7x", lambda r: r >= 0.7)
HTTP_CPU = Target("<=1.5 ms", lambda ms: ms <= 1.5)
# The relay alone (no policy, no audit, no scanning): the message path itself.
RELAY_P50 = Target("<=1.15x", lambda r: r <= 1.15)
RELAY = "relay"  # the figures' key of the relay-alone side
# ``--baseline DIR``: the same gateway configuration run from another checkout, in the same rounds.
BASELINE = "gateway:baseline"
RELAY_BASELINE = "relay:baseline"  # the relay alone from the ``--baseline`` checkout
FLOOR = "floor"  # ``--floor``: bench/floor_relay.py, the least a Python stdio hop can do
FLOOR_DURABLE = "floor:durable"  # ``--floor``: the same with a durable line per call (FLOOR_AUDIT)
UNSYNCED = "gateway:audit not synced"  # ``--unsynced``: the gateway with ``[audit] fsync = false``
BURN = "relay:burn"  # ``--burn N``: the relay alone plus N us of CPU per call (bench/relay_only.py --burn-us)


def burn_side(at: str) -> str:
    """The figures' key of the burning relay spending its CPU at ``at`` (``--burn-at``)."""
    return BURN if at == "before-forward" else f"{BURN} {at}"


# ---- the deployment under test -----------------------------------------------------------------


def policy_yaml(rules: int = POLICY_RULES, seed: int = 7) -> str:
    """``rules`` rules in the shapes operators write, plus the one that allows the benchmark.

    Twelve models over twenty servers: per-server globs, exact tools, path and length
    conditions, expiring grants, risk caps, deny rules with regexes. The benchmarked model
    shares servers and wildcard deny rules with the others, so its calls meet real candidates.
    """
    rng = random.Random(seed)
    models = [MODEL] + [f"model-{i}" for i in range(11)]
    servers = [UPSTREAM, "crm", "files", "calendar", "search", "mail", "tickets", "wiki", "db", "billing",
               "git", "ci", "chat", "drive", "hr", "analytics", "maps", "weather", "notes", "vault"]
    verbs = ["search", "read_file", "list", "get", "create_event", "update", "delete", "send", "query", "fetch"]
    out = [
        "rules:",
        f"  - id: {UPSTREAM}-echo",
        "    description: The benchmark model may echo text of up to 2 MB.",
        f"    model: {MODEL}",
        f"    allow_tools: [{UPSTREAM}.echo, {UPSTREAM}.add]",
        "    when:",
        "      text: {max_length: 2000000}",
        "  - id: no-crash",
        '    model: "*"',
        '    deny_tools: ["*.crash"]',
        '    reason: "{tool} is disabled here"',
        "  - id: no-secrets-paths",
        '    model: "*"',
        '    deny_tools: ["*.read_file", "*.read_*"]',
        "    when:",
        r"      path: {regex: '.*\.(env|pem|key)'}",
    ]
    for index in range(rules - 3):
        model = rng.choice(models) if rng.random() < 0.9 else "*"
        server = rng.choice(servers[1:])
        shape = rng.random()
        rule = [f"  - id: rule-{index:03d}", f'    model: "{model}"']
        if shape < 0.35:
            rule.append(f'    allow_tools: ["{server}.*"]')
        elif shape < 0.65:
            rule.append(f"    allow_tools: [{server}.{rng.choice(verbs)}, {server}.{rng.choice(verbs)}]")
        elif shape < 0.8:
            rule += [f'    allow_tools: ["{server}.read_*"]', "    when:",
                     f"      path: {{under: /srv/{server}}}", "      query: {max_length: 500}"]
        elif shape < 0.9:
            rule += [f'    deny_tools: ["{server}.delete", "{server}.update"]', "    when:",
                     "      mode: {one_of: [force, purge]}"]
        else:
            rule += [f'    deny_tools: ["{server}.send"]', "    when:",
                     r"      to: {regex: '.*@(example\.org|rival\.com)'}",
                     '    reason: "no mail to {tool} outside the company"']
        if rng.random() < 0.1 and "allow_tools" in rule[2]:
            rule.append('    expires: "2031-01-01T00:00:00Z"')
        if rng.random() < 0.15 and "allow_tools" in rule[2]:
            rule.append("    max_risk: 0.8")
        out += rule
    return "\n".join(out) + "\n"


MODEL_KEYS_YAML = f"""\
models:
  {MODEL}:
    key: {MODEL_KEY}
    tools: ["{UPSTREAM}.*", "crm.*", "files.*"]
    can_propose: false
""" + "".join(
    f'  model-{i}:\n    key: modelkey-other-{i:04d}\n    tools: ["*"]\n    can_propose: {str(i % 2 == 0).lower()}\n'
    for i in range(11)
)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items) + "]"


def write_site(
    root: Path, *, listen: str, upstream: str, durability: str = "before-response", fsync: bool = True
) -> Path:
    """A gateway deployment under ``root``; ``upstream`` is a URL or `stdio`. Returns gateway.toml."""
    root.mkdir(parents=True)
    (root / "policies.yaml").write_text(policy_yaml())
    (root / "model_keys.yaml").write_text(MODEL_KEYS_YAML)
    target = f"command = {_toml_list(upstream_argv())}" if upstream == "stdio" else f'url = "{upstream}"'
    config = root / "gateway.toml"
    config.write_text(textwrap.dedent(f"""\
        [gateway]
        listen = "{listen}"
        result_scan = "flag"

        [[upstreams]]
        name = "{UPSTREAM}"
        {target}

        [policy]
        file = "policies.yaml"
        model_keys = "model_keys.yaml"
        state_dir = "state"
        signing_key = "state/keys/policy.pem"
        public_key = "state/keys/policy.pub"

        [audit]
        file = "state/audit.jsonl"
        durability = "{durability}"
        """) + ("" if fsync else "fsync = false\n"))
    return config


def audited_decisions(site: Path) -> int:
    """``decision`` events in a site's audit log, rotated files included: proof the audit was on."""
    return sum(f.read_bytes().count(b'"type":"decision"') for f in (site / "state").glob("audit.jsonl*")
               if not f.name.endswith(".head"))


def upstream_argv(*extra: str) -> list[str]:
    return [sys.executable, "-m", "demo.testserver", "--name", UPSTREAM, *extra]


def gateway_argv(config: Path, profile: Path | None = None) -> list[str]:
    runner = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [sys.executable, *runner, "-m", "proxy.cli", "run", "--config", str(config)]


def relay_argv(
    config: Path, profile: Path | None = None, burn_us: int = 0, burn_at: str = "before-forward"
) -> list[str]:
    """The relay alone over ``config`` (its policy, audit and scanning settings are not used),
    spending ``burn_us`` microseconds of CPU per ``tools/call`` when given, at ``burn_at``."""
    runner = ["-m", "cProfile", "-o", str(profile)] if profile else []
    burn = ["--burn-us", str(burn_us), "--burn-at", burn_at] if burn_us else []
    return [sys.executable, *runner, "-m", "bench.relay_only", str(config), *burn]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`{' '.join(proc.args)}` exited with {proc.returncode} before listening")  # type: ignore[arg-type]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def spawned(
    argv: list[str], port: int, log: TextIO, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[int]:
    """Run ``argv`` until the block ends (SIGTERM, then SIGKILL); yields its pid once ``port`` listens."""
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        wait_port(port, proc)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """user + system CPU of ``pid`` itself (its children's time is not in these fields)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat


def find_pid(*needles: str, parent: int | None = None) -> int | None:
    """The pid whose argv holds every one of ``needles`` (and whose parent is ``parent``, if given)."""
    wanted = [n.encode() for n in needles]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not all(n in argv for n in wanted):
                continue
            stat = (entry / "stat").read_text()
            if parent is None or int(stat[stat.rindex(")") + 2:].split()[1]) == parent:
                return int(entry.name)
    return None


def lazy_pid(describe: str, *needles: str, parent: int | Callable[[], int] | None = None) -> Callable[[], int]:
    """Finds the pid on first use (the process exists only once its session is open); ``parent``
    may itself be found on first use."""
    found: dict[str, int] = {}

    def pid() -> int:
        if "pid" not in found:
            value = find_pid(*needles, parent=parent() if callable(parent) else parent)
            if value is None:
                raise RuntimeError(f"no running {describe}")
            found["pid"] = value
        return found["pid"]

    return pid


def hop_side(
    name: str, tool: str, connect: Callable[[], contextlib.AbstractAsyncContextManager[Any]], describe: str,
    *needles: str, parent: int | None = None,
) -> Side:
    """A side through a hop (gateway, relay, floor) found by ``needles``, with the upstream it spawned."""
    pid = lazy_pid(describe, *needles, parent=parent)
    return Side(name, tool, connect, pid, lazy_pid(f"upstream behind the {describe}", "demo.testserver", parent=pid))


# ---- clients -----------------------------------------------------------------------------------


@dataclass
class Side:
    """One way to reach the echo tool: straight to the upstream or through the gateway."""

    name: str  # "direct" | "gateway"
    tool: str
    connect: Callable[[], contextlib.AbstractAsyncContextManager[Any]]
    # The process whose CPU is measured: the gateway, or (for scale) the upstream itself.
    pid: Callable[[], int]
    # The upstream server answering this side's calls (its CPU per call behind the hop);
    # None: ``pid`` is the upstream (the direct side).
    upstream: Callable[[], int] | None = None


@contextlib.asynccontextmanager
async def stdio_session(
    argv: list[str], log: TextIO, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> AsyncIterator[Any]:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=cwd)
    async with Client(stdio_client(params, errlog=log), mode="legacy") as client:
        yield client


@contextlib.asynccontextmanager
async def http_session(url: str, key: str | None = None) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http, max_sse_event_size=None), mode="legacy") as client,
    ):
        yield client


def text_of(size: int) -> str:
    """``size`` characters of plain prose: nothing a secret or injection detector should flag."""
    words = ["the", "quarterly", "report", "lists", "every", "meeting", "note", "and", "design", "review", "budget"]
    rng = random.Random(size)
    chunks, total = [], 0
    while total < size:
        word = rng.choice(words)
        chunks.append(word)
        total += len(word) + 1
    return " ".join(chunks)[:size]


def fresh(text: str, tag: str) -> str:
    """``text`` made unique by ``tag`` at its start, its length unchanged."""
    return tag + text[len(tag):]


async def call(client: Any, tool: str, text: str) -> None:
    result = await client.call_tool(tool, {"text": text})
    if result.is_error:
        detail = " ".join(getattr(c, "text", "") for c in result.content)[:300]
        raise RuntimeError(f"`{tool}` failed: {detail}")


async def timed_calls(client: Any, tool: str, texts: list[str]) -> list[float]:
    samples = []
    for text in texts:
        started = time.perf_counter()
        await call(client, tool, text)
        samples.append(time.perf_counter() - started)
    return samples


async def concurrent_rate(client: Any, tool: str, callers: int, per_caller: int) -> float:
    async def caller(index: int) -> None:
        for n in range(per_caller):
            await call(client, tool, f"caller {index} call {n}")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(callers):
            tg.start_soon(caller, index)
    return callers * per_caller / (time.perf_counter() - started)


# ---- measuring ---------------------------------------------------------------------------------


@dataclass
class Figures:
    """Everything measured for one side of one transport."""

    sequential: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    payload: dict[int, list[float]] = field(default_factory=lambda: {s: [] for s in SIZES})
    starts: list[float] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds of the side's measured process over the sequential calls
    cpu_calls: int = 0
    cpu_concurrent: float = 0.0
    cpu_concurrent_calls: int = 0
    upstream_cpu: float = 0.0  # CPU seconds of the upstream behind the side over the sequential calls
    client_cpu: float = 0.0  # CPU seconds of this process (the client) over the sequential calls


async def measure(sides: list[Side], counts: Counts, progress: Callable[[str], None]) -> dict[str, Figures]:
    """Interleave rounds: direct, gateway, direct, gateway ... on one long-lived session per side."""
    figures = {side.name: Figures() for side in sides}
    payloads = {size: text_of(size) for size in SIZES}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for side in sides:
            clients[side.name] = client = await stack.enter_async_context(side.connect())
            await timed_calls(client, side.tool, [f"warm {i}" for i in range(counts.warmup)])
            await concurrent_rate(client, side.tool, counts.callers, 2)
            for size in SIZES:
                await call(client, side.tool, payloads[size])
        for round_ in range(counts.rounds):
            progress(f"round {round_ + 1}/{counts.rounds}")
            for side in sides:
                client, fig, pid = clients[side.name], figures[side.name], side.pid()
                upstream = side.upstream() if side.upstream is not None else pid
                texts = [f"hello {round_}-{i}" for i in range(counts.sequential)]
                before, up_before, client_before = cpu_seconds(pid), cpu_seconds(upstream), time.process_time()
                fig.sequential += await timed_calls(client, side.tool, texts)
                fig.cpu += cpu_seconds(pid) - before
                fig.upstream_cpu += cpu_seconds(upstream) - up_before
                fig.client_cpu += time.process_time() - client_before
                fig.cpu_calls += len(texts)
                before = cpu_seconds(pid)
                fig.rates.append(await concurrent_rate(client, side.tool, counts.callers, counts.per_caller))
                fig.cpu_concurrent += cpu_seconds(pid) - before
                fig.cpu_concurrent_calls += counts.callers * counts.per_caller
                for size, n in zip(SIZES, counts.payload, strict=True):
                    # a new text every call (same size), so nothing the gateway remembers from one call helps the next
                    texts = [fresh(payloads[size], f"{side.name} {round_}-{i} ") for i in range(n)]
                    fig.payload[size] += await timed_calls(client, side.tool, texts)
    return figures


async def measure_starts(
    sides: list[tuple[str, Callable[[], contextlib.AbstractAsyncContextManager[Any]]]],
    figures: dict[str, Figures],
    starts: int,
) -> None:
    """Session start, alternating sides: connect + initialize + the first tools/list.

    The order reverses every pass (direct, gateway, baseline, then baseline, gateway,
    direct), so no side always starts right after the same one has exited."""
    for i in range(starts):
        for name, connect in sides if i % 2 == 0 else sides[::-1]:
            started = time.perf_counter()
            async with connect() as client:
                await client.list_tools()
                figures[name].starts.append(time.perf_counter() - started)


def gateway_side(mode: str) -> str:
    """The figures' key of the gateway side running ``[audit] durability = mode``."""
    return "gateway" if mode == DURABILITY[0] else f"gateway:{mode}"


async def bench_stdio(
    tmp: Path, counts: Counts, log: TextIO, progress: Callable[[str], None], modes: tuple[str, ...],
    relay: bool = True, baseline: Path | None = None, floor: bool = False, unsynced: bool = False,
    burn_us: int = 0, burn_at: tuple[str, ...] = ("before-forward",),
) -> dict[str, Figures]:
    env = {"SECUREGATEWAY_MODEL_KEY": MODEL_KEY}
    configs = {mode: write_site(tmp / f"stdio-calls-{mode}", listen="stdio", upstream="stdio", durability=mode)
               for mode in modes}
    starts_config = write_site(tmp / "stdio-starts", listen="stdio", upstream="stdio")  # its own audit lock

    def direct() -> contextlib.AbstractAsyncContextManager[Any]:
        return stdio_session(upstream_argv(), log)

    def gateway(config: Path) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
        return lambda: stdio_session(gateway_argv(config), log, env)

    sides = [Side("direct", "echo", direct, lazy_pid("upstream", "demo.testserver", parent=os.getpid()))]
    sides += [
        hop_side(gateway_side(mode), f"{UPSTREAM}.echo", gateway(config), f"gateway with `{config}`",
                 "proxy.cli", str(config))
        for mode, config in configs.items()
    ]
    if baseline is not None:
        base_config = write_site(tmp / "stdio-baseline", listen="stdio", upstream="stdio", durability=modes[0])
        sides.append(hop_side(BASELINE, f"{UPSTREAM}.echo",
                              lambda: stdio_session(gateway_argv(base_config), log, env, cwd=baseline),
                              f"baseline gateway with `{base_config}`", "proxy.cli", str(base_config)))
    if unsynced:
        unsynced_config = write_site(tmp / "stdio-unsynced", listen="stdio", upstream="stdio", durability=modes[0],
                                     fsync=False)
        sides.append(hop_side(UNSYNCED, f"{UPSTREAM}.echo", gateway(unsynced_config),
                              f"gateway with `{unsynced_config}`", "proxy.cli", str(unsynced_config)))
    if relay:
        relay_config = write_site(tmp / "stdio-relay", listen="stdio", upstream="stdio")
        sides.append(hop_side(RELAY, f"{UPSTREAM}.echo", lambda: stdio_session(relay_argv(relay_config), log),
                              "relay-alone gateway", "bench.relay_only", str(relay_config)))
        if baseline is not None:
            base_relay = write_site(tmp / "stdio-relay-baseline", listen="stdio", upstream="stdio")
            sides.append(hop_side(RELAY_BASELINE, f"{UPSTREAM}.echo",
                                  lambda: stdio_session(relay_argv(base_relay), log, cwd=baseline),
                                  "baseline relay-alone gateway", "bench.relay_only", str(base_relay)))
    for at in burn_at if burn_us else ():
        burn_config = write_site(tmp / f"stdio-burn-{at}", listen="stdio", upstream="stdio")
        sides.append(hop_side(burn_side(at), f"{UPSTREAM}.echo",
                              functools.partial(
                                  lambda c, a: stdio_session(relay_argv(c, burn_us=burn_us, burn_at=a), log),
                                  burn_config, at),
                              f"relay burning {at}", "bench.relay_only", str(burn_config)))
    if floor:
        floor_env = {"FLOOR_UPSTREAM": json.dumps(upstream_argv())}
        sides.append(hop_side(FLOOR, "echo",
                              lambda: stdio_session([sys.executable, "-m", "bench.floor_relay", "plain"], log,
                                                    floor_env),
                              "floor relay", "bench.floor_relay", "plain", parent=os.getpid()))
        durable_env = {**floor_env, "FLOOR_AUDIT": str(tmp / "floor-audit.jsonl")}
        sides.append(hop_side(FLOOR_DURABLE, "echo",
                              lambda: stdio_session([sys.executable, "-m", "bench.floor_relay", "durable"], log,
                                                    durable_env),
                              "durable floor relay", "bench.floor_relay", "durable", parent=os.getpid()))
    figures = await measure(sides, counts, progress)
    progress("session starts")
    starters = [("direct", direct), (gateway_side(modes[0]), gateway(starts_config))]
    if baseline is not None:
        base_starts = write_site(tmp / "stdio-baseline-starts", listen="stdio", upstream="stdio")
        starters.append((BASELINE, lambda: stdio_session(gateway_argv(base_starts), log, env, cwd=baseline)))
    await measure_starts(starters, figures, counts.starts)
    for mode, config in configs.items():
        check_audited(config.parent, figures[gateway_side(mode)])
    return figures


async def bench_http(
    tmp: Path, counts: Counts, log: TextIO, progress: Callable[[str], None], modes: tuple[str, ...],
    baseline: Path | None = None,
) -> dict[str, Figures]:
    up_port, gw_port, base_port = free_port(), free_port(), free_port()
    up_url, gw_url = f"http://127.0.0.1:{up_port}/mcp", f"http://127.0.0.1:{gw_port}/mcp"
    base_url = f"http://127.0.0.1:{base_port}/mcp"
    config = write_site(tmp / "http", listen=gw_url, upstream=up_url, durability=modes[0])
    base_config = write_site(tmp / "http-baseline", listen=base_url, upstream=up_url, durability=modes[0])
    with contextlib.ExitStack() as processes:
        up_pid = processes.enter_context(spawned(upstream_argv("--http", f"127.0.0.1:{up_port}"), up_port, log))
        gw_pid = processes.enter_context(spawned(gateway_argv(config), gw_port, log))
        base_pid = (processes.enter_context(spawned(gateway_argv(base_config), base_port, log, cwd=baseline))
                    if baseline is not None else 0)

        def direct() -> contextlib.AbstractAsyncContextManager[Any]:
            return http_session(up_url)

        def gateway() -> contextlib.AbstractAsyncContextManager[Any]:
            return http_session(gw_url, MODEL_KEY)

        sides = [
            Side("direct", "echo", direct, lambda: up_pid),  # one upstream serves both sides
            Side("gateway", f"{UPSTREAM}.echo", gateway, lambda: gw_pid, lambda: up_pid),
        ]
        if baseline is not None:
            sides.append(Side(BASELINE, f"{UPSTREAM}.echo", lambda: http_session(base_url, MODEL_KEY),
                              lambda: base_pid, lambda: up_pid))
        figures = await measure(sides, counts, progress)
        progress("session starts")
        await measure_starts([(side.name, side.connect) for side in sides], figures, counts.starts)
    check_audited(config.parent, figures["gateway"])
    return figures


def check_audited(site: Path, gateway: Figures) -> None:
    measured = len(gateway.sequential) + sum(len(v) for v in gateway.payload.values())
    found = audited_decisions(site)
    if found < measured:
        raise RuntimeError(f"the gateway audited {found} decisions for at least {measured} calls")


# ---- reporting ---------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def median(samples: list[float]) -> float:
    return percentile(samples, 0.5)


Row = tuple[str, str, str, str, str, str]


def rows_for(transport: str, figures: dict[str, Figures], side: str = "gateway") -> list[Row]:
    d, g = figures["direct"], figures[side]
    http = transport == "http"
    if side != "gateway":
        transport = f"{transport} ({side.partition(':')[2]})"
    rows: list[Row] = []
    p50, rate, cpu, mb = (HTTP_P50, HTTP_RATE, HTTP_CPU, None) if http else (P50, RATE, CPU, MB)
    p99, start = (None, None) if http else (P99, START)

    def ratio_row(metric: str, direct: float, gateway: float, target: Target | None, digits: int = 2) -> None:
        ratio = gateway / direct
        mark = "" if target is None else ("PASS" if target.check(ratio) else "MISS")
        rows.append((transport, metric, f"{direct:.{digits}f}", f"{gateway:.{digits}f}", f"{ratio:.2f}x",
                     f"{target.text} {mark}" if target else ""))

    ratio_row("echo p50 (ms)", median(d.sequential) * 1e3, median(g.sequential) * 1e3, p50)
    ratio_row("echo p99 (ms)", percentile(d.sequential, 0.99) * 1e3, percentile(g.sequential, 0.99) * 1e3, p99)
    ratio_row(f"calls/s, {CALLERS} concurrent", median(d.rates), median(g.rates), rate, digits=0)
    # CPU per call of the process in the middle: the gateway, and for scale (direct column)
    # the upstream server answering the same calls directly.
    for label, (dc, dn), (gc, gn), target in (
        ("sequential", (d.cpu, d.cpu_calls), (g.cpu, g.cpu_calls), cpu),
        ("concurrent", (d.cpu_concurrent, d.cpu_concurrent_calls), (g.cpu_concurrent, g.cpu_concurrent_calls), None),
    ):
        up_ms, gw_ms = dc / dn * 1e3, gc / gn * 1e3
        mark = "" if target is None else f"{target.text} {'PASS' if target.check(gw_ms) else 'MISS'}"
        rows.append((transport, f"CPU/call {label} (ms): upstream | gateway", f"{up_ms:.3f}", f"{gw_ms:.3f}",
                     f"{gw_ms / up_ms:.2f}x", mark))
    rows += neighbour_rows(transport, d, g)
    for size in SIZES:
        label = f"{size // 1024} KB" if size < 1024 * 1024 else "1 MB"
        target = mb if size == 1024 * 1024 else None
        ratio_row(f"echo {label} p50 (ms)", median(d.payload[size]) * 1e3, median(g.payload[size]) * 1e3, target)
    if g.starts:
        ratio_row("session start (ms)", median(d.starts) * 1e3, median(g.starts) * 1e3, start, digits=1)
    return rows


def relay_rows(transport: str, figures: dict[str, Figures], side: str = RELAY, burn_us: int = 0) -> list[Row]:
    """The relay-alone side: judged on p50 only (the issue's mark); the rest for scale."""
    d, r = figures["direct"], figures[side]
    labels = {RELAY: f"{transport} (relay alone)", RELAY_BASELINE: f"{transport} (relay alone, baseline)",
              FLOOR: f"{transport} (floor relay)", FLOOR_DURABLE: f"{transport} (floor relay, durable)",
              BURN: f"{transport} (relay + {burn_us} us CPU/call)"}
    label = labels.get(side) or f"{transport} (relay + {burn_us} us {side.removeprefix(BURN).strip()})"
    rows: list[Row] = []
    judged = RELAY_P50 if side in (RELAY, RELAY_BASELINE) else None
    for metric, direct, relay, target in (
        ("echo p50 (ms)", median(d.sequential) * 1e3, median(r.sequential) * 1e3, judged),
        ("echo p99 (ms)", percentile(d.sequential, 0.99) * 1e3, percentile(r.sequential, 0.99) * 1e3, None),
        (f"calls/s, {CALLERS} concurrent", median(d.rates), median(r.rates), None),
    ):
        digits = 0 if metric.startswith("calls") else 2
        mark = "" if target is None else f"{target.text} {'PASS' if target.check(relay / direct) else 'MISS'}"
        rows.append((label, metric, f"{direct:.{digits}f}", f"{relay:.{digits}f}", f"{relay / direct:.2f}x", mark))
    up_ms, relay_ms = d.cpu / d.cpu_calls * 1e3, r.cpu / r.cpu_calls * 1e3
    rows.append((label, "CPU/call sequential (ms): upstream | relay", f"{up_ms:.3f}", f"{relay_ms:.3f}",
                 f"{relay_ms / up_ms:.2f}x", ""))
    return rows + neighbour_rows(label, d, r)


def neighbour_rows(label: str, d: Figures, h: Figures) -> list[Row]:
    """The CPU per sequential call of the hop's neighbours: the upstream behind it, the client before it."""
    rows: list[Row] = []
    for metric, direct, hop in (("upstream", d.upstream_cpu, h.upstream_cpu), ("client", d.client_cpu, h.client_cpu)):
        direct_ms, hop_ms = direct / d.cpu_calls * 1e3, hop / h.cpu_calls * 1e3
        rows.append((label, f"CPU/call sequential (ms): {metric}, without | with the hop", f"{direct_ms:.3f}",
                     f"{hop_ms:.3f}", f"{hop_ms / direct_ms:.2f}x" if direct_ms else "-", ""))
    return rows


def print_table(rows: list[Row]) -> None:
    header: Row = ("transport", "metric", "direct", "gateway", "ratio", "target (judged: policy on)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
    align = ["<", "<", ">", ">", ">", "<"]

    def line(row: Row) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths, strict=True)).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    last = None
    for row in rows:
        if last is not None and row[0] != last:
            print()
        print(line(row))
        last = row[0]


# ---- profiling ---------------------------------------------------------------------------------


async def profile(tmp: Path, out: Path, transport: str, calls: int, log: TextIO, relay: bool = False) -> None:
    """Sequential echo through a gateway (or the relay alone) under cProfile; written at its exit."""
    if transport == "stdio":
        config = write_site(tmp / "profile", listen="stdio", upstream="stdio")
        env = {"SECUREGATEWAY_MODEL_KEY": MODEL_KEY}
        argv = relay_argv(config, out) if relay else gateway_argv(config, out)
        async with stdio_session(argv, log, env) as client:
            await timed_calls(client, f"{UPSTREAM}.echo", [f"warm {i}" for i in range(50)])
            samples = await timed_calls(client, f"{UPSTREAM}.echo", [f"hello {i}" for i in range(calls)])
    else:
        up_port, gw_port = free_port(), free_port()
        up_url, gw_url = f"http://127.0.0.1:{up_port}/mcp", f"http://127.0.0.1:{gw_port}/mcp"
        config = write_site(tmp / "profile", listen=gw_url, upstream=up_url)
        with (
            spawned(upstream_argv("--http", f"127.0.0.1:{up_port}"), up_port, log),
            spawned(gateway_argv(config, out), gw_port, log),
        ):
            async with http_session(gw_url, MODEL_KEY) as client:
                await timed_calls(client, f"{UPSTREAM}.echo", [f"warm {i}" for i in range(50)])
                samples = await timed_calls(client, f"{UPSTREAM}.echo", [f"hello {i}" for i in range(calls)])
    print(f"{calls} sequential calls through the profiled {transport} gateway: p50 {median(samples) * 1e3:.2f} ms")


def print_profile(out: Path, top: int) -> None:
    for key in ("cumulative", "tottime"):
        print(f"\n---- gateway profile, top {top} by {key} ----")
        pstats.Stats(str(out)).strip_dirs().sort_stats(key).print_stats(top)


# ---- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke check in under a minute")
    parser.add_argument("--transport", choices=("stdio", "http", "both"), default="both")
    parser.add_argument("--rounds", type=int, help="override the number of interleaved rounds")
    parser.add_argument("--starts", type=int, help="override the number of session starts per side (default 10)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="write a cProfile of the gateway under sequential load to FILE instead")
    parser.add_argument("--profile-calls", type=int, default=3000)
    parser.add_argument("--profile-relay", action="store_true",
                        help="with --profile (stdio): profile the relay alone instead of the full gateway")
    parser.add_argument("--no-relay", action="store_true", help="leave the relay-alone side out of the stdio run")
    parser.add_argument("--floor", action="store_true",
                        help="add bench/floor_relay.py to the stdio run: the least a Python stdio hop can do,"
                             " plain and with a durable (fdatasync'd) line per call")
    parser.add_argument("--unsynced", action="store_true",
                        help="add a stdio gateway with `[audit] fsync = false`: what the audit's fsync costs")
    parser.add_argument("--burn", type=int, default=0, metavar="US",
                        help="add the stdio relay alone plus US microseconds of pure CPU per tools/call"
                             " (bench/relay_only.py --burn-us): what that much gateway CPU costs in latency")
    parser.add_argument("--burn-at", default="before-forward", metavar="WHEN[,WHEN...]",
                        help="with --burn: where the CPU is spent, one side per position"
                             f" ({', '.join(BURN_POSITIONS)}); default before-forward")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the gateway (and on stdio the relay alone) from another checkout DIR"
                             " (e.g. main) in the same rounds; its rows are labelled `baseline`")
    parser.add_argument("--durability", choices=(*DURABILITY, "both"), default=DURABILITY[0],
                        help="[audit] durability of the gateway; `both` runs one stdio gateway per mode, interleaved")
    args = parser.parse_args()
    modes = DURABILITY if args.durability == "both" else (args.durability,)
    baseline = args.baseline.resolve() if args.baseline else None
    if baseline is not None and not (baseline / "proxy" / "cli").is_dir():
        parser.error(f"--baseline {args.baseline}: not a SecureGateway checkout (no proxy/cli/ in it)")
    if args.burn < 0:
        parser.error("--burn: must be 0 or more microseconds")
    burn_at = tuple(dict.fromkeys(p.strip() for p in args.burn_at.split(",")))
    unknown = [p for p in burn_at if p not in BURN_POSITIONS]
    if unknown or not burn_at:
        named = unknown[0] if unknown else args.burn_at
        parser.error(f"--burn-at: `{named}` is not one of {', '.join(BURN_POSITIONS)}")
    counts = QUICK if args.quick else DEFAULT
    if args.rounds:
        counts = Counts(**{**counts.__dict__, "rounds": max(1, args.rounds)})
    if args.starts:
        counts = Counts(**{**counts.__dict__, "starts": max(1, args.starts)})

    def progress(message: str) -> None:
        print(f"  .. {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with open(tmp / "processes.log", "w") as log:
            if args.profile:
                transport = "http" if args.transport == "http" else "stdio"
                out = args.profile.resolve()
                anyio.run(profile, tmp, out, transport, args.profile_calls, log, args.profile_relay)
                print_profile(out, 30)
                return 0
            started = time.perf_counter()
            rows: list[Row] = []
            try:
                for transport, bench in (("stdio", bench_stdio), ("http", bench_http)):
                    if args.transport in (transport, "both"):
                        progress(f"{transport}: client -> upstream, direct and through the gateway")
                        extra: dict[str, Any] = {"baseline": baseline} | (
                            {"relay": not args.no_relay, "floor": args.floor, "unsynced": args.unsynced,
                             "burn_us": args.burn, "burn_at": burn_at}
                            if transport == "stdio" else {})
                        figures = anyio.run(functools.partial(bench, tmp, counts, log, progress, modes, **extra))
                        for mode in modes if transport == "stdio" else modes[:1]:
                            rows += rows_for(transport, figures, gateway_side(mode))
                        if BASELINE in figures:
                            rows += rows_for(transport, figures, BASELINE)
                        if UNSYNCED in figures:
                            rows += rows_for(transport, figures, UNSYNCED)
                        if RELAY in figures:
                            rows += relay_rows(transport, figures)
                        if RELAY_BASELINE in figures:
                            rows += relay_rows(transport, figures, RELAY_BASELINE)
                        for at in burn_at:
                            if burn_side(at) in figures:
                                rows += relay_rows(transport, figures, burn_side(at), burn_us=args.burn)
                        if FLOOR in figures:
                            rows += relay_rows(transport, figures, FLOOR)
                        if FLOOR_DURABLE in figures:
                            rows += relay_rows(transport, figures, FLOOR_DURABLE)
            except Exception:
                log.flush()
                tail = (tmp / "processes.log").read_text()[-3000:]
                if tail:
                    print(f"---- last output of the spawned processes ----\n{tail}", file=sys.stderr)
                raise
    elapsed = time.perf_counter() - started
    c = counts
    print(f"SecureGateway relay benchmark: gateway = `securegateway run` process; policy {POLICY_RULES} rules,"
          f" audit log on (fsync, durability {' / '.join(modes)}), result_scan = flag"
          + ("; relay alone = bench/relay_only.py (no policy, audit, scanning or interceptors)"
             if args.transport != "http" and not args.no_relay else ""))
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs;"
          f" {c.rounds} interleaved rounds x ({c.sequential} sequential + {c.callers}x{c.per_caller} concurrent +"
          f" {'/'.join(map(str, c.payload))} payload calls) per side; {c.starts} session starts per side;"
          f" {elapsed:.0f} s")
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every process and the temp dir are already cleaned up
        sys.exit(130)
