"""The gateway process as operators run it: start, serve, stop on a signal with nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.conftest import ROOT, connect, gateway_env, wait_port
from tests.e2e.conftest import GPT_KEY, cli, make_site

pytestmark = pytest.mark.anyio


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(c) for c in text)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_the_gateway_cleanly_reaping_upstreams_and_closing_the_listener(
    tmp_path: Path, sig: signal.Signals
) -> None:
    site = make_site(tmp_path / "site")
    assert site.url is not None
    port = int(site.url.split(":")[2].split("/")[0])
    proc = subprocess.Popen(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await anyio.to_thread.run_sync(wait_port, port, 60.0)
        async with connect(site.url, GPT_KEY) as client:
            assert not (await client.call_tool("search.echo", {"text": "up"})).is_error
            upstreams = children(proc.pid)
            assert len(upstreams) == 2
            proc.send_signal(sig)
            code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=20))
        assert code == 0
        assert not any(alive(pid) for pid in upstreams)
        with pytest.raises(OSError):
            wait_port(port, timeout=0.5)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bad_config_names_the_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nlisten = "stdio"\nbogus = 1\n[[upstreams]]\nname = "a"\ncommand = "not-a-list"\n')
    out = subprocess.run(cli("run", "--config", str(config)), cwd=ROOT, env=gateway_env(),
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "gateway.bogus: unknown key" in out.stderr
    assert "upstreams[0].command: expected a non-empty list of strings" in out.stderr
    assert os.path.basename(str(config)) in out.stderr
