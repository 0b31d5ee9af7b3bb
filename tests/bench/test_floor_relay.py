"""bench/floor_relay.py: the marks the gateway is benchmarked against relay a real session.

The durable floor must keep the promise it stands for (a durable line per ``tools/call``
before its reply), or its row in ``bench_gateway.py --floor`` would flatter the gateway.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = [sys.executable, "-m", "demo.testserver", "--name", "bench"]


async def _echo_calls(mode: str, env: dict[str, str], calls: int) -> list[str]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "bench.floor_relay", mode],
                                   env={"FLOOR_UPSTREAM": json.dumps(UPSTREAM), **env}, cwd=ROOT)
    texts: list[str] = []
    with anyio.fail_after(30):
        async with Client(stdio_client(params), mode="legacy") as client, anyio.create_task_group() as tg:
            async def one(i: int) -> None:  # concurrent: several calls share a flush
                result = await client.call_tool("echo", {"text": f"hello {i}"})
                texts.append(result.content[0].text)  # type: ignore[union-attr]

            for i in range(calls):
                tg.start_soon(one, i)
    return texts


@pytest.mark.anyio
async def test_the_plain_floor_relays_calls() -> None:
    texts = await _echo_calls("plain", {}, 3)
    assert sorted(texts) == [f"hello {i}" for i in range(3)]


@pytest.mark.anyio
async def test_the_durable_floor_records_one_line_per_call(tmp_path: Path) -> None:
    audit = tmp_path / "floor.jsonl"
    texts = await _echo_calls("durable", {"FLOOR_AUDIT": str(audit)}, 6)
    assert sorted(texts) == sorted(f"hello {i}" for i in range(6))
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == 6  # tools/call only: initialize and tools/list are not recorded
    assert len({json.dumps(line["id"]) for line in lines}) == 6


@pytest.mark.parametrize(("mode", "env"), [("durable", {}), ("plain", {"FLOOR_AUDIT": "x"}), ("other", {})])
def test_a_mode_without_its_file_is_refused(mode: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.floor_relay", mode], cwd=ROOT, capture_output=True, text=True,
                          env={"FLOOR_UPSTREAM": json.dumps(UPSTREAM), **env, "PATH": "/usr/bin:/bin"}, timeout=30)
    assert done.returncode == 2
    assert "usage:" in done.stderr
