"""Transparent single-upstream mode (``prefix = false``) and local mode (``anonymous_model``).

Invariants: an unprefixed upstream's names reach the client as the server's own and
route back to it, while policy, decisions and the audit log still name its tools
``<upstream>.<tool>``; a gateway with one unprefixed upstream introduces itself as
that server. A client without a key acts as the anonymous model only when one is
configured (loopback only); an unknown key is still refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT, connect, gateway_env, running, server_cmd
from tests.e2e.conftest import GPT_KEY, Site, cli, make_site, text_of
from tests.e2e.test_stdio_wire import INIT, INITIALIZED, Wire

pytestmark = pytest.mark.anyio

DECISION = "io.securegateway/decision"
ONLY_ECHO = "rules:\n  - id: echo-only\n    model: '*'\n    allow_tools: [search.echo, calendar.echo]\n"


def unprefixed(site: Site, name: str) -> Site:
    text = site.config_path.read_text().replace(f'name = "{name}"\n', f'name = "{name}"\nprefix = false\n')
    site.config_path.write_text(text)
    return site


async def test_an_unprefixed_upstream_keeps_its_names_and_its_identity_while_policy_names_it_dotted(
    tmp_path: Path,
) -> None:
    site = unprefixed(make_site(tmp_path / "site", policy=ONLY_ECHO,
                                upstreams=[("search", server_cmd("search"))]), "search")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        assert client.server_info.name == "search"  # the upstream's own serverInfo
        names = {t.name for t in (await client.list_tools()).tools}
        assert "echo" in names and "propose_policy" in names
        assert not any(n.startswith("search.") for n in names)
        assert "add" not in names  # hidden: no rule allows `search.add`
        allowed = await client.call_tool("echo", {"text": "hi"})
        assert allowed.structured_content == {"text": "hi", "server": "search"}
        decision = (allowed.meta or {})[DECISION]
        assert decision["allowed"] is True and decision["tool"] == "search.echo"
        denied = await client.call_tool("add", {"a": 1, "b": 2})
        assert denied.is_error and "search.add" in text_of(denied)
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        assert prompts == ["greet"]
        got = await client.get_prompt("greet", {"who": "ann"})
        assert got.messages[0].content.text == "Hello ann from search"
        # the prefixed name is not an alias: it is the server's name `search.echo`, decided as such
        not_alias = await client.call_tool("search.echo", {"text": "x"})
        assert not_alias.is_error and (not_alias.meta or {})[DECISION]["tool"] == "search.search.echo"
    events = [json.loads(line) for line in site.audit_path.read_text().splitlines()]
    calls = [(e.get("server"), e.get("tool")) for e in events if e.get("type") == "decision"]
    assert ("search", "echo") in calls and ("search", "add") in calls


async def test_an_unprefixed_upstream_sits_beside_prefixed_ones(tmp_path: Path) -> None:
    site = unprefixed(make_site(tmp_path / "site", policy=ONLY_ECHO), "search")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        assert client.server_info.name == "securegateway"  # several upstreams: itself
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "calendar.echo"} <= names
        assert (await client.call_tool("echo", {"text": "a"})).structured_content["server"] == "search"
        assert (await client.call_tool("calendar.echo", {"text": "b"})).structured_content["server"] == "calendar"


async def test_without_anonymous_model_a_keyless_client_is_refused(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    async with running(site.app()), httpx2.AsyncClient() as http:
        response = await http.post(site.url or "", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                   headers={"accept": "application/json, text/event-stream"})
    assert response.status_code == 401


async def test_a_keyless_client_acts_as_the_anonymous_model_on_loopback(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", gateway='anonymous_model = "claude"')
    async with running(site.app()):
        async with connect(site.url) as client:
            result = await client.call_tool("calendar.echo", {"text": "local"})
            assert not result.is_error
            assert (result.meta or {})[DECISION]["model"] == "claude"
            denied = await client.call_tool("search.echo", {"text": "x"})  # claude's rules, not gpt-4o's
            assert denied.is_error
        async with connect(site.url, GPT_KEY) as client:  # a key still selects its own model
            assert (await client.call_tool("search.echo", {"text": "x"})).meta[DECISION]["model"] == "gpt-4o"
        async with httpx2.AsyncClient() as http:  # a wrong key is not "no key"
            response = await http.post(site.url or "", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                       headers={"authorization": "Bearer not-a-key",
                                                "accept": "application/json, text/event-stream"})
            assert response.status_code == 401


def test_an_anonymous_model_that_is_not_in_model_keys_stops_startup(tmp_path: Path) -> None:
    import subprocess

    site = make_site(tmp_path / "site", gateway='anonymous_model = "nobody"')
    out = subprocess.run(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "gateway.anonymous_model: `nobody` is not in model_keys.yaml" in out.stderr


async def test_a_stdio_client_without_a_key_acts_as_the_anonymous_model_with_a_startup_warning(
    tmp_path: Path,
) -> None:
    import anyio

    site = make_site(tmp_path / "site", listen="stdio", gateway='anonymous_model = "claude"')
    env = {k: v for k, v in gateway_env().items() if k != "SECUREGATEWAY_MODEL_KEY"}
    async with await anyio.open_process(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env) as proc:
        wire = Wire(proc)
        try:
            with anyio.fail_after(60):
                await wire.send(INIT, INITIALIZED, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                    "params": {"name": "calendar.echo", "arguments": {"text": "t"}}})
                replies = await wire.replies_until(2)
        finally:
            proc.kill()
        assert proc.stderr is not None
        stderr = (await proc.stderr.receive(65536)).decode()
    assert replies[-1]["result"]["_meta"][DECISION]["model"] == "claude"
    assert "clients without a model key act as the anonymous model" in stderr


async def test_compact_decision_meta_carries_the_short_form_on_allowed_calls_and_the_audit_keeps_all(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "site", gateway='decision_meta = "compact"')
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        allowed = await client.call_tool("search.echo", {"text": "x"})
        denied = await client.call_tool("calendar.crash", {})
    compact = (allowed.meta or {})[DECISION]
    assert set(compact) == {"allowed", "reason", "decision_id", "risk_score"} and compact["allowed"] is True
    assert denied.is_error and denied.structured_content["rule_trace"]  # a denial always explains in full
    events = [json.loads(line) for line in site.audit_path.read_text().splitlines()]
    audited = next(e for e in events if e.get("decision", {}).get("decision_id") == compact["decision_id"])
    assert audited["decision"]["rule_trace"] and audited["decision"]["schema"]


async def test_an_unprefixed_name_that_reads_as_another_upstreams_name_is_hidden_not_misrouted(
    tmp_path: Path,
) -> None:
    # separator "_": the unprefixed server's own `add_tool` would read as upstream `add`'s `tool`
    site = unprefixed(make_site(tmp_path / "site", policy=ONLY_ECHO, gateway='separator = "_"\ntools_list = "show"',
                                upstreams=[("add", server_cmd("calendar")), ("search", server_cmd("search"))]),
                      "search")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "add_echo" in names and "echo" in names  # add's echo, search's own echo
        assert "add_tool" not in names  # search's `add_tool`: ambiguous, so hidden
        assert "add_add_tool" in names  # add's own add_tool, prefixed
        routed = await client.call_tool("add_echo", {"text": "r"})
        assert (routed.meta or {})[DECISION]["tool"] == "add.echo"
