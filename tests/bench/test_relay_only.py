"""bench/relay_only.py: the relay alone, and with ``--burn-us`` the relay plus a known amount of CPU.

The burning relay calibrates ``bench_gateway.py --burn``: what a given amount of hop CPU costs
in latency. Its row means something only if it relays calls unchanged and burns what it says.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from bench.relay_only import Burn

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "gateway.toml"
    argv = ", ".join(f'"{a}"' for a in (sys.executable, "-m", "demo.testserver", "--name", "bench"))
    config.write_text(textwrap.dedent(f"""\
        [gateway]
        listen = "stdio"

        [[upstreams]]
        name = "bench"
        command = [{argv}]
        """))
    return config


def test_a_burn_spends_at_least_its_cpu_on_this_thread() -> None:
    burn = Burn(2000)
    started = time.thread_time_ns()
    for _ in range(5):
        burn.spin()
    spent = time.thread_time_ns() - started
    assert spent >= 5 * 2_000_000
    assert burn.spent_ns >= 5 * 2_000_000


@pytest.mark.anyio
async def test_a_burn_passes_the_call_and_its_result_through_unchanged() -> None:
    seen: list[Any] = []

    async def call_next(call: Any) -> dict[str, Any]:
        seen.append(call)
        return {"content": [{"type": "text", "text": "done"}], "isError": False}

    call = object()
    burn = Burn(100)
    result = await burn(call, call_next)  # type: ignore[arg-type]
    assert seen == [call]
    assert result == {"content": [{"type": "text", "text": "done"}], "isError": False}
    assert burn.spent_ns >= 100_000


@pytest.mark.anyio
async def test_the_burning_relay_relays_a_real_session(tmp_path: Path) -> None:
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "bench.relay_only", str(_config(tmp_path)), "--burn-us", "500"],
                                   cwd=ROOT)
    with anyio.fail_after(30):
        async with Client(stdio_client(params), mode="legacy") as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("bench.echo", {"text": "through the burn"})
    assert "bench.echo" in names
    assert result.content[0].text == "through the burn"  # type: ignore[union-attr]


@pytest.mark.parametrize("argv", [["--burn-us", "-1"], ["--burn-us", "lots"], []])
def test_bad_arguments_are_refused_with_usage(tmp_path: Path, argv: list[str]) -> None:
    config = [str(_config(tmp_path))] if argv else []
    done = subprocess.run([sys.executable, "-m", "bench.relay_only", *config, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "usage:" in done.stderr
