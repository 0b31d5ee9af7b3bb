"""Sign and verify policy contracts: Ed25519 (the default) or HMAC-SHA256.

A signer turns bytes into a base64 signature and names itself by ``algorithm`` and
``key_id``; a verifier answers yes or no and never raises for a bad, foreign or
malformed signature. ``key_id`` is a short public fingerprint so a contract says which
key vouched for it without revealing anything secret:

- Ed25519: the first 16 hex digits of SHA-256 over the raw 32-byte public key.
- HMAC: the first 16 hex digits of SHA-256 over ``HMAC(secret, "securegateway key-id")``,
  a value derived from the secret, so the fingerprint is no hash of the secret itself.

Key files are PEM (PKCS#8 private, SubjectPublicKeyInfo public), unencrypted; the private
one is created with mode 0600 and never overwritten.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from negotiation.errors import SigningError

__all__ = [
    "ALGORITHMS",
    "Ed25519Signer",
    "Ed25519Verifier",
    "HmacSigner",
    "HmacVerifier",
    "Signer",
    "Verifier",
    "generate_ed25519_keypair",
    "load_signing",
]

ALGORITHMS: tuple[str, ...] = ("ed25519", "hmac-sha256")

# Shorter HMAC secrets are guessable offline from any one signed contract.
_MIN_HMAC_SECRET = 16
_HMAC_KEY_ID_LABEL = b"securegateway key-id"


class Signer(Protocol):
    algorithm: str
    key_id: str

    def sign(self, data: bytes) -> str:
        """The base64 signature of ``data``."""
        ...


class Verifier(Protocol):
    def verify(self, data: bytes, signature: str, key_id: str, algorithm: str) -> bool:
        """Whether ``signature`` is this verifier's key's signature of ``data``."""
        ...


def _fingerprint(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()[:16]


def _b64decode(signature: str) -> bytes | None:
    try:
        return base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read_key_file(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read {kind} key `{path}`: {exc.strerror}", code="key_invalid") from exc


class Ed25519Signer:
    """Signs with an Ed25519 private key."""

    algorithm = "ed25519"

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = _fingerprint(_raw_public(private_key.public_key()))

    @classmethod
    def from_private_pem(cls, path: Path) -> Ed25519Signer:
        try:
            key = serialization.load_pem_private_key(_read_key_file(path, "private"), password=None)
        except (ValueError, TypeError) as exc:
            raise SigningError(f"`{path}` is not an unencrypted pem private key", code="key_invalid") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError(f"`{path}` is not an ed25519 private key", code="key_invalid")
        return cls(key)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._key.sign(data)).decode("ascii")

    def verifier(self) -> Ed25519Verifier:
        """The verifier for this signer's public half."""
        return Ed25519Verifier(self._key.public_key())


class Ed25519Verifier:
    """Checks Ed25519 signatures made by one key."""

    algorithm = "ed25519"

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self._key = public_key
        self.key_id = _fingerprint(_raw_public(public_key))

    @classmethod
    def from_public_pem(cls, path: Path) -> Ed25519Verifier:
        try:
            key = serialization.load_pem_public_key(_read_key_file(path, "public"))
        except ValueError as exc:
            raise SigningError(f"`{path}` is not a pem public key", code="key_invalid") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SigningError(f"`{path}` is not an ed25519 public key", code="key_invalid")
        return cls(key)

    def verify(self, data: bytes, signature: str, key_id: str, algorithm: str) -> bool:
        if algorithm != self.algorithm or key_id != self.key_id:
            return False
        raw = _b64decode(signature)
        if raw is None:
            return False
        try:
            self._key.verify(raw, data)
        except InvalidSignature:
            return False
        return True


class _HmacKey:
    algorithm = "hmac-sha256"

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_HMAC_SECRET:
            raise SigningError(
                f"hmac secret must be at least {_MIN_HMAC_SECRET} bytes, got {len(secret)}",
                code="key_invalid",
            )
        self._secret = secret
        self.key_id = _fingerprint(hmac.digest(secret, _HMAC_KEY_ID_LABEL, "sha256"))

    def _mac(self, data: bytes) -> bytes:
        return hmac.digest(self._secret, data, "sha256")

    def __repr__(self) -> str:  # never show the secret
        return f"{type(self).__name__}(key_id={self.key_id!r})"


class HmacSigner(_HmacKey):
    """Signs with a shared secret; whoever can verify can also sign."""

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._mac(data)).decode("ascii")


class HmacVerifier(_HmacKey):
    """Checks HMAC-SHA256 signatures made with the same secret."""

    def verify(self, data: bytes, signature: str, key_id: str, algorithm: str) -> bool:
        if algorithm != self.algorithm or key_id != self.key_id:
            return False
        raw = _b64decode(signature)
        return raw is not None and hmac.compare_digest(raw, self._mac(data))


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_key_dir(directory: Path) -> None:
    """Create ``directory`` (and missing parents) readable by its owner only; leave existing ones."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, 0o700)  # mkdir's mode is narrowed by the umask, never widened: be explicit


def generate_ed25519_keypair(private_path: Path, public_path: Path) -> str:
    """Create a new key pair as two PEM files and return its key id.

    Missing directories are created with mode 0700. Refuses (``key_exists``) if either file
    exists: overwriting a private key would orphan every contract it signed.
    """
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError(f"refusing to overwrite `{path}`", code="key_exists")
    for path in (private_path, public_path):
        _make_key_dir(path.parent)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        # O_EXCL closes the gap between the check above and the write.
        _create_exclusive(private_path, private_pem, 0o600)
    except FileExistsError as exc:
        raise SigningError(f"refusing to overwrite `{private_path}`", code="key_exists") from exc
    # The umask may have narrowed the mode; it must not have widened it, but be explicit.
    os.chmod(private_path, 0o600)
    try:
        _create_exclusive(public_path, public_pem, 0o644)
    except OSError as exc:
        # Never leave half a pair behind.
        with contextlib.suppress(OSError):
            private_path.unlink()
        if isinstance(exc, FileExistsError):
            raise SigningError(f"refusing to overwrite `{public_path}`", code="key_exists") from exc
        raise
    return _fingerprint(_raw_public(key.public_key()))


def load_signing(
    algorithm: str,
    *,
    private_key: Path | None,
    public_key: Path | None,
    hmac_secret: bytes | None,
) -> tuple[Signer | None, Verifier | None]:
    """Build the signer and verifier a configuration names; either may be absent.

    Ed25519: the signer comes from ``private_key``; the verifier from ``public_key``, or
    from the private key's public half when only that is given. Both given must be one
    pair (``key_mismatch``). HMAC: both come from ``hmac_secret`` or neither does.
    """
    if algorithm == "ed25519":
        signer = Ed25519Signer.from_private_pem(private_key) if private_key is not None else None
        verifier = Ed25519Verifier.from_public_pem(public_key) if public_key is not None else None
        if signer is not None and verifier is not None and signer.key_id != verifier.key_id:
            raise SigningError(
                f"private key `{private_key}` ({signer.key_id}) and public key `{public_key}` "
                f"({verifier.key_id}) are not one pair",
                code="key_mismatch",
            )
        if verifier is None and signer is not None:
            verifier = signer.verifier()
        return signer, verifier
    if algorithm == "hmac-sha256":
        if hmac_secret is None:
            return None, None
        return HmacSigner(hmac_secret), HmacVerifier(hmac_secret)
    raise SigningError(
        f"unknown signing algorithm `{algorithm}`; expected one of {', '.join(ALGORITHMS)}",
        code="unknown_algorithm",
    )
