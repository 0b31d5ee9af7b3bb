"""The review console in a real browser: Debian's Chromium, headless, driven by Playwright.

Skipped (not failed) where Chromium or the ``playwright`` package is missing; ``.ci/run``
installs both. No browser is ever downloaded: Playwright launches /usr/bin/chromium.
Set ``SECUREGATEWAY_SCREENSHOT=docs/console-proposal.png`` to refresh the README's picture.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import connect
from tests.e2e.conftest import ADMIN_KEY, GPT_KEY, text_of
from tests.proxy.console.conftest import console_site

pytestmark = pytest.mark.anyio

CHROMIUM = os.environ.get("SECUREGATEWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
async_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

WANTED = "rules:\n  - id: book-meetings\n    model: gpt-4o\n    allow_tools: [calendar.create_event]\n"
INJECTED = 'Please <img src=x id=pwned> approve \u202eexe.txt\u202c now'


async def test_review_a_proposal_in_the_browser_from_sign_in_to_an_allowed_call(
    tmp_path: Path, monkeypatch: Any
) -> None:
    async with console_site(tmp_path / "site", monkeypatch) as console, connect(console.site.url, GPT_KEY) as mcp, \
            async_api.async_playwright() as pw:
        for _ in range(2):
            assert (await mcp.call_tool("calendar.create_event", {"title": "standup"})).is_error
        proposed = await mcp.call_tool("propose_policy", {"yaml": WANTED, "justification": "I book meetings"})
        pid = proposed.structured_content["proposal_id"]
        assert proposed.structured_content["status"] == "pending", text_of(proposed)

        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await (await browser.new_context(viewport={"width": 1200, "height": 1400})).new_page()
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

            await page.goto(f"{console.base}/console/proposals")
            assert page.url.endswith("/console/signin")  # not signed in yet
            await page.fill("#admin_key", ADMIN_KEY)
            await page.click("#signin")
            await page.wait_for_url("**/console/proposals")
            assert pid in await page.inner_text("#pending")

            await page.click(f"text={pid}")
            await page.wait_for_url(f"**/console/proposals/{pid}")
            diff = await page.inner_text("#diff")
            assert "calendar.create_event" in diff and "wider" in diff
            impact = await page.inner_text("#impact")
            assert "would newly allow 2, newly deny 0" in impact
            screenshot = tmp_path / "console-proposal.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            if os.environ.get("SECUREGATEWAY_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["SECUREGATEWAY_SCREENSHOT"])

            await page.fill("#approve-form input[name=reviewer]", "alice")
            await page.fill("#approve-form textarea[name=comment]", "meetings are fine")
            await page.click("#approve")
            await page.wait_for_url("**?done=approved")
            assert await page.inner_text("#status") == "merged"
            allowed = await mcp.call_tool("calendar.create_event", {"title": "standup"})
            assert not allowed.is_error, text_of(allowed)

            second = await mcp.call_tool("propose_policy", {
                "yaml": "rules:\n  - model: gpt-4o\n    allow_tools: [calendar.elicit]\n", "justification": "ask"})
            await page.goto(f"{console.base}/console/proposals/{second.structured_content['proposal_id']}")
            await page.fill("#reject-form input[name=reviewer]", "bob")
            await page.click("#reject")
            await page.wait_for_url("**?done=rejected")
            assert await page.inner_text("#status") == "rejected"
            assert (await mcp.call_tool("calendar.elicit", {})).is_error

            third = await mcp.call_tool("propose_policy", {
                "yaml": "rules:\n  - model: gpt-4o\n    allow_tools: [calendar.add]\n", "justification": INJECTED})
            third_id = third.structured_content["proposal_id"]
            await page.goto(f"{console.base}/console/proposals/{third_id}")
            shown = await page.inner_text("#justification")
            assert "<img src=x id=pwned>" in shown and "\\u{202E}" in shown and "\u202e" not in shown
            assert await page.locator("#pwned").count() == 0  # shown as text, never parsed as markup

            # A form that lost its CSRF token is refused, and nothing changes.
            await page.locator("#approve-form input[name=csrf]").evaluate("e => e.remove()")
            await page.fill("#approve-form input[name=reviewer]", "mallory")
            await page.click("#approve")
            assert "CSRF" in await page.inner_text("#refused")
            await page.goto(f"{console.base}/console/proposals/{third_id}")
            assert await page.inner_text("#status") == "pending"
            assert not [e for e in errors if "Content Security Policy" in e], errors  # CSP blocked nothing needed
        finally:
            await browser.close()


async def test_release_a_quarantined_tool_in_the_browser(tmp_path: Path, monkeypatch: Any) -> None:
    from tests.e2e.test_detection import hostile

    async with console_site(tmp_path / "site", monkeypatch, upstreams=[("search", hostile("poisoned"))]) as console, \
            connect(console.site.url, GPT_KEY) as mcp, async_api.async_playwright() as pw:
        assert "search.fact" not in {t.name for t in (await mcp.list_tools()).tools}
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(f"{console.base}/console/tools")
            await page.fill("#admin_key", ADMIN_KEY)
            await page.click("#signin")
            await page.wait_for_url("**/console/proposals")
            await page.goto(f"{console.base}/console/tools")
            row = page.locator('#suspended tr[data-tool="search.fact"]')
            shown = await row.inner_text()
            assert "quarantined" in shown and "prompt_injection" in shown and "<IMPORTANT>" in shown  # as text
            await row.locator("input[name=reviewer]").fill("alice")
            await row.locator("button.release").click()
            await page.wait_for_url("**/console/tools?released=search.fact")
            assert "search.fact" in await page.inner_text("#done")
            assert await page.locator('#suspended tr[data-tool="search.fact"]').count() == 0
        finally:
            await browser.close()
        assert "search.fact" in {t.name for t in (await mcp.list_tools()).tools}
        assert text_of(await mcp.call_tool("search.fact", {"note": "x"})) == "fact ok"
