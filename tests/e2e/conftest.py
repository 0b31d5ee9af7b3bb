"""A whole gateway (config files, keys, policy, audit log) in a temporary directory."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.bootstrap import App, build
from proxy.config import GatewayConfig, load_config
from tests.conftest import free_port, server_cmd

GPT_KEY = "modelkey-abc123"
CLAUDE_KEY = "modelkey-claude-456"
ADMIN_KEY = "admin-key-for-tests-0123456789"

MODEL_KEYS = """\
models:
  gpt-4o:
    key: modelkey-abc123
    tools: ["calendar.*", "search.*"]
    can_propose: true
  claude:
    key: modelkey-claude-456
    tools: ["calendar.*"]
    can_propose: false
"""

POLICY = """\
rules:
  - id: gpt4o-search
    model: gpt-4o
    allow_tools: [search.*]
  - id: calendar-read
    model: "*"
    allow_tools: [calendar.list_events, calendar.echo, calendar.record]
  - id: no-crash
    model: "*"
    deny_tools: ["*.crash"]
    reason: "{tool} is disabled here"
"""


@dataclass
class Site:
    """Files of one gateway deployment under tmp_path."""

    root: Path
    config_path: Path
    marker: Path
    url: str | None

    @property
    def config(self) -> GatewayConfig:
        return load_config(self.config_path)

    @property
    def audit_path(self) -> Path:
        return self.root / "state" / "audit.jsonl"

    def app(self, model_key: str | None = None) -> App:
        return build(self.config, model_key=model_key)


def make_site(
    root: Path,
    *,
    listen: str = "http",
    policy: str = POLICY,
    gateway: str = "",
    negotiation: str = "",
    detectors: str = "",
    admin: bool = False,
    upstreams: list[tuple[str, list[str]]] | None = None,
) -> Site:
    marker = root / "calls.txt"
    root.mkdir(parents=True, exist_ok=True)
    (root / "policies.yaml").write_text(policy)
    (root / "model_keys.yaml").write_text(MODEL_KEYS)
    url = None
    if listen == "http":
        url = f"http://127.0.0.1:{free_port()}/mcp"
        listen_value = url
    else:
        listen_value = "stdio"
    ups = upstreams or [
        ("calendar", server_cmd("calendar", "--marker", str(marker))),
        ("search", server_cmd("search", "--marker", str(marker))),
    ]
    upstream_text = "".join(
        f'\n[[upstreams]]\nname = "{name}"\ncommand = {_toml_list(cmd)}\n' for name, cmd in ups
    )
    detectors_text = f"\n[detectors]\n{detectors}\n" if detectors else ""
    admin_text = f'\n[admin]\nlisten = "http://127.0.0.1:{free_port()}"\n' if admin else ""
    (root / "gateway.toml").write_text(
        textwrap.dedent(f"""\
        [gateway]
        listen = "{listen_value}"
        {gateway}
        {upstream_text}
        [policy]
        file = "policies.yaml"
        model_keys = "model_keys.yaml"
        state_dir = "state"
        signing_key = "state/keys/policy.pem"
        public_key = "state/keys/policy.pub"
        watch_interval = 0.1

        [audit]
        file = "state/audit.jsonl"
        {admin_text}
        [negotiation]
        read_only_tools = ["calendar.list_events", "calendar.add", "search.*"]
        sensitive_tools = ["calendar.crash"]
        {negotiation}
        {detectors_text}
        """)
    )
    return Site(root, root / "gateway.toml", marker, url)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items) + "]"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "proxy.cli", *args]


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)
