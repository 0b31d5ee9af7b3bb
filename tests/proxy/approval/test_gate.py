"""The approval gate fails closed: a broken approval path, or a caller that leaves, never runs the call.

These drive the real Enforcer and ApprovalGate without a network: the faults (an audit log
that refuses writes, a cancelled caller) cannot be produced on demand through a gateway.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from negotiation.approvals import ApprovalStatus, HandleSealer
from policy import load_model_keys_text, load_policy_text
from policy.audit.decision import decision_event
from proxy.approval import ApprovalDesk, ApprovalGate
from proxy.enforce import Enforcer, PolicyView
from proxy.intercept import ToolCall

pytestmark = pytest.mark.anyio

POLICY = """\
rules:
  - id: mail
    model: gpt-4o
    allow_tools: [mail.*]
  - id: ask-send
    model: gpt-4o
    ask_tools: [mail.send]
    approver: operator
    approval_ttl: 60
"""
KEYS = 'models:\n  gpt-4o:\n    key: k-123456789\n    tools: ["mail.*"]\n'


def parts(tmp_path: Path, audit: Any) -> tuple[Enforcer, ApprovalDesk, ToolCall]:
    view = PolicyView(load_policy_text(POLICY), 1, load_model_keys_text(KEYS))
    desk = ApprovalDesk(HandleSealer.from_state_dir(tmp_path), audit)
    enforcer = Enforcer(lambda: view, audit, build_event=decision_event, approvals=ApprovalGate(desk))
    session = SimpleNamespace(
        id="s1", identity=SimpleNamespace(model_id="gpt-4o"), risk=None, channel=None,
        hello=SimpleNamespace(capabilities={}),
    )
    call = ToolCall(session=session, name="mail.send", server="mail", tool="send",  # type: ignore[arg-type]
                    arguments={"to": "bob"}, params={"name": "mail.send", "arguments": {"to": "bob"}})
    return enforcer, desk, call


async def never(call: ToolCall) -> dict[str, Any]:
    raise AssertionError("the upstream must not be called")


async def test_an_approval_the_audit_log_cannot_record_is_a_gateway_error_deny(tmp_path: Path) -> None:
    async def audit(event: dict[str, Any]) -> None:
        if str(event.get("type", "")).startswith("approval."):
            raise OSError("disk full")

    enforcer, desk, call = parts(tmp_path, audit)
    result = await enforcer(call, never)
    assert result["isError"] is True
    assert result["structuredContent"]["reason_code"] == "gateway_error"
    assert "approval failed" in result["structuredContent"]["reason"]
    assert await desk.list() == []  # nothing became answerable


async def test_a_cancelled_caller_leaves_no_approval_to_answer(tmp_path: Path) -> None:
    written: list[dict[str, Any]] = []

    async def audit(event: dict[str, Any]) -> None:
        written.append(event)

    enforcer, desk, call = parts(tmp_path, audit)
    async with anyio.create_task_group() as tg:
        tg.start_soon(enforcer, call, never)
        with anyio.fail_after(5):
            while not await desk.list(ApprovalStatus.PENDING):
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    (approval,) = await desk.list()
    assert approval.status is ApprovalStatus.EXPIRED
    assert [e["type"] for e in written if e["type"].startswith("approval.")] == [
        "approval.requested", "approval.expired"]
