"""The official reference MCP servers, end to end: real SDK client -> gateway -> npm server on stdio.

The servers are pinned and installed by ``.ci/run`` into ``.ci/node``; without them (no npm, or
no network on first install) these tests skip and say why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import types as mt

from tests.conftest import ROOT, connect, gateway_env, running
from tests.e2e.conftest import GPT_KEY, Site, make_site, text_of

pytestmark = [pytest.mark.anyio, pytest.mark.npm]

DECISION = "io.securegateway/decision"
NODE_BIN = ROOT / ".ci" / "node" / "node_modules" / ".bin"
EVERYTHING_POLICY = "rules:\n  - id: everything\n    model: gpt-4o\n    allow_tools: [search.*]\n"
# Tools server-everything 2026.8.31 registers for every client, whatever its capabilities.
EVERYTHING_TOOLS = {
    "echo", "get-annotated-message", "get-env", "get-resource-links", "get-resource-reference",
    "get-structured-content", "get-sum", "get-tiny-image", "gzip-file-as-resource",
    "toggle-simulated-logging", "toggle-subscriber-updates", "trigger-long-running-operation",
}


def reference_server(name: str) -> str:
    """Path of an installed reference server's bin, or skip the test."""
    path = NODE_BIN / name
    if not path.exists():
        pytest.skip(f"{name} not installed: run the npm line of .ci/run (needs npm and the registry)")
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    return str(path)


def everything_site(root: Path, *, passthrough: str | None = None) -> Site:
    site = make_site(root, policy=EVERYTHING_POLICY,
                     upstreams=[("search", [reference_server("mcp-server-everything"), "stdio"])])
    if passthrough is not None:  # a variable the operator chose to hand to the child: the positive control
        text = site.config_path.read_text().replace('name = "search"\n',
                                                    f'name = "search"\nenv_passthrough = ["{passthrough}"]\n')
        site.config_path.write_text(text)
    return site


async def test_tools_are_namespaced_and_an_allowed_echo_carries_its_decision(tmp_path: Path) -> None:
    site = everything_site(tmp_path / "site")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {f"search.{tool}" for tool in EVERYTHING_TOOLS} <= names
        assert names - {"propose_policy"} == {n for n in names if n.startswith("search.")}
        result = await client.call_tool("search.echo", {"message": "hello reference"})
    assert not result.is_error and text_of(result) == "Echo: hello reference"
    decision = result.meta[DECISION]
    assert decision["allowed"] is True and decision["tool"] == "search.echo"
    assert decision["matched_rules"] == ["everything"]


async def test_progress_of_a_long_running_operation_reaches_the_client(tmp_path: Path) -> None:
    site = everything_site(tmp_path / "site")
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        with anyio.fail_after(20):
            result = await client.call_tool("search.trigger-long-running-operation",
                                            {"duration": 0.6, "steps": 3}, progress_callback=on_progress)
    assert not result.is_error and "Steps: 3" in text_of(result)
    assert seen == [(1, 3), (2, 3), (3, 3)]


async def test_sampling_and_elicitation_round_trip_through_the_client(tmp_path: Path) -> None:
    site = everything_site(tmp_path / "site")
    asked: list[str] = []

    async def sample(context: Any, params: mt.CreateMessageRequestParams) -> mt.CreateMessageResult:
        asked.append(params.messages[0].content.text)
        return mt.CreateMessageResult(role="assistant", model="test-llm",
                                      content=mt.TextContent(type="text", text="sampled-by-the-client"))

    async def elicit(context: Any, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        assert "name" in params.requested_schema["properties"]
        return mt.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})

    async with (
        running(site.app()),
        connect(site.url, GPT_KEY, sampling_callback=sample, elicitation_callback=elicit) as client,
    ):
        names = {t.name for t in (await client.list_tools()).tools}
        # registered only because the gateway mirrored the client's capabilities upstream
        assert {"search.trigger-sampling-request", "search.trigger-elicitation-request"} <= names
        with anyio.fail_after(20):
            sampled = await client.call_tool("search.trigger-sampling-request", {"prompt": "ping-42"})
            elicited = await client.call_tool("search.trigger-elicitation-request", {})
    assert not sampled.is_error and "sampled-by-the-client" in text_of(sampled)
    assert len(asked) == 1 and "ping-42" in asked[0]
    assert not elicited.is_error and "- Name: Ada Lovelace" in text_of(elicited)


async def test_prompts_and_resources_route_to_the_upstream(tmp_path: Path) -> None:
    site = everything_site(tmp_path / "site")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"search.simple-prompt", "search.args-prompt"} <= prompts
        prompt = await client.get_prompt("search.args-prompt", {"city": "Lisbon"})
        assert "Lisbon" in prompt.messages[0].content.text
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        static = "demo://resource/static/document/architecture.md"
        assert static in uris
        assert (await client.read_resource(static)).contents[0].text
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert "demo://resource/dynamic/text/{resourceId}" in templates
        dynamic = await client.read_resource("demo://resource/dynamic/text/7")
    assert dynamic.contents[0].text.startswith("Resource 7: This is a plaintext resource")


