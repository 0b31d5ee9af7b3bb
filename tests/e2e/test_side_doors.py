"""Issue 10, cases 1-8 and 13: every upstream-bound request decided and audited, every payload
scanned, every disclosure level held - through a real gateway, a real client and a hostile
upstream (tests/e2e/hostile_upstream.py, a raw JSON-RPC subprocess)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError
from mcp import types as mcp_types

from proxy.enforce import POLICY_DENIED, RESULT_BLOCKED
from tests.conftest import ROOT, connect, gateway_env, running, server_cmd
from tests.e2e.conftest import CLAUDE_KEY, Site, make_site, text_of
from tests.e2e.hostile_upstream import AWS_KEY, FULLWIDTH

pytestmark = pytest.mark.anyio

OPS_KEY = "modelkey-ops-789"
CAL_KEY = "modelkey-cal-321"
KEYS = f"""\
models:
  ops:
    key: {OPS_KEY}
    tools: ["calendar.*", "vault.*"]
  cal:
    key: {CAL_KEY}
    tools: ["calendar.*"]
"""
POLICY = """\
rules:
  - id: vault-tools
    model: ops
    allow_tools: [vault.*]
  - id: calendar-tools
    model: "*"
    allow_tools: [calendar.echo, calendar.slow, calendar.list_events]
  - id: no-admin-prompts
    model: "*"
    deny_prompts: ["*.admin_*"]
