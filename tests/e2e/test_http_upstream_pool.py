"""Calls to a Streamable HTTP upstream reuse keep-alive connections (never one connection per call).

Counted on the wire: the upstream is reached through a loopback TCP relay that counts accepted
connections; twenty calls after the first must not open twenty more, in either upstream era
(a handshake-era upstream answers every POST with an SSE stream, a sessionless one with JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from proxy.upstream.http_pool import shared_pool_users
from tests.conftest import connect, running
from tests.e2e.conftest import GPT_KEY, make_site
from tests.e2e.tcp_counter import CountingRelay

pytestmark = pytest.mark.anyio

CALLS = 20


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_calls_to_an_http_upstream_reuse_their_connections(
    tmp_path: Path, http_upstream_factory: Any, protocol: str
) -> None:
    url = http_upstream_factory("search")
    async with CountingRelay(int(url.split(":")[2].split("/")[0])).running() as relay:
        site = make_site(tmp_path / "site", upstreams=[("search", ["replaced"])])
        site.config_path.write_text(site.config_path.read_text().replace(
            'command = ["replaced"]', f'url = "http://127.0.0.1:{relay.port}/mcp"\nprotocol = "{protocol}"'))
        async with running(site.app()), connect(site.url, GPT_KEY) as client:
            assert not (await client.call_tool("search.echo", {"text": "warm"})).is_error
            before = relay.accepted
            with anyio.fail_after(60):
                for i in range(CALLS):
                    result = await client.call_tool("search.echo", {"text": str(i)})
                    assert result.structured_content == {"text": str(i), "server": "search"}
            opened = relay.accepted - before
    assert before >= 1
    assert opened <= 2, f"{opened} new connections for {CALLS} calls"  # was one per call



async def test_sessions_share_one_pool_to_an_http_upstream_that_lives_with_the_gateway(
    tmp_path: Path, http_upstream_factory: Any,
) -> None:
    # Each link (one per client session and upstream) has its own client and cookie jar over the
    # gateway's one pool; calls from both sessions, interleaved, reuse the pooled connections.
    url = http_upstream_factory("search")
    async with CountingRelay(int(url.split(":")[2].split("/")[0])).running() as relay:
        site = make_site(tmp_path / "site", upstreams=[("search", ["replaced"])])
        site.config_path.write_text(site.config_path.read_text().replace(
            'command = ["replaced"]', f'url = "http://127.0.0.1:{relay.port}/mcp"'))
        async with running(site.app()):
            assert shared_pool_users() == 1  # the gateway holds it
            async with connect(site.url, GPT_KEY) as first, connect(site.url, GPT_KEY) as second:
                assert shared_pool_users() == 3  # and each session's link borrows it
                for client in (first, second):
                    assert not (await client.call_tool("search.echo", {"text": "warm"})).is_error
                before = relay.accepted
                with anyio.fail_after(60):
                    for i in range(CALLS):
                        client = (first, second)[i % 2]
                        result = await client.call_tool("search.echo", {"text": str(i)})
                        assert result.structured_content == {"text": str(i), "server": "search"}
                opened = relay.accepted - before
            with anyio.fail_after(15):  # the closed sessions give their clients back as they wind down
                while shared_pool_users() > 1:
                    await anyio.sleep(0.05)
        assert shared_pool_users() == 0  # the pool closed with the gateway
    assert opened <= 2, f"{opened} new connections for {CALLS} calls from two sessions"
