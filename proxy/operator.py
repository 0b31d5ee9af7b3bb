"""What the operator's endpoints read: one frozen view shared by the admin API and the console.

The admin API's dry-run, impact and metrics routes and every console page get their data
through an :class:`OperatorView`, so the JSON API and the HTML pages cannot disagree about
what a proposal would do or how a call would be decided.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from negotiation import LivePolicy, PolicyRepository, Proposal
from negotiation.impact import DEFAULT_LIMIT, DEFAULT_WINDOW, Impact, proposal_impact
from negotiation.policy_tests import PolicyTestFiles
from policy import Decision, KeyRing, SessionRisk
from policy.testing import TestReport, TestSuite, run_policy_tests
from proxy.config import GatewayConfig
from proxy.dry_run import DryRunRequest, dry_run, parse_request

if TYPE_CHECKING:
    from proxy.bootstrap import App
    from proxy.metrics import GatewayMetrics

__all__ = ["OperatorView", "for_app", "operator_test_files", "operator_test_suites"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _no_schema(tool: str) -> Mapping[str, Any] | None:
    return None


def _no_tools() -> list[dict[str, Any]]:
    return []


def _no_risk(model_id: str) -> SessionRisk | None:
    return None


@dataclass(frozen=True)
class OperatorView:
    """The live state behind the operator's routes. Callables are read at request time."""

    live: LivePolicy
    keys: Callable[[], KeyRing]
    audit_path: Path
    upstreams: tuple[str, ...] = ()
    repo: PolicyRepository | None = None
    tool_schema: Callable[[str], Mapping[str, Any] | None] = _no_schema
    tools: Callable[[], list[dict[str, Any]]] = _no_tools
    metrics: GatewayMetrics | None = None
    impact_limit: int = DEFAULT_LIMIT
    impact_window: timedelta = DEFAULT_WINDOW
    clock: Callable[[], datetime] = field(default=_utcnow)
    # ``NegotiationService.vet_suggestion`` when negotiation is on: a denial's suggested rule
    # is completed and reviewed as the tools/call chain does (proxy/suggestions.py).
    vet: Callable[..., Any] | None = None
    # The risk the model's identity carries into any session (read, never updated here).
    risk: Callable[[str], SessionRisk | None] = _no_risk
    # The operator's policy test files (read as they are now on each run).
    policy_tests: PolicyTestFiles | None = None

    def request(self, body: Mapping[str, Any]) -> DryRunRequest:
        """Parse a dry-run body (``DryRunError`` on bad input), filling in the tool's schema."""
        request = parse_request(body, self.keys())
        if request.input_schema is None:
            schema = self.tool_schema(request.tool)
            if schema is not None:
                request = DryRunRequest(request.model, request.tool, request.arguments, schema)
        return request

    def evaluate(self, request: DryRunRequest) -> Decision:
        keys = self.keys()
        session = self.risk(request.model) if keys.get(request.model) is not None else None
        return dry_run(request, self.live.current.policy, keys, upstreams=self.upstreams, now=self.clock(),
                       session=session)

    def decide(self, request: DryRunRequest) -> dict[str, Any]:
        """The decision JSON a fresh session's tools/call would carry, suggestion vetting included."""
        data = self.evaluate(request).to_dict()
        counterfactual = data.get("counterfactual")
        if self.vet is None or data["allowed"] or not isinstance(counterfactual, dict):
            return data
        rule = counterfactual.get("suggested_rule")
        if not isinstance(rule, Mapping):
            return data
        review = self.vet(request.model, rule, session_risk=0.0)
        if review is not None:
            data["counterfactual"] = {**counterfactual, "suggested_rule": dict(review.rule), "review": review.to_dict()}
        return data

    def test_policy(self) -> TestReport:
        """The operator's policy tests on the live policy; ``PolicyError`` if a file does not load."""
        suites = self.policy_tests.suites() if self.policy_tests is not None else ()
        return run_policy_tests(suites, self.live.current.policy, self.keys(), now=self.clock())

    def impact(self, proposal: Proposal, *, limit: int | None = None, window: timedelta | None = None) -> Impact:
        """Replay the recent audit log with and without ``proposal`` (``MergeConflictError``)."""
        return proposal_impact(
            proposal, self.live.current.policy, self.keys(), self.audit_path, now=self.clock(),
            limit=limit or self.impact_limit, window=window or self.impact_window,
        )


def for_app(app: App) -> OperatorView:
    """The operator view of a running gateway: its live policy, key ring, audit log and the
    tool definitions its sessions have seen."""
    rt = app.runtime
    config = rt.config
    assert config.policy.state_dir is not None
    audit_path = config.audit.file or config.policy.state_dir / "audit.jsonl"

    def tool_schema(tool: str) -> Mapping[str, Any] | None:
        definition = _definition(app, tool)
        schema = definition.get("inputSchema") if definition else None
        return schema if isinstance(schema, Mapping) else None

    def tools() -> list[dict[str, Any]]:
        names = sorted(rt.known_tools)
        out = []
        for name in names:
            definition = dict(_definition(app, name) or {})
            out.append({"name": name, "upstream": name.split(".", 1)[0], "definition": definition})
        return out

    return OperatorView(
        live=rt.live,
        keys=lambda: rt.keys,
        audit_path=audit_path,
        upstreams=tuple(u.name for u in config.upstreams),
        repo=rt.repo,
        tool_schema=tool_schema,
        tools=tools,
        metrics=getattr(app, "metrics", None),
        vet=rt.service.vet_suggestion if config.negotiation.enabled else None,
        risk=rt.risk.for_identity,
        policy_tests=rt.service.config.policy_test_files,
    )


def _definition(app: App, dotted: str) -> Mapping[str, Any] | None:
    """The tool's definition as an upstream last listed it (a session's catalog, if one is
    open, else what the gateway saw in the last tools/list)."""
    from proxy.dry_run import split_tool

    upstreams = [u.name for u in app.runtime.config.upstreams]
    server, tool = split_tool(dotted, upstreams)
    for session in list(app.gateway.sessions):
        found = session.catalog.tool_definition(session.catalog.qualify(server, tool))
        if found is not None:
            return found
    return app.runtime.tool_definitions.get(dotted)


def operator_test_files(config: GatewayConfig) -> PolicyTestFiles:
    """The operator's policy tests (``*.tests.yaml`` beside the live policy, else beside its
    seed) for the ``breaks_policy_tests`` guardrail, found and read again at each check. A
    file that does not load at start-up stops it with its located errors, like a bad policy."""
    from policy.testing import find_test_files

    p = config.policy

    def find() -> list[Path]:
        files = find_test_files(p.file) if p.file is not None else []
        if not files and p.seed is not None:
            files = find_test_files(p.seed)
        return files

    tests = PolicyTestFiles(find)
    operator_test_suites(tests)
    return tests


def operator_test_suites(source: GatewayConfig | PolicyTestFiles) -> tuple[TestSuite, ...]:
    """The operator's policy tests as they are now; a ConfigError locating a file that does not load."""
    from policy import PolicyError
    from proxy.errors import ConfigError

    files = operator_test_files(source) if isinstance(source, GatewayConfig) else source
    try:
        return files.suites()
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
