"""First-run behaviour: the live policy seeded under state/, and `run --stdio` for any config."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from proxy.bootstrap import open_runtime, seed_policy
from proxy.config import load_config
from proxy.errors import ConfigError
from tests.conftest import ROOT, gateway_env
from tests.e2e.conftest import GPT_KEY, make_site


def seeded_site(tmp_path: Path) -> Path:
    site = make_site(tmp_path / "site")
    root = site.root
    (root / "shipped.yaml").write_text((root / "policies.yaml").read_text())
    (root / "policies.yaml").unlink()
    text = site.config_path.read_text().replace('file = "policies.yaml"',
                                                'file = "state/live.yaml"\nseed = "shipped.yaml"')
    site.config_path.write_text(text)
    return site.config_path


def test_the_seed_is_copied_once_and_never_overwrites_the_live_policy(tmp_path: Path) -> None:
    config = load_config(seeded_site(tmp_path))
    assert config.policy.file is not None and not config.policy.file.exists()
    runtime = open_runtime(config)
    runtime.audit.close()
    live = config.policy.file
    assert live.read_text() == (config.path.parent / "shipped.yaml").read_text()
    live.write_text(live.read_text() + "  - id: extra\n    model: gpt-4o\n    allow_tools: [calendar.add]\n")
    seed_policy(config)
    assert "id: extra" in live.read_text()


def test_a_missing_seed_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = seeded_site(tmp_path)
    (path.parent / "shipped.yaml").unlink()
    with pytest.raises(ConfigError, match=r"policy.seed: .*shipped.yaml: file not found"):
        open_runtime(load_config(path))


def test_run_stdio_serves_a_config_whose_listen_is_http(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    site = make_site(tmp_path / "site")  # listen = http://127.0.0.1:PORT/mcp
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "proxy.cli", "run", "--stdio", "-c", str(site.config_path)],
        env={**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}, cwd=str(ROOT),
    )

    async def listed() -> set[str]:
        with anyio.fail_after(60):
            async with Client(params) as client:
                return {t.name for t in (await client.list_tools()).tools}

    assert "search.echo" in anyio.run(listed)
