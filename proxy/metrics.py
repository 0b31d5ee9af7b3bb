"""Prometheus metrics for the gateway, served on the admin listener at ``/metrics``.

Everything is observed from two places registered once in the composition root: an
outermost tools/call interceptor (end-to-end latency, in-flight calls) and a wrapper around
the enforcer's audit function (every decision, its evaluation latency, audit write latency
and failures, result-scan findings). State that already lives elsewhere (upstream links,
proposals) is read when Prometheus scrapes, never copied on the hot path.

Label sets are bounded by construction: ``model`` is a model id from the key ring or
``other``; ``upstream`` a configured upstream name, ``gateway`` (gateway-served tools such
as ``propose_policy``) or ``other``; ``reason_code`` one of the decision schema's codes or
``other``. Each registry is per gateway (no global state), so several gateways in one
process, as in the tests, never share counters.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from policy.decision import REASON_CODES
from proxy.intercept import CallNext, ToolCall, ToolResult

if TYPE_CHECKING:
    from proxy.bootstrap import App

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

AuditFn = Callable[[Mapping[str, Any]], Awaitable[None]]

_EVAL_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_AUDIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_REASONS = frozenset(REASON_CODES)
GATEWAY_UPSTREAM = "gateway"
OTHER = "other"


class _Histogram:
    """A histogram observed on the hot path: one ``bisect`` and two additions, no lock.

    prometheus_client's takes two locks and scans its buckets per observation (~3 µs, three
    per call); these are only ever observed from the event-loop thread, and a scrape reads
    them whole (:class:`_HotCollector`), so a plain list suffices.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = (*bounds, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), total))
        return out