async def test_the_gateways_own_secrets_never_reach_an_upstream_child(tmp_path: Path, monkeypatch: Any) -> None:
    secrets = {"SECUREGATEWAY_ADMIN_KEY": "admin-secret-must-stay-home",
               "AWS_SECRET_ACCESS_KEY": "fake-cloud-token-must-stay-home"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SG_TEST_HANDED_DOWN", "visible-to-the-child")
    site = everything_site(tmp_path / "site", passthrough="SG_TEST_HANDED_DOWN")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        result = await client.call_tool("search.get-env", {})
    assert not result.is_error
    child_env = json.loads(text_of(result))
    assert child_env.get("SG_TEST_HANDED_DOWN") == "visible-to-the-child"  # the tool does print the env
    assert not secrets.keys() & child_env.keys()
    assert not any(value in text_of(result) for value in secrets.values())


def filesystem_site(root: Path, files: Path, other: Path) -> Site:
    # The server may read both directories; the gateway's policy allows only `files`, so a
    # read of `other` that succeeded would prove the call slipped past the gateway.
    policy = (
        "rules:\n  - id: files-only\n    model: gpt-4o\n    allow_tools: [calendar.read_text_file]\n"
        f"    when:\n      path: {{under: {json.dumps(str(files))}}}\n"
    )
    server = reference_server("mcp-server-filesystem")
    return make_site(root, policy=policy, upstreams=[("calendar", [server, str(files), str(other)])])


async def test_filesystem_reads_are_confined_by_policy_before_they_reach_the_server(tmp_path: Path) -> None:
    files, other = (tmp_path / "files").resolve(), (tmp_path / "other").resolve()
    files.mkdir()
    other.mkdir()
    (files / "note.txt").write_text("inside the root\n")
    (other / "secret.txt").write_text("outside-secret\n")
    site = filesystem_site(tmp_path / "site", files, other)
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "calendar.read_text_file" in names and "calendar.write_file" not in names
        ok = await client.call_tool("calendar.read_text_file", {"path": str(files / "note.txt")})
        assert not ok.is_error and text_of(ok) == "inside the root\n"
        assert ok.meta[DECISION]["matched_rules"] == ["files-only"]
        outside = [str(other / "secret.txt"), f"{files}/../other/secret.txt", "/etc/passwd", "note.txt"]
        for path in outside:
            denied = await client.call_tool("calendar.read_text_file", {"path": path})
            assert denied.is_error, path
            assert denied.structured_content["allowed"] is False, path
            assert denied.structured_content["reason_code"] == "default_deny", path
            (trace,) = denied.structured_content["rule_trace"]
            assert trace["rule_id"] == "files-only" and trace["failed"].startswith("path under "), path
            assert "outside-secret" not in text_of(denied) and "root:" not in text_of(denied)
        write = await client.call_tool("calendar.write_file", {"path": str(files / "x"), "content": "no"})
        assert write.is_error and write.structured_content["reason_code"] == "default_deny"
    assert not (files / "x").exists()


def test_the_mcp_inspector_cli_lists_and_calls_tools_through_the_stdio_front(tmp_path: Path) -> None:
    """A foreign, non-Python client: the Inspector CLI spawns the gateway's stdio front."""
    inspector = reference_server("mcp-inspector")
    site = make_site(tmp_path / "site", listen="stdio", policy=EVERYTHING_POLICY,
                     upstreams=[("search", [reference_server("mcp-server-everything"), "stdio"])])
    gateway = [sys.executable, "-m", "proxy.cli", "run", "-c", str(site.config_path)]
    env_args = ["-e", f"SECUREGATEWAY_MODEL_KEY={GPT_KEY}", "-e", f"PYTHONPATH={gateway_env()['PYTHONPATH']}"]

    def inspect(*method: str) -> dict[str, Any]:
        # above the Inspector's 15 s default for a cold start on a loaded box; a front that
        # never answers `initialize` still fails here rather than hanging the suite
        argv = [inspector, "--cli", "--connect-timeout", "30000", *env_args, "--cwd", str(ROOT), *method]
        done = subprocess.run([*argv, "--", *gateway],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    names = {t["name"] for t in inspect("--method", "tools/list")["tools"]}
    assert {"propose_policy", "search.echo", "search.get-env"} <= names
    called = inspect("--method", "tools/call", "--tool-name", "search.echo", "--tool-arg", "message=from-node")
    assert called["content"] == [{"type": "text", "text": "Echo: from-node"}]
    assert called["_meta"][DECISION]["allowed"] is True
