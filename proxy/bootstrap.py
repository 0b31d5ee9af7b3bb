"""Start-up: turn a GatewayConfig into a running application.

Everything is loaded and validated once, here, before any client connects: the
model keys, the signed policy repository, the audit log, the proposal store. A
problem stops start-up with a message naming the file or key. ``App.run`` then
owns every long-lived task in one task group: the client front, the admin API,
the policy-file watcher and the proposal-expiry loop.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from negotiation import (
    GuardrailConfig,
    IdentityRiskStore,
    LivePolicy,
    MemoryIdentityRiskStore,
    NegotiationService,
    PolicyRepository,
    SqliteIdentityRiskStore,
    SqliteProposalStore,
    watch_policy_file,
)
from negotiation.approvals import HandleSealer, SqliteApprovalStore
from negotiation.cli_policy import PolicyStorageConfig, open_repository
from negotiation.errors import NegotiationError
from negotiation.signing import generate_ed25519_keypair
from negotiation.tool import PROPOSE_POLICY_TOOL, handle_propose
from policy import KeyRing, ModelIdentity, PolicyError, SessionRisk, could_allow, load_model_keys
from policy.audit.event import AuditError
from policy.schema import warm_up as schema_warm_up
from proxy.approval import ApprovalDesk, ApprovalGate
from proxy.audit.hold import DurableReplies
from proxy.audit.writer import AuditWriter, open_audit_log
from proxy.config import GatewayConfig, exposure_warnings
from proxy.enforce import Enforcer, PolicyView
from proxy.errors import ConfigError, IdentityError
from proxy.gateway import Gateway
from proxy.metrics import GatewayMetrics
from proxy.screen.taint import Taint
from proxy.screen.taint_store import SqliteTaintStore
from proxy.session import DownstreamSession
from proxy.suggestions import SuggestionVetting
from proxy.tools.guard import ToolGuard
from proxy.tools.quarantine import Quarantine
from proxy.tools.store import SqliteToolStore, ToolRecord
from proxy.upstream.prespawn import Prespawned

if TYPE_CHECKING:
    from proxy.screen.classify import ClassifierRunner

log = structlog.get_logger("securegateway.bootstrap")


@dataclass
class Runtime:
    """The loaded, long-lived state shared by the gateway, the admin API and the CLI."""

    config: GatewayConfig
    keys: KeyRing
    repo: PolicyRepository
    live: LivePolicy
    audit: AuditWriter
    service: NegotiationService
    known_tools: set[str] = field(default_factory=set)
    risk: IdentityRiskStore = field(default_factory=MemoryIdentityRiskStore)
    tool_definitions: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # dotted name -> last seen
    guard: ToolGuard | None = None
    classifier: ClassifierRunner | None = None  # loaded by build(), not for CLI commands

    def view(self) -> PolicyView:
        active = self.live.current
        return PolicyView(policy=active.policy, version=active.version, keys=self.keys)


def storage_config(config: GatewayConfig) -> PolicyStorageConfig:
    p = config.policy
    if p.file is None:
        raise ConfigError(f"{config.path.name}: policy.file: required (the policies.yaml to enforce)")
    seed_policy(config)
    assert p.state_dir is not None
    return PolicyStorageConfig(
        policy_path=p.file,
        state_dir=p.state_dir,
        algorithm=p.algorithm,
        private_key=p.signing_key,
        public_key=p.public_key,
        hmac_secret_env=p.hmac_secret_env,
        require_signature=p.require_signature,
        high_water_file=p.high_water_file,
    )


def seed_policy(config: GatewayConfig) -> None:
    """First run: copy ``[policy] seed`` to ``[policy] file`` when the live file does not exist,
    so the shipped policy stays untouched while merged proposals rewrite the live copy."""
    p = config.policy
    if p.seed is None or p.file is None or p.file.exists():
        return
    try:
        text = p.seed.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{config.path.name}: policy.seed: {p.seed}: file not found") from None
    p.file.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.file.with_name(p.file.name + ".seed.tmp")
    tmp.write_bytes(text)
    os.replace(tmp, p.file)
    log.warning("seeded the live policy", policy=str(p.file), seed=str(p.seed))


def open_runtime(config: GatewayConfig) -> Runtime:
    """Load keys, policy, audit log and proposal store; raise ConfigError naming what is wrong."""
    from proxy.operator import operator_test_files

    p = config.policy
    if p.model_keys is None:
        raise ConfigError(f"{config.path.name}: policy.model_keys: required (the model_keys.yaml of known models)")
    try:
        keys = load_model_keys(p.model_keys)
        _ensure_signing_key(config)
        repo = open_repository(storage_config(config))
        active = repo.load()
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: file not found") from None
    except (PolicyError, NegotiationError) as exc:
        raise ConfigError(str(exc)) from None
    live = LivePolicy(active)
    assert p.state_dir is not None
    try:
        audit = AuditWriter(open_audit_log(config, p.state_dir), durability=config.audit.durability)
    except AuditError as exc:
        hint = " (a running gateway holds it: use its admin API instead)" if exc.code == "locked" else ""
        raise ConfigError(f"{exc}{hint}") from None
    n = config.negotiation
    store = SqliteProposalStore(n.store or p.state_dir / "proposals.db")
    runtime_tools: set[str] = set()
    service = NegotiationService(
        store,
        repo,
        live,
        lambda: keys,
        GuardrailConfig(
            auto_approve=n.auto_approve,
            read_only_tools=n.read_only_tools,
            envelope_same_model_only=n.envelope_same_model_only,
            max_expiry_hours=n.max_expiry_hours,
            sensitive_tools=n.sensitive_tools,
            max_session_risk=n.max_session_risk,
            max_snippet_bytes=n.max_snippet_bytes,
            pending_ttl_hours=n.pending_ttl_hours,
            max_pending_per_model=n.max_pending_per_model,
            max_refused_per_window=n.max_refused_per_window,
            refused_window_minutes=n.refused_window_minutes,
            max_snippet_rules=n.max_snippet_rules,
            policy_test_files=operator_test_files(config),
        ),
        audit=audit.record_sync,
        known_tools=lambda: sorted(runtime_tools),
    )
    recovered = service.recover()
    if recovered:
        log.warning("recovered proposals approved before a restart", proposals=[pr.id for pr in recovered])
    guard = open_guard(config, audit=audit.record_sync)
    try:
        risk = SqliteIdentityRiskStore(p.state_dir / "identity_risk.db")
    except sqlite3.Error as exc:
        audit.close()
        raise ConfigError(f"{p.state_dir / 'identity_risk.db'}: cannot open the identity risk store: {exc}") from None
    return Runtime(config, keys, repo, live, audit, service, runtime_tools, risk=risk, guard=guard)


def open_guard(config: GatewayConfig, *, audit: Any = None) -> ToolGuard:
    """The tool guard on ``[detectors] store`` (default ``<state_dir>/tools.db``)."""
    assert config.policy.state_dir is not None
    path = config.detectors.store or config.policy.state_dir / "tools.db"
    return ToolGuard(SqliteToolStore(path), config.detectors, audit=audit)


def _ensure_signing_key(config: GatewayConfig) -> None:
    """First run: make the Ed25519 pair the config names when neither file exists yet."""
    p = config.policy
    if p.algorithm != "ed25519" or p.signing_key is None or p.public_key is None:
        return
    if p.signing_key.exists() or p.public_key.exists():
        return
    p.signing_key.parent.mkdir(parents=True, exist_ok=True)
    p.public_key.parent.mkdir(parents=True, exist_ok=True)
    key_id = generate_ed25519_keypair(p.signing_key, p.public_key)
    log.warning("generated a policy signing key pair", private=str(p.signing_key), key_id=key_id)


class ProposePolicy:
    """The built-in ``propose_policy`` tool, served by the gateway itself."""

    definition: Mapping[str, Any] = PROPOSE_POLICY_TOOL

    def __init__(self, service: NegotiationService) -> None:
        self._service = service

    async def __call__(self, session: DownstreamSession, arguments: Mapping[str, Any]) -> dict[str, Any]:
        model_id = getattr(session.identity, "model_id", None)
        if not isinstance(model_id, str):
            return _tool_error("propose_policy needs an authenticated model identity")
        risk = session.risk.score(time.time()) if isinstance(session.risk, SessionRisk) else 0.0
        try:
            return await anyio.to_thread.run_sync(
                partial(handle_propose, self._service, model_id, dict(arguments), session_risk=risk)
            )
        except Exception as exc:  # boundary: a failed proposal is reported, never half-applied
            log.exception("propose_policy failed", model=model_id)
            return _tool_error(f"gateway error while handling the proposal: {str(exc)[:200]}")


def _tool_error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


class App:
    """A configured gateway plus its admin API and background jobs."""

    def __init__(
        self, runtime: Runtime, *, stdio_identity: ModelIdentity | None, tracing: Any = None,
        prespawned: Prespawned | None = None,
    ) -> None:
        self.runtime = runtime
        config = runtime.config
        assert config.policy.state_dir is not None
        self.approvals = ApprovalDesk(
            HandleSealer.from_state_dir(config.policy.state_dir), runtime.audit.record,
            store=SqliteApprovalStore(config.approvals.store or config.policy.state_dir / "approvals.db",
                                      max_pending=config.approvals.max_pending),
        )
        self.metrics = GatewayMetrics(models=runtime.keys.identities, upstreams=[u.name for u in config.upstreams])
        self.tracing = tracing  # a proxy.telemetry.Tracing when [telemetry] traces is on
        record = runtime.audit.record if self.tracing is None else self.tracing.observe_audit(runtime.audit.record)
        enforcer = Enforcer(
            runtime.view,
            self.metrics.observe_audit(record),
            build_event=runtime.audit.decision_event,
            trace_visibility=config.trace_visibility,
            result_scan=config.result_scan,
            decision_meta=config.decision_meta,
            approvals=ApprovalGate(self.approvals, operator_mode=config.approvals.operator_mode),
            classifier=runtime.classifier,
        )
        local = {"propose_policy": ProposePolicy(runtime.service)} if config.negotiation.enabled else {}
        # Outermost first: a suspended tool is refused before anything else looks at the
        # call; taint sees the enforcer's result scan on the way back.
        interceptors: list[Any] = []
        if runtime.guard is not None:
            interceptors.append(Quarantine(
                runtime.guard, runtime.view, record,
                build_event=runtime.audit.decision_event, trace_visibility=config.trace_visibility,
            ))  # fmt: skip
            runtime.guard.subscribe(self._tools_changed)
        if config.detectors.taint:
            interceptors.append(Taint(
                SqliteTaintStore(config.policy.state_dir / "taint.db"),  # survives restarts
                runtime.view, record, build_event=runtime.audit.decision_event,
                window_s=config.detectors.taint_window_s, sink_tools=config.detectors.sink_tools,
                trace_visibility=config.trace_visibility,
            ))  # fmt: skip
        if config.negotiation.enabled:
            interceptors.append(SuggestionVetting(runtime.service))
        interceptors.append(enforcer)
        # Second only to metrics: every reply below waits for its call's audit events to be durable.
        held = DurableReplies(runtime.audit, on_failure=self.metrics.audit_failures.inc)
        outermost: list[Any] = [self.metrics.interceptor, held]
        if self.tracing is not None:
            outermost.insert(0, self.tracing.interceptor)
        self.gateway = Gateway(
            config,
            interceptors=[*outermost, *interceptors],
            local_tools=local,
            stdio_identity=stdio_identity,
            prespawned=prespawned,
            authenticate=self._authenticate,
            visible=self._visible,
            on_session=self._on_session,
            access=enforcer,
            middleware=[self.tracing.middleware] if self.tracing is not None else (),
        )
        self.metrics.watch(self)

    def _authenticate(self, key: str | None) -> ModelIdentity | None:
        if not key:  # no key: the configured local model, if any (loopback listeners only)
            anonymous = self.runtime.config.anonymous_model
            return self.runtime.keys.get(anonymous) if anonymous else None
        return self.runtime.keys.authenticate(key)

    def _on_session(self, session: DownstreamSession) -> None:
        # Risk belongs to the model identity, not the connection: a reconnect changes nothing.
        model_id = getattr(session.identity, "model_id", None)
        session.risk = self.runtime.risk.for_identity(model_id) if isinstance(model_id, str) else SessionRisk()
        session.catalog.guard = self.runtime.guard

    def _tools_changed(self, record: ToolRecord) -> None:
        """A tool was suspended or released: every client's tool list may differ now."""
        try:
            tg = self.gateway.task_group
        except RuntimeError:
            return  # not serving yet: clients list fresh anyway
        tg.start_soon(self._announce_tools, record.kind)

    async def _announce_tools(self, kind: str) -> None:
        note = {
            "prompt": "notifications/prompts/list_changed", "resource_template": "notifications/resources/list_changed",
        }.get(kind, "notifications/tools/list_changed")  # fmt: skip
        for session in list(self.gateway.sessions):
            try:
                await session.channel.notify(note, None)
            except Exception:  # a client that went away must not stop the others hearing
                log.debug("list_changed not delivered", session=session.id)

    def _visible(self, session: DownstreamSession, tool: Mapping[str, Any]) -> bool:
        if tool.get("name") == "propose_policy" and self.runtime.config.negotiation.enabled:
            # the gateway's own tool: listed to the models that may propose
            return self.runtime.config.tools_list == "show" or bool(getattr(session.identity, "can_propose", False))
        target = session.catalog.split(tool.get("name"))
        if target is None:
            return False
        link, name = target
        dotted = f"{link.name}.{name}"
        self.runtime.known_tools.add(dotted)
        self.runtime.tool_definitions[dotted] = tool
        if self.runtime.config.tools_list == "show":
            return True
        model_id = getattr(session.identity, "model_id", None)
        if not isinstance(model_id, str):
            return False
        try:
            return could_allow(self.runtime.live.current.policy, self.runtime.keys, model_id, dotted)
        except Exception:  # filtering fails closed: hide what cannot be judged
            log.exception("tools/list filter failed", tool=dotted)
            return False

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        rt, config = self.runtime, self.runtime.config
        for exposure in exposure_warnings(config):
            log.warning("listener reachable from other machines", detail=exposure)
        rt.audit.record_sync("gateway.started", {
            "listen": config.listen.url, "upstreams": [u.name for u in config.upstreams],
            "policy_version": rt.live.current.version, "policy_digest": rt.live.current.policy.digest,
        })
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(rt.audit.run)
                await self.approvals.recover()  # calls that waited in the previous process are gone
                admin_key = os.environ.get(config.admin.key_env, "")
                if config.admin.listen is not None and not admin_key:
                    log.warning("admin API disabled: set the admin key", variable=config.admin.key_env,
                                listen=config.admin.listen.url)
                elif config.admin.listen is not None:
                    from proxy.admin.app import admin_allowed_hosts, build_admin_app
                    from proxy.operator import for_app

                    a = config.admin
                    assert a.listen is not None
                    admin_app = build_admin_app(
                        rt.service, admin_key, live=rt.live,
                        allowed_hosts=admin_allowed_hosts(a.listen.host, a.listen.port, a.allowed_hosts),
                        allowed_origins=a.allowed_origins, operator=for_app(self), guard=rt.guard,
                        approvals=self.approvals, audit=rt.audit.record,
                    )
                    from proxy.front.http import serve_http  # HTTP: the SDK's stack

                    await tg.start(serve_http, admin_app, config.admin.listen)
                tg.start_soon(partial(
                    watch_policy_file, rt.repo, rt.live, on_event=rt.audit.record_sync,
                    interval=config.policy.watch_interval,
                ))
                tg.start_soon(self._expire_pending)
                tg.start_soon(self._sweep_approvals)
                if config.tools_list == "hide":
                    tg.start_soon(self._announce_policy_changes)
                await tg.start(self._serve, tg.cancel_scope)
                tg.start_soon(_warm_up)
                task_status.started()
        finally:
            rt.audit.record_sync("gateway.stopped", {"listen": config.listen.url})
            rt.audit.close()
            rt.risk.close()
            if self.tracing is not None:
                self.tracing.shutdown()

    async def _serve(
        self, scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self.gateway.run(task_status=task_status)
        scope.cancel()  # stdio: the client closed stdin, so the gateway's job is done

    async def _announce_policy_changes(self) -> None:
        """Which tools a model may see follows the policy: tell clients when it changes."""
        seen = self.runtime.live.current.version
        while True:
            await anyio.sleep(self.runtime.config.policy.watch_interval)
            version = self.runtime.live.current.version
            if version == seen:
                continue
            seen = version
            for session in list(self.gateway.sessions):
                try:
                    await session.channel.notify("notifications/tools/list_changed", None)
                except Exception:  # a client that went away must not stop the others hearing
                    log.debug("list_changed not delivered", session=session.id)

    async def _sweep_approvals(self) -> None:
        """Expire (and audit) approvals nobody answered or used in time, within a second of their expiry."""
        while True:
            await anyio.sleep(1.0)
            try:
                await self.approvals.sweep()
            except Exception:
                log.exception("sweeping approvals failed")

    async def _expire_pending(self) -> None:
        while True:
            await anyio.sleep(60)
            try:
                await anyio.to_thread.run_sync(self.runtime.service.expire_pending)
            except Exception:
                log.exception("expiring pending proposals failed")


WARM_UP_DELAY = 1.0
"""Seconds after the front opens before the imports deferred past start-up are loaded."""


async def _warm_up() -> None:
    """Load what start-up deferred (the JSON Schema validator), off the event loop, once the
    first client has had its start; otherwise the first tools/call would wait for it."""
    await anyio.sleep(WARM_UP_DELAY)
    try:
        await anyio.to_thread.run_sync(schema_warm_up)
    except Exception:  # an import that fails will fail (and be reported) at its first use instead
        log.debug("warm-up import failed", exc_info=True)


def _open_tracing(config: GatewayConfig) -> Any:
    """The tracer, or None: with ``traces = "off"`` OpenTelemetry is not even imported."""
    if config.telemetry.traces == "off":
        return None
    from proxy.telemetry import open_tracing

    return open_tracing(config.telemetry)


def build(config: GatewayConfig, *, model_key: str | None, prespawned: Prespawned | None = None) -> App:
    """Load everything and check identities up front; raise a GatewayError naming any problem.

    ``prespawned``: stdio upstreams the CLI already started (proxy/upstream/prespawn.py),
    adopted by the stdio client's session."""
    tracing = _open_tracing(config)  # first: a missing extra must not leave the audit log locked
    runtime = open_runtime(config)
    identity = None
    anonymous = config.anonymous_model
    if anonymous is not None:
        if runtime.keys.get(anonymous) is None:
            raise ConfigError(f"{config.path.name}: gateway.anonymous_model: `{anonymous}` is not in model_keys.yaml")
        log.warning("clients without a model key act as the anonymous model", model=anonymous,
                    listen=config.listen.url)
    if config.listen.kind == "stdio" and not model_key and anonymous is not None:
        identity = runtime.keys.get(anonymous)
    elif config.listen.kind == "stdio":
        if not model_key:
            raise IdentityError(
                "a stdio client needs a model key: pass --model-key or set SECUREGATEWAY_MODEL_KEY"
            )
        identity = runtime.keys.authenticate(model_key)
        if identity is None:
            raise IdentityError("the model key given for the stdio client is not in model_keys.yaml")
    runtime.classifier = open_classifier(config)
    return App(runtime, stdio_identity=identity, tracing=tracing, prespawned=prespawned)


def open_classifier(config: GatewayConfig) -> ClassifierRunner | None:
    """The ``[detectors] classifier``, loaded once; a ConfigError names what is wrong with it."""
    settings = config.detectors.classifier
    if settings is None:
        return None
    from policy.detect.onnx_model import ClassifierLoadError
    from proxy.screen.classify import load_classifier

    try:
        return load_classifier(settings)
    except ClassifierLoadError as exc:
        raise ConfigError(f"{config.path.name}: detectors.classifier: {exc}") from None
