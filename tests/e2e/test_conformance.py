"""The official MCP conformance suite (server mode) through the gateway.

Invariant: a gateway in transparent mode (one upstream, ``prefix = false``, a keyless local
client acting as ``anonymous_model``) gives the same pass/fail set as the same upstream
server tested directly, and its listener passes the DNS-rebinding scenario (which the
reference server itself fails). ``@modelcontextprotocol/conformance`` is pinned and installed
by ``.ci/run``; without it (or node) this test skips and says why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.conftest import free_port, running, wait_port
from tests.e2e.conftest import make_site
from tests.e2e.test_reference_servers import NODE_BIN, reference_server

pytestmark = [pytest.mark.anyio, pytest.mark.npm]

POLICY = "rules:\n  - id: everything\n    model: gpt-4o\n    allow_tools: [search.*]\n"
REBINDING = "dns-rebinding-protection"


def run_suite(url: str, out: Path) -> dict[str, bool]:
    """scenario -> passed, from the suite's own checks.json files."""
    subprocess.run([str(NODE_BIN / "conformance"), "server", "--url", url, "-o", str(out)],
                   cwd=out.parent, capture_output=True, text=True, timeout=240)
    results: dict[str, bool] = {}
    for checks in sorted(out.glob("server-*/checks.json")):
        scenario = re.sub(r"-\d{4}-\d\d-\d\dT[\d-]+Z$", "", checks.parent.name.removeprefix("server-"))
        statuses = [c.get("status") for c in json.loads(checks.read_text())]
        results[scenario] = bool(statuses) and all(s in ("SUCCESS", "INFO", "WARNING") for s in statuses)
    return results


async def test_the_conformance_suite_passes_and_fails_the_same_through_the_gateway(tmp_path: Path) -> None:
    reference_server("conformance")
    everything = reference_server("mcp-server-everything")
    port = free_port()
    upstream = subprocess.Popen([everything, "streamableHttp"], env={**os.environ, "PORT": str(port)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await anyio.to_thread.run_sync(wait_port, port, 30.0)
        upstream_url = f"http://127.0.0.1:{port}/mcp"
        direct = await anyio.to_thread.run_sync(run_suite, upstream_url, tmp_path / "direct")
        assert len(direct) >= 25, direct  # the suite really ran

        site = make_site(tmp_path / "site", policy=POLICY, gateway='anonymous_model = "gpt-4o"',
                         upstreams=[("search", ["url-below"])])
        text = site.config_path.read_text().replace(
            'command = ["url-below"]', f'url = "{upstream_url}"\nprefix = false', 1)
        site.config_path.write_text(text)
        async with running(site.app()):
            assert site.url is not None
            through = await anyio.to_thread.run_sync(run_suite, site.url, tmp_path / "gateway")
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    assert through[REBINDING] is True  # the gateway's listener refuses foreign Host/Origin
    differ = {s: (direct.get(s), through.get(s)) for s in direct.keys() | through.keys()
              if s != REBINDING and direct.get(s) != through.get(s)}
    assert differ == {}, f"scenario: (direct, through the gateway): {differ}"
