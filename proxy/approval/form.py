"""What an approver is shown: the tool, the arguments with secrets masked, and why it asks."""

from __future__ import annotations

import json
from typing import Any

from negotiation.approvals import Approval

__all__ = ["APPROVAL_SCHEMA", "approval_form", "is_yes"]

APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approve": {
            "type": "boolean",
            "title": "Approve this call",
            "description": "Run this one call, with exactly these arguments, once.",
        },
    },
    "required": ["approve"],
}
_MAX_ARGUMENTS_TEXT = 2000


def approval_form(approval: Approval) -> dict[str, Any]:
    """``elicitation/create`` params (form mode) asking the user about one call."""
    shown = json.dumps(approval.arguments, ensure_ascii=False, sort_keys=True, indent=1)
    if len(shown) > _MAX_ARGUMENTS_TEXT:
        shown = shown[: _MAX_ARGUMENTS_TEXT - 1] + "…"
    message = (
        f"The model `{approval.binding.model}` wants to call `{approval.binding.upstream}.{approval.binding.tool}`.\n"
        f"Arguments (secrets masked):\n{shown}\n"
        f"Why you are asked: {approval.reason}.\n"
        f"Approval {approval.id}; it lapses in {approval.expires_at - approval.created_at:g}s."
    )
    return {"mode": "form", "message": message, "requestedSchema": APPROVAL_SCHEMA}


def is_yes(answer: Any) -> bool:
    """An ElicitResult that accepts with ``approve: true`` - anything else is a no."""
    if not isinstance(answer, dict) or answer.get("action") != "accept":
        return False
    content = answer.get("content")
    return isinstance(content, dict) and content.get("approve") is True
