"""Identity risk survives a restart: ``SqliteIdentityRiskStore`` in the state directory."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from negotiation import SqliteIdentityRiskStore
from policy import Finding, SessionRisk
from tests.conftest import connect, running
from tests.e2e.conftest import GPT_KEY, make_site

INJECTION = Finding("prompt_injection", "ignore_previous_instructions", "a", "x")


def test_a_reopened_store_has_the_same_decaying_risk(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity_risk.db"
    store = SqliteIdentityRiskStore(path, half_life_s=100)
    risk = store.for_identity("gpt-4o")
    risk.record_findings([INJECTION], now=1000.0)
    assert store.for_identity("gpt-4o") is risk  # a reconnect shares the object
    before = store.score("gpt-4o", 1000.0)
    store.close()

    again = SqliteIdentityRiskStore(path, half_life_s=100)  # the restart
    assert before > 0.1
    assert again.score("gpt-4o", 1000.0) == pytest.approx(before)
    assert again.score("gpt-4o", 1100.0) == pytest.approx(before / 2)  # decay kept running
    assert again.score("claude", 1000.0) == 0.0
    assert again.for_identity("gpt-4o").score(1000.0) == pytest.approx(before)
    again.close()


def test_only_a_rise_is_written(tmp_path: Path) -> None:
    path = tmp_path / "risk.db"
    store = SqliteIdentityRiskStore(path)
    store.for_identity("quiet").record_findings([], now=1.0)  # nothing happened
    store.for_identity("loud").record_findings([INJECTION], now=1.0)
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT model_id FROM identity_risk").fetchall()
    assert rows == [("loud",)]
    store.close()


def test_an_invalid_stored_row_is_full_risk_not_zero(tmp_path: Path) -> None:
    path = tmp_path / "risk.db"
    SqliteIdentityRiskStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO identity_risk VALUES ('edited', 0.7, NULL)")  # a level with no time
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO identity_risk VALUES ('huge', 5.0, 1.0)")  # refused by the schema
    store = SqliteIdentityRiskStore(path)
    assert store.score("edited", time.time()) == pytest.approx(1.0, abs=0.01)
    store.close()


def test_snapshot_restore_refuses_what_no_score_can_be() -> None:
    risk = SessionRisk()
    for level, at in ((1.5, 1.0), (-0.1, 1.0), (float("nan"), 1.0), (0.5, None), (0.5, float("inf"))):
        with pytest.raises(ValueError, match="not a risk snapshot"):
            risk.restore(level, at)
    risk.restore(0.0, None)
    assert risk.snapshot() == (0.0, None)


@pytest.mark.anyio
async def test_a_gateway_restart_keeps_a_models_risk(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s")
    async with running(site.app()), connect(site.url, GPT_KEY) as gpt:
        for _ in range(3):
            assert (await gpt.call_tool("calendar.crash", {})).is_error  # denied: raises gpt-4o's risk
    risk_db = site.root / "state" / "identity_risk.db"
    assert risk_db.exists()
    app = site.app()  # a new process would see the same files
    now = time.time()
    assert app.runtime.risk.score("gpt-4o", now) > 0.2
    assert app.runtime.risk.score("claude", now) == 0.0
    async with running(app), connect(site.url, GPT_KEY) as gpt:
        result = await gpt.call_tool("search.echo", {"text": "hi"})
    assert not result.is_error
    factors = {f["code"] for f in result.meta["io.securegateway/decision"]["risk_factors"]}
    assert "session" in factors  # the restored risk enters the next decision


def test_a_decision_is_written_only_when_it_raises_the_risk(tmp_path: Path) -> None:
    from dataclasses import replace

    from policy.decision import DENY_KINDS, unknown_tool_decision

    path = tmp_path / "risk.db"
    store = SqliteIdentityRiskStore(path)
    base = unknown_tool_decision(model="m", tool="t", policy_digest="d")
    allowed = replace(base, allowed=True, reason_code="allowed", deny_kind=DENY_KINDS["allowed"])
    store.for_identity("clean").record_decision(allowed, 1.0)  # the usual call: nothing to write
    store.for_identity("found").record_decision(replace(allowed, findings=(INJECTION,)), 1.0)
    store.for_identity("denied").record_decision(replace(base, reason_code="explicit_deny"), 1.0)
    with sqlite3.connect(path) as db:
        rows = sorted(db.execute("SELECT model_id FROM identity_risk").fetchall())
    assert rows == [("denied",), ("found",)]
    assert store.score("clean", 1.0) == 0.0 and store.score("found", 1.0) > 0.0
    store.close()
