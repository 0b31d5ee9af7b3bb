"""Small builders shared by the policy tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from policy import CallRequest, KeyRing, Policy, evaluate, load_model_keys_text, load_policy_text
from policy.decision import Decision

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

KEYS_YAML = """
models:
  gpt-4o:
    key: modelkey-abc123
    tools: ["*"]
    can_propose: true
  claude:
    key: modelkey-def456
    tools: ["calendar.*", "search.*"]
"""


def policy(text: str) -> Policy:
    return load_policy_text(text, "policies.yaml")


def keys(text: str = KEYS_YAML) -> KeyRing:
    return load_model_keys_text(text, "model_keys.yaml")


def call(
    policy_obj: Policy,
    tool: str,
    arguments: dict[str, Any] | None = None,
    *,
    model: str = "gpt-4o",
    keyring: KeyRing | None = None,
    schema: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Decision:
    """Evaluate ``<server>.<tool>`` (split at the first dot) for ``model`` at NOW."""
    server, _, name = tool.partition(".")
    request = CallRequest(model=model, server=server, tool=name, arguments=arguments or {}, input_schema=schema)
    kwargs.setdefault("now", NOW)
    return evaluate(request, policy_obj, keyring if keyring is not None else keys(), **kwargs)
