"""gateway.toml parsing: every problem named by its key path, nothing silently defaulted."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import exposure_warnings, load_config, parse_config
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


def test_prefix_defaults_on_and_one_upstream_may_turn_it_off(tmp_path: Path) -> None:
    config = parse_config({
        "upstreams": [{"name": "a", "command": ["x"]}, {"name": "b", "command": ["y"], "prefix": False}],
    }, tmp_path / "gateway.toml")
    assert [u.prefix for u in config.upstreams] == [True, False]


def test_two_unprefixed_upstreams_are_refused_because_their_names_could_collide(tmp_path: Path) -> None:
    found = problems({"upstreams": [
        {"name": "a", "command": ["x"], "prefix": False}, {"name": "b", "command": ["y"], "prefix": False},
    ]}, tmp_path)
    assert found == ["gateway.toml: upstreams[1].prefix: only one upstream can have `prefix = false` "
                     "(two servers' own names could collide)"]
    assert "upstreams[0].prefix: expected true or false" in problems(
        {"upstreams": [{"name": "a", "command": ["x"], "prefix": "no"}]}, tmp_path)[0]


@pytest.mark.parametrize("listen", ["stdio", "http://127.0.0.1:9/mcp", "http://localhost:9/mcp", "http://[::1]:9/mcp"])
def test_anonymous_model_is_off_by_default_and_allowed_on_local_listeners(tmp_path: Path, listen: str) -> None:
    assert parse_config({"gateway": {"listen": listen}}, tmp_path / "g.toml").anonymous_model is None
    config = parse_config({"gateway": {"listen": listen, "anonymous_model": "local"}}, tmp_path / "g.toml")
    assert config.anonymous_model == "local"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "gateway.example"])
def test_anonymous_model_is_refused_on_a_network_listener(tmp_path: Path, host: str) -> None:
    found = problems({"gateway": {"listen": f"http://{host}:9/mcp", "anonymous_model": "local"}}, tmp_path)
    assert found == [f"gateway.toml: gateway.anonymous_model: only allowed on a loopback listener "
                     f"(127.0.0.1, localhost, ::1), not `{host}`"]


def test_decision_meta_is_full_by_default_and_checked(tmp_path: Path) -> None:
    assert parse_config({}, tmp_path / "g.toml").decision_meta == "full"
    assert parse_config({"gateway": {"decision_meta": "compact"}}, tmp_path / "g.toml").decision_meta == "compact"
    assert "gateway.decision_meta: must be one of full, compact" in problems(
        {"gateway": {"decision_meta": "tiny"}}, tmp_path)[0]


def test_fast_lane_and_event_loop_default_to_the_lean_lane_on_the_auto_loop_and_are_checked(tmp_path: Path) -> None:
    config = parse_config({}, tmp_path / "g.toml")
    assert config.fast_lane is True and config.event_loop == "auto"
    tuned = parse_config({"gateway": {"fast_lane": False, "event_loop": "uvloop"}}, tmp_path / "g.toml")
    assert tuned.fast_lane is False and tuned.event_loop == "uvloop"
    assert "gateway.event_loop: must be one of auto, asyncio, uvloop" in problems({"gateway": {"event_loop": "trio"}},
                                                                             tmp_path)[0]
    assert "gateway.fast_lane" in problems({"gateway": {"fast_lane": "yes"}}, tmp_path)[0]


def _minimal(**tables: dict) -> dict:
    return {"gateway": {"listen": "stdio"}, "policy": {"file": "p.yaml", "model_keys": "k.yaml"}, **tables}


def test_audit_checkpoint_keys_parse_and_default_to_signing_with_the_policy_key(tmp_path: Path) -> None:
    config = parse_config(_minimal(), tmp_path / "gateway.toml")
    assert config.audit.signing == "auto" and config.audit.checkpoint_every == 1000
    assert config.audit.checkpoint_file is None and config.audit.checkpoint_log is False
    config = parse_config(
        _minimal(audit={"signing": "hmac", "hmac_key_env": "K", "checkpoint_every": 0,
                        "checkpoint_file": "anchor/cp.jsonl", "checkpoint_log": True}),
        tmp_path / "gateway.toml",
    )
    assert config.audit.signing == "hmac" and config.audit.hmac_key_env == "K"
    assert config.audit.checkpoint_file == tmp_path / "anchor" / "cp.jsonl"
    found = problems(_minimal(audit={"signing": "sometimes", "checkpoint_every": -1}), tmp_path)
    assert any("audit.signing: must be one of auto, policy, hmac, off" in p for p in found)
    assert any("audit.checkpoint_every: must be at least 0" in p for p in found)


def test_policy_high_water_file_is_a_path(tmp_path: Path) -> None:
    raw = _minimal()
    raw["policy"]["high_water_file"] = "/var/lib/sg/hw.json"
    assert parse_config(raw, tmp_path / "gateway.toml").policy.high_water_file == Path("/var/lib/sg/hw.json")


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [("http://127.0.0.1:1/mcp", True), ("http://127.5.5.5:1/mcp", True), ("http://localhost:1/mcp", True),
     ("http://[::1]:1/mcp", True), ("http://0.0.0.0:1/mcp", False), ("http://10.1.2.3:1/mcp", False),
     ("http://gateway.internal:1/mcp", False), ("http://[::]:1/mcp", False), ("stdio", True)],
)  # fmt: skip
def test_listen_loopback_is_decided_by_address(tmp_path: Path, listen: str, loopback: bool) -> None:
    config = parse_config({**_minimal(), "gateway": {"listen": listen}}, tmp_path / "gateway.toml")
    assert config.listen.loopback is loopback
    warnings = exposure_warnings(config)
    assert bool(warnings) is not loopback
    if warnings:
        assert listen in warnings[0] and "not a loopback address" in warnings[0]


def test_a_non_loopback_admin_listen_needs_allow_remote_and_is_then_a_warning(tmp_path: Path) -> None:
    found = problems(_minimal(admin={"listen": "http://0.0.0.0:8081"}), tmp_path)
    assert found == [
        "gateway.toml: admin.listen: `http://0.0.0.0:8081` is reachable from other machines; the admin API "
        "approves policy, so a non-loopback listen needs `allow_remote = true` in [admin]"
    ]
    remote = {"listen": "http://0.0.0.0:8081", "allow_remote": True, "allowed_hosts": ["admin.example:8081"]}
    config = parse_config(_minimal(admin=remote), tmp_path / "gateway.toml")
    assert config.admin.allow_remote and config.admin.allowed_hosts == ("admin.example:8081",)
    assert [w for w in exposure_warnings(config) if w.startswith("admin.listen")]


def test_approvals_default_to_waiting_in_the_state_dir_and_bad_values_name_their_key(tmp_path: Path) -> None:
    approvals = parse_config({}, tmp_path / "g.toml").approvals
    assert (approvals.operator_mode, approvals.store, approvals.max_pending) == ("wait", None, 1000)
    chosen = parse_config({"approvals": {"operator_mode": "pending", "store": "db/a.db", "max_pending": 5}},
                          tmp_path / "g.toml").approvals
    assert (chosen.operator_mode, chosen.store, chosen.max_pending) == ("pending", tmp_path / "db/a.db", 5)
    found = problems({"approvals": {"operator_mode": "later", "max_pending": 0, "mode": "x"}}, tmp_path)
    assert any("approvals.operator_mode: must be one of wait, pending" in p for p in found), found
    assert any("approvals.max_pending" in p for p in found) and any("approvals.mode" in p for p in found), found
