"""Shared set-up of the policy repository tests: a live policy file, a state dir, HMAC keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from negotiation.repository import PolicyRepository
from negotiation.signing import HmacSigner, HmacVerifier
from policy import Policy, load_policy_text

SECRET = b"repository test secret, 32 bytes"
OTHER_SECRET = b"a different secret of 32 bytes!!"
STEPS = ("archived", "pending", "appended", "live")


def policy_text(*tools: str, comment: str = "") -> str:
    lines = [f"# {comment}"] if comment else []
    lines += ["rules:", "  - id: docs", "    model: claude", f"    allow_tools: {json.dumps(list(tools))}"]
    return "\n".join(lines) + "\n"


def policy(*tools: str) -> Policy:
    return load_policy_text(policy_text(*tools))


class Env:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.live = root / "policies.yaml"
        self.state = root / "state"
        self.live.write_text(policy_text("fs.read", comment="written by hand"))

    def repo(
        self, *, secret: bytes = SECRET, sign: bool = True, verify: bool = True, require_signature: bool = False
    ) -> PolicyRepository:
        return PolicyRepository(
            self.live,
            self.state,
            signer=HmacSigner(secret) if sign else None,
            verifier=HmacVerifier(secret) if verify else None,
            require_signature=require_signature,
        )

    @property
    def log(self) -> Path:
        return self.state / "contracts.jsonl"

    def archives(self) -> list[str]:
        return sorted(path.name for path in (self.state / "policies").iterdir())

    def rewrite_log(self, change: Callable[[list[dict[str, Any]]], None]) -> None:
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        change(records)
        self.log.write_text("".join(json.dumps(record) + "\n" for record in records))


class SimulatedCrash(Exception):
    pass


def crash_at(step: str) -> Callable[[str], None]:
    def reached(name: str) -> None:
        if name == step:
            raise SimulatedCrash(step)

    return reached


