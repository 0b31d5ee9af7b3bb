"""An upstream that crashes is restarted without the callers noticing.

Invariant: only the calls in flight at the crash fail; a call made after it waits for
the restart (bounded by ``connect_timeout``) and succeeds. An upstream that cannot
come back makes calls fail fast rather than hang.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from tests.conftest import connect, running, server_cmd
from tests.e2e.conftest import GPT_KEY, make_site

pytestmark = pytest.mark.anyio

POLICY = "rules:\n  - id: all\n    model: gpt-4o\n    allow_tools: [search.*, calendar.*]\n"


async def test_the_call_right_after_a_crash_waits_for_the_restart_and_succeeds(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", policy=POLICY)
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        for round_ in range(3):  # every crash, not only the first
            with pytest.raises(MCPError, match="upstream `search` closed the connection"):
                await client.call_tool("search.crash", {})
            with anyio.fail_after(20):
                result = await client.call_tool("search.echo", {"text": f"back {round_}"})
            assert not result.is_error
            assert result.structured_content == {"text": f"back {round_}", "server": "search"}


async def test_only_calls_in_flight_at_the_crash_fail(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", policy=POLICY)
    outcomes: dict[str, str] = {}
    async with running(site.app()), connect(site.url, GPT_KEY) as client:

        async def slow() -> None:
            try:
                await client.call_tool("search.slow", {"steps": 1, "delay": 30})
                outcomes["slow"] = "ok"
            except MCPError as exc:
                outcomes["slow"] = exc.error.message

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                await anyio.sleep(0.5)  # let the slow call reach the upstream
                with pytest.raises(MCPError):
                    await client.call_tool("search.crash", {})
                after = await client.call_tool("search.echo", {"text": "after"})
        assert "closed the connection" in outcomes["slow"]
        assert after.structured_content == {"text": "after", "server": "search"}
        # the other upstream never noticed
        assert not (await client.call_tool("calendar.echo", {"text": "x"})).is_error


async def test_an_upstream_that_cannot_start_fails_calls_fast(tmp_path: Path) -> None:
    never = [sys.executable, "-c", "import sys; sys.exit(1)"]
    site = make_site(tmp_path / "site", policy=POLICY,
                     upstreams=[("calendar", server_cmd("calendar")), ("search", never)])
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        with anyio.fail_after(5):  # connect_timeout is 30 s: nobody waited for it
            with pytest.raises(MCPError, match="upstream `search` is unavailable"):
                await client.call_tool("search.echo", {"text": "x"})
        assert not (await client.call_tool("calendar.echo", {"text": "x"})).is_error
