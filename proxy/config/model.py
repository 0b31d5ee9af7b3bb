"""The frozen configuration: one dataclass per gateway.toml table, and what they imply."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: the detectors stack is not needed to read gateway.toml
    from proxy.screen.classify import ClassifierConfig

UPSTREAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
PROTOCOLS = ("auto", "2025-11-25", "2025-06-18", "2025-03-26", "2026-07-28")


@dataclass(frozen=True)
class ListenSpec:
    """Where the gateway (or its admin API) accepts connections."""

    kind: str  # "stdio" | "http"
    host: str = ""
    port: int = 0
    path: str = "/mcp"

    @property
    def url(self) -> str:
        if self.kind == "stdio":
            return "stdio"
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{host}:{self.port}{self.path}"

    @property
    def loopback(self) -> bool:
        """Whether only this machine can connect (stdio, ``localhost``, 127.0.0.0/8, ``::1``)."""
        if self.kind == "stdio" or self.host in LOOPBACK_HOSTS:
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False  # a host name: whatever it resolves to, it is not promised to be local


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    env_passthrough: tuple[str, ...] = ()
    cwd: Path | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    connect_timeout: float = 30.0
    protocol: str = "auto"
    sse: bool = False  # the legacy HTTP+SSE transport (2024-11-05) instead of Streamable HTTP
    prefix: bool = True  # expose names as <upstream><sep><name>; False: the server's own names

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"


@dataclass(frozen=True)
class PolicyConfig:
    file: Path | None = None
    model_keys: Path | None = None
    state_dir: Path | None = None
    algorithm: str = "ed25519"
    signing_key: Path | None = None
    public_key: Path | None = None
    hmac_secret_env: str = "SECUREGATEWAY_HMAC_KEY"
    require_signature: bool = False
    watch_interval: float = 1.0
    high_water_file: Path | None = None
    seed: Path | None = None  # copied to ``file`` when that does not exist yet (the demo's first run)


AUDIT_SIGNING = ("auto", "policy", "hmac", "off")
AUDIT_DURABILITY = ("before-response", "before-forward")


@dataclass(frozen=True)
class AuditConfig:
    file: Path | None = None
    max_bytes: int = 50 * 2**20
    fsync: bool = True
    # Who waits for the fsync of a decision event (docs/audit.md, "Durability modes"): the reply
    # (default) or the forward. Either way the event is written before the call is forwarded.
    durability: str = "before-response"
    # Signed checkpoints (docs/audit.md): "auto" signs with the policy key when one is configured.
    signing: str = "auto"
    hmac_key_env: str = "SECUREGATEWAY_AUDIT_KEY"
    checkpoint_every: int = 1000
    checkpoint_file: Path | None = None
    checkpoint_log: bool = False


@dataclass(frozen=True)
class AdminConfig:
    listen: ListenSpec | None = None
    key_env: str = "SECUREGATEWAY_ADMIN_KEY"
    allow_remote: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class NegotiationConfig:
    enabled: bool = True
    store: Path | None = None
    auto_approve: bool = True
    read_only_tools: tuple[str, ...] = ()
    sensitive_tools: tuple[str, ...] = ()
    envelope_same_model_only: bool = True
    max_expiry_hours: float | None = 24.0
    max_session_risk: float = 0.5
    max_snippet_bytes: int = 65536
    pending_ttl_hours: float = 72.0
    max_pending_per_model: int = 20
    max_refused_per_window: int = 20
    refused_window_minutes: float = 60.0
    max_snippet_rules: int = 100


@dataclass(frozen=True)
class DetectorsConfig:
    """``[detectors]``: tool-definition scanning, pinning and session taint (docs/detection.md)."""

    tool_scan: str = "quarantine"  # quarantine | flag | off
    tool_pinning: str = "tofu"  # tofu (pin on first sight) | approve (operator approves) | off
    taint: bool = True
    taint_window_s: float = 600.0
    sink_tools: tuple[str, ...] = ()  # dotted globs always treated as sinks
    store: Path | None = None  # default: <state_dir>/tools.db
    classifier: ClassifierConfig | None = None  # the optional model-based detector (securegateway[ml])


TRACES = ("off", "console", "otlp")


@dataclass(frozen=True)
class TelemetryConfig:
    """``[telemetry]``: optional OpenTelemetry traces (docs/operations.md, extra ``securegateway[otel]``)."""

    traces: str = "off"  # off | console (stderr) | otlp (OTLP/HTTP to ``endpoint``)
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    service_name: str = "securegateway"


@dataclass(frozen=True)
class ApprovalsConfig:
    """``[approvals]``: per-call approvals (``ask_tools``; docs/policy-language.md)."""

    operator_mode: str = "wait"  # wait (hold the call) | pending (2026 clients: a pending result + handle)
    store: Path | None = None  # default: <state_dir>/approvals.db
    max_pending: int = 1000


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    listen: ListenSpec
    name: str = "securegateway"
    separator: str = "."
    page_size: int = 500
    max_message_bytes: int = 64 * 2**20
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    tools_list: str = "hide"
    trace_visibility: str = "full"
    result_scan: str = "flag"
    anonymous_model: str | None = None  # clients without a key act as this model (loopback only)
    decision_meta: str = "full"  # "compact": allowed calls carry a short decision in _meta
    fast_lane: bool = True  # stdio: tools/call and tools/list answered by the lean lane (False: the SDK path)
    event_loop: str = "auto"  # uvloop when installed; "asyncio" | "uvloop" force one (env SECUREGATEWAY_EVENT_LOOP)
    upstreams: tuple[UpstreamConfig, ...] = ()
    policy: PolicyConfig = PolicyConfig()
    audit: AuditConfig = AuditConfig()
    admin: AdminConfig = AdminConfig()
    negotiation: NegotiationConfig = NegotiationConfig()
    detectors: DetectorsConfig = DetectorsConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def exposure_warnings(config: GatewayConfig) -> list[str]:
    """One line per listener that other machines can reach: logged as a warning at start-up."""
    warnings: list[str] = []
    if not config.listen.loopback:
        warnings.append(
            f"gateway.listen `{config.listen.url}` is not a loopback address: any host that can reach it can "
            "call tools with a model key; keep it behind TLS and a firewall"
        )
    admin = config.admin.listen
    if admin is not None and not admin.loopback:
        warnings.append(
            f"admin.listen `{admin.url}` is not a loopback address (allow_remote = true): anyone with the "
            "admin key and network access can approve policy"
        )
    return warnings
