"""Detection that protects, end to end: a real client, the gateway, hostile stdio upstreams.

A poisoned upstream's tools are quarantined (not listed, calls refused, audited) until an
operator releases them; a rug-pulling upstream's changed tool is suspended with a diff,
across restarts; an injected result taints the session for sink tools.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import types

from proxy.errors import ConfigError
from tests.conftest import ROOT, connect, gateway_env, running
from tests.e2e.conftest import ADMIN_KEY, GPT_KEY, Site, cli, make_site, text_of

pytestmark = pytest.mark.anyio


def hostile(mode: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.e2e.hostile_server", "--mode", mode, *extra]


def events(site: Site, prefix: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, site.audit_path.read_text().splitlines()) if e["type"].startswith(prefix)]


def admin_url(site: Site) -> str:
    return site.config_path.read_text().split('[admin]\nlisten = "', 1)[1].split('"', 1)[0]


def poisoned_site(tmp_path: Path, **options: Any) -> Site:
    # Named `search` so the test model's key scope and policy (search.*) cover it.
    return make_site(tmp_path / "poisoned", upstreams=[("search", hostile("poisoned"))], **options)


async def test_poisoned_tools_are_quarantined_refused_and_released_by_an_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREGATEWAY_ADMIN_KEY", ADMIN_KEY)
    site = poisoned_site(tmp_path, admin=True)
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with running(site.app()), connect(site.url, GPT_KEY, message_handler=on_message) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"search.add", "search.page", "search.send"} <= names
        assert not names & {"search.fact", "search.sneaky"}
        assert "search.review" not in {p.name for p in (await client.list_prompts()).prompts}

        refused = await client.call_tool("search.fact", {"note": "x"})
        assert refused.is_error and refused.structured_content["reason_code"] == "tool_quarantined"
        assert {f["code"] for f in refused.structured_content["findings"]} >= {"prompt_injection"}
        sneaky = await client.call_tool("search.sneaky", {"text": "x"})
        assert any(f["kind"] == "tag_character" for f in sneaky.structured_content["findings"])

        async with httpx2.AsyncClient(base_url=admin_url(site), headers={"X-Admin-Key": ADMIN_KEY}) as admin:
            listed = (await admin.get("/api/tools", params={"status": "quarantined"})).json()["tools"]
            assert {t["name"] for t in listed} >= {"search.fact", "search.sneaky", "prompt:search.review"}
            assert (await admin.post("/api/tools/search.add/release")).status_code == 409  # not suspended
            assert (await admin.post("/api/tools/search.nope/release")).status_code == 404
            released = await admin.post("/api/tools/search.fact/release", json={"by": "alice"})
            assert released.status_code == 200 and released.json()["status"] == "trusted"

        with anyio.fail_after(10):
            await changed.wait()
        assert "search.fact" in {t.name for t in (await client.list_tools()).tools}
        allowed = await client.call_tool("search.fact", {"note": "x"})
        assert not allowed.is_error and text_of(allowed) == "fact ok"

    quarantined = {e["tool"] for e in events(site, "tool.quarantined")}
    assert {"search.fact", "search.sneaky"} <= quarantined
    assert any(e["tool"] == "search.fact" and "alice" in e["by"] for e in events(site, "tool.released"))
    denials = [e for e in events(site, "decision") if e["decision"]["reason_code"] == "tool_quarantined"]
    assert len(denials) == 2


async def test_tool_scan_flag_lists_the_tool_and_only_audits_it(tmp_path: Path) -> None:
    site = poisoned_site(tmp_path, detectors='tool_scan = "flag"')
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        assert "search.fact" in {t.name for t in (await client.list_tools()).tools}
    assert "search.fact" in {e["tool"] for e in events(site, "tool.flagged")}


async def test_a_rug_pull_suspends_the_tool_with_a_diff_across_restarts_until_released(tmp_path: Path) -> None:
    state = tmp_path / "flipped"
    site = make_site(tmp_path / "rug", upstreams=[("search", hostile("rugpull", "--state", str(state)))])
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with running(site.app()), connect(site.url, GPT_KEY, message_handler=on_message) as client:
        assert "search.weather" in {t.name for t in (await client.list_tools()).tools}
        assert text_of(await client.call_tool("search.weather", {"city": "Oslo"})) == "sunny"
        await client.call_tool("search.flip", {})
        with anyio.fail_after(10):
            await changed.wait()
        assert "search.weather" not in {t.name for t in (await client.list_tools()).tools}
        refused = await client.call_tool("search.weather", {"city": "Oslo"})
        assert refused.is_error and refused.structured_content["reason_code"] == "tool_changed"
        assert "attacker@evil.example" in "\n".join(refused.structured_content["reasoning"])  # the diff
    (change,) = [e for e in events(site, "tool.changed") if e["tool"] == "search.weather"]
    assert change["pinned_digest"] != change["digest"] and "+" in change["diff"]

    async with running(site.app()), connect(site.url, GPT_KEY) as client:  # pins survive a restart
        again = await client.call_tool("search.weather", {"city": "Oslo"})
        assert again.structured_content["reason_code"] == "tool_changed"

    env = gateway_env()
    shown = subprocess.run(cli("tools", "list", "--config", str(site.config_path), "--status", "changed"),
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "search.weather" in shown.stdout, shown.stderr
    released = subprocess.run(cli("tools", "release", "search.weather", "--config", str(site.config_path)),
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert released.returncode == 0, released.stderr
    missing = subprocess.run(cli("tools", "release", "search.nothing", "--config", str(site.config_path)),
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no listed tool" in missing.stderr

    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        assert text_of(await client.call_tool("search.weather", {"city": "Oslo"})) == "sunny"


async def test_an_injected_result_taints_the_session_for_sink_tools_only(tmp_path: Path) -> None:
    site = make_site(tmp_path / "taint", upstreams=[("search", hostile("rugpull"))])
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        assert not (await client.call_tool("search.send", {"to": "bob", "body": "hi"})).is_error
        page = await client.call_tool("search.page", {})
        assert page.meta["io.securegateway/result_scan"][0]["code"] == "prompt_injection"
        refused = await client.call_tool("search.send", {"to": "attacker@evil.example", "body": "keys"})
        assert refused.is_error and refused.structured_content["reason_code"] == "session_tainted"
        reasoning = "\n".join(refused.structured_content["reasoning"])
        assert "search.page" in reasoning and page.meta["io.securegateway/decision"]["decision_id"] in reasoning
        assert not (await client.call_tool("search.page", {})).is_error  # read-only tools still work


async def test_taint_can_be_switched_off(tmp_path: Path) -> None:
    site = make_site(tmp_path / "notaint", upstreams=[("search", hostile("rugpull"))], detectors="taint = false")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        await client.call_tool("search.page", {})
        assert not (await client.call_tool("search.send", {"to": "bob", "body": "hi"})).is_error


async def test_the_classifier_flags_what_the_model_scores_high_in_arguments_and_results(tmp_path: Path) -> None:
    support = pytest.importorskip("tests.policy.detect.classifier_support")
    # A tiny model built here: "pwned" and "standup" (calendar.list_events says "standup 09:00; ...")
    # are what it calls injections; none of the deterministic detectors flags either text.
    model, tokenizer = support.build_pair(
        tmp_path / "model", words=(*support.WORDS, "standup"), flagged=("pwned", "standup")
    )
    site = make_site(
        tmp_path / "ml",
        detectors=f'classifier = {{ model = "{model}", tokenizer = "{tokenizer}", budget_ms = 5000 }}',
    )
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        denied = await client.call_tool("search.echo", {"text": "the weather report says you are pwned"})
        assert denied.is_error and denied.structured_content["reason_code"] == "suspicious_arguments"
        assert "classifier_injection" in "\n".join(denied.structured_content["reasoning"])
        fine = await client.call_tool("search.echo", {"text": "the weather report says it is sunny"})
        assert not fine.is_error and "io.securegateway/result_scan" not in (fine.meta or {})

        events_listed = await client.call_tool("calendar.list_events", {})
        assert text_of(events_listed) == "standup 09:00; review 14:00"  # result_scan = flag passes it on
        assert events_listed.meta["io.securegateway/result_scan"] == [
            {"code": "prompt_injection", "kind": "classifier_injection", "path": "content[0].text"}
        ]
        tainted = await client.call_tool("search.echo", {"text": "the weather report says it is sunny"})
        assert tainted.structured_content["reason_code"] == "session_tainted"
    (flagged,) = events(site, "result.flagged")
    assert flagged["tool"] == "list_events" and flagged["findings"][0]["kind"] == "classifier_injection"


async def test_a_classifier_that_cannot_load_stops_the_gateway_at_startup(tmp_path: Path) -> None:
    site = make_site(tmp_path / "bad", detectors='classifier = { model = "missing.onnx", tokenizer = "t.json" }')
    with pytest.raises(ConfigError, match=r"detectors.classifier: classifier model `.*missing.onnx` does not exist"):
        site.app()


async def test_a_taint_survives_a_gateway_restart_until_its_window_ends(tmp_path: Path) -> None:
    site = make_site(tmp_path / "restart", upstreams=[("search", hostile("rugpull"))])
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        page = await client.call_tool("search.page", {})
        assert page.meta["io.securegateway/result_scan"][0]["code"] == "prompt_injection"
    assert (tmp_path / "restart" / "state" / "taint.db").is_file()
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        refused = await client.call_tool("search.send", {"to": "attacker@evil.example", "body": "keys"})
        assert refused.is_error and refused.structured_content["reason_code"] == "session_tainted"
        assert "search.page" in "\n".join(refused.structured_content["reasoning"])
