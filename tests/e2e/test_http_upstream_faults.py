"""What a Streamable HTTP upstream does on the wire reaches the client as on a direct connection.

The upstream is ``tests/e2e/stream_upstream.py`` (raw HTTP, so it can do what the SDK server
will not); "direct" is the SDK's own client against the same upstream, and the gateway's link
POSTs the calls itself (proxy/upstream/http_call.py). Progress sent on the upstream's standalone
GET stream reaches the caller's callback (and, as directly, not once the call is answered);
each fault of a reply (5xx, a body that is not JSON, an unexpected content type, an SSE reply
that ends without the answer) is the error a direct client reports. Where a direct SDK client
is stuck (its session expired upstream: every later call "Session terminated"; the upstream gone
and back: its client ends), the link starts a new session and the next call goes through. An
upstream that cancels its own request to the client (a sampling) has it cancelled under the
client's id, never under the upstream's.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from tests.conftest import ROOT, connect, free_port, gateway_env, running, wait_port
from tests.e2e.conftest import GPT_KEY, make_site

pytestmark = pytest.mark.anyio

ALL = "rules:\n  - id: all\n    model: '*'\n    allow_tools: [search.*]\n"


@contextlib.contextmanager
def stream_upstream(log: Path, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.stream_upstream", "--port", str(port), "--log", str(log)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, url: str) -> AsyncIterator[Any]:
    site = make_site(tmp_path / "site", policy=ALL, upstreams=[("search", ["replaced"])])
    site.config_path.write_text(site.config_path.read_text().replace('command = ["replaced"]', f'url = "{url}"'))
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        yield client


def received(log: Path, method: str) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [m for m in map(json.loads, lines) if m.get("method") == method]


async def progress_seen(client: Any, tool: str) -> tuple[str, list[float]]:
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    with anyio.fail_after(30):
        result = await client.call_tool(tool, {"steps": 3, "after": True}, progress_callback=on_progress)
        await anyio.sleep(0.6)  # the upstream sends one more progress on its GET stream after the answer
        assert (await client.call_tool(tool.replace("progress_on_get", "echo"), {"text": "x"})).content
    return result.content[0].text, steps


async def test_progress_on_the_upstreams_get_stream_reaches_the_caller_as_directly(tmp_path: Path) -> None:
    with stream_upstream(tmp_path / "direct.jsonl") as (url, _):
        async with connect(url) as client:
            direct = await progress_seen(client, "progress_on_get")
    with stream_upstream(tmp_path / "gateway.jsonl") as (url, _):
        async with gateway(tmp_path, url) as client:
            through = await progress_seen(client, "search.progress_on_get")
    assert direct == ("done 3", [1.0, 2.0, 3.0])  # the late one (4) is dropped: the call was answered
    assert through == direct


FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("status", {"code": 500}), ("status", {"code": 503}), ("status", {"code": 400}),
    ("not_json", {}), ("html", {}), ("sse_cut", {}),
]


async def faults_seen(client: Any, prefix: str) -> list[tuple[int, str]]:
    seen = []
    with anyio.fail_after(60):
        for tool, arguments in FAULTS:
            with pytest.raises(MCPError) as failed:
                await client.call_tool(prefix + tool, arguments)
            seen.append((failed.value.code, failed.value.message))
        # and the session goes on, in both
        assert (await client.call_tool(prefix + "echo", {"text": "still here"})).content[0].text == "still here"
    return seen


async def test_each_fault_of_an_upstream_reply_is_the_error_a_direct_client_reports(tmp_path: Path) -> None:
    with stream_upstream(tmp_path / "direct.jsonl") as (url, _):
        async with connect(url) as client:
            direct = await faults_seen(client, "")
    with stream_upstream(tmp_path / "gateway.jsonl") as (url, _):
        async with gateway(tmp_path, url) as client:
            through = await faults_seen(client, "search.")
    assert [code for code, _ in through] == [code for code, _ in direct] == [
        -32603, -32603, -32603, -32700, -32600, -32000]
    not_json = [i for i, (tool, _) in enumerate(FAULTS) if tool == "not_json"]
    for i, ((_, theirs), (_, ours)) in enumerate(zip(direct, through, strict=True)):
        if i in not_json:  # the parser's own words follow the SDK transport's
            assert theirs.startswith("Failed to parse JSON response: ") and ours.startswith(
                "Failed to parse JSON response: ")
        else:
            assert ours == theirs


async def test_a_session_the_upstream_forgot_is_restarted_and_the_next_call_goes_through(tmp_path: Path) -> None:
    with stream_upstream(tmp_path / "direct.jsonl") as (url, _):
        async with connect(url) as client:
            await client.list_tools()  # the client validates results against its listing
            assert (await client.call_tool("forget", {})).content[0].text == "forgotten"
            with pytest.raises(MCPError) as stuck:  # a direct SDK client keeps its dead session
                await client.call_tool("echo", {"text": "x"})
    assert (stuck.value.code, stuck.value.message) == (-32600, "Session terminated")
    log = tmp_path / "gateway.jsonl"
    with stream_upstream(log) as (url, _):
        async with gateway(tmp_path, url) as client:
            with anyio.fail_after(30):
                assert (await client.call_tool("search.forget", {})).content[0].text == "forgotten"
                # the 404 means the upstream did not run it: a new session, and the call is sent there
                assert (await client.call_tool("search.echo", {"text": "again"})).content[0].text == "again"
                with pytest.raises(MCPError) as expired:  # a request the new session refuses too: as directly
                    await client.call_tool("search.expire", {})
                assert (expired.value.code, expired.value.message) == (-32600, "Session terminated")
                assert (await client.call_tool("search.echo", {"text": "third"})).content[0].text == "third"
    assert len(received(log, "initialize")) == 4  # the first, after forget, after each expire 404
    assert [m["params"]["arguments"].get("text") for m in received(log, "tools/call")
            if m["params"]["name"] == "echo"] == ["again", "third"]


async def test_an_upstream_that_dies_mid_call_fails_that_call_and_the_link_follows_it_back(tmp_path: Path) -> None:
    log = tmp_path / "gateway.jsonl"
    port = free_port()
    with contextlib.ExitStack() as stack:
        url, _ = stack.enter_context(stream_upstream(log, port))
        async with gateway(tmp_path, url) as client:
            with anyio.fail_after(60):
                assert (await client.call_tool("search.echo", {"text": "up"})).content[0].text == "up"
                with pytest.raises(MCPError) as died:  # the reply stream breaks: as a direct client sees it
                    await client.call_tool("search.die", {})
                assert (died.value.code, died.value.message) == (-32000, "SSE stream ended without a response")
                stack.enter_context(stream_upstream(log, port))  # back on its port, without our session
                assert (await client.call_tool("search.echo", {"text": "back"})).content[0].text == "back"
        stack.close()  # gone for good: a clear error, at once, not a hang
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with stream_upstream(log) as (url, proc):
        async with gateway(tmp_path / "gone", url) as client:
            assert (await client.call_tool("search.echo", {"text": "up"})).content[0].text == "up"
            proc.kill()
            proc.wait()
            with anyio.fail_after(30):
                with pytest.raises(MCPError) as gone:
                    await client.call_tool("search.echo", {"text": "x"})
    assert gone.value.code == -32003, gone.value.message
    assert gone.value.message.startswith("upstream `search` is unavailable"), gone.value.message


async def test_an_upstream_cancelling_its_own_request_reaches_the_client_under_the_clients_id(tmp_path: Path) -> None:
    # The upstream asks for a sampling (its id `up-1`) and cancels it: the client is told under the
    # id it was asked with (the gateway's), never under the upstream's, which names nothing it knows
    # (or, worse, another request that happens to have that id).
    from tests.e2e.conftest import cli
    from tests.e2e.test_stdio_wire import INITIALIZED, Wire

    log = tmp_path / "up.jsonl"
    with stream_upstream(log) as (url, _):
        site = make_site(tmp_path / "site", listen="stdio", policy=ALL, upstreams=[("search", ["replaced"])])
        site.config_path.write_text(site.config_path.read_text().replace('command = ["replaced"]', f'url = "{url}"'))
        env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {"sampling": {}},
            "clientInfo": {"name": "raw", "version": "1"}}}
        async with await anyio.open_process(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env,
                                            stderr=subprocess.DEVNULL) as proc:
            wire = Wire(proc)
            try:
                with anyio.fail_after(60):
                    await wire.send(init, INITIALIZED)
                    assert "result" in await wire.reply()
                    await wire.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                     "params": {"name": "search.ask_then_cancel", "arguments": {}}})
                    seen = await wire.replies_until(2)
            finally:
                proc.kill()
    asks = [m for m in seen if m.get("method") == "sampling/createMessage"]
    cancels = [m["params"]["requestId"] for m in seen if m.get("method") == "notifications/cancelled"]
    assert len(asks) == 1 and asks[0]["id"] != "up-1"
    assert cancels == [asks[0]["id"]], seen
    assert seen[-1]["result"]["content"][0]["text"] == "asked"
