"""Dry-run decisions: what ``tools/call`` would decide, without forwarding anything.

``POST /api/evaluate`` and ``securegateway explain --model/--tool`` both come here. The call
is evaluated exactly as the enforcer does it (same engine, same live policy and key ring,
the tool's ``inputSchema`` when the gateway has seen the tool, the risk the model's identity
carries into every session), with one deliberate difference: nothing is forwarded, so no
risk is recorded (the answer is the one the model's next call would get). A dry run is not a
decision that happened, so it is not written to the audit log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from policy import CallRequest, Decision, KeyRing, Policy, SessionRisk, evaluate

__all__ = ["DryRunError", "DryRunRequest", "dry_run", "parse_request", "split_tool"]


class DryRunError(ValueError):
    """A dry-run request that cannot be evaluated; ``code`` is ``bad_request`` or ``unknown_key``."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DryRunRequest:
    model: str
    tool: str  # dotted <upstream>.<tool>
    arguments: Mapping[str, Any]
    input_schema: Mapping[str, Any] | None = None


def split_tool(qualified: str, upstreams: Iterable[str] = ()) -> tuple[str, str]:
    """``calendar.add`` -> ``("calendar", "add")``; the longest configured upstream name wins
    (an upstream may itself contain a dot), else the first dot splits."""
    for name in sorted(upstreams, key=len, reverse=True):
        if qualified.startswith(name + ".") and len(qualified) > len(name) + 1:
            return name, qualified[len(name) + 1:]
    server, _, tool = qualified.partition(".")
    return server, tool


def parse_request(body: Mapping[str, Any], keys: KeyRing) -> DryRunRequest:
    """``{model_id | key, tool, arguments?, input_schema?}`` -> a request, or ``DryRunError``."""
    model_id, key = body.get("model_id"), body.get("key")
    if (model_id is None) == (key is None):
        raise DryRunError("give exactly one of `model_id` and `key`")
    if key is not None:
        if not isinstance(key, str) or not key:
            raise DryRunError("`key` must be a non-empty string")
        identity = keys.authenticate(key)
        if identity is None:
            raise DryRunError("no model has this key", code="unknown_key")
        model_id = identity.model_id
    if not isinstance(model_id, str) or not model_id.strip():
        raise DryRunError("`model_id` must be a non-empty string")
    tool = body.get("tool")
    if not isinstance(tool, str) or "." not in tool.strip(".") or any(c.isspace() for c in tool):
        raise DryRunError("`tool` must be a dotted `<upstream>.<tool>` name")
    arguments = body.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise DryRunError("`arguments` must be a JSON object")
    schema = body.get("input_schema")
    if schema is not None and not isinstance(schema, Mapping):
        raise DryRunError("`input_schema` must be a JSON object")
    return DryRunRequest(model_id, tool, arguments, schema)


def dry_run(
    request: DryRunRequest,
    policy: Policy,
    keys: KeyRing,
    *,
    upstreams: Iterable[str] = (),
    now: datetime | None = None,
    session: SessionRisk | None = None,
) -> Decision:
    """The decision ``tools/call`` would get in a new session carrying ``session`` (the
    identity's risk; read, never updated); never raises."""
    server, tool = split_tool(request.tool, upstreams)
    call = CallRequest(request.model, server, tool, request.arguments, request.input_schema)
    return evaluate(call, policy, keys, now=now, session=session)
