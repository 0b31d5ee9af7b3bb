from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from negotiation.errors import SigningError
from negotiation.signing import (
    Ed25519Signer,
    Ed25519Verifier,
    HmacSigner,
    HmacVerifier,
    generate_ed25519_keypair,
    load_signing,
)

SECRET = b"correct horse battery staple 42"
DATA = b'{"policy":{"rules":[]},"version":1}'


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path, str]:
    private, public = tmp_path / "policy.key", tmp_path / "policy.pub"
    key_id = generate_ed25519_keypair(private, public)
    return private, public, key_id


def test_ed25519_signature_verifies_with_the_public_key(keypair: tuple[Path, Path, str]) -> None:
    private, public, key_id = keypair
    signer = Ed25519Signer.from_private_pem(private)
    verifier = Ed25519Verifier.from_public_pem(public)
    signature = signer.sign(DATA)
    assert signer.algorithm == "ed25519"
    assert signer.key_id == verifier.key_id == key_id
    assert verifier.verify(DATA, signature, key_id, "ed25519")


def test_ed25519_key_id_is_a_fingerprint_of_the_raw_public_key(keypair: tuple[Path, Path, str]) -> None:
    _, public, key_id = keypair
    key = serialization.load_pem_public_key(public.read_bytes())
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id == hashlib.sha256(raw).hexdigest()[:16]


def test_ed25519_rejects_tampered_bytes_foreign_key_and_garbage(
    keypair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    private, public, key_id = keypair
    signature = Ed25519Signer.from_private_pem(private).sign(DATA)
    verifier = Ed25519Verifier.from_public_pem(public)
    assert not verifier.verify(DATA + b" ", signature, key_id, "ed25519")
    assert not verifier.verify(DATA, signature, key_id, "hmac-sha256")
    assert not verifier.verify(DATA, signature, "0" * 16, "ed25519")
    assert not verifier.verify(DATA, "not base64!", key_id, "ed25519")
    assert not verifier.verify(DATA, base64.b64encode(b"short").decode(), key_id, "ed25519")

    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    other_id = generate_ed25519_keypair(other_private, other_public)
    other_signature = Ed25519Signer.from_private_pem(other_private).sign(DATA)
    # Signed by another key, even if the contract claims our key id.
    assert not verifier.verify(DATA, other_signature, key_id, "ed25519")
    assert not verifier.verify(DATA, other_signature, other_id, "ed25519")


def test_hmac_signature_verifies_and_rejects_tampering_and_wrong_secret() -> None:
    signer, verifier = HmacSigner(SECRET), HmacVerifier(SECRET)
    signature = signer.sign(DATA)
    assert signer.algorithm == "hmac-sha256"
    assert signer.key_id == verifier.key_id
    assert verifier.verify(DATA, signature, signer.key_id, "hmac-sha256")
    assert not verifier.verify(DATA + b"x", signature, signer.key_id, "hmac-sha256")
    assert not verifier.verify(DATA, signature, signer.key_id, "ed25519")
    wrong = HmacVerifier(b"another secret of enough length")
    assert not wrong.verify(DATA, signature, signer.key_id, "hmac-sha256")
    assert not wrong.verify(DATA, signature, wrong.key_id, "hmac-sha256")


def test_hmac_key_id_does_not_leak_the_secret() -> None:
    signer = HmacSigner(SECRET)
    assert len(signer.key_id) == 16
    assert signer.key_id != hashlib.sha256(SECRET).hexdigest()[:16]
    assert SECRET.decode() not in repr(signer)


def test_hmac_refuses_a_short_secret() -> None:
    with pytest.raises(SigningError) as info:
        HmacSigner(b"short")
    assert info.value.code == "key_invalid"


def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(keypair: tuple[Path, Path, str]) -> None:
    private, public, _ = keypair
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    with pytest.raises(SigningError) as info:
        generate_ed25519_keypair(private, public.with_name("new.pub"))
    assert info.value.code == "key_exists"
    assert private.read_bytes() == before
    assert not public.with_name("new.pub").exists()


def test_keygen_refuses_an_existing_public_file_and_leaves_no_private_half(tmp_path: Path) -> None:
    public = tmp_path / "taken.pub"
    public.write_text("keep me")
    with pytest.raises(SigningError):
        generate_ed25519_keypair(tmp_path / "new.key", public)
    assert not (tmp_path / "new.key").exists()
    assert public.read_text() == "keep me"


def test_load_signing_ed25519_derives_the_verifier_from_the_private_key(
    keypair: tuple[Path, Path, str],
) -> None:
    private, _, key_id = keypair
    signer, verifier = load_signing("ed25519", private_key=private, public_key=None, hmac_secret=None)
    assert signer is not None and verifier is not None
    assert verifier.verify(DATA, signer.sign(DATA), key_id, "ed25519")


def test_load_signing_verify_only_with_a_public_key(keypair: tuple[Path, Path, str]) -> None:
    _, public, _ = keypair
    signer, verifier = load_signing("ed25519", private_key=None, public_key=public, hmac_secret=None)
    assert signer is None and verifier is not None


def test_load_signing_refuses_keys_from_two_pairs(keypair: tuple[Path, Path, str], tmp_path: Path) -> None:
    private, _, _ = keypair
    generate_ed25519_keypair(tmp_path / "b.key", tmp_path / "b.pub")
    with pytest.raises(SigningError) as info:
        load_signing("ed25519", private_key=private, public_key=tmp_path / "b.pub", hmac_secret=None)
    assert info.value.code == "key_mismatch"


def test_load_signing_hmac_and_unknown_algorithm() -> None:
    signer, verifier = load_signing("hmac-sha256", private_key=None, public_key=None, hmac_secret=SECRET)
    assert signer is not None and verifier is not None
    assert verifier.verify(DATA, signer.sign(DATA), signer.key_id, signer.algorithm)
    assert load_signing("hmac-sha256", private_key=None, public_key=None, hmac_secret=None) == (None, None)
    with pytest.raises(SigningError) as info:
        load_signing("rsa", private_key=None, public_key=None, hmac_secret=None)
    assert info.value.code == "unknown_algorithm"


def test_loading_a_missing_or_wrong_key_file_is_a_signing_error(
    keypair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    _, public, _ = keypair
    with pytest.raises(SigningError) as info:
        Ed25519Signer.from_private_pem(tmp_path / "absent.key")
    assert info.value.code == "key_invalid"
    with pytest.raises(SigningError):
        Ed25519Signer.from_private_pem(public)  # a public key where the private one belongs
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SigningError):
        Ed25519Verifier.from_public_pem(garbage)
