"""A negotiation world on real files in a temporary directory, for the tests of this package."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from negotiation.guardrails import GuardrailConfig
from negotiation.live import LivePolicy
from negotiation.repository import PolicyRepository
from negotiation.review import NegotiationService
from negotiation.signing import Ed25519Signer, Ed25519Verifier, generate_ed25519_keypair
from negotiation.store import SqliteProposalStore
from policy import KeyRing, load_model_keys_text
from policy.audit.event import EVENT_TYPES

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)

LIVE_POLICY = """\
rules:
  - id: base-read
    model: [gpt-4o, claude]
    allow_tools: [docs.read]
  - id: deny-sensitive
    model: "*"
    deny_tools: [db.write_sensitive]
"""

MODEL_KEYS = """\
models:
  gpt-4o:
    key: key-gpt-4o
    tools: ["search.*", "docs.*", "db.*", "fs.*"]
    can_propose: true
  claude:
    key: key-claude
    tools: ["*"]
    can_propose: true
  intern:
    key: key-intern
    tools: ["docs.*"]
"""

KNOWN_TOOLS = (
    "search.query",
    "search.news",
    "docs.read",
    "docs.write",
    "db.read",
    "db.write_sensitive",
    "fs.read",
    "fs.delete",
)

CONFIG = GuardrailConfig(
    read_only_tools=("search.*", "docs.read", "db.read", "fs.read"),
    sensitive_tools=("db.write_sensitive",),
)


def in_hours(hours: float) -> str:
    """An ``expires`` value ``hours`` after the test clock's now."""
    return (NOW + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class World:
    root: Path
    service: NegotiationService
    store: SqliteProposalStore
    repo: PolicyRepository
    live: LivePolicy
    keys: KeyRing
    clock: Clock
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def types(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [payload for k, payload in self.events if k == kind]


def make_world(
    root: Path,
    *,
    config: GuardrailConfig = CONFIG,
    policy: str = LIVE_POLICY,
    model_keys: str = MODEL_KEYS,
    known_tools: Iterable[str] = KNOWN_TOOLS,
    clock: Clock | None = None,
) -> World:
    """Build (or, on the same ``root``, re-open) the files and a service over them."""
    policy_path = root / "policies.yaml"
    if not policy_path.exists():
        policy_path.write_text(policy)
    private, public = root / "signing.pem", root / "signing.pub"
    if not private.exists():
        generate_ed25519_keypair(private, public)
    repo = PolicyRepository(
        policy_path,
        root / "state",
        signer=Ed25519Signer.from_private_pem(private),
        verifier=Ed25519Verifier.from_public_pem(public),
        require_signature=True,
    )
    if not (root / "state" / "contracts.jsonl").exists():
        repo.sign_current(justification="initial policy")
    live = LivePolicy(repo.load())
    keys = load_model_keys_text(model_keys, "model_keys.yaml")
    store = SqliteProposalStore(root / "proposals.sqlite3")
    events: list[tuple[str, dict[str, Any]]] = []

    def audit(kind: str, payload: Mapping[str, Any]) -> None:
        assert kind in EVENT_TYPES, f"`{kind}` is not an audit event type the log accepts"
        events.append((kind, dict(payload)))

    tools = tuple(known_tools)
    clock = clock or Clock()
    service = NegotiationService(
        store,
        repo,
        live,
        lambda: keys,
        config,
        audit=audit,
        known_tools=lambda: tools,
        clock=clock,
    )
    return World(root, service, store, repo, live, keys, clock, events)
