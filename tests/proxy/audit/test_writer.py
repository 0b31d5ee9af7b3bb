"""proxy.audit.writer: which key signs audit checkpoints, and clear errors when it is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from negotiation.signing import generate_ed25519_keypair
from policy.audit.checkpoint import read_checkpoint_file
from policy.audit.event import event
from policy.audit.verify import verify_log
from proxy.audit.writer import audit_keys, open_audit_log
from proxy.config import GatewayConfig, parse_config
from proxy.errors import ConfigError


def config(tmp_path: Path, audit: dict[str, object], *, keys: bool = True) -> GatewayConfig:
    policy: dict[str, object] = {"file": "p.yaml", "model_keys": "k.yaml"}
    if keys:
        policy |= {"signing_key": "keys/policy.pem", "public_key": "keys/policy.pub"}
    return parse_config({"gateway": {"listen": "stdio"}, "policy": policy, "audit": audit}, tmp_path / "gateway.toml")


def test_auto_signs_with_the_policy_key_when_present_and_not_otherwise(tmp_path: Path) -> None:
    assert audit_keys(config(tmp_path, {})) == (None, None)  # key paths named but not generated yet
    generate_ed25519_keypair(tmp_path / "keys" / "policy.pem", tmp_path / "keys" / "policy.pub")
    signer, verifier = audit_keys(config(tmp_path, {}))
    assert signer is not None and verifier is not None and signer.key_id == getattr(verifier, "key_id", None)
    assert audit_keys(config(tmp_path, {"signing": "off"})) == (None, None)


def test_policy_signing_without_a_key_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit.signing = policy: no policy signing key"):
        audit_keys(config(tmp_path, {"signing": "policy"}, keys=False))


def test_hmac_signing_needs_a_long_enough_secret_in_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path, {"signing": "hmac", "hmac_key_env": "TEST_SG_AUDIT_KEY"})
    monkeypatch.delenv("TEST_SG_AUDIT_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"environment variable `TEST_SG_AUDIT_KEY`"):
        audit_keys(cfg)
    monkeypatch.setenv("TEST_SG_AUDIT_KEY", "short")
    with pytest.raises(ConfigError, match=r"at least 16 bytes"):
        audit_keys(cfg)
    monkeypatch.setenv("TEST_SG_AUDIT_KEY", "a secret held apart from the log files")
    signer, verifier = audit_keys(cfg)
    assert signer is not None and verifier is not None


def test_the_opened_log_signs_and_copies_checkpoints_to_the_checkpoint_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SG_AUDIT_KEY", "a secret held apart from the log files")
    anchor = tmp_path / "anchor" / "cp.jsonl"
    cfg = config(tmp_path, {"signing": "hmac", "hmac_key_env": "TEST_SG_AUDIT_KEY", "checkpoint_every": 2,
                            "checkpoint_file": str(anchor), "fsync": False})
    log = open_audit_log(cfg, tmp_path / "state")
    for n in range(5):
        log.append(event("gateway.started", n=n))
    log.close()
    checkpoints, problems = read_checkpoint_file(anchor)
    assert problems == [] and len(checkpoints) >= 3
    verifier = audit_keys(cfg)[1]
    report = verify_log(tmp_path / "state" / "audit.jsonl", verifier=verifier, checkpoints=checkpoints)
    assert report.ok, report.message
    anchor.write_text(anchor.read_text() + json.dumps({"schema": "nope"}) + "\n")
    assert read_checkpoint_file(anchor)[1] == [f"cp.jsonl:{len(checkpoints) + 1}: not a checkpoint"]
