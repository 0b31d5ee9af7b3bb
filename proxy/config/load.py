"""gateway.toml -> a frozen ``GatewayConfig``, validated once at start-up.

Every problem is reported with its key path (``upstreams[1].command``); unknown
keys are errors and nothing silently falls back. Relative paths are resolved
against the directory holding gateway.toml, so a config works from any cwd.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from proxy.config.model import (
    AUDIT_DURABILITY,
    AUDIT_SIGNING,
    LOOPBACK_HOSTS,
    PROTOCOLS,
    TRACES,
    UPSTREAM_NAME,
    AdminConfig,
    ApprovalsConfig,
    AuditConfig,
    DetectorsConfig,
    GatewayConfig,
    ListenSpec,
    NegotiationConfig,
    PolicyConfig,
    TelemetryConfig,
    UpstreamConfig,
)
from proxy.errors import ConfigError

if TYPE_CHECKING:
    from proxy.screen.classify import ClassifierConfig


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate gateway.toml; raise ConfigError listing every problem."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid toml: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    return parse_config(raw, p.resolve())


def parse_config(raw: Mapping[str, Any], path: Path) -> GatewayConfig:
    r = _Reader(path)
    r.only(raw, "", {"gateway", "upstreams", "policy", "audit", "admin", "negotiation", "detectors", "approvals",
                     "telemetry"})
    gw = r.table(raw, "gateway")
    r.only(gw, "gateway", {
        "listen", "name", "separator", "page_size", "max_message_bytes", "allowed_hosts",
        "allowed_origins", "tools_list", "trace_visibility", "result_scan", "anonymous_model", "decision_meta",
        "fast_lane", "event_loop",
    })
    listen = r.listen(gw.get("listen", "stdio"), "gateway.listen", allow_stdio=True)
    separator = r.string(gw, "gateway", "separator", ".")
    if separator not in (".", "_", "-", "__", "/", ":"):
        r.err("gateway.separator", f"must be one of `.`, `_`, `-`, `__`, `/`, `:`, got `{separator}`")

    upstreams: list[UpstreamConfig] = []
    raw_ups = raw.get("upstreams", [])
    if not isinstance(raw_ups, list):
        r.err("upstreams", "must be an array of tables ([[upstreams]])")
        raw_ups = []
    seen: set[str] = set()
    for i, up in enumerate(raw_ups):
        key = f"upstreams[{i}]"
        if not isinstance(up, dict):
            r.err(key, "must be a table")
            continue
        u = r.upstream(up, key, separator)
        if u is None:
            continue
        if u.name in seen:
            r.err(f"{key}.name", f"duplicate upstream name `{u.name}`")
        seen.add(u.name)
        upstreams.append(u)
    unprefixed = [i for i, u in enumerate(upstreams) if not u.prefix]
    if len(unprefixed) > 1:
        # two servers' own names could collide, and a call could not be routed
        r.err(f"upstreams[{unprefixed[1]}].prefix",
              "only one upstream can have `prefix = false` (two servers' own names could collide)")
    anonymous = r.string(gw, "gateway", "anonymous_model", None)
    if anonymous is not None and (not anonymous.strip()):
        r.err("gateway.anonymous_model", "must name a model from model_keys")
        anonymous = None
    if anonymous is not None and listen.kind == "http" and listen.host not in LOOPBACK_HOSTS:
        r.err("gateway.anonymous_model",
              f"only allowed on a loopback listener (127.0.0.1, localhost, ::1), not `{listen.host}`")

    cfg = GatewayConfig(
        path=path,
        listen=listen,
        name=r.string(gw, "gateway", "name", "securegateway"),
        separator=separator,
        page_size=r.integer(gw, "gateway", "page_size", 500, minimum=1),
        max_message_bytes=r.integer(gw, "gateway", "max_message_bytes", 64 * 2**20, minimum=1024),
        allowed_hosts=r.strs(gw, "gateway", "allowed_hosts"),
        allowed_origins=r.strs(gw, "gateway", "allowed_origins"),
        tools_list=r.choice(gw, "gateway", "tools_list", ("hide", "show"), "hide"),
        trace_visibility=r.choice(gw, "gateway", "trace_visibility", ("full", "summary", "none"), "full"),
        result_scan=r.choice(gw, "gateway", "result_scan", ("off", "flag", "redact", "block"), "flag"),
        anonymous_model=anonymous,
        decision_meta=r.choice(gw, "gateway", "decision_meta", ("full", "compact"), "full"),
        fast_lane=r.flag(gw, "gateway", "fast_lane", True),
        event_loop=r.choice(gw, "gateway", "event_loop", ("auto", "asyncio", "uvloop"), "auto"),
        upstreams=tuple(upstreams),
        policy=r.policy(r.table(raw, "policy")),
        audit=r.audit(r.table(raw, "audit")),
        admin=r.admin(r.table(raw, "admin")),
        negotiation=r.negotiation(r.table(raw, "negotiation")),
        detectors=r.detectors(r.table(raw, "detectors")),
        approvals=r.approvals(r.table(raw, "approvals")),
        telemetry=r.telemetry(r.table(raw, "telemetry")),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return cfg


class _Reader:
    """Collects every problem instead of stopping at the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.problems: list[str] = []

    def err(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path.name}: {key}: {message}")

    def only(self, table: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
        for k in table:
            if k not in allowed:
                where = f"{prefix}.{k}" if prefix else k
                self.err(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def table(self, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.err(key, "must be a table")
            return {}
        return value

    def _get(self, t: Mapping[str, Any], prefix: str, key: str, kind: type | tuple[type, ...],
             kind_name: str, default: Any) -> Any:
        if key not in t:
            return default
        v = t[key]
        if isinstance(v, bool) and kind is not bool:
            self.err(f"{prefix}.{key}", f"expected {kind_name}, got boolean")
            return default
        if not isinstance(v, kind):
            self.err(f"{prefix}.{key}", f"expected {kind_name}, got {type(v).__name__}")
            return default
        return v

    def string(self, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
        return self._get(t, prefix, key, str, "a string", default)

    def flag(self, t: Mapping[str, Any], prefix: str, key: str, default: bool) -> bool:
        return bool(self._get(t, prefix, key, bool, "true or false", default))

    def integer(self, t: Mapping[str, Any], prefix: str, key: str, default: int, *, minimum: int = 0) -> int:
        v = self._get(t, prefix, key, int, "an integer", default)
        if v < minimum:
            self.err(f"{prefix}.{key}", f"must be at least {minimum}, got {v}")
            return default
        return int(v)

    def number(self, t: Mapping[str, Any], prefix: str, key: str, default: Any, *,
              minimum: float = 0.0, maximum: float | None = None) -> Any:
        v = self._get(t, prefix, key, (int, float), "a number", default)
        if v is None:
            return None
        if v < minimum or (maximum is not None and v > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.err(f"{prefix}.{key}", f"must be {bound}, got {v}")
            return default
        return float(v)

    def strs(self, t: Mapping[str, Any], prefix: str, key: str) -> tuple[str, ...]:
        v = t.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.err(f"{prefix}.{key}", "expected a list of strings")
            return ()
        return tuple(v)

    def str_map(self, t: Mapping[str, Any], prefix: str, key: str) -> dict[str, str]:
        v = t.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            self.err(f"{prefix}.{key}", "expected a table of string values")
            return {}
        return dict(v)

    def choice(self, t: Mapping[str, Any], prefix: str, key: str, options: tuple[str, ...], default: str) -> str:
        v = self.string(t, prefix, key, default)
        if v not in options:
            self.err(f"{prefix}.{key}", f"must be one of {', '.join(options)}; got `{v}`")
            return default
        return str(v)

    def path_(self, t: Mapping[str, Any], prefix: str, key: str, default: str | None) -> Path | None:
        v = self.string(t, prefix, key, default)
        if v is None:
            return None
        p = Path(v).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def listen(self, value: Any, key: str, *, allow_stdio: bool) -> ListenSpec:
        if not isinstance(value, str):
            self.err(key, f"expected a string, got {type(value).__name__}")
            return ListenSpec("stdio")
        if value == "stdio" and allow_stdio:
            return ListenSpec("stdio")
        parts = urlsplit(value)
        if parts.scheme != "http" or not parts.hostname:
            expected = "`stdio` or " if allow_stdio else ""
            self.err(key, f"expected {expected}an http://HOST:PORT/PATH url, got `{value}`")
            return ListenSpec("stdio")
        try:
            port = parts.port or 80
        except ValueError:
            self.err(key, f"invalid port in `{value}`")
            return ListenSpec("stdio")
        return ListenSpec("http", parts.hostname, port, parts.path or ("/mcp" if allow_stdio else ""))

    def upstream(self, up: Mapping[str, Any], key: str, separator: str) -> UpstreamConfig | None:
        self.only(up, key, {
            "name", "command", "env", "env_passthrough", "cwd", "url", "headers", "timeout",
            "connect_timeout", "protocol", "transport", "prefix",
        })
        name = up.get("name")
        if not isinstance(name, str) or not UPSTREAM_NAME.match(name):
            self.err(f"{key}.name", "required: letters, digits, `_` or `-`, starting with a letter")
            return None
        if separator in name:
            self.err(f"{key}.name", f"`{name}` contains the tool-name separator `{separator}`")
        has_cmd, has_url = "command" in up, "url" in up
        if has_cmd == has_url:
            self.err(key, "needs exactly one of `command` (stdio) or `url` (streamable http)")
            return None
        command: tuple[str, ...] = ()
        if has_cmd:
            cmd = up["command"]
            if not isinstance(cmd, list) or not cmd or not all(isinstance(x, str) and x for x in cmd):
                self.err(f"{key}.command", "expected a non-empty list of strings (argv; no shell)")
                return None
            command = tuple(cmd)
            for k in ("headers", "transport"):
                if k in up:
                    self.err(f"{key}.{k}", "only applies to url upstreams")
        url = None
        if has_url:
            url = up["url"]
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
                self.err(f"{key}.url", f"expected an http(s) url, got `{url}`")
                return None
            for k in ("env", "env_passthrough", "cwd"):
                if k in up:
                    self.err(f"{key}.{k}", "only applies to command (stdio) upstreams")
        return UpstreamConfig(
            name=name,
            command=command,
            env=self.str_map(up, key, "env"),
            env_passthrough=self.strs(up, key, "env_passthrough"),
            cwd=self.path_(up, key, "cwd", None),
            url=url,
            headers=self.str_map(up, key, "headers"),
            timeout=self.number(up, key, "timeout", 120.0, minimum=0.001),
            connect_timeout=self.number(up, key, "connect_timeout", 30.0, minimum=0.001),
            protocol=self.choice(up, key, "protocol", PROTOCOLS, "auto"),
            sse=self.choice(up, key, "transport", ("streamable-http", "sse"), "streamable-http") == "sse",
            prefix=self.flag(up, key, "prefix", True),
        )

    def policy(self, t: Mapping[str, Any]) -> PolicyConfig:
        self.only(t, "policy", {
            "file", "model_keys", "state_dir", "algorithm", "signing_key", "public_key",
            "hmac_secret_env", "require_signature", "watch_interval", "high_water_file", "seed",
        })
        return PolicyConfig(
            file=self.path_(t, "policy", "file", None),
            model_keys=self.path_(t, "policy", "model_keys", None),
            state_dir=self.path_(t, "policy", "state_dir", "state"),
            algorithm=self.choice(t, "policy", "algorithm", ("ed25519", "hmac-sha256"), "ed25519"),
            signing_key=self.path_(t, "policy", "signing_key", None),
            public_key=self.path_(t, "policy", "public_key", None),
            hmac_secret_env=self.string(t, "policy", "hmac_secret_env", "SECUREGATEWAY_HMAC_KEY"),
            require_signature=self.flag(t, "policy", "require_signature", False),
            watch_interval=self.number(t, "policy", "watch_interval", 1.0, minimum=0.05),
            high_water_file=self.path_(t, "policy", "high_water_file", None),
            seed=self.path_(t, "policy", "seed", None),
        )

    def audit(self, t: Mapping[str, Any]) -> AuditConfig:
        self.only(t, "audit", {
            "file", "max_bytes", "fsync", "durability", "signing", "hmac_key_env", "checkpoint_every",
            "checkpoint_file", "checkpoint_log",
        })
        return AuditConfig(
            file=self.path_(t, "audit", "file", None),
            max_bytes=self.integer(t, "audit", "max_bytes", 50 * 2**20, minimum=4096),
            fsync=self.flag(t, "audit", "fsync", True),
            durability=self.choice(t, "audit", "durability", AUDIT_DURABILITY, "before-response"),
            signing=self.choice(t, "audit", "signing", AUDIT_SIGNING, "auto"),
            hmac_key_env=self.string(t, "audit", "hmac_key_env", "SECUREGATEWAY_AUDIT_KEY"),
            checkpoint_every=self.integer(t, "audit", "checkpoint_every", 1000, minimum=0),
            checkpoint_file=self.path_(t, "audit", "checkpoint_file", None),
            checkpoint_log=self.flag(t, "audit", "checkpoint_log", False),
        )

    def admin(self, t: Mapping[str, Any]) -> AdminConfig:
        self.only(t, "admin", {"listen", "key_env", "allow_remote", "allowed_hosts", "allowed_origins"})
        listen = None
        if "listen" in t:
            listen = self.listen(t["listen"], "admin.listen", allow_stdio=False)
        allow_remote = self.flag(t, "admin", "allow_remote", False)
        if listen is not None and listen.kind == "http" and not listen.loopback and not allow_remote:
            self.err(
                "admin.listen",
                f"`{listen.url}` is reachable from other machines; the admin API approves policy, so a "
                "non-loopback listen needs `allow_remote = true` in [admin]",
            )
        return AdminConfig(
            listen=listen,
            key_env=self.string(t, "admin", "key_env", "SECUREGATEWAY_ADMIN_KEY"),
            allow_remote=allow_remote,
            allowed_hosts=self.strs(t, "admin", "allowed_hosts"),
            allowed_origins=self.strs(t, "admin", "allowed_origins"),
        )

    def detectors(self, t: Mapping[str, Any]) -> DetectorsConfig:
        d = "detectors"
        self.only(t, d, {"tool_scan", "tool_pinning", "taint", "taint_window_s", "sink_tools", "store", "classifier"})
        return DetectorsConfig(
            tool_scan=self.choice(t, d, "tool_scan", ("quarantine", "flag", "off"), "quarantine"),
            tool_pinning=self.choice(t, d, "tool_pinning", ("tofu", "approve", "off"), "tofu"),
            taint=self.flag(t, d, "taint", True),
            taint_window_s=self.number(t, d, "taint_window_s", 600.0, minimum=0.0),
            sink_tools=self.strs(t, d, "sink_tools"),
            store=self.path_(t, d, "store", None),
            classifier=self.classifier(t),
        )

    def classifier(self, t: Mapping[str, Any]) -> ClassifierConfig | None:
        c = "detectors.classifier"
        raw = t.get("classifier")
        if raw is None:
            return None
        # only now: reading gateway.toml must not import the detectors (cheap start-up, proxy/cli)
        from proxy.screen.classify import CHANNELS, ON_ERROR, ClassifierConfig

        if not isinstance(raw, dict):
            self.err(c, "must be a table: { model = \"model.onnx\", tokenizer = \"tokenizer.json\" }")
            return None
        self.only(raw, c, {"model", "tokenizer", "threshold", "budget_ms", "channels", "on_error", "label",
                           "max_tokens", "max_windows"})  # fmt: skip
        model, tokenizer = self.path_(raw, c, "model", None), self.path_(raw, c, "tokenizer", None)
        for key, value in (("model", model), ("tokenizer", tokenizer)):
            if value is None:
                self.err(f"{c}.{key}", "is required (a local file path)")
        channels = self.strs(raw, c, "channels") if "channels" in raw else CHANNELS
        unknown = [channel for channel in channels if channel not in CHANNELS]
        if unknown or not channels:
            self.err(f"{c}.channels", f"must list some of {', '.join(CHANNELS)}; got {list(channels)}")
        if model is None or tokenizer is None:
            return None
        return ClassifierConfig(
            model=model,
            tokenizer=tokenizer,
            threshold=self.number(raw, c, "threshold", 0.9, minimum=0.0, maximum=1.0),
            budget_ms=self.number(raw, c, "budget_ms", 50.0, minimum=1.0),
            channels=tuple(dict.fromkeys(channels)),
            on_error=self.choice(raw, c, "on_error", ON_ERROR, "ignore"),
            label=self.integer(raw, c, "label", 1),
            max_tokens=self.integer(raw, c, "max_tokens", 512, minimum=1),
            max_windows=self.integer(raw, c, "max_windows", 16, minimum=1),
        )

    def approvals(self, t: Mapping[str, Any]) -> ApprovalsConfig:
        a = "approvals"
        self.only(t, a, {"operator_mode", "store", "max_pending"})
        return ApprovalsConfig(
            operator_mode=self.choice(t, a, "operator_mode", ("wait", "pending"), "wait"),
            store=self.path_(t, a, "store", None),
            max_pending=self.integer(t, a, "max_pending", 1000, minimum=1),
        )

    def telemetry(self, t: Mapping[str, Any]) -> TelemetryConfig:
        self.only(t, "telemetry", {"traces", "endpoint", "service_name"})
        endpoint = self.string(t, "telemetry", "endpoint", TelemetryConfig.endpoint)
        if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).hostname:
            self.err("telemetry.endpoint", f"expected an http(s) url, got `{endpoint}`")
            endpoint = TelemetryConfig.endpoint
        name = self.string(t, "telemetry", "service_name", TelemetryConfig.service_name)
        if not name.strip():
            self.err("telemetry.service_name", "must not be empty")
            name = TelemetryConfig.service_name
        return TelemetryConfig(
            traces=self.choice(t, "telemetry", "traces", TRACES, "off"), endpoint=endpoint, service_name=name,
        )

    def negotiation(self, t: Mapping[str, Any]) -> NegotiationConfig:
        n = "negotiation"
        self.only(t, n, {
            "enabled", "store", "auto_approve", "read_only_tools", "sensitive_tools",
            "envelope_same_model_only", "max_expiry_hours", "max_session_risk", "max_snippet_bytes",
            "pending_ttl_hours", "max_pending_per_model", "max_refused_per_window", "refused_window_minutes",
            "max_snippet_rules",
        })
        f: Callable[..., Any] = self.number
        return NegotiationConfig(
            enabled=self.flag(t, n, "enabled", True),
            store=self.path_(t, n, "store", None),
            auto_approve=self.flag(t, n, "auto_approve", True),
            read_only_tools=self.strs(t, n, "read_only_tools"),
            sensitive_tools=self.strs(t, n, "sensitive_tools"),
            envelope_same_model_only=self.flag(t, n, "envelope_same_model_only", True),
            max_expiry_hours=f(t, n, "max_expiry_hours", 24.0, minimum=0.0),
            max_session_risk=f(t, n, "max_session_risk", 0.5, minimum=0.0, maximum=1.0),
            max_snippet_bytes=self.integer(t, n, "max_snippet_bytes", 65536, minimum=64),
            pending_ttl_hours=f(t, n, "pending_ttl_hours", 72.0, minimum=0.0),
            max_pending_per_model=self.integer(t, n, "max_pending_per_model", 20, minimum=1),
            max_refused_per_window=self.integer(t, n, "max_refused_per_window", 20, minimum=1),
            refused_window_minutes=f(t, n, "refused_window_minutes", 60.0, minimum=0.0),
            max_snippet_rules=self.integer(t, n, "max_snippet_rules", 100, minimum=1),
        )
