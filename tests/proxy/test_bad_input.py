"""Bad input and faults: each gets a JSON-RPC error or a clean close, and the gateway stays up."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import MCPError

from tests.conftest import ROOT, connect, gateway_env, running
from tests.proxy.test_relay import make_gateway, stdio_up

pytestmark = pytest.mark.anyio

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_malformed_json_and_wrong_shapes_get_json_rpc_errors_over_http(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar")])
    async with running(gw), httpx2.AsyncClient() as http, connect(url) as client:
        garbage = await http.post(url, content=b"{not json", headers=HEADERS)
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
        shape = await http.post(url, json={"jsonrpc": "2.0", "method": 5, "id": []}, headers=HEADERS)
        assert shape.status_code == 400
        assert shape.json()["error"]["code"] in (-32600, -32602, -32700)
        assert (await client.call_tool("calendar.echo", {"text": "still up"})).content[0].text == "still up"


async def test_unknown_methods_and_bad_params_are_json_rpc_errors(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar"), stdio_up("search")])
    async with running(gw), connect(url) as client:
        with pytest.raises(MCPError) as err:
            await client.session._dispatcher.send_raw_request("vendor/unknown", {})
        assert err.value.code == -32601
        with pytest.raises(MCPError) as err:
            await client.session._dispatcher.send_raw_request("tools/call", {"name": 7})
        assert err.value.code == -32602
        with pytest.raises(MCPError) as err:
            await client.session._dispatcher.send_raw_request(
                "tools/call", {"name": "calendar.echo", "arguments": "not an object"})
        assert err.value.code == -32602


async def test_a_request_storm_is_served_and_the_gateway_stays_up(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar")])
    results: list[str] = []
    async with running(gw), connect(url) as client:

        async def one(i: int) -> None:
            results.append((await client.call_tool("calendar.echo", {"text": str(i)})).content[0].text)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)
        assert sorted(results, key=int) == [str(i) for i in range(200)]


async def test_a_client_that_disconnects_mid_call_leaves_no_upstream_behind(tmp_path: Path) -> None:
    marker = tmp_path / "cancelled.txt"
    gw, url = make_gateway(tmp_path, [stdio_up("calendar", "--marker", str(marker))])
    async with running(gw):
        async with connect(url) as client:
            pid = int((await client.call_tool("calendar.pid", {})).content[0].text)
            with anyio.move_on_after(0.3):
                await client.call_tool("calendar.slow", {"steps": 100, "delay": 0.1})
        with anyio.fail_after(15):
            while alive(pid):
                await anyio.sleep(0.05)
        assert not gw.sessions
        async with connect(url) as again:  # everyone else is still served
            assert (await again.call_tool("calendar.echo", {"text": "next"})).content[0].text == "next"


def test_stdio_front_survives_a_garbage_line(tmp_path: Path) -> None:
    from tests.e2e.conftest import GPT_KEY, cli, make_site

    site = make_site(tmp_path / "site", listen="stdio")
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    stdin = "this is not json\n" + json.dumps(init) + "\n"
    out = subprocess.run(cli("run", "--config", str(site.config_path)), input=stdin, env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=90)
    replies = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert any(r.get("id") == 1 and "result" in r for r in replies), out.stdout + out.stderr
    assert out.returncode == 0
    assert os.path.exists(site.audit_path)


def test_stdio_front_refuses_an_oversized_message_by_id_and_keeps_serving(tmp_path: Path) -> None:
    from tests.e2e.conftest import GPT_KEY, cli, make_site

    site = make_site(tmp_path / "site", listen="stdio", gateway="max_message_bytes = 1048576")
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    frames = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "search.echo", "arguments": {"text": "x" * (2 * 2**20)}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "search.echo", "arguments": {"text": "ok"}}},
    ]
    proc = subprocess.Popen(cli("run", "--config", str(site.config_path)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT, text=True)
    replies: dict[object, dict] = {}
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(json.dumps(f) + "\n" for f in frames))
        proc.stdin.flush()
        for line in proc.stdout:  # the client keeps stdin open until its answers arrive
            reply = json.loads(line)
            replies[reply.get("id")] = reply
            if {2, 3} <= replies.keys():
                break
    finally:
        proc.kill()
        proc.wait()
    assert "exceeds the gateway's limit of 1048576 bytes" in replies[2]["error"]["message"]
    assert replies[3]["result"]["content"][0]["text"] == "ok"
