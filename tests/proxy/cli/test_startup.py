"""``securegateway run`` on stdio starts its upstreams first, hands them to their links, and
leaves nothing behind when start-up fails (proxy/upstream/prespawn.py, proxy/cli)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from proxy.config import load_config
from proxy.upstream.prespawn import DEFAULT_INHERITED_ENV_VARS, prespawned, upstream_environment
from tests.conftest import ROOT, gateway_env
from tests.e2e.conftest import GPT_KEY, cli, make_site

pytestmark = pytest.mark.anyio

# An upstream that says who it is, then serves as the bundled test server does.
PID_THEN_SERVE = textwrap.dedent("""\
    import os, runpy, sys
    with open(sys.argv[1], "a") as f:  # one line per process started
        f.write(f"{os.getpid()}\\n")
    sys.argv = ["demo.testserver", "--name", sys.argv[2]]
    runpy.run_module("demo.testserver", run_name="__main__")
""")

# An upstream that records what it was started with; the first one started exits at once
# (so the link spawns the next itself), the next one serves.
DUMP_THEN_SERVE = textwrap.dedent("""\
    import json, os, runpy, sys
    out = sys.argv[1]
    n = len([p for p in os.listdir(out) if p.endswith(".json")])
    with open(os.path.join(out, f"{n}.tmp"), "w") as f:
        json.dump({"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd(),
                   "session_leader": os.getsid(0) == os.getpid()}, f)
    os.replace(os.path.join(out, f"{n}.tmp"), os.path.join(out, f"{n}.json"))
    if n == 0:
        sys.exit(0)
    sys.argv = ["demo.testserver", "--name", "calendar"]
    runpy.run_module("demo.testserver", run_name="__main__")
""")


def script(tmp_path: Path, text: str) -> str:
    path = tmp_path / "upstream.py"
    path.write_text(text)
    return str(path)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def wait_for(path: Path, timeout: float = 60.0) -> str:
    """The file's text once it exists and is not empty (a writer may have created it only)."""
    target = anyio.Path(path)
    with anyio.fail_after(timeout):
        while not (await target.exists() and (text := await target.read_text())):
            await anyio.sleep(0.02)
    return text


