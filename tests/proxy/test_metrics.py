"""/metrics on the admin listener: scraped over HTTP from a real gateway and parsed as the
Prometheus exposition format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import GatewayMetrics
from tests.conftest import connect, running
from tests.e2e.conftest import ADMIN_KEY, CLAUDE_KEY, GPT_KEY, make_site

pytestmark = pytest.mark.anyio

POLICY = """\
rules:
  - id: gpt-all
    model: gpt-4o
    allow_tools: ["calendar.*", "search.*"]
  - id: no-add
    model: "*"
    deny_tools: [calendar.add]
"""


def admin_url(root: Path) -> str:
    text = (root / "gateway.toml").read_text()
    return text.split('[admin]\nlisten = "', 1)[1].split('"', 1)[0]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_decisions_latency_scans_restarts_and_proposals(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("SECUREGATEWAY_ADMIN_KEY", ADMIN_KEY)
    site = make_site(tmp_path / "site", admin=True, policy=POLICY)
    api = admin_url(site.root)
    async with running(site.app()), httpx2.AsyncClient(base_url=api, timeout=10) as http, \
            connect(site.url, GPT_KEY) as gpt:
        assert not (await gpt.call_tool("search.echo", {"text": "a"})).is_error
        assert not (await gpt.call_tool("search.echo", {"text": "b"})).is_error
        assert (await gpt.call_tool("calendar.add", {"a": 1, "b": 2})).is_error
        with pytest.raises(Exception, match="closed the connection"):
            await gpt.call_tool("calendar.crash", {})  # a protocol fault, not a denial
        with anyio.fail_after(20):  # the link reconnects; a later call succeeds
            while True:
                try:
                    if not (await gpt.call_tool("calendar.list_events", {})).is_error:
                        break
                except Exception:
                    pass
                await anyio.sleep(0.2)
        # After the crash: a flagged result taints gpt-4o's sink tools (calendar.crash among them).
        poisoned = await gpt.call_tool("search.poison", {})
        assert "io.securegateway/result_scan" in (poisoned.meta or {})
        proposed = await gpt.call_tool("propose_policy", {
            "yaml": "rules:\n  - model: gpt-4o\n    allow_tools: [calendar.nothing]\n", "justification": "x"})
        stored_status = proposed.structured_content["status"]
        async with connect(site.url, CLAUDE_KEY) as claude:
            assert (await claude.call_tool("search.echo", {"text": "c"})).is_error
        unauthorized = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        by_header = await http.get("/metrics", headers={"X-Admin-Key": ADMIN_KEY})
    assert unauthorized.status_code == 401 and wrong.status_code == 401
    assert scraped.status_code == 200 and by_header.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    parsed = samples(scraped.text)

    decisions = "securegateway_decisions_total"
    assert value(parsed, decisions, outcome="allow", reason_code="allowed", model="gpt-4o", upstream="search") == 3
    assert value(parsed, decisions, outcome="deny", reason_code="explicit_deny", model="gpt-4o",
                 upstream="calendar") == 1
    assert value(parsed, decisions, outcome="deny", reason_code="out_of_scope", model="claude", upstream="search") == 1
    assert value(parsed, "securegateway_evaluation_seconds_count") >= 7  # 7 decided calls; a retry adds more
    assert value(parsed, "securegateway_call_seconds_count", upstream="search") == 4
    assert value(parsed, "securegateway_calls_in_flight", upstream="search") == 0
    assert value(parsed, "securegateway_audit_write_seconds_count") >= 8
    assert value(parsed, "securegateway_audit_write_failures_total") == 0
    assert sum(v for (name, labels), v in parsed.items() if name == "securegateway_result_scan_findings_total") >= 1
    stored = {"approved": "merged"}.get(stored_status, stored_status)
    assert value(parsed, "securegateway_proposals", status=stored) == 1
    assert sum(v for (name, _), v in parsed.items() if name == "securegateway_proposals") == 1
    assert value(parsed, "securegateway_upstream_up", upstream="calendar") == 1
    assert value(parsed, "securegateway_upstream_restarts_total", upstream="calendar") >= 1
    labels = {dict(labels).get("model") for (name, labels), _ in parsed.items() if name == decisions}
    assert labels <= {"gpt-4o", "claude", "other"}


async def test_failed_audit_writes_are_counted_and_the_decision_is_a_gateway_error() -> None:
    # A disk that refuses a write cannot be produced portably; this is the one fault faked here.
    metrics = GatewayMetrics(models=["gpt-4o"], upstreams=["fs"])

    async def broken(item: Any) -> None:
        raise OSError("disk full")

    record = metrics.observe_audit(broken)
    event = {"type": "decision", "model": "intruder", "server": "elsewhere",
             "decision": {"allowed": True, "reason_code": "allowed"}, "latency_ms": 0.2}
    with pytest.raises(OSError):
        await record(event)
    parsed = samples(metrics.render().decode())
    assert value(parsed, "securegateway_audit_write_failures_total") == 1
    assert value(parsed, "securegateway_decisions_total", outcome="deny", reason_code="gateway_error",
                 model="other", upstream="other") == 1


def test_the_per_call_histograms_expose_what_prometheus_clients_own_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from proxy.metrics import _AUDIT_BUCKETS

    metrics = GatewayMetrics(models=["gpt-4o"], upstreams=["search"])
    registry = CollectorRegistry()
    help_text = "time until an enforcement audit event is durably written"
    reference = Histogram("securegateway_audit_write_seconds", help_text, buckets=_AUDIT_BUCKETS, registry=registry)
    for observed in (0.00005, 0.0001, 0.0003, 0.002, 0.02, 0.5, 3.0, 0.0001):  # on, between and past the bounds
        metrics.audit_latency.observe(observed)
        reference.observe(observed)

    def audit_samples(text: bytes) -> dict[Any, float]:
        return {key: v for key, v in samples(text.decode()).items()
                if key[0].startswith("securegateway_audit_write_seconds") and not key[0].endswith("_created")}

    ours, theirs = audit_samples(metrics.render()), audit_samples(generate_latest(registry))
    assert ours == theirs and value(ours, "securegateway_audit_write_seconds_count") == 8
    assert value(ours, "securegateway_audit_write_seconds_bucket", le="0.0001") == 3


async def test_each_call_is_timed_under_the_upstream_label_it_is_counted_under() -> None:
    from types import SimpleNamespace

    metrics = GatewayMetrics(models=["m"], upstreams=["files", "gateway", "other"])

    async def answer(call: Any) -> dict[str, Any]:
        return {}

    servers = ["files", "", "unknown", "gateway", "other", "Files", "files.x"]
    for server in servers:
        await metrics.interceptor(SimpleNamespace(server=server), answer)  # type: ignore[arg-type]
    seen = {label: latency.counts[-1] + sum(latency.counts[:-1])
            for label, (_, latency) in metrics._per_upstream.items()}
    expected: dict[str, int] = {}
    for server in servers:
        expected[metrics.upstream_label(server)] = expected.get(metrics.upstream_label(server), 0) + 1
    assert {label: count for label, count in seen.items() if count} == expected
