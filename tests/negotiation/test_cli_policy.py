from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from negotiation.cli_policy import PolicyStorageConfig, open_repository, register
from negotiation.errors import SigningError

HMAC_ENV = "TEST_SECUREGATEWAY_HMAC"


def policy_text(*tools: str) -> str:
    return "rules:\n  - id: docs\n    model: claude\n    allow_tools: [" + ", ".join(tools) + "]\n"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="securegateway")
    register(root.add_subparsers(dest="command", required=True))
    return root


def run(cfg: PolicyStorageConfig, *argv: str) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args, cfg))


@pytest.fixture
def cfg(tmp_path: Path) -> PolicyStorageConfig:
    (tmp_path / "policies.yaml").write_text(policy_text("fs.read"))
    return PolicyStorageConfig(
        policy_path=tmp_path / "policies.yaml",
        state_dir=tmp_path / "state",
        algorithm="ed25519",
        private_key=tmp_path / "keys" / "policy.key",
        public_key=tmp_path / "keys" / "policy.pub",
        hmac_secret_env=HMAC_ENV,
        require_signature=False,
    )


@pytest.fixture
def keyed(cfg: PolicyStorageConfig, capsys: pytest.CaptureFixture[str]) -> PolicyStorageConfig:
    assert cfg.private_key is not None
    cfg.private_key.parent.mkdir()
    assert run(cfg, "keys", "generate") == 0
    capsys.readouterr()
    return cfg


def test_keys_generate_writes_a_0600_private_key_and_refuses_to_overwrite(
    keyed: PolicyStorageConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keyed.private_key is not None and keyed.public_key is not None
    assert stat.S_IMODE(keyed.private_key.stat().st_mode) == 0o600
    assert keyed.public_key.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = keyed.private_key.read_bytes()
    assert run(keyed, "keys", "generate") == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert keyed.private_key.read_bytes() == before


def test_keys_generate_needs_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = PolicyStorageConfig(policy_path=tmp_path / "p.yaml", state_dir=tmp_path / "s")
    assert run(bare, "keys", "generate") == 2
    assert run(bare, "keys", "generate", "--private", str(tmp_path / "k"), "--public", str(tmp_path / "k.pub")) == 0
    assert "generated ed25519 key pair" in capsys.readouterr().out


def test_policy_verify_passes_a_clean_history_and_fails_a_tampered_archive(
    keyed: PolicyStorageConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    open_repository(keyed).load()
    assert run(keyed, "policy", "verify") == 0
    out = capsys.readouterr().out
    assert "1 version(s), signatures checked" in out and out.rstrip().endswith("OK")

    archive = next((keyed.state_dir / "policies").iterdir())
    archive.write_text(policy_text("fs.read", "fs.write"))
    assert run(keyed, "policy", "verify", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["versions"] == 1
    assert result["live"]["matches_head"] is True
    assert any("hashes to" in problem for problem in result["problems"])


def test_policy_verify_fails_on_an_unrecorded_edit_until_it_is_signed(
    keyed: PolicyStorageConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    open_repository(keyed).load()
    keyed.policy_path.write_text(policy_text("fs.read", "fs.list"))
    assert run(keyed, "policy", "verify") == 1
    assert "live file is not a recorded version" in capsys.readouterr().out

    assert run(keyed, "policy", "sign", "--justification", "ops ticket 42") == 0
    assert "as v2" in capsys.readouterr().out
    head = open_repository(keyed).head()
    assert head is not None and head.approver == "operator" and head.justification == "ops ticket 42"
    assert run(keyed, "policy", "verify") == 0

    assert run(keyed, "policy", "sign") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(open_repository(keyed).contracts()) == 2


def test_policy_sign_without_a_private_key_is_a_configuration_error(
    cfg: PolicyStorageConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    unkeyed = PolicyStorageConfig(policy_path=cfg.policy_path, state_dir=cfg.state_dir)
    assert run(unkeyed, "policy", "sign") == 2
    assert "signing needs a private key" in capsys.readouterr().err


def test_policy_sign_of_an_invalid_file_fails(keyed: PolicyStorageConfig, capsys: pytest.CaptureFixture[str]) -> None:
    keyed.policy_path.write_text("rules: {not: a list}\n")
    assert run(keyed, "policy", "sign") == 1
    assert "policies.yaml" in capsys.readouterr().err


def test_hmac_secret_comes_from_the_named_environment_variable(
    cfg: PolicyStorageConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hmac_cfg = PolicyStorageConfig(
        policy_path=cfg.policy_path, state_dir=cfg.state_dir, algorithm="hmac-sha256", hmac_secret_env=HMAC_ENV
    )
    monkeypatch.delenv(HMAC_ENV, raising=False)
    with pytest.raises(SigningError) as info:
        open_repository(hmac_cfg)
    assert info.value.code == "key_missing"
    assert run(hmac_cfg, "policy", "verify") == 2
    assert HMAC_ENV in capsys.readouterr().err

    monkeypatch.setenv(HMAC_ENV, "an operator's shared secret value")
    active = open_repository(hmac_cfg).load()
    assert active.contract is not None and active.contract.algorithm == "hmac-sha256"
    assert run(hmac_cfg, "policy", "verify") == 0


def test_register_can_resolve_the_config_itself(keyed: PolicyStorageConfig) -> None:
    cfg = keyed
    root = argparse.ArgumentParser()
    register(
        root.add_subparsers(dest="command"),
        add_common=lambda p: p.add_argument("--config", default="gateway.toml"),
        resolve=lambda args: cfg,
    )
    args = root.parse_args(["policy", "verify", "--config", "x.toml"])
    assert args.config == "x.toml"
    open_repository(cfg).load()
    assert args.func(args) == 0