class RawClient:
    """JSON-RPC lines on the gateway's stdin/stdout: nothing is sent until a test says so."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._buffer = b""

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")

    async def request(self, rid: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.send({"jsonrpc": "2.0", "id": rid, "method": method, **({"params": params} if params else {})})
        with anyio.fail_after(60):
            while True:
                message = await self._line()
                if message.get("id") == rid and "method" not in message:
                    return message

    async def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            self._buffer += await self.process.stdout.receive()
        line, self._buffer = self._buffer.split(b"\n", 1)
        decoded: dict[str, Any] = json.loads(line)
        return decoded

    async def initialize(self) -> dict[str, Any]:
        answer = await self.request(1, "initialize", {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "startup-test", "version": "1"},
        })
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer


@asynccontextmanager
async def gateway(config: Path, env: dict[str, str] | None = None) -> AsyncIterator[RawClient]:
    env = env or {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    process = await anyio.open_process(cli("run", "--config", str(config)), cwd=ROOT, env=env,
                                       stderr=subprocess.DEVNULL)
    try:
        yield RawClient(process)
    finally:
        with suppress(OSError):
            process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(20):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def test_the_upstream_is_running_before_the_client_sends_anything_and_is_adopted(tmp_path: Path) -> None:
    pid_file = tmp_path / "upstream.pid"
    site = make_site(tmp_path / "site", listen="stdio",
                     upstreams=[("calendar", [sys.executable, script(tmp_path, PID_THEN_SERVE), str(pid_file),
                                              "calendar"])])
    async with gateway(site.config_path) as client:
        upstream = int(await wait_for(pid_file))  # not one byte sent to the gateway yet
        assert parent_of(upstream) == client.process.pid
        answer = await client.initialize()
        assert answer["result"]["serverInfo"]["name"] == "calendar"  # one upstream: the gateway is it
        listed = await client.request(2, "tools/list")
        assert "echo" in {t["name"] for t in listed["result"]["tools"]} or \
            "calendar.echo" in {t["name"] for t in listed["result"]["tools"]}
        call = await client.request(3, "tools/call", {"name": "calendar.echo", "arguments": {"text": "hi"}})
        assert call["result"]["content"][0]["text"] == "hi"
        assert children(client.process.pid) == {upstream}  # the link adopted it: no second spawn


async def test_a_2026_client_on_stdio_is_served_by_the_pre_spawned_upstreams(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    upstream = script(tmp_path, PID_THEN_SERVE)
    pid_files = {name: tmp_path / f"{name}.pids" for name in ("calendar", "search")}
    site = make_site(tmp_path / "site", listen="stdio", upstreams=[
        (name, [sys.executable, upstream, str(path), name]) for name, path in pid_files.items()
    ])
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    params = StdioServerParameters(command=sys.executable, args=cli("run", "--config", str(site.config_path))[1:],
                                   env=env, cwd=ROOT)
    with anyio.fail_after(90):
        async with Client(params, mode="2026-07-28") as client:
            result = await client.call_tool("search.echo", {"text": "modern"})
            assert not result.is_error
    for path in pid_files.values():  # each upstream was started once: the pre-spawned one served
        assert len((await anyio.Path(path).read_text()).split()) == 1


@pytest.mark.parametrize("failure", ["no model key", "policy file missing"])
async def test_a_start_up_failure_after_the_upstreams_started_leaves_no_process_behind(
    tmp_path: Path, failure: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    # the upstream and a process it started (same process group), each writing its pid at once
    script = f'echo $$ > {pids}/upstream; sleep 120 & echo $! > {pids}/child; wait'
    site = make_site(tmp_path / "site", listen="stdio", upstreams=[("calendar", ["/bin/sh", "-c", script])])
    env = gateway_env()
    if failure == "no model key":
        env.pop("SECUREGATEWAY_MODEL_KEY", None)
        expected = "a stdio client needs a model key"
    else:
        env["SECUREGATEWAY_MODEL_KEY"] = GPT_KEY
        (site.root / "policies.yaml").unlink()
        expected = "policies.yaml:1:1: <file>: cannot read file"
    out = await anyio.to_thread.run_sync(lambda: subprocess.run(
        cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, stdin=subprocess.PIPE,
    ))
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr
    started = [int((pids / name).read_text()) for name in ("upstream", "child")]  # they did start
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert not any(alive(pid) for pid in started)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_during_start_up_stops_the_gateway_and_its_pre_spawned_upstreams(
    tmp_path: Path, sig: signal.Signals
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    # an upstream that would outlive the gateway: it ignores stdin and keeps a child
    script = f'echo $$ > {pids}/upstream; sleep 120 & echo $! > {pids}/child; wait'
    site = make_site(tmp_path / "site", listen="stdio", upstreams=[("calendar", ["/bin/sh", "-c", script])])
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    process = await anyio.open_process(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env,
                                       stderr=subprocess.PIPE)
    try:
        await wait_for(pids / "child")  # the gateway is still importing and loading: no client yet
        process.send_signal(sig)
        with anyio.fail_after(60):
            await process.wait()
        started = [int(await anyio.Path(pids / name).read_text()) for name in ("upstream", "child")]
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        assert not any(alive(pid) for pid in started)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def test_a_missing_upstream_command_reads_as_it_always_did(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-server")
    site = make_site(tmp_path / "site", listen="stdio", upstreams=[
        ("search", [missing, "--flag"]),
        ("calendar", [sys.executable, "-m", "demo.testserver", "--name", "calendar"]),
    ])
    async with gateway(site.config_path) as client:
        await client.initialize()
        names = {t["name"] for t in (await client.request(2, "tools/list"))["result"]["tools"]}
        assert "calendar.echo" in names and not any(n.startswith("search.") for n in names)
        call = await client.request(3, "tools/call", {"name": "search.echo", "arguments": {}})
        assert call["error"]["message"] == f"upstream `search` is unavailable: command not found: `{missing}`"
        ok = await client.request(4, "tools/call", {"name": "calendar.echo", "arguments": {"text": "ok"}})
        assert ok["result"]["content"][0]["text"] == "ok"


async def test_an_adopted_upstream_starts_exactly_as_a_link_spawned_one(tmp_path: Path) -> None:
    dumps, work = tmp_path / "dumps", tmp_path / "work"
    dumps.mkdir()
    work.mkdir()
    site = make_site(tmp_path / "site", listen="stdio",
                     upstreams=[("calendar", [sys.executable, script(tmp_path, DUMP_THEN_SERVE), str(dumps)])])
    text = site.config_path.read_text().replace(
        'name = "calendar"\n',
        f'name = "calendar"\ncwd = "{work}"\nenv = {{ SG_SET = "1" }}\nenv_passthrough = ["SG_PASS"]\n', 1,
    )
    site.config_path.write_text(text)
    env = gateway_env() | {"SG_PASS": "passed", "SG_NOT_PASSED": "secret", "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    async with gateway(site.config_path, env) as client:
        first = json.loads(await wait_for(dumps / "0.json"))  # pre-spawned, before any message
        await client.initialize()  # the adopted one has exited: the link spawns the next itself
        second = json.loads(await wait_for(dumps / "1.json"))
    assert first == second
    assert first["cwd"] == str(work) and first["session_leader"]
    assert first["env"]["SG_SET"] == "1" and first["env"]["SG_PASS"] == "passed"
    assert "SG_NOT_PASSED" not in first["env"]


def test_the_environment_is_the_sdks_default_plus_the_configured(tmp_path: Path, monkeypatch: Any) -> None:
    from mcp.client.stdio import DEFAULT_INHERITED_ENV_VARS as SDK_VARS
    from mcp.client.stdio import get_default_environment

    assert tuple(SDK_VARS) == DEFAULT_INHERITED_ENV_VARS
    site = make_site(tmp_path / "site", listen="stdio")
    text = site.config_path.read_text().replace(
        'name = "calendar"\n', 'name = "calendar"\nenv = { A = "1", PATH = "/override" }\nenv_passthrough = ["B"]\n', 1
    )
    site.config_path.write_text(text)
    monkeypatch.setenv("B", "from-gateway")
    monkeypatch.setenv("SHELL", "() { evil; }")  # the SDK skips function-looking values
    up = next(u for u in load_config(site.config_path).upstreams if u.name == "calendar")
    link_env = {k: os.environ[k] for k in up.env_passthrough if k in os.environ} | dict(up.env)
    assert upstream_environment(up) == get_default_environment() | link_env
    assert upstream_environment(up)["PATH"] == "/override" and "SHELL" not in upstream_environment(up)


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=gateway_env(), capture_output=True,
                         text=True, timeout=120, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_reading_the_command_line_and_the_config_loads_none_of_the_heavy_stacks(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", listen="stdio")
    loaded = _modules_after(textwrap.dedent(f"""\
        from pathlib import Path
        import proxy.cli, proxy.upstream.prespawn
        proxy.cli._parser(full=False).parse_args(["run", "--config", "x"])
        proxy.cli.load_config(Path({str(site.config_path)!r}))
    """))
    heavy = {"mcp", "mcp_types", "pydantic", "policy", "negotiation", "jsonschema", "proxy.bootstrap",
             "proxy.screen.classify", "httpx2", "cryptography", "structlog", "yaml", "aiohttp"}
    assert not heavy & loaded


def test_the_gateway_does_not_import_what_a_plain_start_does_not_use() -> None:
    loaded = _modules_after("import proxy.cli, proxy.bootstrap")
    unused = {"onnxruntime", "tokenizers", "opentelemetry.sdk", "proxy.admin.app", "proxy.telemetry",
              "proxy.console", "policy.detect.onnx_model",
              "aiohttp", "proxy.upstream.http_pool"}  # (the SDK itself imports the opentelemetry API)
    assert "proxy.gateway" in loaded
    assert not {m for m in loaded if m in unused or m.split(".")[0] in ("onnxruntime", "tokenizers")}


async def test_a_spawn_cancelled_while_it_runs_is_recorded_and_killed_with_its_children(tmp_path: Path) -> None:
    # A signal's cancellation can land inside the spawn (after the fork, before it returns).
    # The spawn is seen through (shielded) and recorded, so the group kill reaches the
    # process and everything it started; unshielded, the process would be killed alone, unrecorded.
    pids = tmp_path / "pids"
    pids.mkdir()
    # ignores SIGTERM, so it lives on until the group's SIGKILL
    script = f"trap '' TERM; echo $$ > {pids}/upstream; sleep 120 & echo $! > {pids}/child; wait"
    site = make_site(tmp_path / "site", listen="stdio", upstreams=[("calendar", ["/bin/sh", "-c", script])])
    config = load_config(site.config_path)
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            scope.cancel()  # already cancelled when the spawn starts
            async with prespawned(config.upstreams):
                # Both processes exist before the exit's kill (on a loaded machine the shell may
                # not even have run its `trap` yet): what is tested is whom the kill reaches.
                with anyio.CancelScope(shield=True):
                    await wait_for(pids / "child", timeout=20)
                await anyio.sleep_forever()
        started = [int(await wait_for(pids / name, timeout=10)) for name in ("upstream", "child")]
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert not any(alive(pid) for pid in started)