class _InFlight:
    """Calls in flight per upstream (a gauge), counted on the event-loop thread."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class GatewayMetrics:
    """The gateway's metrics in their own registry; ``render()`` is the exposition text."""

    def __init__(self, *, models: Iterable[str], upstreams: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._models = frozenset(models)
        self._upstreams = frozenset(upstreams)
        r = self.registry
        # Observed on every call: plain counters read at scrape time (_HotCollector).
        self.decision_counts: dict[tuple[str, str, str, str], int] = {}
        self.evaluation = _Histogram(_EVAL_BUCKETS)
        self.audit_latency = _Histogram(_AUDIT_BUCKETS)
        self._per_upstream: dict[str, tuple[_InFlight, _Histogram]] = {
            upstream: (_InFlight(), _Histogram(_CALL_BUCKETS))
            for upstream in (*self._upstreams, GATEWAY_UPSTREAM, OTHER)
        }
        # upstream_label's answer per server name, looked up once per call (interceptor)
        self._by_server = {upstream: self._per_upstream[upstream] for upstream in self._upstreams}
        self._by_server[""] = self._per_upstream[GATEWAY_UPSTREAM]
        self._other = self._per_upstream[OTHER]
        r.register(_HotCollector(self))
        self.audit_failures = Counter("securegateway_audit_write_failures", "audit writes that failed (fail closed)",
                                      registry=r)
        self.scan_findings = Counter(
            "securegateway_result_scan_findings", "suspicious findings in tool results, by code and action",
            ["code", "action"], registry=r,
        )

    # ---- bounded labels ----------------------------------------------------------------------

    def model_label(self, model: object) -> str:
        return model if isinstance(model, str) and model in self._models else OTHER

    def upstream_label(self, server: object) -> str:
        if server == "":
            return GATEWAY_UPSTREAM
        return server if isinstance(server, str) and server in self._upstreams else OTHER

    # ---- observers ---------------------------------------------------------------------------

    async def interceptor(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        """Outermost in the tools/call chain: end-to-end latency and in-flight calls."""
        server = call.server
        gauge, latency = (self._by_server.get(server) if isinstance(server, str) else None) or self._other
        started = time.perf_counter()
        gauge.value += 1
        try:
            return await call_next(call)
        finally:
            gauge.value -= 1
            latency.observe(time.perf_counter() - started)

    def observe_audit(self, audit: AuditFn) -> AuditFn:
        """Wrap the enforcer's audit function: what is written is what is counted."""

        async def record(item: Mapping[str, Any]) -> None:
            started = time.perf_counter()
            try:
                await audit(item)
            except BaseException:
                self.audit_failures.inc()
                if item.get("type") == "decision":  # the enforcer now denies it: gateway_error
                    self._decision(item, allowed=False, reason_code="gateway_error")
                raise
            self.audit_latency.observe(time.perf_counter() - started)
            kind = item.get("type")
            if kind == "decision":
                decision = item.get("decision") or {}
                self._decision(item, allowed=bool(decision.get("allowed")), reason_code=decision.get("reason_code"))
                latency = item.get("latency_ms")
                if isinstance(latency, int | float):
                    self.evaluation.observe(latency / 1000)
            elif kind == "result.flagged":
                action = str(item.get("action") or OTHER)
                for finding in item.get("findings") or ():
                    code = finding.get("code") if isinstance(finding, Mapping) else None
                    self.scan_findings.labels(str(code or OTHER)[:64], action).inc()

        return record

    def _decision(self, item: Mapping[str, Any], *, allowed: bool, reason_code: object) -> None:
        reason = reason_code if isinstance(reason_code, str) and reason_code in _REASONS else OTHER
        key = ("allow" if allowed else "deny", reason, self.model_label(item.get("model")),
               self.upstream_label(item.get("server")))
        self.decision_counts[key] = self.decision_counts.get(key, 0) + 1

    def watch(self, app: App) -> None:
        """Read upstream health and proposals from ``app`` at scrape time."""
        self.registry.register(_LiveCollector(app, self))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HotCollector(Collector):
    """The per-call metrics, as prometheus_client's own Counter, Gauge and Histogram would expose them."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        decisions = CounterMetricFamily(
            "securegateway_decisions", "tools/call decisions, by outcome, reason code, model and upstream",
            labels=["outcome", "reason_code", "model", "upstream"],
        )
        for key, count in list(m.decision_counts.items()):
            decisions.add_metric(list(key), count)
        evaluation = HistogramMetricFamily("securegateway_evaluation_seconds",
                                           "time to decide one tools/call (policy evaluation)")
        evaluation.add_metric([], m.evaluation.buckets(), m.evaluation.sum)
        calls = HistogramMetricFamily("securegateway_call_seconds",
                                      "end-to-end tools/call latency through the gateway, by upstream",
                                      labels=["upstream"])
        in_flight = GaugeMetricFamily("securegateway_calls_in_flight", "tools/call requests being handled now",
                                      labels=["upstream"])
        for upstream, (gauge, latency) in m._per_upstream.items():
            calls.add_metric([upstream], latency.buckets(), latency.sum)
            in_flight.add_metric([upstream], gauge.value)
        audit = HistogramMetricFamily("securegateway_audit_write_seconds",
                                      "time until an enforcement audit event is durably written")
        audit.add_metric([], m.audit_latency.buckets(), m.audit_latency.sum)
        yield from (decisions, evaluation, calls, in_flight, audit)


class _LiveCollector(Collector):
    """Scrape-time view of state owned elsewhere. Upstream restarts are counted from each
    link's connection generation, so a restart in a session that closed before the next
    scrape is not seen."""

    def __init__(self, app: App, metrics: GatewayMetrics) -> None:
        self._app = app
        self._metrics = metrics
        self._generations: dict[tuple[str, str], int] = {}
        self._restarts: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("securegateway_upstream_up", "1 when some session has the upstream connected",
                               labels=["upstream"])
        restarts = CounterMetricFamily("securegateway_upstream_restarts", "upstream reconnections after a failure",
                                       labels=["upstream"])
        sessions = GaugeMetricFamily("securegateway_sessions", "connected downstream sessions")
        names = [u.name for u in self._app.runtime.config.upstreams]
        ready = dict.fromkeys(names, 0)
        live = list(self._app.gateway.sessions)
        seen: set[tuple[str, str]] = set()
        for session in live:
            for name, link in session.links.items():
                if link.ready:
                    ready[name] = 1
                key = (session.id, name)
                seen.add(key)
                previous = self._generations.get(key, 1)
                if link.generation > previous:
                    self._restarts[name] = self._restarts.get(name, 0) + link.generation - previous
                self._generations[key] = max(previous, link.generation)
        for key in set(self._generations) - seen:  # closed sessions
            del self._generations[key]
        for name in names:
            up.add_metric([name], ready[name])
            restarts.add_metric([name], self._restarts.get(name, 0))
        sessions.add_metric([], len(live))
        proposals = GaugeMetricFamily("securegateway_proposals", "policy proposals, by status", labels=["status"])
        try:
            stored = self._app.runtime.service.list()
        except Exception:  # a scrape must not fail because the store is busy; report nothing then
            stored = ()
        from negotiation import ProposalStatus

        counts = {status.value: 0 for status in ProposalStatus}
        for proposal in stored:
            counts[proposal.status.value] = counts.get(proposal.status.value, 0) + 1
        for status, count in counts.items():
            proposals.add_metric([status], count)
        yield from (up, restarts, sessions, proposals)
