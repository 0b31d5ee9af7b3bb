"""Exact on the wire: what a client sees through the gateway is what the protocol (and a
direct connection) gives it.

- every 2026-era result carries ``_meta["io.modelcontextprotocol/serverInfo"]`` naming the
  server the client sees (the gateway; the upstream itself in single unprefixed mode);
- a 2026 client's cancellation of ``tools/call`` reaches the upstream, as a 2025 client's does;
- a method no upstream supports is ``-32601``, exactly as the upstream answers directly;
- ``propose_policy`` is listed only to models whose key may propose (``tools_list = "hide"``).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError, StdioServerParameters, types
from mcp_types import SERVER_INFO_META_KEY

from tests.conftest import connect, running, server_cmd
from tests.e2e.conftest import CLAUDE_KEY, GPT_KEY, make_site

pytestmark = pytest.mark.anyio

ALL = "rules:\n  - id: all\n    model: '*'\n    allow_tools: [search.*, calendar.*]\n"
TOOLS_ONLY = [sys.executable, "-m", "tests.e2e.tools_only_server"]


@pytest.mark.parametrize("prefix", [True, False])
async def test_every_2026_result_is_stamped_with_the_server_the_client_sees(tmp_path: Path, prefix: bool) -> None:
    site = make_site(tmp_path / "site", policy=ALL, upstreams=[("search", server_cmd("search"))])
    if not prefix:
        site.config_path.write_text(site.config_path.read_text().replace(
            'name = "search"\n', 'name = "search"\nprefix = false\n'))
    tool = "search.echo" if prefix else "echo"
    async with running(site.app()), connect(site.url, GPT_KEY, mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        results: list[Any] = [
            await client.list_tools(),
            await client.call_tool(tool, {"text": "x"}),
            await client.call_tool("propose_policy", {}),  # a gateway-served tool
            await client.list_prompts(),
            await client.list_resources(),
            await client.read_resource("search://info"),
        ]
    stamps = [(r.meta or {}).get(SERVER_INFO_META_KEY) for r in results]
    # one upstream: the gateway stands in for it, so the stamp names it (the demo server is `search`)
    assert all(stamp is not None and stamp["name"] == "search" for stamp in stamps), stamps


async def test_several_upstreams_stamp_the_gateway_not_an_upstream(tmp_path: Path, http_upstream_factory: Any) -> None:
    modern_url = http_upstream_factory("search")  # a 2026 upstream stamps its own name on every result
    site = make_site(tmp_path / "site", policy=ALL, upstreams=[("calendar", server_cmd("calendar"))])
    site.config_path.write_text(site.config_path.read_text().replace(
        "[policy]", f'[[upstreams]]\nname = "search"\nurl = "{modern_url}"\nprotocol = "2026-07-28"\n\n[policy]'))
    async with running(site.app()), connect(site.url, GPT_KEY, mode="auto") as client:
        called = await client.call_tool("search.echo", {"text": "x"})
        listed = await client.list_tools()
    for result in (called, listed):
        assert (result.meta or {})[SERVER_INFO_META_KEY]["name"] == "securegateway"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_clients_cancellation_of_a_tool_call_reaches_the_upstream(tmp_path: Path, mode: str) -> None:
    marker = tmp_path / "cancelled.txt"
    site = make_site(tmp_path / "site", policy=ALL,
                     upstreams=[("calendar", server_cmd("calendar", "--marker", str(marker)))])
    async with running(site.app()), connect(site.url, GPT_KEY, mode=mode) as client:
        with anyio.move_on_after(1.0):
            await client.call_tool("calendar.slow", {"steps": 100, "delay": 0.1})
        with anyio.fail_after(10):
            while not marker.exists():
                await anyio.sleep(0.02)
        assert marker.read_text() == "cancelled\n"
        assert (await client.call_tool("calendar.echo", {"text": "after"})).content[0].text == "after"


async def _codes(client: Any) -> dict[str, int | str]:
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "prompts/list": client.list_prompts,
        "prompts/get": lambda: client.get_prompt("p", {}),
        "resources/list": client.list_resources,
        "resources/read": lambda: client.read_resource("file:///x"),
        "completion/complete": lambda: client.complete(
            types.PromptReference(type="ref/prompt", name="p"), {"name": "a", "value": "b"}),
    }
    if client.protocol_version != "2026-07-28":  # logging/setLevel is not a 2026 method
        calls["logging/setLevel"] = lambda: client.set_logging_level("info")
    out: dict[str, int | str] = {}
    for method, call in calls.items():
        try:
            await call()
            out[method] = "ok"
        except MCPError as exc:
            out[method] = exc.code
    return out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_methods_the_upstream_lacks_get_method_not_found_exactly_as_directly(tmp_path: Path, mode: str) -> None:
    params = StdioServerParameters(command=TOOLS_ONLY[0], args=TOOLS_ONLY[1:])
    async with Client(params, mode=mode) as direct:
        expected = await _codes(direct)
    assert set(expected.values()) == {-32601}
    site = make_site(tmp_path / "site", policy=ALL, upstreams=[("search", TOOLS_ONLY)])
    async with running(site.app()), connect(site.url, GPT_KEY, mode=mode) as client:
        assert await _codes(client) == expected
        assert not (await client.call_tool("search.ping_tool", {})).is_error


async def test_completion_for_an_upstream_without_completions_is_method_not_found(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", policy=ALL,
                     upstreams=[("calendar", server_cmd("calendar")), ("search", TOOLS_ONLY)])
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        done = await client.complete(types.PromptReference(type="ref/prompt", name="calendar.greet"),
                                     {"name": "who", "value": "a"})
        assert done.completion is not None  # calendar completes
        with pytest.raises(MCPError) as err:
            await client.complete(types.PromptReference(type="ref/prompt", name="search.greet"),
                                  {"name": "who", "value": "a"})
        assert err.value.code == -32601


async def test_propose_policy_is_listed_only_to_models_that_may_propose(tmp_path: Path) -> None:
    hidden = make_site(tmp_path / "hide")
    async with running(hidden.app()):
        async with connect(hidden.url, GPT_KEY) as gpt:  # can_propose: true
            assert "propose_policy" in {t.name for t in (await gpt.list_tools()).tools}
        async with connect(hidden.url, CLAUDE_KEY) as claude:  # can_propose: false
            names = {t.name for t in (await claude.list_tools()).tools}
            assert "propose_policy" not in names and "calendar.echo" in names
            refused = await claude.call_tool("propose_policy", {})  # still answered, never silently
            assert refused.is_error
    shown = make_site(tmp_path / "show", gateway='tools_list = "show"')
    async with running(shown.app()), connect(shown.url, CLAUDE_KEY) as claude:
        assert "propose_policy" in {t.name for t in (await claude.list_tools()).tools}
