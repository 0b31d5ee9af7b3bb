"""Host/Origin refusals on the admin listener are audited (``admin.refused``), rate-limited so a
flood cannot fill the log, and carry no key material. Over real HTTP to a real gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from policy.audit.verify import verify_log
from proxy.admin.guard import RefusalBudget
from tests.conftest import running
from tests.e2e.conftest import ADMIN_KEY, make_site

pytestmark = pytest.mark.anyio


def events(path: Path, type_: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["type"] == type_]


async def test_refusals_are_audited_without_key_material_and_a_flood_is_capped(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SECUREGATEWAY_ADMIN_KEY", ADMIN_KEY)
    site = make_site(tmp_path / "s", admin=True)
    admin = site.config.admin.listen
    assert admin is not None
    base = f"http://127.0.0.1:{admin.port}"
    flood = 60
    async with running(site.app()), httpx2.AsyncClient(base_url=base, timeout=10) as http:
        key = {"X-Admin-Key": ADMIN_KEY, "Authorization": f"Bearer {ADMIN_KEY}"}
        assert (await http.get("/api/policy", headers=key)).status_code == 200
        rebound = await http.get("/api/policy?token=abc", headers={**key, "Host": f"attacker.example:{admin.port}"})
        cross = await http.post("/api/proposals/x/approve", headers={**key, "Origin": "http://evil.example"},
                                json={"reviewer": "r"})
        long_host = "a" * 5000 + ".example"
        clipped = await http.get("/console/", headers={"Host": long_host})
        statuses = [(await http.get("/api/policy", headers={"Host": "flood.example"})).status_code
                    for _ in range(flood)]
    assert rebound.status_code == 421 and cross.status_code == 403 and clipped.status_code == 421
    assert set(statuses) == {421}  # over budget is still refused

    refused = events(site.audit_path, "admin.refused")
    first, second, third = refused[:3]
    assert first["code"] == "invalid_host" and first["status"] == 421
    assert first["host"] == f"attacker.example:{admin.port}" and first["path"] == "/api/policy"
    assert first["method"] == "GET" and first["remote"].startswith("127.0.0.1:")
    assert second["code"] == "invalid_origin" and second["origin"] == "http://evil.example"
    assert second["path"] == "/api/proposals/x/approve" and second["status"] == 403
    assert third["host"] == long_host[:200] and third["path"] == "/console/"
    text = site.audit_path.read_text()
    assert ADMIN_KEY not in text and "token=abc" not in text
    # 63 refusals in well under a minute: the burst (20) is written, the rest only counted
    assert len(refused) == 20
    assert all(e["suppressed"] == 0 for e in refused)
    report = verify_log(site.audit_path)  # a known, typed event: the log still verifies
    assert report.ok, report.message


def test_the_budget_refills_and_the_next_written_refusal_counts_the_suppressed() -> None:
    now = [0.0]
    budget = RefusalBudget(burst=3, per_minute=6, clock=lambda: now[0])  # one token every 10 s
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 9.0
    assert budget.take() is None  # not a whole token yet
    now[0] = 10.5
    assert budget.take() == 3  # three refusals were not written before this one
    assert budget.take() is None
    now[0] = 1000.0  # a long quiet spell refills to the burst, not beyond
    assert [budget.take() for _ in range(4)] == [1, 0, 0, None]
