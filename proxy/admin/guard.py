"""The admin listener's Host/Origin guard, and the audit trail of what it refuses.

Every request must name an allowed ``Host`` (and, when it sends one, an allowed ``Origin``)
before anything else is looked at: a page on another site that rebinds its DNS name to
127.0.0.1 must not reach the API or the console (421 ``invalid_host``, 403
``invalid_origin``). A refusal is an attack or a misconfiguration, so it is audited as
``admin.refused`` (status, code, host, origin, path, remote address; never a header
value, query string or body, so no key material), each value clipped to 200 characters.

A flood must not fill the audit log: refusals are audited through a token bucket
(:class:`RefusalBudget`, a burst of 20, then 1 every 6 s on average, i.e. at most 10 a
minute sustained). Refusals past the budget are still refused, only not written; the next
one written carries ``suppressed``, the count of refusals not audited since the previous
event, so the log still says how many there were.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["REFUSED_EVENT", "HostOriginGuard", "RefusalBudget", "host_allowed"]

log = structlog.get_logger("securegateway.admin")

REFUSED_EVENT = "admin.refused"
_CLIP = 200
AuditFn = Callable[[Mapping[str, Any]], Awaitable[None]]


def host_allowed(value: str, patterns: Sequence[str]) -> bool:
    """Whether ``value`` (a Host or Origin) matches one of ``patterns`` (``name:*``: any port)."""
    for pattern in patterns:
        if pattern.endswith(":*"):
            base = pattern[:-2]
            if value == base or (value.startswith(base + ":") and value[len(base) + 1 :].isdigit()):
                return True
        elif value == pattern:
            return True
    return False


class RefusalBudget:
    """A token bucket: ``burst`` events at once, refilled at ``per_minute`` a minute."""

    def __init__(self, *, burst: int = 20, per_minute: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._burst = float(burst)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._suppressed = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """``None`` when this refusal is over budget; else how many were suppressed before it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1.0:
                self._suppressed += 1
                return None
            self._tokens -= 1.0
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed


class HostOriginGuard:
    """ASGI middleware: refuse (and audit) a request whose Host or Origin is not allowed."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: Sequence[str],
        origins: Sequence[str],
        audit: AuditFn | None = None,
        budget: RefusalBudget | None = None,
    ) -> None:
        self.app = app
        self.hosts = tuple(hosts)
        self.origins = tuple(origins)
        self._audit = audit
        self._budget = budget or RefusalBudget()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        origin = headers.get("origin")
        if not host_allowed(host, self.hosts):
            status, code, error = 421, "invalid_host", f"host `{host[:_CLIP]}` is not allowed for the admin API"
        elif origin is not None and not host_allowed(origin, self.origins):
            status, code, error = 403, "invalid_origin", f"origin `{origin[:_CLIP]}` is not allowed for the admin API"
        else:
            await self.app(scope, receive, send)
            return
        await self._refused(scope, status, code, host, origin)
        await JSONResponse({"error": error, "code": code}, status_code=status)(scope, receive, send)

    async def _refused(self, scope: Scope, status: int, code: str, host: str, origin: str | None) -> None:
        suppressed = self._budget.take()
        if suppressed is None:
            return  # over budget: refused, counted, not written
        client = scope.get("client")
        payload = {
            "status": status,
            "code": code,
            "host": host[:_CLIP],
            "origin": origin[:_CLIP] if origin is not None else None,
            "method": str(scope.get("method", ""))[:16],
            "path": str(scope.get("path", ""))[:_CLIP],
            "remote": f"{client[0]}:{client[1]}" if client else None,
            "suppressed": suppressed,
        }
        log.warning("admin request refused", **payload)
        if self._audit is None:
            return
        try:
            await self._audit({"type": REFUSED_EVENT, **payload})
        except Exception:  # the request is refused either way; a broken audit log is logged
            log.exception("audit write failed for an admin refusal", code=code)
