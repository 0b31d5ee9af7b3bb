"""The README's MCP Inspector CLI commands, run exactly as written, from a copy of the checkout.

Only two things are arranged around them: ``npx @modelcontextprotocol/inspector`` resolves to
the Inspector that .ci/run installed (no registry access at test time), and ``securegateway``
is this tree's CLI (the Inspector passes its child no environment, so the shim carries the
test's ``PYTHONPATH`` itself). Skipped where the Inspector is not installed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.test_reference_servers import reference_server

PREFIX = "npx @modelcontextprotocol/inspector --cli "


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip().startswith(PREFIX)]


def _shim(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_the_readme_has_inspector_cli_commands_that_pass_the_key_with_e() -> None:
    commands = readme_commands()
    assert len(commands) >= 2
    for command in commands:
        argv = shlex.split(command)
        assert "-e" in argv and "--" in argv and "--config" not in argv[: argv.index("--")], command


@pytest.mark.parametrize("command", readme_commands())
def test_readme_inspector_command_works_as_written(tmp_path: Path, command: str) -> None:
    inspector = reference_server("mcp-inspector")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "gateway.toml", checkout / "gateway.toml")
    shutil.copytree(ROOT / "demo", checkout / "demo", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _shim(bin_dir / "npx", f'[ "$1" = "@modelcontextprotocol/inspector" ] && shift; exec {shlex.quote(inspector)} "$@"')
    _shim(bin_dir / "securegateway",
          f'PYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)} -m proxy.cli "$@"')
    python_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{python_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SECUREGATEWAY_MODEL_KEY", None)  # the command must carry the key itself
    done = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    if "tools/list" in command:
        assert {"search.echo", "calendar.list_events", "propose_policy"} <= {t["name"] for t in result["tools"]}
    else:
        assert result["content"] == [{"type": "text", "text": "hi"}]
        assert result["_meta"]["io.securegateway/decision"]["allowed"] is True
    assert (checkout / "state" / "policies.yaml").exists()  # the live policy lives under state/
    assert (checkout / "demo" / "policies.yaml").read_bytes() == (ROOT / "demo" / "policies.yaml").read_bytes()
