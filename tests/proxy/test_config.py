"""gateway.toml parsing: every problem named by its key path, nothing silently defaulted."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config, parse_config
from proxy.errors import ConfigError


def problems(raw: dict, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, tmp_path / "gateway.toml")
    return err.value.problems


def test_the_seed_shape_parses_with_relative_paths_resolved_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text(
        '[gateway]\nlisten = "http://127.0.0.1:8765/mcp"\n'
        '[[upstreams]]\nname = "calendar"\ncommand = ["python", "-m", "calendar_server"]\n'
        '[[upstreams]]\nname = "search"\nurl = "http://127.0.0.1:9000/mcp"\n'
        '[policy]\nfile = "policies.yaml"\nmodel_keys = "model_keys.yaml"\n'
        '[audit]\nfile = "audit/audit.jsonl"\n[admin]\nlisten = "http://127.0.0.1:8081"\n'
    )
    config = load_config(tmp_path / "gateway.toml")
    assert config.listen.kind == "http" and config.listen.port == 8765 and config.listen.path == "/mcp"
    assert [u.transport for u in config.upstreams] == ["stdio", "http"]
    assert config.upstreams[0].command == ("python", "-m", "calendar_server")
    assert config.policy.file == tmp_path / "policies.yaml"
    assert config.audit.file == tmp_path / "audit" / "audit.jsonl"
    assert config.admin.listen is not None and config.admin.listen.port == 8081


def test_unknown_keys_and_bad_values_are_all_reported_with_their_key_paths(tmp_path: Path) -> None:
    found = problems({
        "gateway": {"listen": "ftp://x", "page_size": 0, "tools_list": "maybe", "colour": "blue"},
        "upstreams": [
            {"name": "a", "command": "python server.py"},
            {"name": "b", "command": ["x"], "url": "http://127.0.0.1:1/mcp"},
            {"name": "a.b", "url": "http://127.0.0.1:1/mcp"},
            {"name": "c", "url": "http://127.0.0.1:1/mcp", "env": {"X": "1"}},
        ],
        "policy": {"require_signature": "yes"},
        "extra": {},
    }, tmp_path)
    text = "\n".join(found)
    for expected in (
        "gateway.listen: expected `stdio` or an http://HOST:PORT/PATH url, got `ftp://x`",
        "gateway.page_size: must be at least 1",
        "gateway.tools_list: must be one of hide, show",
        "gateway.colour: unknown key",
        "upstreams[0].command: expected a non-empty list of strings",
        "upstreams[1]: needs exactly one of `command` (stdio) or `url` (streamable http)",
        "upstreams[2].name: required: letters, digits, `_` or `-`, starting with a letter",
        "upstreams[3].env: only applies to command (stdio) upstreams",
        "policy.require_signature: expected true or false, got str",
        "extra: unknown key",
    ):
        assert expected in text, expected
    assert all(line.startswith("gateway.toml: ") for line in found)


def test_duplicate_upstream_names_are_refused(tmp_path: Path) -> None:
    found = problems({"upstreams": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]}, tmp_path)
    assert found == ["gateway.toml: upstreams[1].name: duplicate upstream name `a`"]


def test_a_missing_or_malformed_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[gateway\n")
    with pytest.raises(ConfigError, match="invalid toml"):
        load_config(tmp_path / "bad.toml")


def test_the_bundled_demo_config_is_valid() -> None:
    config = load_config(Path(__file__).resolve().parents[2] / "gateway.toml")
    assert [u.name for u in config.upstreams] == ["calendar", "search"]
    # The live policy is created under state/ on the first run, from the shipped seed.
    assert config.policy.seed is not None and config.policy.seed.exists()
    assert config.policy.file is not None and config.policy.file.parent.name == "state"
