"""``securegateway policy verify|sign`` and ``securegateway keys generate``.

The proxy's CLI owns the parser and the configuration file; it calls :func:`register`
with its subparsers and later runs ``args.func(args, cfg)`` with a
:class:`PolicyStorageConfig` built from its ``[policy]`` table. Output is plain text
(``policy verify --json`` prints one JSON object). Exit codes follow the gateway's CLI:
0 ok, 1 a check failed or was refused, 2 bad configuration (keys, state directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from negotiation.errors import NegotiationError, SigningError
from negotiation.high_water import FileHighWaterStore
from negotiation.repository import PolicyRepository
from negotiation.signing import generate_ed25519_keypair, load_signing
from policy import PolicyError, load_policy

__all__ = ["PolicyStorageConfig", "open_repository", "register"]

Handler = Callable[[argparse.Namespace, "PolicyStorageConfig"], int]


@dataclass(frozen=True)
class PolicyStorageConfig:
    """Where the policy and its history live and how they are signed."""

    policy_path: Path
    state_dir: Path
    algorithm: str = "ed25519"
    private_key: Path | None = None
    public_key: Path | None = None
    hmac_secret_env: str = "SECUREGATEWAY_HMAC_KEY"
    require_signature: bool = False
    # Where the signed high-water mark lives (default: <state_dir>/policy-high-water.json).
    high_water_file: Path | None = None


def open_repository(cfg: PolicyStorageConfig) -> PolicyRepository:
    """The repository ``cfg`` describes, with its keys loaded (raises ``SigningError``)."""
    secret: bytes | None = None
    if cfg.algorithm == "hmac-sha256":
        value = os.environ.get(cfg.hmac_secret_env)
        if not value:
            raise SigningError(
                f"algorithm hmac-sha256 needs the secret in environment variable `{cfg.hmac_secret_env}`",
                code="key_missing",
            )
        secret = value.encode("utf-8")
    signer, verifier = load_signing(
        cfg.algorithm, private_key=cfg.private_key, public_key=cfg.public_key, hmac_secret=secret
    )
    return PolicyRepository(
        cfg.policy_path,
        cfg.state_dir,
        signer=signer,
        verifier=verifier,
        require_signature=cfg.require_signature,
        high_water=FileHighWaterStore(cfg.high_water_file) if cfg.high_water_file is not None else None,
    )


def register(
    subparsers: Any,
    *,
    add_common: Callable[[argparse.ArgumentParser], None] | None = None,
    resolve: Callable[[argparse.Namespace], PolicyStorageConfig] | None = None,
) -> None:
    """Add ``policy verify``, ``policy sign`` and ``keys generate`` to ``subparsers``.

    Each leaf's ``func`` is ``handler(args, cfg) -> int``. A caller that prefers
    ``func(args)`` passes ``resolve`` (args -> config) and gets that instead;
    ``add_common`` is applied to every leaf parser (e.g. to add ``--config``).
    """

    def leaf(parent: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        if add_common is not None:
            add_common(parser)
        if resolve is None:
            parser.set_defaults(func=handler)
        else:
            parser.set_defaults(func=lambda args: handler(args, resolve(args)))
        return parser

    policy = subparsers.add_parser("policy", help="check or sign the policy file and its history")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    verify = leaf(policy_sub, "verify", "check every policy version's signature, links and archive", _verify)
    verify.add_argument("--json", action="store_true", help="print the result as one JSON object")
    verify.add_argument(
        "--accept-rollback",
        action="store_true",
        help="accept the recorded head as the newest version even if a newer one was accepted before",
    )
    sign = leaf(policy_sub, "sign", "record the policy file as it stands as a version signed by the operator", _sign)
    sign.add_argument("--justification", default=None, help="why this version is being signed")

    keys = subparsers.add_parser("keys", help="manage policy signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = leaf(keys_sub, "generate", "create a new Ed25519 signing key pair", _generate)
    generate.add_argument("--private", type=Path, default=None, help="private key path (default: config)")
    generate.add_argument("--public", type=Path, default=None, help="public key path (default: config)")


def _fail(message: str, code: int) -> int:
    print(f"securegateway: {message}", file=sys.stderr)
    return code


def _verify(args: argparse.Namespace, cfg: PolicyStorageConfig) -> int:
    try:
        repo = open_repository(cfg)
    except NegotiationError as exc:
        return _fail(str(exc), 2)
    accepted: str | None = None
    if getattr(args, "accept_rollback", False):
        try:
            previous, accepted_head = repo.accept_rollback()
        except SigningError as exc:
            return _fail(str(exc), 2)
        except NegotiationError as exc:
            return _fail(f"cannot accept the current history: {exc}", 1)
        before = f"v{previous.version} ({previous.digest})" if previous else "none"
        accepted = f"accepted v{accepted_head.version} ({accepted_head.digest}) as the newest version; was {before}"
    report = repo.verify_chain()
    problems = list(report.problems)
    try:
        head = repo.head()
    except NegotiationError:  # a malformed log; verify_chain has already said so
        head = None
    live: dict[str, Any] = {"path": str(cfg.policy_path), "digest": None, "matches_head": False}
    try:
        live["digest"] = load_policy(cfg.policy_path).digest
    except PolicyError as exc:
        problems.append(f"live file does not load: {str(exc).splitlines()[0]}")
    else:
        live["matches_head"] = head is not None and head.digest == live["digest"]
        if not live["matches_head"]:
            problems.append(
                "live file is not a recorded version: an operator edit not yet loaded or signed "
                "(`securegateway policy sign`)"
            )
    ok = not problems
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "versions": report.versions,
                    "signatures_checked": report.signatures_checked,
                    "head": head.to_dict() if head else None,
                    "live": live,
                    "problems": problems,
                    "accepted_rollback": accepted,
                },
                indent=2,
            )
        )
        return 0 if ok else 1
    if accepted:
        print(accepted)
    checked = "signatures checked" if report.signatures_checked else "signatures NOT checked (no key configured)"
    print(f"policy history: {report.versions} version(s), {checked}")
    if head is not None:
        print(f"head: v{head.version} {head.digest} by {head.approver} at {head.created_at}")
    print(f"live file: {cfg.policy_path} {'matches the head' if live['matches_head'] else 'does NOT match'}")
    for problem in problems:
        print(f"  problem: {problem}")
    print("OK" if ok else f"FAILED: {len(problems)} problem(s)")
    return 0 if ok else 1


def _sign(args: argparse.Namespace, cfg: PolicyStorageConfig) -> int:
    try:
        repo = open_repository(cfg)
    except NegotiationError as exc:
        return _fail(str(exc), 2)
    before = repo.head()
    try:
        active = repo.sign_current(justification=args.justification)
    except SigningError as exc:
        return _fail(str(exc), 2)
    except (NegotiationError, PolicyError) as exc:
        return _fail(str(exc), 1)
    contract = active.contract
    assert contract is not None  # sign_current always returns a recorded version
    if contract == before:
        print(f"{cfg.policy_path} is already v{contract.version}, signed with key {contract.key_id}; nothing to do")
    else:
        print(
            f"signed {cfg.policy_path} as v{contract.version} {contract.digest} "
            f"(approver operator, {contract.algorithm} key {contract.key_id})"
        )
    return 0


def _generate(args: argparse.Namespace, cfg: PolicyStorageConfig) -> int:
    private = args.private or cfg.private_key
    public = args.public or cfg.public_key
    if private is None or public is None:
        return _fail("give --private and --public, or set the key paths in the [policy] configuration", 2)
    try:
        key_id = generate_ed25519_keypair(Path(private), Path(public))
    except SigningError as exc:
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail(f"cannot write the key pair: {exc}", 2)
    print(f"generated ed25519 key pair {key_id}")
    print(f"  private: {private} (mode 0600; keep it on the gateway host only)")
    print(f"  public:  {public}")
    return 0