"""


def hostile_site(root: Path, *, policy: str = POLICY, gateway: str = "") -> Site:
    site = make_site(
        root, policy=policy, gateway=gateway,
        upstreams=[
            ("calendar", server_cmd("calendar", "--marker", str(root / "calls.txt"))),
            ("vault", [sys.executable, "-m", "tests.e2e.hostile_upstream"]),
        ],
    )
    (site.root / "model_keys.yaml").write_text(KEYS)
    return site


def audit(site: Site, type_: str | None = None) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in site.audit_path.read_text().splitlines() if line.strip()]
    return [e for e in events if type_ is None or e["type"] == type_]


def decisions(site: Site, **match: Any) -> list[dict[str, Any]]:
    return [
        e for e in audit(site, "decision")
        if all((e.get("request") or {}).get(k, e.get(k)) == v for k, v in match.items())
    ]


# ---- case 1: prompts, resources, completions are decided and audited ---------------------------


async def test_case1_resource_of_an_upstream_outside_the_key_scope_is_denied_and_audited(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s")
    async with running(site.app()), connect(site.url, CAL_KEY) as client:
        assert not any(p.name.startswith("vault.") for p in (await client.list_prompts()).prompts)
        assert not any(str(r.uri).startswith("raw://") for r in (await client.list_resources()).resources)
        with pytest.raises(MCPError) as denied:
            await client.read_resource("raw://secrets/db")
        assert denied.value.code == POLICY_DENIED
        assert denied.value.data["reason_code"] == "out_of_scope" and denied.value.data["allowed"] is False
        assert AWS_KEY not in str(denied.value.data)
        with pytest.raises(MCPError) as prompt:
            await client.get_prompt("vault.greet")
        assert prompt.value.code == POLICY_DENIED and prompt.value.data["reason_code"] == "out_of_scope"
        with pytest.raises(MCPError) as subscribed:
            await client.subscribe_resource("raw://secrets/db")
        assert subscribed.value.code == POLICY_DENIED
    (read,) = decisions(site, method="resources/read")
    assert read["model"] == "cal" and read["server"] == "vault" and read["tool"] == "raw://secrets/db"
    assert read["decision"]["allowed"] is False and read["decision"]["kind"] == "resource"
    assert decisions(site, method="prompts/get")[0]["decision"]["reason_code"] == "out_of_scope"
    assert decisions(site, method="resources/subscribe")[0]["decision"]["allowed"] is False


async def test_case1_in_scope_prompts_and_resources_are_read_and_audited_as_allowed(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s", gateway='result_scan = "off"')
    async with running(site.app()), connect(site.url, OPS_KEY) as client:
        assert "vault.greet" in {p.name for p in (await client.list_prompts()).prompts}
        assert "raw://secrets/db" in {str(r.uri) for r in (await client.list_resources()).resources}
        contents = await client.read_resource("raw://public/readme")
        assert contents.contents[0].text == "just a readme"
        prompt = await client.get_prompt("vault.greet")
        assert prompt.messages
        with pytest.raises(MCPError) as admin:
            await client.get_prompt("vault.admin_reset")
        assert admin.value.data["reason_code"] == "explicit_deny"
    allowed = decisions(site, method="resources/read")[0]["decision"]
    assert allowed["allowed"] is True and allowed["reason_code"] == "allowed"
    assert [e["decision"]["allowed"] for e in decisions(site, method="prompts/get")] == [True, False]


async def test_case1_require_rules_for_makes_prompts_and_resources_deny_by_default(tmp_path: Path) -> None:
    policy = POLICY + (
        "  - id: readme\n    model: ops\n    allow_resources: ['raw://public/*']\n"
        "settings:\n  require_rules_for: [resources, prompts]\n"
    )
    site = hostile_site(tmp_path / "s", policy=policy, gateway='result_scan = "off"')
    async with running(site.app()), connect(site.url, OPS_KEY) as client:
        assert (await client.read_resource("raw://public/readme")).contents[0].text == "just a readme"
        with pytest.raises(MCPError) as secret:
            await client.read_resource("raw://secrets/db")
        assert secret.value.data["reason_code"] == "default_deny"
        assert secret.value.data["counterfactual"]["suggested_rule"] == {
            "model": "ops", "allow_resources": ["raw://secrets/db"]}
        with pytest.raises(MCPError) as prompt:
            await client.get_prompt("vault.greet")
        assert prompt.value.data["reason_code"] == "default_deny"
    assert [e["decision"]["matched_rules"] for e in decisions(site, method="resources/read")] == [["readme"], []]


async def test_case1_completion_is_decided_and_a_server_without_completions_is_method_not_found(
    tmp_path: Path,
) -> None:
    site = hostile_site(tmp_path / "s")
    async with running(site.app()), connect(site.url, CAL_KEY) as client:
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        calendar_prompt = next(name for name in prompts if name.startswith("calendar."))
        done = await client.complete(mcp_types.PromptReference(type="ref/prompt", name=calendar_prompt),
                                     {"name": "topic", "value": "a"})
        assert isinstance(done.completion.values, list)
        with pytest.raises(MCPError) as outside:
            await client.complete(mcp_types.PromptReference(type="ref/prompt", name="vault.greet"),
                                  {"name": "x", "value": "a"})
        assert outside.value.code == -32601  # the hostile upstream offers no completions
    (allowed,) = decisions(site, method="completion/complete")
    assert allowed["decision"]["allowed"] is True and allowed["decision"]["kind"] == "prompt"


async def test_case1_a_method_passed_through_to_a_single_upstream_is_decided_and_audited(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", policy=POLICY,
                     upstreams=[("vault", [sys.executable, "-m", "tests.e2e.hostile_upstream"])])
    (site.root / "model_keys.yaml").write_text(KEYS)
    async with running(site.app()), httpx2.AsyncClient(timeout=30) as http:
        assert site.url is not None
        body = {"jsonrpc": "2.0", "id": 5, "method": "tasks/list", "params": {}}
        outside = _answer(await http.post(site.url, json=body, headers=await _raw_session(http, site.url)))
        inside = _answer(await http.post(site.url, json=body, headers=await _raw_session(http, site.url, OPS_KEY)))
    assert outside["error"]["code"] == POLICY_DENIED and outside["error"]["data"]["reason_code"] == "out_of_scope"
    assert inside["error"]["code"] == -32601  # forwarded: the hostile upstream does not know it
    assert [(e["model"], e["decision"]["allowed"]) for e in decisions(site, method="tasks/list")] == [
        ("cal", False), ("ops", True)]


# ---- case 2: unknown tools are audited decisions ------------------------------------------------


@pytest.mark.parametrize("name", ["calendar.delete_everything", "nosuch.tool"])
async def test_case2_unknown_tools_are_refused_and_audited_as_unknown_tool(tmp_path: Path, name: str) -> None:
    site = hostile_site(tmp_path / "s")
    async with running(site.app()), connect(site.url, CAL_KEY) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool(name, {})
        assert caught.value.code == -32602 and name in caught.value.message
        assert caught.value.data["reason_code"] == "unknown_tool"
    (event,) = [e for e in decisions(site) if e["decision"]["reason_code"] == "unknown_tool"]
    assert event["model"] == "cal" and event["decision"]["tool"] == name and event["decision"]["allowed"] is False


# ---- cases 3 and 4: conditions that cannot be dodged --------------------------------------------

DODGE_POLICY = """\
rules:
  - id: calendar-tools
    model: "*"
    allow_tools: [calendar.echo]
  - id: no-forbidden
    model: "*"
    deny_tools: [calendar.echo]
    when:
      text: {regex: ".*forbidden.*"}
  - id: no-shutdown
    model: "*"
    deny_tools: [calendar.echo]
    when:
      cmd: {one_of: [shutdown, reboot]}
