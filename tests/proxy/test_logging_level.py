"""logging/setLevel is decided and audited per upstream (kind ``method``) before it fans out:
an upstream outside the model's key scope never hears it; if none is reachable it is denied.
Through a real gateway, a real client and two recording upstreams."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from proxy.enforce import POLICY_DENIED
from tests.conftest import connect, running
from tests.e2e.conftest import Site, make_site

pytestmark = pytest.mark.anyio

BOTH, ONE, NONE = "modelkey-both-1", "modelkey-one-2", "modelkey-none-3"
KEYS = f"""\
models:
  both:
    key: {BOTH}
    tools: ["alpha.*", "beta.*"]
  one:
    key: {ONE}
    tools: ["alpha.*"]
  none:
    key: {NONE}
    tools: ["gamma.*"]
"""


def recording_site(root: Path) -> Site:
    root.mkdir(parents=True)
    ups = [(n, [sys.executable, "-m", "tests.proxy.recording_upstream", str(root / f"{n}.jsonl")])
           for n in ("alpha", "beta")]
    site = make_site(root, policy="rules:\n  - model: '*'\n    allow_tools: [alpha.*]\n", upstreams=ups)
    (site.root / "model_keys.yaml").write_text(KEYS)
    return site


def heard(site: Site, upstream: str) -> list[Any]:
    path = site.root / f"{upstream}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [m["params"]["level"] for m in map(json.loads, lines) if m.get("method") == "logging/setLevel"]


def decisions(site: Site) -> list[tuple[str, str, bool, str]]:
    events = [json.loads(x) for x in site.audit_path.read_text().splitlines()]
    return sorted(
        (e["model"], e["server"], e["decision"]["allowed"], e["decision"]["reason_code"])
        for e in events
        if e["type"] == "decision" and (e.get("request") or {}).get("method") == "logging/setLevel"
    )


async def test_set_level_reaches_only_upstreams_in_scope_and_each_is_audited(tmp_path: Path) -> None:
    site = recording_site(tmp_path / "s")
    async with running(site.app()):
        async with connect(site.url, BOTH) as both:
            await both.set_logging_level("debug")
        async with connect(site.url, ONE) as one:
            await one.set_logging_level("error")
        async with connect(site.url, NONE) as none:
            with pytest.raises(MCPError) as denied:
                await none.set_logging_level("info")
    assert heard(site, "alpha") == ["debug", "error"]
    assert heard(site, "beta") == ["debug"]  # `one` does not reach beta: it never heard "error"
    assert denied.value.error.code == POLICY_DENIED
    assert isinstance(denied.value.error.data, dict) and denied.value.error.data["allowed"] is False
    assert decisions(site) == [
        ("both", "alpha", True, "allowed"),
        ("both", "beta", True, "allowed"),
        ("none", "alpha", False, "out_of_scope"),
        ("none", "beta", False, "out_of_scope"),
        ("one", "alpha", True, "allowed"),
        ("one", "beta", False, "out_of_scope"),
    ]
