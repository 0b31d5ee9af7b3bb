"""The stdio opening: answered without the SDK, which takes the connection over when needed.

Invariants, through a real ``securegateway run`` subprocess and a real MCP client (the SDK's
``Client`` over stdio):

- a session of ``initialize``, ``tools/list`` and ``tools/call`` never loads ``mcp``,
  ``mcp_types`` or pydantic into the gateway (``SECUREGATEWAY_DEBUG_MODULES`` makes it write
  its module set at exit);
- a message that needs the SDK afterwards (ping, resources, prompts, completion, an
  upstream's sampling / elicitation / roots request) gets the same answer as from a gateway
  whose SDK serves everything from the start (``fast_lane = false``);
- calls served before and after the SDK loads carry decision ``_meta`` and audit events of
  the same shape;
- a bad model key still stops start-up before anything is served.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError, StdioServerParameters, types

from proxy.wire.opening import DEBUG_MODULES_ENV, plain_initialize
from tests.conftest import ROOT, gateway_env
from tests.e2e.conftest import GPT_KEY, POLICY, Site, cli, make_site

pytestmark = pytest.mark.anyio

SDK_MODULES = ("mcp", "mcp_types", "pydantic", "pydantic_core")
DECISION = "io.securegateway/decision"
ELICIT_POLICY = POLICY.replace("calendar.record]", "calendar.record, calendar.elicit]")


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def loaded_sdk(modules_file: Path) -> set[str]:
    modules = json.loads(modules_file.read_text())
    return {m for m in modules if m.split(".")[0] in SDK_MODULES}


@asynccontextmanager
async def stdio_client(site: Site, modules_file: Path | None = None, **kwargs: Any) -> AsyncIterator[Client]:
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    if modules_file is not None:
        env[DEBUG_MODULES_ENV] = str(modules_file)
    argv = cli("run", "--config", str(site.config_path))
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=str(ROOT))
    kwargs.setdefault("mode", "legacy")
    async with Client(params, **kwargs) as client:
        yield client


def test_the_opening_path_imports_no_sdk_module() -> None:
    probe = (
        "import sys, proxy.cli, proxy.bootstrap, proxy.gateway, proxy.wire.opening, proxy.wire.lane, proxy.relay;"
        f"print([m for m in sys.modules if m.split('.')[0] in {SDK_MODULES!r}])"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=gateway_env(), capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(("message", "plain"), [
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize",
      "params": {"protocolVersion": "2025-06-18", "capabilities": {"sampling": {}},
                 "clientInfo": {"name": "c", "version": "1"}}},
     True),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize",  # an unknown version: negotiated, still plain
      "params": {"protocolVersion": "1999-01-01", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
     True),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize",  # no version: the SDK's INVALID_PARAMS
      "params": {"capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize",
      "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c"}}}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize",
      "params": {"protocolVersion": "2025-06-18", "capabilities": {"roots": 1},
                 "clientInfo": {"name": "c", "version": "1"}}},
     False),
    ({"jsonrpc": "2.0", "id": True, "method": "initialize",
      "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
     False),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "x": 1,
      "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
     False),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize",
      "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"},
                 "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}, False),
])
def test_only_an_initialize_the_sdk_would_accept_is_answered_by_the_opening(message: Any, plain: bool) -> None:
    assert plain_initialize(message) is plain
    if plain:  # and the SDK agrees
        from mcp_types import InitializeRequestParams

        InitializeRequestParams.model_validate(message["params"], by_name=False)


async def test_an_opening_session_never_loads_the_sdk(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", listen="stdio")
    modules = tmp_path / "modules.json"
    logs: list[Any] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with stdio_client(site, modules, logging_callback=on_log) as client:
        tools = await client.list_tools()
        assert "search.echo" in [t.name for t in tools.tools]
        # what a desktop client lists right after initialize: served without the SDK too
        assert (await client.list_prompts()).prompts
        assert (await client.list_resources()).resources
        await client.list_resource_templates()
        result = await client.call_tool("search.echo", {"text": "hi"})
        assert result.content[0].text == "hi" and result.meta and result.meta[DECISION]["allowed"] is True
        denied = await client.call_tool("calendar.crash", {})
        assert denied.is_error
        # an upstream's notification reaches the client through the opening's own channel
        await client.call_tool("search.log", {"message": "from search"})
        with anyio.fail_after(10):
            while not logs:
                await anyio.sleep(0.01)
    assert logs[0].data == "from search" and logs[0].logger == "search"
    assert loaded_sdk(modules) == set()


async def test_a_warmed_gateway_imports_the_sdk_after_the_opening_and_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site(tmp_path / "site", listen="stdio")
    modules = tmp_path / "modules.json"
    monkeypatch.setenv("SECUREGATEWAY_SDK_WARMUP", "0")
    async with stdio_client(site, modules) as client:
        await client.list_tools()
        for i in range(5):  # served while (and after) the worker thread imports the SDK
            assert (await client.call_tool("search.echo", {"text": f"w{i}"})).content[0].text == f"w{i}"
            await anyio.sleep(0.5)
    assert "mcp" in loaded_sdk(modules)  # though no message needed it


async def _sdk_needing_answers(client: Client) -> dict[str, Any]:
    """What a session answers, after its opening, to messages only the SDK path serves."""
    await client.list_tools()
    before = await client.call_tool("search.echo", {"text": "before"})
    await client.send_ping()
    out: dict[str, Any] = {
        "resources": sorted(str(r.uri) for r in (await client.list_resources()).resources),
        "prompts": sorted(p.name for p in (await client.list_prompts()).prompts),
        "read": (await client.read_resource("search://item/42")).contents[0].model_dump(mode="json"),
        "sample": (await client.call_tool("search.sample", {"prompt": "2+2"})).content[0].model_dump(mode="json"),
        "elicit": (await client.call_tool("calendar.elicit", {"question": "go?"})).content[0].model_dump(mode="json"),
        "roots": (await client.call_tool("search.roots", {})).content[0].model_dump(mode="json"),
        "complete": await _outcome(client.complete(types.PromptReference(type="ref/prompt", name="calendar.greet"),
                                                   {"name": "who", "value": "a"})),
    }
    after = await client.call_tool("search.echo", {"text": "after"})
    out["meta_shapes"] = [shape((before.meta or {})[DECISION]), shape((after.meta or {})[DECISION])]
    return out


async def _outcome(pending: Any) -> Any:
    """A result as JSON, or the JSON-RPC error's code and message."""
    try:
        return (await pending).model_dump(mode="json")
    except MCPError as exc:
        return {"code": exc.code, "message": exc.message.split("Decision id")[0]}