"""


async def test_case3_and_4_newlines_and_wrong_types_do_not_dodge_a_deny(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s", policy=DODGE_POLICY)
    async with running(site.app()), connect(site.url, CAL_KEY) as client:
        assert not (await client.call_tool("calendar.echo", {"text": "hello"})).is_error
        newline = await client.call_tool("calendar.echo", {"text": "hello\nforbidden"})
        assert newline.is_error and newline.structured_content["reason_code"] == "explicit_deny"
        wrapped = await client.call_tool("calendar.echo", {"text": "ok", "cmd": ["shutdown"]})
        assert wrapped.is_error and wrapped.structured_content["reason_code"] == "rule_error"
    codes = [e["decision"]["reason_code"] for e in decisions(site)]
    assert codes == ["allowed", "explicit_deny", "rule_error"]
    assert (site.root / "calls.txt").exists() is False or "forbidden" not in (site.root / "calls.txt").read_text()


# ---- case 5: duplicate in-flight request ids ----------------------------------------------------


async def _raw_session(http: Any, url: str, key: str = CAL_KEY) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    response = await http.post(url, json=init, headers=headers)
    assert response.status_code == 200, response.text
    headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
    headers["Mcp-Protocol-Version"] = "2025-06-18"
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


def _answer(response: Any) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("application/json"):
        return dict(response.json())
    for line in response.text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if "result" in message or "error" in message:
                return dict(message)
    raise AssertionError(f"no answer in {response.text[:300]!r}")


async def test_case5_ten_concurrent_calls_sharing_an_id_each_get_their_own_answer_or_32600(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s")
    answers: dict[int, dict[str, Any]] = {}
    async with running(site.app()), httpx2.AsyncClient(timeout=30) as http:
        assert site.url is not None
        headers = await _raw_session(http, site.url)

        async def call(index: int) -> None:
            body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                    "params": {"name": "calendar.slow", "arguments": {"steps": 2, "delay": 0.2}}}
            if index % 2:
                body["params"] = {"name": "calendar.echo", "arguments": {"text": f"call {index}"}}
            answers[index] = _answer(await http.post(site.url, json=body, headers=headers))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for index in range(10):
                    tg.start_soon(call, index)
    assert len(answers) == 10
    served = 0
    for index, answer in answers.items():
        assert answer["id"] == 7
        if "error" in answer:
            assert answer["error"]["code"] == -32600, answer
            continue
        served += 1
        text = answer["result"]["content"][0]["text"]
        assert text == (f"call {index}" if index % 2 else "done 2"), (index, answer)
    assert served >= 1
    assert len(decisions(site)) == served  # a refused duplicate never reached the decision point


async def test_case5_on_stdio_the_first_holder_keeps_its_id_and_duplicates_get_32600(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", listen="stdio", policy=POLICY)
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": CLAUDE_KEY}
    command = [sys.executable, "-m", "proxy.cli", "run", "--config", str(site.config_path)]
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    slow = {"name": "calendar.slow", "arguments": {"steps": 2, "delay": 0.3}}
    calls = [{"jsonrpc": "2.0", "id": 7, "method": "tools/call",
              "params": slow if index == 0 else {"name": "calendar.echo", "arguments": {"text": f"call {index}"}}}
             for index in range(10)]
    answers: list[dict[str, Any]] = []
    async with await anyio.open_process(command, env=env, cwd=str(ROOT)) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        lines = _lines(proc.stdout)
        await proc.stdin.send((json.dumps(init) + "\n").encode())
        with anyio.fail_after(30):
            assert (await anext(lines))["id"] == 0
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await proc.stdin.send("".join(json.dumps(m) + "\n" for m in [initialized, *calls]).encode())
            while len(answers) < 10:
                message = await anext(lines)
                if message.get("id") == 7:
                    answers.append(message)
        await proc.stdin.aclose()
    results = [a for a in answers if "result" in a]
    errors = [a for a in answers if "error" in a]
    assert [r["result"]["content"][0]["text"] for r in results] == ["done 2"], answers
    assert len(errors) == 9 and {e["error"]["code"] for e in errors} == {-32600}


async def _lines(stream: Any) -> Any:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


# ---- case 6: a non-object upstream result -------------------------------------------------------


@pytest.mark.parametrize("tool", ["list_result", "null_result", "string_result"])
async def test_case6_a_non_object_upstream_result_is_an_error_at_once(tmp_path: Path, tool: str) -> None:
    site = hostile_site(tmp_path / "s")
    text = (site.root / "gateway.toml").read_text()
    (site.root / "gateway.toml").write_text(text.replace('name = "vault"\n', 'name = "vault"\ntimeout = 60\n'))
    async with running(site.app()), connect(site.url, OPS_KEY) as client:
        started = time.monotonic()
        with anyio.fail_after(20), pytest.raises(MCPError) as caught:
            await client.call_tool(f"vault.{tool}", {})
        assert time.monotonic() - started < 20  # the upstream timeout is 60 s
        assert "non-object result" in caught.value.message
        assert text_of(await client.call_tool("vault.echo", {"text": "still alive"})) == "still alive"
    assert [e["decision"]["allowed"] for e in decisions(site)] == [True, True]


# ---- cases 7 and 8: every upstream payload is scanned -------------------------------------------


async def test_case7_prompt_resource_and_sampling_payloads_are_blocked_and_audited(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s", gateway='result_scan = "block"')
    sampled: list[Any] = []

    async def sampling(ctx: Any, params: Any) -> Any:
        sampled.append(params)
        return mcp_types.CreateMessageResult(
            role="assistant", content=mcp_types.TextContent(type="text", text="ok"), model="m")

    async def elicit(ctx: Any, params: Any) -> Any:
        sampled.append(params)
        return mcp_types.ElicitResult(action="accept", content={"ok": True})

    async with running(site.app()), connect(
        site.url, OPS_KEY, sampling_callback=sampling, elicitation_callback=elicit
    ) as client:
        with pytest.raises(MCPError) as prompt:
            await client.get_prompt("vault.greet")
        assert prompt.value.code == RESULT_BLOCKED and "prompt_injection" in prompt.value.message
        with pytest.raises(MCPError) as resource:
            await client.read_resource("raw://secrets/db")
        assert resource.value.code == RESULT_BLOCKED and AWS_KEY not in str(resource.value)
        asked = await client.call_tool("vault.ask_sampling", {})
        assert "client request refused" in text_of(asked)
        asked = await client.call_tool("vault.ask_elicitation", {})
        assert "client request refused" in text_of(asked)
    assert sampled == []  # neither request reached the client
    flagged = audit(site, "result.flagged")
    by_method = {e["method"]: e for e in flagged}
    assert {"prompts/get", "resources/read", "sampling/createMessage", "elicitation/create"} <= set(by_method)
    assert all(e["action"] == "block" for e in flagged)
    assert by_method["resources/read"]["findings"][0]["path"] == "contents[0].text"
    assert by_method["prompts/get"]["findings"][0]["path"] == "messages[0].content.text"
    assert by_method["sampling/createMessage"]["findings"][0]["path"] == "messages[0].content.text"
    assert AWS_KEY not in site.audit_path.read_text()


async def test_case7_a_sessionless_client_gets_no_injected_input_request_either(tmp_path: Path) -> None:
    """For a 2026 client the upstream's sampling request would become an input_required round."""
    site = hostile_site(tmp_path / "s", gateway='result_scan = "block"')
    asked: list[Any] = []

    async def sampling(ctx: Any, params: Any) -> Any:
        asked.append(params)
        return mcp_types.CreateMessageResult(
            role="assistant", content=mcp_types.TextContent(type="text", text="ok"), model="m")

    async with running(site.app()), connect(site.url, OPS_KEY, mode="auto", sampling_callback=sampling) as client:
        assert client.protocol_version == "2026-07-28"
        asked_result = await client.call_tool("vault.ask_sampling", {})
        assert "client request refused" in text_of(asked_result)
    assert asked == []
    assert [e["method"] for e in audit(site, "result.flagged")] == ["sampling/createMessage"]


