"""The gateway's configuration: ``gateway.toml`` parsed once into frozen data.

:mod:`proxy.config.model` holds the dataclasses (one per table); :mod:`proxy.config.load`
reads and validates the file, reporting every problem with its key path.
"""

from proxy.config.load import load_config, parse_config
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
    exposure_warnings,
)

__all__ = [
    "AUDIT_DURABILITY",
    "AUDIT_SIGNING",
    "LOOPBACK_HOSTS",
    "PROTOCOLS",
    "TRACES",
    "UPSTREAM_NAME",
    "AdminConfig",
    "ApprovalsConfig",
    "AuditConfig",
    "DetectorsConfig",
    "GatewayConfig",
    "ListenSpec",
    "NegotiationConfig",
    "PolicyConfig",
    "TelemetryConfig",
    "UpstreamConfig",
    "exposure_warnings",
    "load_config",
    "parse_config",
]