async def _sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    prompt = params.messages[0].content.text  # type: ignore[union-attr]
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=f"echo:{prompt}"),
                                     model="test-model")


async def _elicit(ctx: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"answer": "yes"})


async def _roots(ctx: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])


async def test_messages_that_need_the_sdk_after_the_opening_are_answered_as_by_the_sdk_path(tmp_path: Path) -> None:
    callbacks = {"sampling_callback": _sampling, "elicitation_callback": _elicit, "list_roots_callback": _roots}
    answers = []
    for name, gateway in (("opening", ""), ("sdk", "fast_lane = false")):
        site = make_site(tmp_path / name, listen="stdio", gateway=gateway, policy=ELICIT_POLICY)
        modules = tmp_path / f"{name}.json"
        async with stdio_client(site, modules, **callbacks) as client:
            answers.append(await _sdk_needing_answers(client))
        assert "mcp" in loaded_sdk(modules)
        events = [json.loads(line) for line in site.audit_path.read_text().splitlines()]
        echoes = [e for e in events if e["type"] == "decision" and e.get("tool") == "echo"]
        # the calls before and after the SDK loaded: one session, audit events of one shape
        assert len(echoes) == 2 and echoes[0]["session"] == echoes[1]["session"]
        assert shape(echoes[0]) == shape(echoes[1])
    opening, sdk = answers
    assert opening == sdk
    assert opening["meta_shapes"][0] == opening["meta_shapes"][1]
    assert opening["sample"]["text"] == "model said: echo:2+2"
    assert opening["roots"]["text"] == "file:///work/project"


@pytest.mark.parametrize(("key", "policy"), [("not-a-key", POLICY), (GPT_KEY, "rules: [\n")])
def test_a_bad_model_key_or_policy_still_stops_start_up_before_serving(tmp_path: Path, key: str, policy: str) -> None:
    site = make_site(tmp_path / "site", listen="stdio", policy=policy)
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": key}
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                  "clientInfo": {"name": "raw", "version": "1"}}})
    out = subprocess.run(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env, input=init + "\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and out.stdout == "", (out.returncode, out.stdout)


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_a_2026_era_client_on_stdio_is_served_as_by_the_sdk_path(tmp_path: Path, mode: str) -> None:
    """A sessionless client's first request (``server/discover`` or an enveloped one) is the SDK's."""
    answers = []
    for name, gateway in (("opening", ""), ("sdk", "fast_lane = false")):
        site = make_site(tmp_path / name, listen="stdio", gateway=gateway)
        async with stdio_client(site, mode=mode) as client:
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            result = await client.call_tool("search.echo", {"text": "modern"})
            resources = sorted(str(r.uri) for r in (await client.list_resources()).resources)
            answers.append((tools, resources, result.content[0].model_dump(mode="json"),
                            shape((result.meta or {})[DECISION])))
    assert answers[0] == answers[1]
