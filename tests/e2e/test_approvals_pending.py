"""Operator approvals without a held request (``[approvals] operator_mode = "pending"``), lapsed
``input_required`` questions, and approvals across a gateway restart.

Real gateway, real upstream, real SDK clients of both eras, the admin API over HTTP.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as mt
import pytest

from proxy.approval.gate import APPROVAL_META_KEY
from tests.conftest import ROOT, connect, gateway_env, running, wait_port
from tests.e2e.conftest import GPT_KEY, Site, cli, make_site, text_of
from tests.e2e.test_approvals import HEADERS, admin_url, ask_policy, events, pending_approvals, reached

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"


def pending_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, approver: str = "operator", ttl: str = "60",
                 mode: str = "pending") -> Site:
    monkeypatch.setenv("SECUREGATEWAY_ADMIN_KEY", HEADERS["X-Admin-Key"])
    site = make_site(tmp_path / "site", policy=ask_policy(approver, ttl), admin=True)
    site.config_path.write_text(site.config_path.read_text() + f'\n[approvals]\noperator_mode = "{mode}"\n')
    return site


async def call(client: Any, note: str, handle: str | None = None, **extra: Any) -> Any:
    meta = {APPROVAL_META_KEY: handle} if handle is not None else None
    return await client.session.call_tool("calendar.record", {"note": note}, meta=meta, **extra)


def pending_of(result: Any) -> dict[str, Any]:
    assert result.is_error, text_of(result)
    assert result.structured_content["reason_code"] == "approval_required", text_of(result)
    state = result.structured_content["pending_approval"]
    assert state["status"] == "pending" and state["handle"].startswith("sga1.")
    return dict(state)


async def answer(http: httpx2.AsyncClient, site: Site, approval_id: str, verb: str, reviewer: str = "alice") -> Any:
    response = await http.post(f"{admin_url(site)}/approvals/{approval_id}/{verb}", headers=HEADERS,
                               json={"reviewer": reviewer, "comment": f"{verb} from the test"})
    assert response.status_code == 200, response.text
    return response.json()


def verify_audit(site: Site) -> None:
    verified = subprocess.run(cli("audit", "verify", "--config", str(site.config_path)), capture_output=True,
                              text=True, cwd=ROOT, env=gateway_env(), timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def kinds(site: Site, kind: str) -> list[dict[str, Any]]:
    return [e for e in events(site) if e["type"] == kind]


# ---- operator_mode = "pending": the 2026 client is told, and comes back ---------------------------------


async def test_a_2026_pending_result_then_a_retry_after_the_operator_yes_runs_the_call_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = pending_site(tmp_path, monkeypatch)
    async with running(site.app()), connect(site.url, GPT_KEY, mode=MODERN) as client, \
            httpx2.AsyncClient() as http:
        first = await call(client, "p")
        state = pending_of(first)
        handle = state["handle"]
        assert handle in text_of(first) and APPROVAL_META_KEY in text_of(first) and "Nothing ran" in text_of(first)
        assert state["retry"]["_meta"] == {APPROVAL_META_KEY: handle}
        assert first.meta[APPROVAL_META_KEY]["approval_id"] == state["approval_id"]
        (listed,) = await pending_approvals(http, site)
        assert (listed["id"], listed["mode"], listed["tool"]) == (state["approval_id"], "pending", "calendar.record")

        # before the operator answers: still pending, the same approval, no second request
        again = pending_of(await call(client, "p", handle))
        assert again["approval_id"] == state["approval_id"]
        asked_twice = pending_of(await call(client, "p"))  # even without the handle: one request per call
        assert asked_twice["approval_id"] == state["approval_id"]
        assert len(kinds(site, "approval.requested")) == 1
        assert len((await http.get(f"{admin_url(site)}/approvals", headers=HEADERS)).json()["approvals"]) == 1
        assert reached(site) == []

        await answer(http, site, state["approval_id"], "approve")
        # the handle with other arguments: refused, and the yes stays for the call it was given for
        changed = await call(client, "other", handle)
        assert changed.is_error and changed.structured_content["reason_code"] == "approval_denied"
        assert "arguments_digest" in changed.structured_content["reason"]
        # a forged handle, and a handle in the wrong shape: refused
        forged = handle[:-4] + ("0000" if not handle.endswith("0000") else "1111")
        for bad in (forged, "sga1.nope.0123456789abcdef0123456789abcdef", "not a handle"):
            refused = await call(client, "p", bad)
            assert refused.is_error and refused.structured_content["reason_code"] == "approval_denied"
            assert "not issued by this gateway" in refused.structured_content["reason"]
        assert reached(site) == []

        ran = await call(client, "p", handle)
        assert not ran.is_error, text_of(ran)
        assert ran.meta["io.securegateway/decision"]["reason_code"] == "approved_by"
        assert "alice" in ran.meta["io.securegateway/decision"]["reason"]
        assert reached(site) == ["called p"]

        replay = await call(client, "p", handle)
        assert replay.is_error and replay.structured_content["reason_code"] == "approval_denied"
        assert "already used" in replay.structured_content["reason"]
    assert reached(site) == ["called p"]
    consumed = kinds(site, "approval.consumed")
    assert len(consumed) == 1 and consumed[0]["approval_id"] == state["approval_id"]
    verify_audit(site)


async def test_a_2026_pending_approval_the_operator_denies_is_approval_denied_on_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = pending_site(tmp_path, monkeypatch)
    async with running(site.app()), connect(site.url, GPT_KEY, mode=MODERN) as client, \
            httpx2.AsyncClient() as http:
        state = pending_of(await call(client, "d"))
        await answer(http, site, state["approval_id"], "deny", reviewer="bob")
        denied = await call(client, "d", handle=state["handle"])
        assert denied.is_error and denied.structured_content["reason_code"] == "approval_denied"
        assert "bob" in denied.structured_content["reason"]
        fresh = pending_of(await call(client, "d"))  # asking again is a new request
        assert fresh["approval_id"] != state["approval_id"]
    assert reached(site) == []


async def test_a_2026_pending_approval_nobody_answers_expires_and_the_retry_is_approval_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = pending_site(tmp_path, monkeypatch, ttl="1")
    async with running(site.app()), connect(site.url, GPT_KEY, mode=MODERN) as client:
        state = pending_of(await call(client, "late"))
        with anyio.fail_after(15):
            while not kinds(site, "approval.expired"):
                await anyio.sleep(0.1)
        late = await call(client, "late", handle=state["handle"])
        assert late.is_error and late.structured_content["reason_code"] == "approval_expired"
    (expired,) = kinds(site, "approval.expired")
    assert expired["approval_id"] == state["approval_id"] and expired["why"] == "nobody answered in time"
    assert reached(site) == []
    verify_audit(site)


async def test_a_handshake_era_client_still_waits_when_the_operator_mode_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = pending_site(tmp_path, monkeypatch)
    results: list[Any] = []
    async with running(site.app()), connect(site.url, GPT_KEY) as client, httpx2.AsyncClient() as http, \
            anyio.create_task_group() as tg:
        async def waiting() -> None:
            results.append(await client.call_tool("calendar.record", {"note": "old"}))

        tg.start_soon(waiting)
        (held,) = await pending_approvals(http, site)
        assert held["mode"] == "wait"
        await answer(http, site, held["id"], "approve")
    (result,) = results
    assert not result.is_error and reached(site) == ["called old"]


async def test_the_approval_handle_never_reaches_the_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = pending_site(tmp_path, monkeypatch)
    app = site.app()
    async with running(app), connect(site.url, GPT_KEY, mode=MODERN) as client, httpx2.AsyncClient() as http:
        state = pending_of(await call(client, "h"))
        await answer(http, site, state["approval_id"], "approve")
        seen: list[Any] = []
        (session,) = app.gateway._modern.values()
        link = session.links["calendar"]
        original = link.request

        async def spy(*args: Any, **kwargs: Any) -> Any:
            seen.append((args, kwargs))
            return await original(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(link, "request", spy)
            ran = await call(client, "h", handle=state["handle"])
        assert not ran.is_error, text_of(ran)
    assert seen and all(args[0] == "tools/call" for args, _ in seen)
    assert state["handle"] not in repr(seen) and APPROVAL_META_KEY not in repr(seen)
    assert reached(site) == ["called h"]


# ---- a lapsed input_required question (approver: user) ---------------------------------------------------


async def test_a_lapsed_input_required_approval_is_expired_in_the_audit_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = pending_site(tmp_path, monkeypatch, approver="user", ttl="1", mode="wait")

    async def never_asked(ctx: Any, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        raise AssertionError("the test never answers")

    async with running(site.app()), connect(site.url, GPT_KEY, mode=MODERN, elicitation_callback=never_asked) as c:
        first = await c.session.call_tool("calendar.record", {"note": "q"}, allow_input_required=True)
        assert isinstance(first, mt.InputRequiredResult)
        with anyio.fail_after(15):  # the user never answers and the client never comes back
            while not kinds(site, "approval.expired"):
                await anyio.sleep(0.1)
        (requested,) = kinds(site, "approval.requested")
        (expired,) = kinds(site, "approval.expired")
        assert expired["approval_id"] == requested["approval_id"] and requested["mode"] == "input_required"
        assert expired["decision_id"] == requested["decision_id"]
        yes = {"approval": {"action": "accept", "content": {"approve": True}}}
        late = await c.session.call_tool("calendar.record", {"note": "q"}, allow_input_required=True,
                                         input_responses=yes, request_state=first.request_state)
        assert late.is_error and late.structured_content["reason_code"] == "approval_expired"
    assert len(kinds(site, "approval.expired")) == 1  # swept once, never twice
    assert reached(site) == []
    verify_audit(site)


# ---- across a restart --------------------------------------------------------------------------------------


async def test_approvals_survive_a_gateway_restart_and_a_waiting_call_is_abandoned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = pending_site(tmp_path, monkeypatch)
    assert site.url is not None
    port = int(site.url.split(":")[2].split("/")[0])

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    first = start()
    try:
        await anyio.to_thread.run_sync(wait_port, port, 60.0)
        async with httpx2.AsyncClient() as http:
            async with connect(site.url, GPT_KEY, mode=MODERN) as modern:
                unanswered = pending_of(await call(modern, "unanswered"))
                used = pending_of(await call(modern, "used"))
                approved = pending_of(await call(modern, "approved-early"))
                await answer(http, site, used["approval_id"], "approve")
                await answer(http, site, approved["approval_id"], "approve")
                assert not (await call(modern, "used", used["handle"])).is_error
            async with anyio.create_task_group() as tg:
                async def doomed() -> None:
                    with contextlib.suppress(Exception):
                        async with connect(site.url, GPT_KEY) as old:
                            await old.call_tool("calendar.record", {"note": "doomed"}, read_timeout_seconds=30)

                tg.start_soon(doomed)
                waiting = {a["arguments"]["note"]: a for a in await pending_approvals(http, site, 2)}["doomed"]
                first.send_signal(signal.SIGKILL)  # the process dies with a call held open
                await anyio.to_thread.run_sync(lambda: first.wait(timeout=20))
                tg.cancel_scope.cancel()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    second = start()
    try:
        await anyio.to_thread.run_sync(wait_port, port, 60.0)
        async with httpx2.AsyncClient() as http, connect(site.url, GPT_KEY, mode=MODERN) as modern:
            with anyio.fail_after(30):
                while True:
                    response = await http.get(f"{admin_url(site)}/approvals", headers=HEADERS)
                    if response.status_code == 200:
                        break
                    await anyio.sleep(0.1)
            status = {a["id"]: a["status"] for a in response.json()["approvals"]}
            assert status == {
                unanswered["approval_id"]: "pending", used["approval_id"]: "consumed",
                approved["approval_id"]: "approved", waiting["id"]: "abandoned",
            }
            replay = await call(modern, "used", used["handle"])  # single use survives the restart
            assert replay.is_error and "already used" in replay.structured_content["reason"]
            still = pending_of(await call(modern, "unanswered", unanswered["handle"]))
            assert still["approval_id"] == unanswered["approval_id"]  # the same request, kept
            await answer(http, site, unanswered["approval_id"], "approve", reviewer="carol")
            assert not (await call(modern, "unanswered", unanswered["handle"])).is_error
            assert not (await call(modern, "approved-early", approved["handle"])).is_error
            late = await http.post(f"{admin_url(site)}/approvals/{waiting['id']}/approve", headers=HEADERS,
                                   json={"reviewer": "dave"})
            assert late.status_code == 409  # nobody is waiting for that answer any more
    finally:
        second.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(lambda: second.wait(timeout=20))
    assert sorted(reached(site)) == ["called approved-early", "called unanswered", "called used"]
    (abandoned,) = kinds(site, "approval.abandoned")
    assert abandoned["approval_id"] == waiting["id"] and abandoned["mode"] == "wait"
    verify_audit(site)


async def test_two_racing_retries_with_one_approved_handle_run_the_call_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = pending_site(tmp_path, monkeypatch)
    outcomes: list[Any] = []
    async with running(site.app()), connect(site.url, GPT_KEY, mode=MODERN) as client, \
            httpx2.AsyncClient() as http:
        state = pending_of(await call(client, "race"))
        await answer(http, site, state["approval_id"], "approve")
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                async def retry() -> None:
                    outcomes.append(await call(client, "race", state["handle"]))

                tg.start_soon(retry)
    ran = [o for o in outcomes if not o.is_error]
    refused = [o for o in outcomes if o.is_error]
    assert len(ran) == 1 and len(refused) == 3
    assert all(o.structured_content["reason_code"] == "approval_denied" for o in refused)
    assert reached(site) == ["called race"]
    assert len(kinds(site, "approval.consumed")) == 1


async def test_a_policy_change_voids_a_pending_approval_and_a_non_string_handle_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = pending_site(tmp_path, monkeypatch)
    app = site.app()
    async with running(app), connect(site.url, GPT_KEY, mode=MODERN) as client, httpx2.AsyncClient() as http:
        odd = await client.session.call_tool("calendar.record", {"note": "v"}, meta={APPROVAL_META_KEY: {"id": 1}})
        assert odd.is_error and odd.structured_content["reason_code"] == "approval_denied"
        state = pending_of(await call(client, "v"))
        await answer(http, site, state["approval_id"], "approve")
        version = app.runtime.live.current.version
        (site.root / "policies.yaml").write_text(ask_policy("operator", "90"))  # still asks; another policy
        with anyio.fail_after(15):
            while app.runtime.live.current.version == version:
                await anyio.sleep(0.05)
        voided = await call(client, "v", state["handle"])
        assert voided.is_error and voided.structured_content["reason_code"] == "approval_denied"
        assert "policy_digest" in voided.structured_content["reason"]
    assert reached(site) == []