async def test_case7_flag_mode_passes_payloads_and_audits_them(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s", gateway='result_scan = "flag"')
    async with running(site.app()), connect(site.url, OPS_KEY) as client:
        assert (await client.get_prompt("vault.greet")).messages
        redacted = await client.read_resource("raw://secrets/db")
        assert AWS_KEY in redacted.contents[0].text  # flag: passed on, but audited
    assert {e["method"] for e in audit(site, "result.flagged")} == {"prompts/get", "resources/read"}


async def test_case7_redact_mode_withholds_only_the_flagged_strings(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s", gateway='result_scan = "redact"')
    async with running(site.app()), connect(site.url, OPS_KEY) as client:
        contents = await client.read_resource("raw://secrets/db")
        assert AWS_KEY not in contents.contents[0].text and "withheld" in contents.contents[0].text
        assert contents.contents[0].uri == "raw://secrets/db"
        plain = await client.read_resource("raw://public/readme")
        assert plain.contents[0].text == "just a readme"


async def test_case8_injections_in_meta_and_unknown_fields_are_blocked(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s", gateway='result_scan = "block"')
    async with running(site.app()), connect(site.url, OPS_KEY) as client:
        blocked = await client.call_tool("vault.meta_inject", {})
        assert blocked.is_error and "Blocked by the gateway" in text_of(blocked)
        assert "all fine here" not in text_of(blocked)
    (event,) = audit(site, "result.flagged")
    paths = {finding["path"] for finding in event["findings"]}
    assert "_meta.note" in paths and "annotationsExtra.deep[0].hint" in paths
    assert event["decision_id"] == decisions(site)[0]["decision_id"]


async def test_case8_fullwidth_injection_is_blocked(tmp_path: Path) -> None:
    site = hostile_site(tmp_path / "s", gateway='result_scan = "block"')
    async with running(site.app()), connect(site.url, OPS_KEY) as client:
        blocked = await client.call_tool("vault.fullwidth", {})
        assert blocked.is_error and FULLWIDTH not in text_of(blocked)
    assert audit(site, "result.flagged")[0]["findings"][0]["code"] == "prompt_injection"


# ---- case 13: disclosure levels -----------------------------------------------------------------

SECRET_POLICY = """\
rules:
  - id: grant-under-hidden-root
    model: "*"
    allow_tools: [calendar.echo]
    when:
      text: {under: /srv/hidden-root-4c2e}
  - id: no-hidden-prompts
    model: "*"
    deny_prompts: ["calendar.*"]
    when:
      topic: {regex: ".*classified-7731.*"}
"""
HIDDEN = ("grant-under-hidden-root", "/srv/hidden-root-4c2e", "no-hidden-prompts", "classified-7731")


@pytest.mark.parametrize("visibility", ["none", "summary"])
async def test_case13_hidden_visibility_leaks_no_rule_id_or_operand(tmp_path: Path, visibility: str) -> None:
    site = hostile_site(tmp_path / "s", policy=SECRET_POLICY, gateway=f'trace_visibility = "{visibility}"')
    async with running(site.app()), connect(site.url, CAL_KEY) as client:
        denied = await client.call_tool("calendar.echo", {"text": "/etc/passwd"})
        assert denied.is_error and denied.structured_content["reason_code"] == "default_deny"
        seen = json.dumps(denied.model_dump(mode="json"))
        allowed = await client.call_tool("calendar.echo", {"text": "/srv/hidden-root-4c2e/a"})
        seen_allowed = json.dumps(allowed.model_dump(mode="json")).replace("/srv/hidden-root-4c2e/a", "")
        prompts = [p.name for p in (await client.list_prompts()).prompts if p.name.startswith("calendar.")]
        with pytest.raises(MCPError) as prompt:
            await client.get_prompt(prompts[0], {"topic": "x classified-7731 y"})
        seen_prompt = json.dumps(prompt.value.error.model_dump(mode="json")).replace("x classified-7731 y", "")
    for token in HIDDEN:
        assert token not in seen, token  # the near miss names neither its rule nor its root
    if visibility == "none":
        for token in HIDDEN:
            assert token not in seen_allowed, token
            assert token not in seen_prompt, token
    else:  # summary: the rules that matched, and only those
        assert "grant-under-hidden-root" in seen_allowed and "no-hidden-prompts" in seen_prompt
        assert "/srv/hidden-root-4c2e" not in seen_allowed
    full = site.audit_path.read_text()
    assert "grant-under-hidden-root" in full and "no-hidden-prompts" in full  # the audit log keeps it all
