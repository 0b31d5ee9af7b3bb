"""``securegateway init`` against sample configurations of Claude Desktop, Cursor and VS Code;
the servers are real (demo/testserver.py, probed over stdio) and the written gateway runs."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.onboard import is_secret, plan_init, read_client_config
from tests.conftest import ROOT, gateway_env

TOKEN = "ghp_" + "A1b2C3d4" * 4 + "zzzz"


def server(name: str) -> dict[str, Any]:
    return {"command": sys.executable, "args": ["-m", "demo.testserver", "--name", name, "--annotate"]}


def init(tmp: Path, source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "init", "--from", str(source), "--dir", str(tmp / "gw"), *extra],
        capture_output=True, text=True, cwd=ROOT, env=gateway_env(), timeout=120,
    )


def test_claude_desktop_config_with_env_secrets(tmp_path: Path) -> None:
    source = tmp_path / "claude_desktop_config.json"
    source.write_text(json.dumps({"mcpServers": {
        "calendar": {**server("calendar"), "env": {"GITHUB_TOKEN": TOKEN, "LOG_LEVEL": "debug",
                                                     "API_KEY": "plain-looking-value"}},
        "web search": server("search"),
    }, "globalShortcut": "Ctrl+Space"}))
    done = init(tmp_path, source)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "gw"
    written = {p.name for p in out.iterdir()}
    assert written >= {"gateway.toml", "policies.yaml", "model_keys.yaml", "policies.tests.yaml"}
    for name in written:
        text = (out / name).read_text()
        assert TOKEN not in text and "plain-looking-value" not in text, name  # secrets stay out
    assert "calendar: GITHUB_TOKEN" in done.stdout and "calendar: API_KEY" in done.stdout
    assert stat.S_IMODE((out / "model_keys.yaml").stat().st_mode) == 0o600

    config = load_config(out / "gateway.toml")
    assert [u.name for u in config.upstreams] == ["calendar", "web-search"]
    calendar = config.upstreams[0]
    assert dict(calendar.env) == {"LOG_LEVEL": "debug"}
    assert set(calendar.env_passthrough) == {"API_KEY", "GITHUB_TOKEN"}
    policy = yaml.safe_load((out / "policies.yaml").read_text())
    allowed = {t for rule in policy["rules"] for t in rule.get("allow_tools", [])}
    assert allowed == {"calendar.echo", "calendar.list_events", "web-search.echo", "web-search.list_events"}
    assert "# calendar: denied until a rule allows them:" in (out / "policies.yaml").read_text()

    entry = json.loads(done.stdout.split("(or rerun with --rewrite):\n", 1)[1].split("\ncheck the", 1)[0])
    gateway = entry["mcpServers"]["securegateway"]
    assert gateway["env"]["GITHUB_TOKEN"] == TOKEN and gateway["env"]["SECUREGATEWAY_MODEL_KEY"].startswith("sgk-")
    assert gateway["args"][-3:] == ["run", "--config", str((out / "gateway.toml").resolve())]
    argv = [sys.executable, "-m", "proxy.cli", "policy", "test", "--config", str(out / "gateway.toml")]
    tested = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=gateway_env(), timeout=60)
    assert tested.returncode == 0 and "0 failed" in tested.stdout, tested.stdout + tested.stderr
    again = init(tmp_path, source)
    assert again.returncode == 2 and "already exist; pass --force" in again.stderr


def test_cursor_config_is_rewritten_with_a_backup_and_the_gateway_serves_it(tmp_path: Path) -> None:
    source = tmp_path / "mcp.json"
    original = {"mcpServers": {"calendar": server("calendar"), "old": {"url": "http://127.0.0.1:1/sse", "type": "sse"}}}
    source.write_text(json.dumps(original))
    done = init(tmp_path, source, "--rewrite", "--model", "cursor-agent")
    assert done.returncode == 0, done.stderr
    backups = list(tmp_path.glob("mcp.json.*.bak"))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == original
    rewritten = json.loads(source.read_text())
    assert set(rewritten["mcpServers"]) == {"securegateway", "old"}  # the SSE server was not imported: kept
    assert "legacy SSE" in done.stdout
    entry = rewritten["mcpServers"]["securegateway"]

    # Start the gateway exactly as the client would, with the entry's command, args and env.
    import anyio
    from mcp import Client, StdioServerParameters

    async def use() -> tuple[set[str], bool, bool]:
        params = StdioServerParameters(command=entry["command"], args=entry["args"],
                                       env={**gateway_env(), **entry["env"]}, cwd=str(ROOT))
        async with Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            allowed = await client.call_tool("calendar.list_events", {})
            denied = await client.call_tool("calendar.add", {"a": 1, "b": 2})
            return names, allowed.is_error, denied.is_error

    names, allowed_failed, denied_failed = anyio.run(use)
    assert {"calendar.list_events", "calendar.echo"} <= names and "calendar.add" not in names
    assert not allowed_failed and denied_failed


def test_vscode_config_uses_servers_and_type_and_keeps_input_references_out(tmp_path: Path) -> None:
    source = tmp_path / ".vscode" / "mcp.json"
    source.parent.mkdir()
    source.write_text(json.dumps({
        "inputs": [{"type": "promptString", "id": "pat", "password": True}],
        "servers": {"calendar": {"type": "stdio", **server("calendar"), "env": {"PAT": "${input:pat}"}},
                    "remote": {"type": "http", "url": "https://example.invalid/mcp",
                               "headers": {"Authorization": "Bearer ${input:pat}", "X-Team": "blue"}}},
    }))
    done = init(tmp_path, source, "--no-probe")
    assert done.returncode == 0, done.stderr
    toml = (tmp_path / "gw" / "gateway.toml").read_text()
    assert "${input:pat}" not in toml and '"X-Team" = "blue"' in toml
    entry = json.loads(done.stdout.split("(or rerun with --rewrite):\n", 1)[1].split("\ncheck the", 1)[0])
    gateway = entry["servers"]["securegateway"]
    assert gateway["type"] == "stdio" and gateway["env"]["PAT"] == "${input:pat}"
    assert "secret `Authorization` header" in done.stdout
    assert "could not list the tools of `calendar`: not probed" in done.stdout
    assert yaml.safe_load((tmp_path / "gw" / "policies.yaml").read_text()) == {"rules": []}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"mcpServers": {}}', "`mcpServers` has no servers to import"),
        ('{"mcpServers": {"a": {"command": 5}}}', "mcpServers.a: `command` must be a string"),
        ('{"mcpServers": {"a": {"url": "ftp://x"}}}', "mcpServers.a: `url` must be an http(s) URL"),
        ('{"mcpServers": {"a": {"command": "x", "env": {"A": 1}}}}', "mcpServers.a.env: expected an object of strings"),
        ('{"mcpServers": {"a": {"nothing": true}}}', "no server could be imported"),
    ],
)
def test_bad_client_configs_are_refused_naming_the_entry(tmp_path: Path, content: str, message: str) -> None:
    source = tmp_path / "mcp.json"
    source.write_text(content)
    with pytest.raises(ConfigError, match="mcp.json: ") as info:
        read_client_config(source)
    assert message in str(info.value)
    done = init(tmp_path, source)
    assert done.returncode == 2 and message in done.stderr


def test_what_counts_as_a_secret() -> None:
    for name, value in (("GITHUB_TOKEN", "x"), ("DB_PASSWORD", "x"), ("OPENAI_API_KEY", "x"), ("X", TOKEN),
                        ("AWS_SECRET_ACCESS_KEY", "x"), ("ANY", "${env:HOME}"), ("Authorization", "Bearer x")):
        assert is_secret(name, value), name
    for name, value in (("LOG_LEVEL", "debug"), ("PATH", "/usr/bin"), ("REGION", "eu-west-1"), ("MONKEY", "x")):
        assert not is_secret(name, value), name


def test_two_servers_sharing_a_secret_name_with_different_values_are_flagged(tmp_path: Path) -> None:
    source = tmp_path / "mcp.json"
    source.write_text(json.dumps({"mcpServers": {
        "a": {"command": "x", "env": {"TOKEN": "one"}}, "b": {"command": "y", "env": {"TOKEN": "two"}}}}))
    plan = plan_init(read_client_config(source), {}, model_key="k")
    assert any("`TOKEN` has different values" in note for note in plan.notes)
