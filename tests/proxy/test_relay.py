"""The relay end to end: a real SDK client -> the gateway (HTTP front) -> real upstream servers.

These tests exercise transport and routing only, so the gateway runs without a
policy interceptor here; tests/e2e covers the same paths with enforcement on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError, types

from proxy.config import parse_config
from proxy.gateway import Gateway
from tests.conftest import connect, free_port, running, server_cmd

pytestmark = pytest.mark.anyio


def make_gateway(tmp_path: Path, upstreams: list[dict[str, Any]], **gateway: Any) -> tuple[Gateway, str]:
    port = free_port()
    raw = {"gateway": {"listen": f"http://127.0.0.1:{port}/mcp", **gateway}, "upstreams": upstreams}
    config = parse_config(raw, tmp_path / "gateway.toml")
    return Gateway(config), f"http://127.0.0.1:{port}/mcp"


def stdio_up(name: str, *extra: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "command": server_cmd(name, *extra), **kw}


async def test_two_upstreams_are_merged_and_calls_reach_the_right_one(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar"), stdio_up("search")])
    async with running(gw), connect(url) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "calendar.echo" in names and "search.echo" in names
        assert not any(n == "echo" for n in names)
        result = await client.call_tool("search.echo", {"text": "hi"})
        assert result.structured_content == {"text": "hi", "server": "search"}
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        assert sorted(prompts) == ["calendar.greet", "search.greet"]
        got = await client.get_prompt("calendar.greet", {"who": "ann"})
        assert got.messages[0].content.text == "Hello ann from calendar"


async def test_merged_list_is_complete_across_upstream_pages_and_paginates_to_the_client(tmp_path: Path) -> None:
    gw, url = make_gateway(
        tmp_path,
        [stdio_up("a", "--tools", "40", "--page-size", "7"), stdio_up("b", "--tools", "25", "--page-size", "9")],
        page_size=10,
    )
    async with running(gw), connect(url) as client:
        cursor, names, pages = None, [], 0
        while True:
            page = await client.list_tools(cursor=cursor)
            pages += 1
            names += [t.name for t in page.tools]
            assert len(page.tools) <= 10
            if (cursor := page.next_cursor) is None:
                break
        assert len(names) == len(set(names))
        assert sum(n.startswith("a.filler_") for n in names) == 40
        assert sum(n.startswith("b.filler_") for n in names) == 25
        assert pages == -(-len(names) // 10)
        with pytest.raises(MCPError, match="invalid cursor"):
            await client.list_tools(cursor="not-a-cursor")


async def test_progress_sampling_elicitation_roots_and_logging_round_trip(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar"), stdio_up("search")])
    logs: list[Any] = []

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content.text
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"echo:{prompt}"), model="test-model"
        )

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "yes"})

    async def roots(ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with running(gw), connect(
        url, sampling_callback=sampling, elicitation_callback=elicit, list_roots_callback=roots, logging_callback=on_log
    ) as client:
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(p: float, t: float | None, m: str | None) -> None:
            progress.append((p, t, m))

        result = await client.call_tool("calendar.slow", {"steps": 4}, progress_callback=on_progress)
        assert result.content[0].text == "done 4"
        assert progress == [(1, 4, "step 1"), (2, 4, "step 2"), (3, 4, "step 3"), (4, 4, "step 4")]

        assert (await client.call_tool("search.sample", {"prompt": "2+2"})).content[0].text == "model said: echo:2+2"
        elicited = (await client.call_tool("calendar.elicit", {"question": "go?"})).content[0].text
        assert elicited == "user accept: {'answer': 'yes'}"
        assert (await client.call_tool("search.roots", {})).content[0].text == "file:///work/project"

        await client.call_tool("search.log", {"message": "from search"})
        with anyio.fail_after(5):
            while not logs:
                await anyio.sleep(0.01)
        assert logs[0].data == "from search" and logs[0].logger == "search"


async def test_resources_route_by_uri_and_subscriptions_deliver_updates(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar"), stdio_up("search")])
    updates: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async with running(gw), connect(url, message_handler=on_message) as client:
        uris = sorted(str(r.uri) for r in (await client.list_resources()).resources)
        assert uris == ["calendar://info", "search://info"]
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        assert "search://item/{id}" in templates
        read = await client.read_resource("search://item/42")
        assert read.contents[0].text == "search resource search://item/42"
        assert (await client.read_resource("calendar://info")).contents[0].text.startswith("calendar resource")
        await client.subscribe_resource("calendar://info")
        with anyio.fail_after(5):
            while not updates:
                await anyio.sleep(0.01)
        assert updates == ["calendar://info"]
        with pytest.raises(MCPError, match="unknown resource"):
            await client.read_resource("nowhere://x")
        done = await client.complete(types.PromptReference(type="ref/prompt", name="search.greet"),
                                     {"name": "who", "value": "al"})
        assert done.completion.values == ["alice", "albert"]


async def test_list_changed_is_forwarded_and_the_merged_list_refreshed(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar"), stdio_up("search")])
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with running(gw), connect(url, message_handler=on_message) as client:
        assert "search.dynamic" not in [t.name for t in (await client.list_tools()).tools]
        await client.call_tool("search.add_tool", {})
        with anyio.fail_after(5):
            await changed.wait()
        assert "search.dynamic" in [t.name for t in (await client.list_tools()).tools]
        assert (await client.call_tool("search.dynamic", {})).content[0].text == "dynamic ok"


async def test_client_cancellation_cancels_the_upstream_call(tmp_path: Path) -> None:
    marker = tmp_path / "cancelled.txt"
    gw, url = make_gateway(tmp_path, [stdio_up("calendar", "--marker", str(marker))])
    async with running(gw), connect(url) as client:
        with anyio.move_on_after(0.5):
            await client.call_tool("calendar.slow", {"steps": 100, "delay": 0.1})
        with anyio.fail_after(5):
            while not marker.exists():
                await anyio.sleep(0.02)
        assert marker.read_text() == "cancelled\n"
        # the session is still usable after the cancellation
        assert (await client.call_tool("calendar.echo", {"text": "after"})).content[0].text == "after"


async def test_five_megabyte_payloads_pass_both_ways_untruncated(tmp_path: Path, http_upstream_factory: Any) -> None:
    search_url = http_upstream_factory("search")
    gw, url = make_gateway(tmp_path, [stdio_up("calendar"), {"name": "search", "url": search_url}])
    payload = "y" * (5 * 2**20)
    async with running(gw), connect(url) as client:
        for tool in ("calendar.echo", "search.echo"):
            echoed = await client.call_tool(tool, {"text": payload})
            assert echoed.content[0].text == payload
        big = await client.call_tool("search.big", {"size": 5 * 2**20})
        assert len(big.content[0].text) == 5 * 2**20


async def test_message_over_the_configured_limit_is_refused_clearly(tmp_path: Path) -> None:
    import httpx2

    gw, url = make_gateway(tmp_path, [stdio_up("calendar")], max_message_bytes=64 * 1024)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "calendar.echo", "arguments": {"text": "z" * 100_000}}}
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with running(gw), connect(url) as client, httpx2.AsyncClient() as http:
        refused = await http.post(url, json=body, headers=headers)
        assert refused.status_code == 413
        assert "too large" in refused.text.lower()
        with pytest.raises(MCPError):
            await client.call_tool("calendar.echo", {"text": "z" * 100_000})
        assert (await client.call_tool("calendar.echo", {"text": "small"})).content[0].text == "small"


async def test_unknown_tool_is_a_json_rpc_error_naming_it(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar")])
    async with running(gw), connect(url) as client:
        for name in ("calendar.nope", "nope.echo", "echo"):
            with pytest.raises(MCPError) as err:
                await client.call_tool(name, {})
            assert err.value.message == f"unknown tool `{name}`"


async def test_a_failing_upstream_does_not_take_the_others_down(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [
        {"name": "broken", "command": [sys.executable, "-c", "import sys; sys.exit(1)"]},
        stdio_up("calendar"),
    ])
    async with running(gw), connect(url) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "calendar.echo" in names and not any(n.startswith("broken.") for n in names)
        with pytest.raises(MCPError, match="upstream `broken` is unavailable"):
            await client.call_tool("broken.echo", {})
        assert (await client.call_tool("calendar.echo", {"text": "ok"})).content[0].text == "ok"


async def test_crashed_upstream_fails_in_flight_call_then_restarts_and_announces_list_changed(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar"), stdio_up("search")])
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with running(gw), connect(url, message_handler=on_message) as client:
        with pytest.raises(MCPError, match="upstream `search` closed the connection"):
            await client.call_tool("search.crash", {})
        assert (await client.call_tool("calendar.echo", {"text": "still here"})).content[0].text == "still here"
        with anyio.fail_after(15):
            await changed.wait()
        assert (await client.call_tool("search.echo", {"text": "back"})).content[0].text == "back"


async def test_upstream_that_never_answers_times_out_per_upstream(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar", timeout=0.5)])
    async with running(gw), connect(url) as client:
        with pytest.raises(MCPError, match="did not answer `tools/call` within 0.5s"):
            await client.call_tool("calendar.slow", {"steps": 1, "delay": 5})
        assert (await client.call_tool("calendar.echo", {"text": "next"})).content[0].text == "next"


async def test_the_gateways_own_environment_never_reaches_an_upstream(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("SECUREGATEWAY_ADMIN_KEY", "admin-secret")
    monkeypatch.setenv("SOME_CLOUD_TOKEN", "tok")
    gw, url = make_gateway(tmp_path, [stdio_up("calendar", env={"GIVEN": "1"})])
    async with running(gw), connect(url) as client:
        names = (await client.call_tool("calendar.env", {})).content[0].text.split(",")
        assert "GIVEN" in names
        assert "SECUREGATEWAY_ADMIN_KEY" not in names and "SOME_CLOUD_TOKEN" not in names


async def test_a_gateway_can_be_the_upstream_of_another_gateway(tmp_path: Path) -> None:
    inner, inner_url = make_gateway(tmp_path, [stdio_up("calendar"), stdio_up("search")])
    outer, outer_url = make_gateway(tmp_path, [{"name": "inner", "url": inner_url}])
    progress: list[float] = []

    async def on_progress(p: float, t: float | None, m: str | None) -> None:
        progress.append(p)

    async with running(inner), running(outer), connect(outer_url) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "inner.calendar.echo" in names
        echoed = await client.call_tool("inner.search.echo", {"text": "deep"})
        assert echoed.structured_content == {"text": "deep", "server": "search"}
        await client.call_tool("inner.calendar.slow", {"steps": 2}, progress_callback=on_progress)
        assert progress == [1, 2]


async def test_http_front_rejects_foreign_host_and_origin(tmp_path: Path) -> None:
    import httpx2

    gw, url = make_gateway(tmp_path, [stdio_up("calendar")])
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with running(gw), httpx2.AsyncClient() as http:
        bad_host = await http.post(url, json=body, headers={**headers, "Host": "evil.example"})
        assert bad_host.status_code == 421
        bad_origin = await http.post(url, json=body, headers={**headers, "Origin": "http://evil.example"})
        assert bad_origin.status_code == 403


async def test_a_sessionless_2026_client_gets_sampling_elicitation_and_roots_as_input_required_rounds(
    tmp_path: Path,
) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("calendar"), stdio_up("search")])
    asked: list[str] = []

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="modern"), model="m"
        )

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        asked.append("elicit")
        return types.ElicitResult(action="accept", content={"answer": "ok"})

    async def roots(ctx: Any) -> types.ListRootsResult:
        asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri="file:///r")])

    async with running(gw), connect(
        url, mode="auto", sampling_callback=sampling, elicitation_callback=elicit, list_roots_callback=roots
    ) as client:
        assert client.protocol_version == "2026-07-28"
        assert (await client.call_tool("calendar.echo", {"text": "x"})).structured_content["server"] == "calendar"
        assert (await client.call_tool("search.sample", {"prompt": "p"})).content[0].text == "model said: modern"
        assert (await client.call_tool("calendar.elicit", {})).content[0].text == "user accept: {'answer': 'ok'}"
        assert (await client.call_tool("search.roots", {})).content[0].text == "file:///r"
        assert asked == ["sampling", "elicit", "roots"]
        progress: list[float] = []

        async def on_progress(p: float, t: float | None, m: str | None) -> None:
            progress.append(p)

        await client.call_tool("calendar.slow", {"steps": 2}, progress_callback=on_progress)
        assert progress == [1, 2]


async def test_forged_request_state_is_refused(tmp_path: Path) -> None:
    import httpx2

    gw, url = make_gateway(tmp_path, [stdio_up("calendar")])
    body = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": "calendar.echo", "arguments": {"text": "x"}, "requestState": "sg1.abc.def",
            "inputResponses": {"r1": {}},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}},
        },
    }
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": "tools/call", "Mcp-Name": "calendar.echo"}
    async with running(gw), httpx2.AsyncClient() as http:
        reply = await http.post(url, json=body, headers=headers)
        assert "was not issued by this gateway" in reply.text


@pytest.mark.parametrize("client_mode", ["legacy", "2026-07-28"])
@pytest.mark.parametrize("upstream_era", ["2025-11-25", "2026-07-28"])
@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_any_client_era_works_against_any_upstream_era(
    tmp_path: Path, http_upstream_factory: Any, client_mode: str, upstream_era: str, transport: str
) -> None:
    if transport == "stdio":
        upstream = stdio_up("search", protocol=upstream_era)
    else:
        upstream = {"name": "search", "url": http_upstream_factory("search"), "protocol": upstream_era}
    gw, url = make_gateway(tmp_path, [upstream])

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="answer"), model="m"
        )

    progress: list[float] = []

    async def on_progress(p: float, t: float | None, m: str | None) -> None:
        progress.append(p)

    async with running(gw), connect(url, mode=client_mode, sampling_callback=sampling) as client:
        assert client.protocol_version == ("2026-07-28" if client_mode != "legacy" else "2025-11-25")
        assert (await client.call_tool("search.echo", {"text": "e"})).structured_content["text"] == "e"
        (session,) = gw.sessions
        assert session.links["search"].info.protocol_version == upstream_era
        assert (await client.call_tool("search.sample", {"prompt": "p"})).content[0].text == "model said: answer"
        await client.call_tool("search.slow", {"steps": 2}, progress_callback=on_progress)
        assert progress == [1, 2]
        assert (await client.read_resource("search://item/3")).contents[0].text == "search resource search://item/3"


async def test_a_sessionless_upstream_announces_list_changes_through_subscriptions_listen(tmp_path: Path) -> None:
    gw, url = make_gateway(tmp_path, [stdio_up("search", protocol="2026-07-28")])
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with running(gw), connect(url, message_handler=on_message) as client:
        await client.call_tool("search.add_tool", {})
        with anyio.fail_after(10):
            await changed.wait()
        assert "search.dynamic" in [t.name for t in (await client.list_tools()).tools]


async def test_a_legacy_http_sse_upstream_is_relayed(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import free_port, wait_port

    port = free_port()
    proc = subprocess.Popen(server_cmd("legacy", "--sse", f"127.0.0.1:{port}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await anyio.to_thread.run_sync(wait_port, port)
        upstream = {"name": "legacy", "url": f"http://127.0.0.1:{port}/sse", "transport": "sse"}
        gw, url = make_gateway(tmp_path, [upstream])
        async with running(gw), connect(url) as client:
            assert (await client.call_tool("legacy.echo", {"text": "old"})).structured_content["server"] == "legacy"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_sessionless_client_hears_list_changes_on_its_subscriptions_listen_stream(tmp_path: Path) -> None:
    from mcp.shared.subscriptions import ToolsListChanged

    gw, url = make_gateway(tmp_path, [stdio_up("search")])
    async with running(gw), connect(url, mode="2026-07-28") as client:
        assert "search.dynamic" not in [t.name for t in (await client.list_tools()).tools]
        async with client.listen(tools_list_changed=True) as subscription:
            await client.call_tool("search.add_tool", {})
            with anyio.fail_after(10):
                event = await subscription.__anext__()
            assert isinstance(event, ToolsListChanged)
        assert "search.dynamic" in [t.name for t in (await client.list_tools(cache_mode="refresh")).tools]


async def test_a_sessionless_http_upstream_gets_its_routing_and_param_headers(
    tmp_path: Path, http_upstream_factory: Any
) -> None:
    upstream = {"name": "search", "url": http_upstream_factory("search"), "protocol": "2026-07-28"}
    gw, url = make_gateway(tmp_path, [upstream])
    async with running(gw), connect(url) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "search.region" in names  # listed by a 2026 upstream that validates x-mcp-header
        result = await client.call_tool("search.region", {"region": "eu-west"})
        assert result.content[0].text == "eu-west header=eu-west"
