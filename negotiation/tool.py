"""The ``propose_policy`` tool the gateway serves itself, as plain MCP JSON.

The proxy lists ``PROPOSE_POLICY_TOOL`` next to the upstream tools and routes calls to
``handle_propose``. The proposer is whoever the connection authenticated as — the handler
takes ``model_id`` from the caller, never from ``arguments`` — and whether that identity may
propose is decided by the service from the key ring. Every outcome, including malformed
arguments, is a normal ``CallToolResult``; a rejection sets ``isError`` so the model reads
it as a failed tool call it can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from negotiation.review import NegotiationService, ProposalOutcome

__all__ = ["PROPOSE_POLICY_TOOL", "handle_propose", "render_outcome"]

PROPOSE_POLICY_TOOL: dict[str, Any] = {
    "name": "propose_policy",
    "description": (
        "Ask for a change to the gateway's tool policy when a tool call you need was denied. "
        "Send `yaml`: a policy snippet whose only top-level key is `rules:`, a list of rules such as\n"
        "rules:\n"
        "  - model: <your model id>\n"
        "    allow_tools: [search.query]\n"
        "    expires: 2030-01-01T12:00:00Z\n"
        "    reason: research task\n"
        "and `justification`: why the task needs it. Name only your own model, name exact tools, "
        "and give grants a near `expires` (within a day): such narrow, read-only requests can be "
        "approved at once. A snippet can only add rules: leave out `id` (the gateway assigns one) and "
        "keep any conditions an existing rule puts on the tool. Anything wider waits for a human "
        "reviewer (status `pending`). "
        "The result lists each check as a verdict with a code, and the access the change would "
        "add or remove. You cannot change model keys or who may propose."
    ),
    "inputSchema": {
        "type": "object",
        "properties": {
            "yaml": {
                "type": "string",
                "description": "A policy snippet in the policy language: a YAML document with `rules:`.",
            },
            "justification": {
                "type": "string",
                "minLength": 1,
                "description": "Why the change is needed, for the reviewer and the audit log.",
            },
        },
        "required": ["yaml", "justification"],
        "additionalProperties": False,
    },
}


def handle_propose(
    service: NegotiationService,
    model_id: str,
    arguments: Mapping[str, Any] | None,
    *,
    session_risk: float,
) -> dict[str, Any]:
    """Run one ``propose_policy`` call for the authenticated ``model_id``; the result as a
    ``CallToolResult`` JSON object. Never raises for anything in ``arguments``."""
    args = arguments if isinstance(arguments, Mapping) else {}
    outcome = service.propose(model_id, args.get("yaml"), args.get("justification"), session_risk=session_risk)
    return {
        "content": [{"type": "text", "text": render_outcome(outcome)}],
        "structuredContent": {
            "status": outcome.status,
            "proposal_id": outcome.proposal_id,
            "reasons": list(outcome.reasons),
            "verdicts": [v.to_dict() for v in outcome.verdicts],
            "diff": [d.to_dict() for d in outcome.diff],
        },
        "isError": outcome.status == "rejected",
    }


_HEADLINES = {
    "approved": "approved and merged into the live policy",
    "pending": "waiting for a human reviewer",
    "rejected": "rejected",
}


def render_outcome(outcome: ProposalOutcome) -> str:
    """A short plain-text account of the outcome for the model to read."""
    lines = [f"Policy proposal {outcome.proposal_id}: {_HEADLINES[outcome.status]}."]
    if outcome.version is not None:
        lines[0] = lines[0][:-1] + f" (policy version {outcome.version})."
    for verdict in outcome.verdicts:
        lines.append(f"- [{'ok' if verdict.ok else verdict.code}] {verdict.message}")
    if outcome.diff:
        lines.append("Effect:")
        lines.extend(f"- {d.model} {d.tool}: {d.change} ({d.detail})" for d in outcome.diff)
    return "\n".join(lines)
