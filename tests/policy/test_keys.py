"""model_keys.yaml -> KeyRing: identification by key, constant-time comparison, scopes."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from policy import KeyRing, ModelIdentity, PolicyError, PolicyLoadError, load_model_keys, load_model_keys_text
from policy.keys import hash_key

KEYS = """
models:
  gpt-4o:
    key: modelkey-abc123
    tools: ["calendar.*"]
    can_propose: true
  claude:
    key_sha256: {digest}
    tools: ["search.web", "fs.read_*"]
""".replace("{digest}", hashlib.sha256(b"modelkey-def456").hexdigest())


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyLoadError) as caught:
        load_model_keys_text(text, "model_keys.yaml")
    return [str(issue) for issue in caught.value.errors]


def test_a_presented_key_identifies_its_model() -> None:
    ring = load_model_keys_text(KEYS)
    assert ring.authenticate("modelkey-abc123") == ModelIdentity("gpt-4o", ("calendar.*",), True)
    assert ring.authenticate("modelkey-def456") == ModelIdentity("claude", ("search.web", "fs.read_*"), False)


def test_an_unknown_or_near_miss_key_identifies_nobody() -> None:
    ring = load_model_keys_text(KEYS)
    assert ring.authenticate("modelkey-abc124") is None
    assert ring.authenticate("") is None
    assert ring.authenticate(hashlib.sha256(b"modelkey-def456").hexdigest()) is None


def test_authentication_compares_against_every_entry_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing((ModelIdentity(f"m{i}", ()), hash_key(f"key-{i}")) for i in range(5))
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(left: bytes, right: bytes) -> bool:
        calls.append(right)
        return real(left, right)

    monkeypatch.setattr("policy.keys.hmac.compare_digest", counting)
    identity = ring.authenticate("key-0")
    assert identity is not None and identity.model_id == "m0"
    assert len(calls) == 5


def test_get_and_identities_expose_the_loaded_models() -> None:
    ring = load_model_keys_text(KEYS)
    assert set(ring.identities) == {"gpt-4o", "claude"}
    claude = ring.get("claude")
    assert claude is not None and claude.tools == ("search.web", "fs.read_*")
    assert ring.get("nobody") is None
    with pytest.raises(TypeError):
        ring.identities["x"] = ModelIdentity("x", ())  # type: ignore[index]


def test_key_scope_is_matched_with_tool_globs() -> None:
    ring = load_model_keys_text(KEYS)
    assert ring.in_scope("gpt-4o", "calendar.list_events")
    assert ring.in_scope("gpt-4o", "calendar.events.list")
    assert not ring.in_scope("gpt-4o", "calendarx.list")
    assert ring.in_scope("claude", "fs.read_file")
    assert not ring.in_scope("claude", "fs.write_file")
    assert not ring.in_scope("nobody", "calendar.list")


def test_a_model_may_have_an_empty_scope() -> None:
    ring = load_model_keys_text("models:\n  m:\n    key: k-123456\n    tools: []\n")
    assert ring.get("m") == ModelIdentity("m", (), False)
    assert not ring.in_scope("m", "anything.at_all")


def test_the_same_key_for_two_models_is_a_load_error_even_across_key_and_digest() -> None:
    digest = hashlib.sha256(b"shared-key").hexdigest()
    text = f"models:\n  a:\n    key: shared-key\n    tools: []\n  b:\n    key_sha256: {digest.upper()}\n    tools: []\n"
    assert errors_of(text) == ["model_keys.yaml:5:3: models.b: uses the same key as model `a`"]


def test_key_and_key_sha256_are_mutually_exclusive_and_one_is_required() -> None:
    text = (
        "models:\n"
        "  a:\n    key: k1\n    key_sha256: " + "0" * 64 + "\n    tools: []\n"
        "  b:\n    tools: []\n"
    )
    assert errors_of(text) == [
        "model_keys.yaml:2:3: models.a: expected exactly one of `key` or `key_sha256`",
        "model_keys.yaml:6:3: models.b: expected exactly one of `key` or `key_sha256`",
    ]


def test_malformed_entries_are_all_reported() -> None:
    text = (
        "models:\n"  # 1
        "  a:\n"  # 2
        "    key_sha256: abc\n"  # 3
        "    tools: calendar.*\n"  # 4
        "    can_propose: yes please\n"  # 5
        "    colour: red\n"  # 6
        "  b:\n"  # 7
        "    key: k2\n"  # 8
    )
    assert errors_of(text) == [
        "model_keys.yaml:3:5: models.a.key_sha256: expected 64 hex digits (a sha256 digest)",
        "model_keys.yaml:4:5: models.a.tools: expected a list of strings, got str",
        "model_keys.yaml:5:5: models.a.can_propose: expected true or false, got `yes please`",
        "model_keys.yaml:6:5: models.a.colour: unknown key; expected one of: key, key_sha256, tools, can_propose",
        "model_keys.yaml:7:3: models.b: missing required key `tools` (use `tools: []` for no tools)",
    ]


def test_the_top_level_needs_models() -> None:
    assert errors_of("model: {}\n") == [
        "model_keys.yaml:1:1: model: unknown key; expected one of: models",
        "model_keys.yaml:1:1: <root>: missing required key `models`",
    ]


def test_load_model_keys_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "model_keys.yaml"
    path.write_text(KEYS)
    assert load_model_keys(path).authenticate("modelkey-abc123") is not None


def test_keyring_built_in_code_refuses_duplicate_models_and_keys() -> None:
    with pytest.raises(PolicyError, match="reuses another model's key"):
        KeyRing([(ModelIdentity("a", ()), hash_key("k")), (ModelIdentity("b", ()), hash_key("k"))])
    with pytest.raises(PolicyError, match="duplicate model `a`"):
        KeyRing([(ModelIdentity("a", ()), hash_key("k")), (ModelIdentity("a", ()), hash_key("j"))])
