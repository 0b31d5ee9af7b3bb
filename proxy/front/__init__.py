"""Client-facing network fronts: Streamable HTTP (``http``) and its per-exchange reply shaping (``exchange``)."""

from proxy.front.exchange import PING_INTERVAL, ExchangeSessionManager, ExchangeTransport
from proxy.front.http import IDENTITY_STATE_KEY, Authenticate, ModelKeyAuth, http_app, security_settings, serve_http

__all__ = [
    "IDENTITY_STATE_KEY",
    "PING_INTERVAL",
    "Authenticate",
    "ExchangeSessionManager",
    "ExchangeTransport",
    "ModelKeyAuth",
    "http_app",
    "security_settings",
    "serve_http",
]
