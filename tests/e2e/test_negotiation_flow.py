"""Policy negotiation through a real gateway: a denied model proposes, guardrails or people decide,
and the live policy changes without a restart."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml

from tests.conftest import connect, running
from tests.e2e.conftest import ADMIN_KEY, CLAUDE_KEY, GPT_KEY, Site, make_site, text_of

pytestmark = pytest.mark.anyio


def soon(hours: float = 2) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def events(site: Site, prefix: str) -> list[dict[str, Any]]:
    lines = site.audit_path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"].startswith(prefix)]


def admin_url(site: Site) -> str:
    text = site.config_path.read_text()
    return text.split('[admin]\nlisten = "', 1)[1].split('"', 1)[0]


async def test_denied_call_then_auto_approved_proposal_allows_it_without_restart(site: Site) -> None:
    from mcp import types

    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with running(site.app()), connect(site.url, GPT_KEY, message_handler=on_message) as client:
        assert "calendar.add" not in {t.name for t in (await client.list_tools()).tools}
        denied = await client.call_tool("calendar.add", {"a": 2, "b": 3})
        assert denied.is_error and denied.structured_content["reason_code"] == "default_deny"
        counterfactual = denied.structured_content["counterfactual"]
        suggestion = counterfactual["suggested_rule"]
        assert suggestion["model"] == "gpt-4o" and suggestion["allow_tools"] == ["calendar.add"]
        assert "expires" in suggestion and counterfactual["review"]["auto_approvable"] is True
        assert "the guardrails would approve this rule at once" in text_of(denied)
        snippet = yaml.safe_dump({"rules": [suggestion]})  # the suggestion, exactly as given
        proposed = await client.call_tool(
            "propose_policy", {"yaml": snippet, "justification": "I need to add numbers for the user"}
        )
        assert proposed.structured_content["status"] == "approved", text_of(proposed)
        allowed = await client.call_tool("calendar.add", {"a": 2, "b": 3})
        assert not allowed.is_error and text_of(allowed) == "5"
        with anyio.fail_after(10):
            await changed.wait()  # the tool became visible to this model
        assert "calendar.add" in {t.name for t in (await client.list_tools()).tools}
        assert allowed.meta["io.securegateway/decision"]["policy_digest"] != denied.structured_content[
            "policy_digest"]
    merged = events(site, "proposal.merged")
    assert merged and merged[0]["contract"]["signature"]
    assert {e["type"] for e in events(site, "proposal.")} >= {
        "proposal.proposed", "proposal.auto_reviewed", "proposal.approved", "proposal.merged"}


async def test_widening_proposal_waits_for_a_reviewer_over_the_admin_api(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("SECUREGATEWAY_ADMIN_KEY", ADMIN_KEY)
    site = make_site(tmp_path / "site", admin=True)
    api = admin_url(site)
    headers = {"X-Admin-Key": ADMIN_KEY}
    async with running(site.app()), connect(site.url, GPT_KEY) as client, httpx2.AsyncClient() as http:
        snippet = "rules:\n  - model: gpt-4o\n    allow_tools: [calendar.create_event]\n"
        proposed = await client.call_tool("propose_policy", {"yaml": snippet, "justification": "book meetings"})
        status = proposed.structured_content
        assert status["status"] == "pending"
        assert "outside_envelope" in {v["code"] for v in status["verdicts"] if not v["ok"]}
        assert (await client.call_tool("calendar.create_event", {"title": "standup"})).is_error

        unauthorized = await http.get(f"{api}/api/proposals")
        assert unauthorized.status_code == 401
        pending = (await http.get(f"{api}/api/proposals?status=pending", headers=headers)).json()["proposals"]
        assert [p["id"] for p in pending] == [status["proposal_id"]]
        approved = await http.post(f"{api}/api/proposals/{status['proposal_id']}/approve", headers=headers,
                                   json={"reviewer": "alice", "comment": "ok"})
        assert approved.status_code == 200, approved.text
        result = await client.call_tool("calendar.create_event", {"title": "standup"})
        assert not result.is_error, text_of(result)

        second = await client.call_tool("propose_policy", {
            "yaml": "rules:\n  - model: gpt-4o\n    allow_tools: [calendar.elicit]\n", "justification": "ask"})
        rejected = await http.post(f"{api}/api/proposals/{second.structured_content['proposal_id']}/reject",
                                   headers=headers, json={"reviewer": "bob", "comment": "no"})
        assert rejected.status_code == 200
        assert (await client.call_tool("calendar.elicit", {})).is_error
        live = (await http.get(f"{api}/api/policy", headers=headers)).json()
        assert live["contract"]["signature"] and live["version"] >= 2


async def test_a_model_without_can_propose_is_rejected_and_audited(site: Site) -> None:
    async with running(site.app()), connect(site.url, CLAUDE_KEY) as client:
        result = await client.call_tool("propose_policy", {
            "yaml": "rules:\n  - model: claude\n    allow_tools: [calendar.add]\n", "justification": "x"})
        assert result.is_error and result.structured_content["status"] == "rejected"
        assert "model_not_authorized" in {v["code"] for v in result.structured_content["verdicts"]}
    rejected = events(site, "proposal.rejected")
    assert rejected and rejected[0]["model_id"] == "claude"


async def test_abusive_proposals_are_never_auto_approved(site: Site) -> None:
    abuses = {
        "other model": "rules:\n  - model: claude\n    allow_tools: [calendar.add]\n",
        "star grant": "rules:\n  - model: gpt-4o\n    allow_tools: ['*']\n",
        "sensitive": f"rules:\n  - model: gpt-4o\n    allow_tools: [calendar.crash]\n    expires: {soon()}\n",
        "escalation": "models:\n  gpt-4o:\n    key: x\n    tools: ['*']\n    can_propose: true\n",
        "bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                "rules: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
        "huge": "rules: []\n# " + "x" * (10 * 2**20),
        "unknown keys": "rules:\n  - model: gpt-4o\n    allow_tool: [calendar.add]\n",
    }
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        before = await client.call_tool("calendar.add", {"a": 1, "b": 1})
        for name, snippet in abuses.items():
            result = await client.call_tool("propose_policy", {"yaml": snippet, "justification": name})
            assert result.structured_content["status"] in ("pending", "rejected"), name
        after = await client.call_tool("calendar.add", {"a": 1, "b": 1})
        assert before.is_error and after.is_error
        assert after.structured_content["policy_digest"] == before.structured_content["policy_digest"]


async def test_an_operator_edit_of_the_policy_file_is_hot_reloaded(site: Site) -> None:
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        assert (await client.call_tool("calendar.add", {"a": 1, "b": 2})).is_error
        policy = site.root / "policies.yaml"
        policy.write_text(policy.read_text() + "  - id: add-ok\n    model: gpt-4o\n    allow_tools: [calendar.add]\n")
        with anyio.fail_after(15):
            while (await client.call_tool("calendar.add", {"a": 1, "b": 2})).is_error:
                await anyio.sleep(0.1)
        policy.write_text("rules: [this is: not valid")  # a broken edit keeps the last good policy live
        await anyio.sleep(0.5)
        assert not (await client.call_tool("calendar.add", {"a": 1, "b": 2})).is_error
    assert events(site, "policy.reload_failed")
    assert events(site, "policy.activated")
