"""The Approvals page in a real browser (Debian's Chromium, headless, Playwright): a held MCP call
appears, is approved in the page and completes; a deny; a form without its CSRF token is refused.

Skipped where Chromium or ``playwright`` is missing (see test_console_browser.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.conftest import connect
from tests.e2e.conftest import ADMIN_KEY, GPT_KEY, text_of
from tests.e2e.test_approvals import ask_policy, pending_approvals, reached
from tests.proxy.console.conftest import console_site
from tests.proxy.console.test_console_browser import CHROMIUM, CHROMIUM_ARGS, async_api

pytestmark = pytest.mark.anyio

INJECTED = 'ship it <img src=x id=pwned> \u202eexe.txt\u202c'


async def test_approve_and_deny_held_calls_in_the_browser(tmp_path: Path, monkeypatch: Any) -> None:
    results: dict[str, Any] = {}
    async with console_site(tmp_path / "site", monkeypatch, policy=ask_policy("operator")) as console, \
            connect(console.site.url, GPT_KEY) as mcp, httpx2.AsyncClient() as http, \
            async_api.async_playwright() as pw, anyio.create_task_group() as tg:
        async def held(note: str) -> None:
            results[note] = await mcp.call_tool("calendar.record", {"note": note})

        site = console.site
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await (await browser.new_context(viewport={"width": 1300, "height": 1000})).new_page()
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            await page.goto(f"{console.base}/console/approvals")
            await page.fill("#admin_key", ADMIN_KEY)
            await page.click("#signin")
            await page.wait_for_url("**/console/proposals")

            # approve: the waiting MCP call completes
            tg.start_soon(held, INJECTED)
            (first,) = await pending_approvals(http, site)
            await page.goto(f"{console.base}/console/approvals")
            row = page.locator(f'#pending tr[data-approval="{first["id"]}"]')
            shown = await row.inner_text()
            assert "calendar.record" in shown and "record-needs-a-yes" in shown and "gpt-4o" in shown
            assert "<img src=x id=pwned>" in shown and "\\u{202E}" in shown and "\u202e" not in shown
            assert await page.locator("#pwned").count() == 0  # arguments are text, never markup
            await row.locator("a").click()
            await page.wait_for_url(f"**/console/approvals/{first['id']}")
            await page.fill("#approve-form input[name=reviewer]", "alice")
            await page.fill("#approve-form textarea[name=comment]", "one email is fine")
            await page.click("#approve")
            await page.wait_for_url("**?done=approved")
            assert "approved" in await page.inner_text("#done")
            with anyio.fail_after(15):
                while INJECTED not in results:
                    await anyio.sleep(0.05)
            assert not results[INJECTED].is_error, text_of(results[INJECTED])
            assert reached(site) == [f"called {INJECTED}"]

            # deny: the waiting call is refused with the reviewer's comment
            tg.start_soon(held, "no")
            (second,) = await pending_approvals(http, site)
            await page.goto(f"{console.base}/console/approvals/{second['id']}")
            await page.fill("#deny-form input[name=reviewer]", "bob")
            await page.fill("#deny-form textarea[name=comment]", "not today")
            await page.click("#deny")
            await page.wait_for_url("**?done=denied")
            assert await page.inner_text("#status") == "denied"
            with anyio.fail_after(15):
                while "no" not in results:
                    await anyio.sleep(0.05)
            assert results["no"].structured_content["reason_code"] == "approval_denied"
            assert "not today" in results["no"].structured_content["reason"]

            # a form that lost its CSRF token is refused, and the call keeps waiting
            tg.start_soon(held, "csrf")
            (third,) = await pending_approvals(http, site)
            await page.goto(f"{console.base}/console/approvals/{third['id']}")
            await page.locator("#approve-form input[name=csrf]").evaluate("e => e.remove()")
            await page.fill("#approve-form input[name=reviewer]", "mallory")
            await page.click("#approve")
            assert "CSRF" in await page.inner_text("#refused")
            await page.goto(f"{console.base}/console/approvals")
            assert third["id"] in await page.inner_text("#pending")
            assert "csrf" not in results

            await page.goto(f"{console.base}/console/approvals?status=denied")
            history = await page.inner_text("#history")
            assert second["id"] in history and "bob" in history and first["id"] not in history
            assert not [e for e in errors if "Content Security Policy" in e], errors

            await page.goto(f"{console.base}/console/approvals/{third['id']}")  # let the last call go
            await page.fill("#deny-form input[name=reviewer]", "carol")
            await page.click("#deny")
            await page.wait_for_url("**?done=denied")
        finally:
            await browser.close()
    assert sorted(reached(site)) == [f"called {INJECTED}"]
