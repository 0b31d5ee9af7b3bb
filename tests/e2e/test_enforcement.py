"""Every tools/call is decided, explained to the caller and audited: real client, gateway, upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import ROOT, connect, gateway_env, running
from tests.e2e.conftest import CLAUDE_KEY, GPT_KEY, Site, cli, make_site, text_of

pytestmark = pytest.mark.anyio

DECISION = "io.securegateway/decision"


def audit_events(site: Site) -> list[dict[str, Any]]:
    return [json.loads(line) for line in site.audit_path.read_text().splitlines() if line.strip()]


def calls_reached_upstream(site: Site) -> list[str]:
    return site.marker.read_text().splitlines() if site.marker.exists() else []


async def test_allowed_call_carries_its_decision_in_meta(site: Site) -> None:
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        result = await client.call_tool("search.echo", {"text": "hello"})
        assert not result.is_error and text_of(result) == "hello"
        decision = result.meta[DECISION]
        assert decision["allowed"] is True and decision["matched_rules"] == ["gpt4o-search"]
        assert decision["tool"] == "search.echo" and decision["model"] == "gpt-4o"
        assert {"reason", "rule_trace", "risk_score", "reasoning", "decision_id"} <= decision.keys()


async def test_denied_call_is_a_readable_tool_error_with_the_structured_decision(site: Site) -> None:
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        result = await client.call_tool("calendar.record", {"note": "ok"})
        assert not result.is_error
        denied = await client.call_tool("calendar.create_event", {"title": "x"})
        assert denied.is_error
        text = text_of(denied)
        assert "Denied" in text and "propose_policy" in text and "calendar.create_event" in text
        decision = denied.structured_content
        assert decision["allowed"] is False and decision["reason_code"] == "default_deny"
        assert decision["deny_kind"] == "default" and decision["reasoning"]
        explicit = await client.call_tool("calendar.crash", {})
        assert explicit.is_error and explicit.structured_content["reason_code"] == "explicit_deny"
        assert "calendar.crash is disabled here" in explicit.structured_content["reason"]
    assert calls_reached_upstream(site) == ["called ok"]  # neither denied call was forwarded


async def test_the_model_key_scope_caps_what_a_rule_grants(site: Site) -> None:
    async with running(site.app()), connect(site.url, CLAUDE_KEY) as client:
        # `calendar-read` names every model, but claude's key scope is calendar.* only
        assert not (await client.call_tool("calendar.echo", {"text": "in scope"})).is_error
        names = [t.name for t in (await client.list_tools()).tools]
        assert not any(n.startswith("search.") for n in names)
        assert {"calendar.list_events", "calendar.echo", "calendar.record"} <= set(names)


async def test_tools_list_is_filtered_per_model_and_can_be_shown_in_full(tmp_path: Path) -> None:
    hidden = make_site(tmp_path / "hide")
    async with running(hidden.app()), connect(hidden.url, GPT_KEY) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert "calendar.create_event" not in names and "search.echo" in names and "propose_policy" in names
    shown = make_site(tmp_path / "show", gateway='tools_list = "show"')
    async with running(shown.app()), connect(shown.url, GPT_KEY) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert "calendar.create_event" in names


async def test_unknown_or_missing_http_key_is_401_with_a_clear_message(site: Site) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    async with running(site.app()), httpx2.AsyncClient() as http:
        missing = await http.post(site.url, json=body, headers=headers)
        assert missing.status_code == 401 and "missing model key" in missing.text
        wrong = await http.post(site.url, json=body, headers={**headers, "Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "unknown model key" in wrong.text
        alt = await http.post(site.url, json=body, headers={**headers, "X-Model-Key": "nope"})
        assert alt.status_code == 401


@pytest.mark.parametrize("header", ["Authorization", "X-Model-Key"])
async def test_two_credential_headers_of_one_kind_are_refused_whichever_comes_first(site: Site, header: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    value = (lambda key: f"Bearer {key}") if header == "Authorization" else (lambda key: key)
    async with running(site.app()), httpx2.AsyncClient() as http:
        for pair in ((GPT_KEY, "nope"), ("nope", GPT_KEY), (GPT_KEY, GPT_KEY)):
            headers = [("Accept", "application/json, text/event-stream"), *((header, value(k)) for k in pair)]
            refused = await http.post(site.url, json=body, headers=headers)
            assert refused.status_code == 401, pair
            assert f"more than one `{header.lower()}` header" in refused.text
        one = await http.post(site.url, json=body, headers=[("Accept", "application/json, text/event-stream"),
                                                            (header, value(GPT_KEY))])
        assert one.status_code == 200


async def test_stdio_front_through_the_real_cli(tmp_path: Path) -> None:
    site = make_site(tmp_path / "stdio", listen="stdio")
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "proxy.cli", "run", "--config", str(site.config_path)],
        env=env, cwd=str(ROOT),
    )
    async with Client(params, mode="legacy") as client:
        assert not (await client.call_tool("search.echo", {"text": "via stdio"})).is_error
        denied = await client.call_tool("calendar.add", {"a": 1, "b": 2})
        assert denied.is_error and denied.structured_content["reason_code"] == "default_deny"


def test_stdio_gateway_refuses_to_start_without_a_valid_key(tmp_path: Path) -> None:
    site = make_site(tmp_path / "nokey", listen="stdio")
    env = {k: v for k, v in gateway_env().items() if k != "SECUREGATEWAY_MODEL_KEY"}
    missing = subprocess.run(cli("run", "--config", str(site.config_path)), env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert missing.returncode == 2 and "needs a model key" in missing.stderr
    wrong = subprocess.run(cli("run", "--config", str(site.config_path), "--model-key", "bogus"), env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert wrong.returncode == 2 and "not in model_keys.yaml" in wrong.stderr


@pytest.mark.parametrize("fault", ["identity", "evaluation", "audit"])
async def test_a_fault_inside_enforcement_denies_with_gateway_error(site: Site, fault: str, monkeypatch: Any) -> None:
    app = site.app()
    if fault == "evaluation":
        import proxy.enforce

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected evaluation fault")

        monkeypatch.setattr(proxy.enforce, "evaluate", broken)
    elif fault == "identity":
        app.gateway._on_session = lambda session: setattr(session, "identity", None)
    async with running(app), connect(site.url, GPT_KEY) as client:
        if fault == "audit":
            original_many = app.runtime.audit.sink.write_many

            def failing_batch(events: Any) -> Any:  # every event is written through write_many
                events = list(events)
                if any(e.get("type") == "decision" for e in events):
                    raise OSError("injected disk failure")
                return original_many(events)

            monkeypatch.setattr(app.runtime.audit.sink, "write_many", failing_batch)
        result = await client.call_tool("search.record", {"note": "must not arrive"})
        assert result.is_error
        assert result.structured_content["reason_code"] == "gateway_error"
        assert result.structured_content["allowed"] is False
    assert calls_reached_upstream(site) == []
    decisions = [e for e in audit_events(site) if e["type"] == "decision"]
    if fault == "audit":
        assert decisions == []  # could not be written, so the call was refused
    else:
        assert decisions[-1]["decision"]["reason_code"] == "gateway_error"


async def test_secrets_in_arguments_are_masked_in_the_audit_log(site: Site) -> None:
    secret = "sk-ant-api03-" + "A" * 40
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        await client.call_tool("search.echo", {"text": f"use {secret} please"})
    raw = site.audit_path.read_text()
    assert secret not in raw
    decision = next(e for e in audit_events(site) if e["type"] == "decision")
    assert "arguments.text" in decision["masked"]
    assert decision["arguments_digest"].startswith("sha256:")


async def test_suspicious_tool_results_are_flagged_and_raise_session_risk(tmp_path: Path) -> None:
    site = make_site(tmp_path / "notaint", detectors="taint = false")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        first = await client.call_tool("search.echo", {"text": "x"})
        result = await client.call_tool("search.poison", {})
        assert result.meta["io.securegateway/result_scan"][0]["code"] == "prompt_injection"
        later = await client.call_tool("search.echo", {"text": "y"})
        assert later.meta[DECISION]["risk_score"] > first.meta[DECISION]["risk_score"]
    flagged = [e for e in audit_events(site) if e["type"] == "result.flagged"]
    assert flagged and flagged[0]["tool"] == "poison"


async def test_result_scan_can_block(tmp_path: Path) -> None:
    site = make_site(tmp_path / "block", gateway='result_scan = "block"')
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        result = await client.call_tool("search.poison", {})
        assert result.is_error and "Blocked by the gateway" in text_of(result)
        assert "Ignore all previous" not in text_of(result)


async def test_audit_verify_passes_then_names_the_edited_deleted_or_swapped_line(site: Site) -> None:
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        for i in range(4):
            await client.call_tool("search.echo", {"text": f"call {i}"})
        await client.call_tool("calendar.add", {"a": 1, "b": 2})
    env = gateway_env()
    ok = subprocess.run(cli("audit", "verify", "--config", str(site.config_path)), env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    original = site.audit_path.read_text().splitlines(keepends=True)
    # tool.pinned events come first (one per listed tool): tamper with a decision event
    at = next(index for index, text in enumerate(original) if "call 1" in text)
    tampered: dict[str, list[str]] = {
        "edit": original[:at] + [original[at].replace("call 1", "call X")] + original[at + 1 :],
        "delete": original[:at] + original[at + 1 :],
        "swap": original[:at] + [original[at + 1], original[at]] + original[at + 2 :],
    }
    for name, lines in tampered.items():
        site.audit_path.write_text("".join(lines))
        bad = subprocess.run(cli("audit", "verify", str(site.audit_path)), env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1, name
        assert f"audit.jsonl:{at + 1}" in bad.stdout, (name, bad.stdout)
    site.audit_path.write_text("".join(original))


async def test_explain_reproduces_the_logged_trace(site: Site) -> None:
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        denied = await client.call_tool("calendar.crash", {})
    decision_id = denied.structured_content["decision_id"]
    env = gateway_env()
    out = subprocess.run(cli("explain", decision_id, "--config", str(site.config_path)), env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "logged:      DENY (explicit_deny)" in out.stdout
    assert "re-evaluated: DENY (explicit_deny)" in out.stdout
    assert "no-crash [deny] matched" in out.stdout
    shown = subprocess.run(cli("audit", "show", decision_id, "--config", str(site.config_path)), env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and decision_id in shown.stdout


async def test_a_wire_separator_other_than_dot_still_uses_dotted_names_in_policy(tmp_path: Path) -> None:
    site = make_site(tmp_path / "sep", gateway='separator = "__"')
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "search__echo" in names and "search.echo" not in names
        allowed = await client.call_tool("search__echo", {"text": "ok"})
        assert not allowed.is_error and allowed.meta[DECISION]["tool"] == "search.echo"
        assert (await client.call_tool("calendar__add", {"a": 1, "b": 1})).is_error


async def test_the_clients_credentials_never_reach_an_upstream(tmp_path: Path, http_upstream_factory: Any) -> None:
    from tests.conftest import server_cmd

    url = http_upstream_factory("search")
    site = make_site(tmp_path / "creds", upstreams=[("calendar", server_cmd("calendar"))])
    search = f'[[upstreams]]\nname = "search"\nurl = "{url}"\nheaders = {{ X-Upstream = "configured" }}\n\n'
    text = site.config_path.read_text().replace("[policy]", search + "[policy]")
    site.config_path.write_text(text)
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        seen = text_of(await client.call_tool("search.headers", {}))
    assert "'x-upstream': 'configured'" in seen
    assert GPT_KEY not in seen and "authorization" not in seen.lower()


async def test_an_http_session_cannot_be_used_with_another_models_key(site: Site) -> None:
    accept = {"Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    async with running(site.app()), httpx2.AsyncClient() as http:
        opened = await http.post(site.url, json=init, headers={**accept, "Authorization": f"Bearer {GPT_KEY}"})
        assert opened.status_code == 200
        session = {**accept, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        await http.post(site.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                        headers={**session, "Authorization": f"Bearer {GPT_KEY}"})
        stolen = await http.post(site.url, json=listing, headers={**session, "Authorization": f"Bearer {CLAUDE_KEY}"})
        assert stolen.status_code == 404
        own = await http.post(site.url, json=listing, headers={**session, "Authorization": f"Bearer {GPT_KEY}"})
        assert own.status_code == 200 and "search.echo" in own.text
