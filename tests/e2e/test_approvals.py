"""ask_tools end to end: real clients (both eras), the real gateway, a real upstream, the admin API."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import anyio
import httpx2
import mcp_types as mt
import pytest

from tests.conftest import ROOT, connect, gateway_env, running
from tests.e2e.conftest import ADMIN_KEY, GPT_KEY, POLICY, Site, cli, make_site, text_of

pytestmark = pytest.mark.anyio

HEADERS = {"X-Admin-Key": ADMIN_KEY}


def ask_policy(approver: str, ttl: str = "30") -> str:
    return POLICY + f"""\
  - id: record-needs-a-yes
    model: "*"
    ask_tools: [calendar.record]
    approver: {approver}
    approval_ttl: {ttl}
"""


def ask_site(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, approver: str, ttl: str = "30") -> Site:
    monkeypatch.setenv("SECUREGATEWAY_ADMIN_KEY", ADMIN_KEY)
    return make_site(tmp_path / "site", policy=ask_policy(approver, ttl), admin=True)


def admin_url(site: Site) -> str:
    listen = site.config.admin.listen
    assert listen is not None
    return f"http://{listen.host}:{listen.port}/api"


def events(site: Site) -> list[dict[str, Any]]:
    return [json.loads(line) for line in site.audit_path.read_text().splitlines() if line.strip()]


def reached(site: Site) -> list[str]:
    return site.marker.read_text().splitlines() if site.marker.exists() else []


def answering(yes: bool, seen: list[Any] | None = None) -> Any:
    async def elicit(ctx: Any, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        if seen is not None:
            seen.append(params)
        if yes:
            return mt.ElicitResult(action="accept", content={"approve": True})
        return mt.ElicitResult(action="decline")

    return elicit


async def pending_approvals(http: httpx2.AsyncClient, site: Site, count: int = 1) -> list[dict[str, Any]]:
    with anyio.fail_after(15):
        while True:
            body = (await http.get(f"{admin_url(site)}/approvals?status=pending", headers=HEADERS)).json()
            if len(body["approvals"]) >= count:
                return list(body["approvals"])
            await anyio.sleep(0.05)


# ---- approver: user, a handshake-era client with elicitation ------------------------------------------


async def test_a_2025_client_that_approves_runs_the_upstream_once(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "user")
    seen: list[Any] = []
    async with running(site.app()), connect(site.url, GPT_KEY, elicitation_callback=answering(True, seen)) as client:
        result = await client.call_tool("calendar.record", {"note": "key AKIAIOSFODNN7EXAMPLE"})
    assert not result.is_error, text_of(result)
    assert result.meta["io.securegateway/decision"]["reason_code"] == "approved_by"
    assert "user" in result.meta["io.securegateway/decision"]["reason"]
    assert len(reached(site)) == 1
    (form,) = seen
    assert "calendar.record" in form.message and "record-needs-a-yes" in form.message
    assert "AKIAIOSFODNN7EXAMPLE" not in form.message  # the approver sees arguments redacted
    assert "REDACTED:aws_access_key" in form.message
    kinds = [e["type"] for e in events(site)]
    assert kinds.count("approval.requested") == kinds.count("approval.answered") == 1
    assert kinds.count("approval.consumed") == 1
    requested = next(e for e in events(site) if e["type"] == "approval.requested")
    pending = next(e for e in events(site) if e["type"] == "decision" and e["decision_id"] == requested["decision_id"])
    assert pending["decision"]["reason_code"] == "approval_required"
    answered = next(e for e in events(site) if e["type"] == "approval.answered")
    assert (answered["by"], answered["how"], answered["approved"]) == ("user", "elicitation", True)


async def test_a_2025_client_that_declines_is_denied_and_the_upstream_never_called(
    tmp_path: Any, monkeypatch: Any
) -> None:
    site = ask_site(tmp_path, monkeypatch, "user")
    async with running(site.app()), connect(site.url, GPT_KEY, elicitation_callback=answering(False)) as client:
        result = await client.call_tool("calendar.record", {"note": "x"})
    assert result.is_error
    assert result.structured_content["reason_code"] == "approval_denied"
    assert reached(site) == []
    assert "approval.consumed" not in [e["type"] for e in events(site)]


async def test_a_client_without_elicitation_is_refused_when_the_user_must_approve(
    tmp_path: Any, monkeypatch: Any
) -> None:
    site = ask_site(tmp_path, monkeypatch, "user")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        result = await client.call_tool("calendar.record", {"note": "x"})
    assert result.is_error and result.structured_content["reason_code"] == "approval_denied"
    assert "elicitation" in result.structured_content["reason"]
    assert reached(site) == []


# ---- approver: user, a 2026-era client: the input_required round --------------------------------------


async def test_a_2026_client_completes_the_input_required_round(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "user")
    seen: list[Any] = []
    async with running(site.app()), connect(
        site.url, GPT_KEY, mode="2026-07-28", elicitation_callback=answering(True, seen)
    ) as client:
        result = await client.call_tool("calendar.record", {"note": "modern"})
        assert not result.is_error, text_of(result)
        assert reached(site) == ["called modern"]
        again = await client.call_tool("calendar.record", {"note": "again"})  # a new call, a new question
        assert not again.is_error and len(seen) == 2
    assert reached(site) == ["called modern", "called again"]
    answered = [e for e in events(site) if e["type"] == "approval.answered"]
    assert [(e["by"], e["how"]) for e in answered] == [("user", "elicitation (input_required)")] * 2
    assert [e["type"] for e in events(site)].count("approval.consumed") == 2


async def test_a_2026_client_that_declines_is_denied(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "user")
    async with running(site.app()), connect(
        site.url, GPT_KEY, mode="2026-07-28", elicitation_callback=answering(False)
    ) as client:
        result = await client.call_tool("calendar.record", {"note": "no"})
    assert result.is_error and result.structured_content["reason_code"] == "approval_denied"
    assert reached(site) == []


async def test_a_2026_handle_is_single_use_bound_to_its_arguments_and_unforgeable(
    tmp_path: Any, monkeypatch: Any
) -> None:
    site = ask_site(tmp_path, monkeypatch, "user")
    yes = {"approval": {"action": "accept", "content": {"approve": True}}}
    async with running(site.app()), connect(
        site.url, GPT_KEY, mode="2026-07-28", elicitation_callback=answering(True)
    ) as client:
        session = client.session
        first = await session.call_tool("calendar.record", {"note": "a"}, allow_input_required=True)
        assert isinstance(first, mt.InputRequiredResult)
        handle = first.request_state
        assert handle and handle.startswith("sga1.")
        # the same handle with other arguments: refused, nothing runs
        changed = await session.call_tool(
            "calendar.record", {"note": "b"}, allow_input_required=True, input_responses=yes, request_state=handle,
        )
        assert changed.is_error and changed.structured_content["reason_code"] == "approval_denied"
        assert "arguments_digest" in changed.structured_content["reason"]
        # a forged handle: refused
        forged = handle[:-4] + ("0000" if not handle.endswith("0000") else "1111")
        bad = await session.call_tool(
            "calendar.record", {"note": "a"}, allow_input_required=True, input_responses=yes, request_state=forged,
        )
        assert bad.is_error and "not issued by this gateway" in bad.structured_content["reason"]
        assert reached(site) == []
        ok = await session.call_tool(
            "calendar.record", {"note": "a"}, allow_input_required=True, input_responses=yes, request_state=handle,
        )
        assert not ok.is_error and reached(site) == ["called a"]
        replay = await session.call_tool(
            "calendar.record", {"note": "a"}, allow_input_required=True, input_responses=yes, request_state=handle,
        )
        assert replay.is_error and replay.structured_content["reason_code"] == "approval_denied"
        assert "used once" in replay.structured_content["reason"] or "consumed" in replay.structured_content["reason"]
    assert reached(site) == ["called a"]


# ---- approver: operator, over the admin API -----------------------------------------------------------


async def test_an_operator_approves_over_the_admin_api_while_the_call_waits(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "operator")
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    results: list[Any] = []
    async with running(site.app()), connect(site.url, GPT_KEY) as client, httpx2.AsyncClient() as http:
        async with anyio.create_task_group() as tg:
            async def call() -> None:
                results.append(await client.call_tool("calendar.record", {"note": "op"}, progress_callback=on_progress))

            tg.start_soon(call)
            (waiting,) = await pending_approvals(http, site)
            assert waiting["tool"] == "calendar.record" and waiting["arguments"] == {"note": "op"}
            assert reached(site) == []
            bad = await http.post(f"{admin_url(site)}/approvals/{waiting['id']}/approve", headers=HEADERS, json={})
            assert bad.status_code == 400  # a reviewer must be named
            answer = await http.post(
                f"{admin_url(site)}/approvals/{waiting['id']}/approve", headers=HEADERS,
                json={"reviewer": "alice", "comment": "fine"},
            )
            assert answer.status_code == 200 and answer.json()["status"] == "approved"
        again = await http.post(
            f"{admin_url(site)}/approvals/{waiting['id']}/deny", headers=HEADERS, json={"reviewer": "bob"}
        )
        assert again.status_code == 409  # an answer is final
        unknown = await http.post(f"{admin_url(site)}/approvals/nope/approve", headers=HEADERS, json={"reviewer": "x"})
        assert unknown.status_code == 404
        assert (await http.get(f"{admin_url(site)}/approvals")).status_code == 401
    (result,) = results
    assert not result.is_error and reached(site) == ["called op"]
    assert progress and "waiting for an operator" in str(progress[0][2]) and progress[0][1] == 30
    assert "alice" in result.meta["io.securegateway/decision"]["reason"]
    answered = next(e for e in events(site) if e["type"] == "approval.answered")
    assert (answered["by"], answered["how"], answered["comment"]) == ("alice", "admin_api", "fine")
    linked = {e["decision_id"] for e in events(site) if e["type"].startswith("approval.")}
    assert len(linked) == 1  # requested, answered, consumed: all name the decision that asked
    consumed = next(e for e in events(site) if e["type"] == "approval.consumed")
    outcome = next(e for e in events(site) if e.get("decision_id") == consumed["outcome_decision_id"])
    assert outcome["type"] == "decision" and outcome["decision"]["reason_code"] == "approved_by"
    verified = subprocess.run(cli("audit", "verify", "--config", str(site.config_path)), capture_output=True,
                              text=True, cwd=ROOT, env=gateway_env(), timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_an_operator_no_denies_and_concurrent_approvals_do_not_cross(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "operator")
    results: dict[str, Any] = {}
    async with (
        running(site.app()), connect(site.url, GPT_KEY) as client, httpx2.AsyncClient() as http,
        anyio.create_task_group() as tg,
    ):
        for note in ("yes-one", "no-one", "yes-two"):
            async def call(note: str = note) -> None:
                results[note] = await client.call_tool("calendar.record", {"note": note})

            tg.start_soon(call)
        waiting = await pending_approvals(http, site, 3)
        by_note = {a["arguments"]["note"]: a["id"] for a in waiting}
        assert len(set(by_note.values())) == 3
        for note, verb in (("no-one", "deny"), ("yes-two", "approve"), ("yes-one", "approve")):
            response = await http.post(
                f"{admin_url(site)}/approvals/{by_note[note]}/{verb}", headers=HEADERS, json={"reviewer": "carol"}
            )
            assert response.status_code == 200
    assert not results["yes-one"].is_error and not results["yes-two"].is_error
    assert results["no-one"].is_error and results["no-one"].structured_content["reason_code"] == "approval_denied"
    assert sorted(reached(site)) == ["called yes-one", "called yes-two"]


async def test_an_unanswered_operator_approval_expires(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "operator", ttl="1")
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        with anyio.fail_after(20):
            result = await client.call_tool("calendar.record", {"note": "late"})
    assert result.is_error and result.structured_content["reason_code"] == "approval_expired"
    assert reached(site) == []
    kinds = [e["type"] for e in events(site)]
    assert "approval.expired" in kinds and "approval.consumed" not in kinds


async def test_a_deny_added_between_approval_and_execution_wins(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "operator")
    results: list[Any] = []
    app = site.app()
    async with (
        running(app), connect(site.url, GPT_KEY) as client, httpx2.AsyncClient() as http,
        anyio.create_task_group() as tg,
    ):
        async def call() -> None:
            results.append(await client.call_tool("calendar.record", {"note": "x"}))

        tg.start_soon(call)
        (waiting,) = await pending_approvals(http, site)
        version = app.runtime.live.current.version
        (site.root / "policies.yaml").write_text(
            ask_policy("operator") + '  - id: freeze\n    model: "*"\n    deny_tools: [calendar.record]\n'
        )
        with anyio.fail_after(15):
            while app.runtime.live.current.version == version:
                await anyio.sleep(0.05)
        response = await http.post(
            f"{admin_url(site)}/approvals/{waiting['id']}/approve", headers=HEADERS, json={"reviewer": "alice"}
        )
        assert response.status_code == 200
    (result,) = results
    assert result.is_error and result.structured_content["reason_code"] == "explicit_deny"
    assert reached(site) == []
    assert "approval.consumed" not in [e["type"] for e in events(site)]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, cwd=ROOT, env=gateway_env(), timeout=60,
                          stdin=subprocess.DEVNULL)


async def test_the_cli_lists_and_answers_held_calls(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "operator")
    config = str(site.config_path)
    results: list[Any] = []
    async with (
        running(site.app()), connect(site.url, GPT_KEY) as client, httpx2.AsyncClient() as http,
        anyio.create_task_group() as tg,
    ):
        async def call(note: str) -> None:
            results.append(await client.call_tool("calendar.record", {"note": note}))

        tg.start_soon(call, "via-cli")
        (waiting,) = await pending_approvals(http, site)
        listed = await anyio.to_thread.run_sync(run_cli, "approvals", "list", "--config", config)
        assert listed.returncode == 0 and waiting["id"] in listed.stdout and "calendar.record" in listed.stdout
        missing = await anyio.to_thread.run_sync(run_cli, "approvals", "approve", "nope", "--config", config)
        assert missing.returncode == 2 and "--reviewer" in missing.stderr  # argparse: reviewer required
        unknown = await anyio.to_thread.run_sync(
            run_cli, "approvals", "approve", "nope", "--reviewer", "dana", "--config", config
        )
        assert unknown.returncode == 1 and "not_found" in unknown.stderr
        answered = await anyio.to_thread.run_sync(
            run_cli, "approvals", "approve", waiting["id"], "--reviewer", "dana", "--comment", "ok", "--config", config
        )
        assert answered.returncode == 0 and "approved by dana" in answered.stdout
    (result,) = results
    assert not result.is_error and reached(site) == ["called via-cli"]
    monkeypatch.delenv("SECUREGATEWAY_ADMIN_KEY")
    no_key = run_cli("approvals", "list", "--config", config)
    assert no_key.returncode == 2 and "SECUREGATEWAY_ADMIN_KEY" in no_key.stderr


async def test_with_approver_any_an_operator_may_answer_before_the_user(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "any")
    asked = anyio.Event()

    async def silent_user(ctx: Any, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        asked.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    results: list[Any] = []
    async with (
        running(site.app()), connect(site.url, GPT_KEY, elicitation_callback=silent_user) as client,
        httpx2.AsyncClient() as http, anyio.create_task_group() as tg,
    ):
        async def call() -> None:
            results.append(await client.call_tool("calendar.record", {"note": "either"}))

        tg.start_soon(call)
        (waiting,) = await pending_approvals(http, site)
        with anyio.fail_after(10):
            await asked.wait()  # the user was asked too
        response = await http.post(
            f"{admin_url(site)}/approvals/{waiting['id']}/approve", headers=HEADERS, json={"reviewer": "erin"}
        )
        assert response.status_code == 200
    (result,) = results
    assert not result.is_error and reached(site) == ["called either"]
    assert "erin" in result.meta["io.securegateway/decision"]["reason"]


async def test_an_operator_cannot_answer_for_the_user(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "user")
    release = anyio.Event()

    async def slow_user(ctx: Any, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        await release.wait()
        return mt.ElicitResult(action="decline")

    results: list[Any] = []
    async with (
        running(site.app()), connect(site.url, GPT_KEY, elicitation_callback=slow_user) as client,
        httpx2.AsyncClient() as http, anyio.create_task_group() as tg,
    ):
        async def call() -> None:
            results.append(await client.call_tool("calendar.record", {"note": "mine"}))

        tg.start_soon(call)
        (waiting,) = await pending_approvals(http, site)
        response = await http.post(
            f"{admin_url(site)}/approvals/{waiting['id']}/approve", headers=HEADERS, json={"reviewer": "mallory"}
        )
        assert response.status_code == 409 and response.json()["code"] == "invalid_state"
        release.set()
    (result,) = results
    assert result.is_error and result.structured_content["reason_code"] == "approval_denied"
    assert reached(site) == []


async def test_a_2026_call_waits_for_the_operator_too(tmp_path: Any, monkeypatch: Any) -> None:
    site = ask_site(tmp_path, monkeypatch, "operator")
    results: list[Any] = []
    async with (
        running(site.app()), connect(site.url, GPT_KEY, mode="2026-07-28") as client,
        httpx2.AsyncClient() as http, anyio.create_task_group() as tg,
    ):
        async def call() -> None:
            results.append(await client.call_tool("calendar.record", {"note": "modern-op"}))

        tg.start_soon(call)
        (waiting,) = await pending_approvals(http, site)
        response = await http.post(
            f"{admin_url(site)}/approvals/{waiting['id']}/approve", headers=HEADERS, json={"reviewer": "frank"}
        )
        assert response.status_code == 200
    (result,) = results
    assert not result.is_error and reached(site) == ["called modern-op"]


async def test_a_2026_retry_after_the_ask_was_dropped_runs_as_a_plain_allowed_call(
    tmp_path: Any, monkeypatch: Any
) -> None:
    site = ask_site(tmp_path, monkeypatch, "user")
    app = site.app()
    yes = {"approval": {"action": "accept", "content": {"approve": True}}}
    async with running(app), connect(site.url, GPT_KEY, mode="2026-07-28", elicitation_callback=answering(True)) as c:
        first = await c.session.call_tool("calendar.record", {"note": "p"}, allow_input_required=True)
        assert isinstance(first, mt.InputRequiredResult)
        version = app.runtime.live.current.version
        (site.root / "policies.yaml").write_text(POLICY)
        with anyio.fail_after(15):
            while app.runtime.live.current.version == version:
                await anyio.sleep(0.05)
        retry = await c.session.call_tool(
            "calendar.record", {"note": "p"}, allow_input_required=True, input_responses=yes,
            request_state=first.request_state,
        )
        assert not retry.is_error and retry.meta["io.securegateway/decision"]["reason_code"] == "allowed"
    assert reached(site) == ["called p"]
