"""The console's Approvals page over plain HTTP: listing, escaping, CSRF, answering, history filters.

A real gateway holds a real MCP call (``approver: operator``); the page answers it through the
same desk as the admin API. The browser test (test_approvals_browser.py) drives it in Chromium.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.conftest import connect
from tests.e2e.conftest import GPT_KEY, text_of
from tests.e2e.test_approvals import ask_policy, events, pending_approvals, reached
from tests.proxy.console.conftest import console_site, signed_in

pytestmark = pytest.mark.anyio

INJECTED = "<script>alert(1)</script> \u202etxt.exe\u202c zero\u200bwidth key AKIAIOSFODNN7EXAMPLE"


async def test_a_held_call_is_listed_escaped_and_answered_only_with_the_csrf_token(
    tmp_path: Path, monkeypatch: Any
) -> None:
    results: list[Any] = []
    async with console_site(tmp_path / "site", monkeypatch, policy=ask_policy("operator")) as console, \
            connect(console.site.url, GPT_KEY) as mcp, httpx2.AsyncClient() as http, anyio.create_task_group() as tg:
        async def held() -> None:
            results.append(await mcp.call_tool("calendar.record", {"note": INJECTED}))

        tg.start_soon(held)
        base, site = console.base, console.site
        (waiting,) = await pending_approvals(http, site)
        approval_id = waiting["id"]
        csrf = await signed_in(http, base)

        listing = await http.get(f"{base}/console/approvals")
        assert listing.status_code == 200
        html = listing.text
        assert approval_id in html and "calendar.record" in html and "record-needs-a-yes" in html
        assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "\\u{202E}" in html and "\\u{200B}" in html and "\u202e" not in html and "\u200b" not in html
        assert "AKIAIOSFODNN7EXAMPLE" not in html and "REDACTED:aws_access_key" in html  # redacted for approvers
        detail = await http.get(f"{base}/console/approvals/{approval_id}")
        assert detail.status_code == 200 and 'id="approve-form"' in detail.text and "\u202e" not in detail.text

        approve = f"{base}/console/approvals/{approval_id}/approve"
        form = {"reviewer": "mallory", "comment": "x"}
        for response in (
            await http.post(approve, data=form, headers={"Origin": base}),  # no token
            await http.post(approve, data={**form, "csrf": "forged"}, headers={"Origin": base}),
            await http.post(approve, data={**form, "csrf": csrf}, headers={"Origin": "http://evil.example"}),
        ):
            assert response.status_code == 403, response.text
        assert (await http.post(approve, json={**form, "csrf": csrf}, headers={"Origin": base})).status_code == 415
        blank = await http.post(approve, data={"reviewer": " ", "csrf": csrf}, headers={"Origin": base})
        assert blank.status_code == 400 and "reviewer" in blank.text
        assert reached(site) == [] and not results  # nothing refused above answered the call

        ok = await http.post(approve, data={"reviewer": "alice", "comment": "looks fine", "csrf": csrf},
                             headers={"Origin": base})
        assert ok.status_code == 303 and ok.headers["location"] == f"/console/approvals/{approval_id}?done=approved"
        with anyio.fail_after(15):
            while not results:
                await anyio.sleep(0.05)
        again = await http.post(f"{base}/console/approvals/{approval_id}/deny",
                                data={"reviewer": "bob", "csrf": csrf}, headers={"Origin": base})
        assert again.status_code == 409 and "invalid_state" in again.text  # an answer is final
        shown = await http.get(f"{base}/console/approvals/{approval_id}?done=approved")
        assert 'id="done"' in shown.text and 'id="approve-form"' not in shown.text
        crafted = await http.get(f"{base}/console/approvals/{approval_id}?done=denied")
        assert 'id="done"' not in crafted.text  # a link cannot claim an answer that did not happen

        history = await http.get(f"{base}/console/approvals?status=consumed")
        assert approval_id in history.text and "alice" in history.text and "console" in history.text
        assert approval_id not in (await http.get(f"{base}/console/approvals?status=denied")).text
        assert approval_id not in (await http.get(f"{base}/console/approvals?model=claude")).text
        assert (await http.get(f"{base}/console/approvals?status=bogus")).status_code == 400
        assert (await http.get(f"{base}/console/approvals/nope")).status_code == 404
        assert (await http.post(f"{base}/console/approvals/nope/approve", data={"reviewer": "a", "csrf": csrf},
                                headers={"Origin": base})).status_code == 404
    (result,) = results
    assert not result.is_error, text_of(result)
    assert "alice" in result.meta["io.securegateway/decision"]["reason"]
    answered = next(e for e in events(console.site) if e["type"] == "approval.answered")
    assert (answered["by"], answered["how"], answered["comment"]) == ("alice", "console", "looks fine")


async def test_a_call_for_its_user_is_shown_without_answer_forms(tmp_path: Path, monkeypatch: Any) -> None:
    release = anyio.Event()

    async def slow_user(ctx: Any, params: Any) -> Any:
        from mcp import types

        await release.wait()
        return types.ElicitResult(action="decline")

    async with console_site(tmp_path / "site", monkeypatch, policy=ask_policy("user")) as console, \
            connect(console.site.url, GPT_KEY, elicitation_callback=slow_user) as mcp, \
            httpx2.AsyncClient() as http, anyio.create_task_group() as tg:
        tg.start_soon(mcp.call_tool, "calendar.record", {"note": "mine"})
        (waiting,) = await pending_approvals(http, console.site)
        csrf = await signed_in(http, console.base)
        page = await http.get(f"{console.base}/console/approvals/{waiting['id']}")
        assert 'id="user-only"' in page.text and 'id="approve-form"' not in page.text
        forced = await http.post(f"{console.base}/console/approvals/{waiting['id']}/approve",
                                 data={"reviewer": "mallory", "csrf": csrf}, headers={"Origin": console.base})
        assert forced.status_code == 409 and "approver: user" in forced.text
        release.set()
    assert reached(console.site) == []
