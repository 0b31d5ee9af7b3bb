"""Client-facing network fronts: Streamable HTTP (``http``), its fast lane for hot requests
(``lane``) and its per-exchange reply shaping (``exchange``)."""

from proxy.front.exchange import PING_INTERVAL, ExchangeSessionManager, ExchangeTransport
from proxy.front.http import IDENTITY_STATE_KEY, Authenticate, ModelKeyAuth, http_app, security_settings, serve_http
from proxy.front.lane import HttpLane, bind_connection

__all__ = [
    "IDENTITY_STATE_KEY",
    "PING_INTERVAL",
    "Authenticate",
    "ExchangeSessionManager",
    "ExchangeTransport",
    "HttpLane",
    "ModelKeyAuth",
    "bind_connection",
    "http_app",
    "security_settings",
    "serve_http",
]
