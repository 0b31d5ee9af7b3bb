"""Console sign-in, sessions and request checks.

- Sign-in takes the admin key once (compared in constant time) and sets a random session
  cookie: ``HttpOnly``, ``SameSite=Strict``, ``Path=/console``, ``Secure`` when served over
  https. The key itself is never stored in the browser.
- Each session has its own CSRF token; every form carries it and every POST is refused
  (403 ``csrf``) unless it matches. The sign-in form, which has no session yet, uses a
  double-submit token in a short-lived cookie of its own.
- Every request must name this listener in ``Host`` (its bound address, ``localhost``,
  ``127.0.0.1`` or ``[::1]`` with its port), which defeats DNS rebinding; every POST must
  also carry an ``Origin`` (or, failing that, a ``Referer``) of the same host.
- Sessions live in memory: restarting the gateway signs everyone out. They expire after
  ``ttl`` seconds idle, and at most ``max_sessions`` exist (the oldest is dropped).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request

__all__ = ["CSRF_FIELD", "PRE_COOKIE", "SESSION_COOKIE", "ConsoleSession", "Sessions", "host_problem"]

SESSION_COOKIE = "sg_console"
PRE_COOKIE = "sg_console_signin"
CSRF_FIELD = "csrf"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclass
class ConsoleSession:
    token: str
    csrf: str
    created: float
    seen: float = field(default=0.0)


class Sessions:
    """In-memory console sessions keyed by an unguessable token."""

    def __init__(self, *, ttl: float = 8 * 3600, max_sessions: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_sessions
        self._clock = clock
        self._items: dict[str, ConsoleSession] = {}

    def create(self) -> ConsoleSession:
        now = self._clock()
        self._drop_expired(now)
        while len(self._items) >= self._max:
            oldest = min(self._items.values(), key=lambda s: s.seen)
            del self._items[oldest.token]
        session = ConsoleSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._items[session.token] = session
        return session

    def get(self, token: str | None) -> ConsoleSession | None:
        if not token:
            return None
        session = self._items.get(token)
        now = self._clock()
        if session is None or now - session.seen > self._ttl:
            self._items.pop(token or "", None)
            return None
        session.seen = now
        return session

    def end(self, token: str | None) -> None:
        self._items.pop(token or "", None)

    def _drop_expired(self, now: float) -> None:
        for token in [t for t, s in self._items.items() if now - s.seen > self._ttl]:
            del self._items[token]


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode("utf-8"), str(b).encode("utf-8"))


def _allowed_hosts(request: Request) -> set[str]:
    server = request.scope.get("server") or ("", None)
    host, port = server[0], server[1]
    suffix = f":{port}" if port else ""
    names = {*_LOOPBACK_NAMES, f"[{host}]" if host and ":" in host else host}
    return {f"{name}{suffix}" for name in names if name} | ({*_LOOPBACK_NAMES} if not port else set())


def host_problem(request: Request) -> str | None:
    """Why ``request`` must be refused by the Host/Origin rules, or None."""
    allowed = _allowed_hosts(request)
    host = request.headers.get("host", "")
    if host not in allowed:
        return f"host `{host}` is not this console"
    if request.method in ("GET", "HEAD"):
        return None
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        referer = request.headers.get("referer")
        if not referer:
            return "a form post needs an Origin header"
        origin = referer
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.netloc != host:
        return f"origin `{origin}` is not this console"
    return None
