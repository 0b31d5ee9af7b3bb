"""The Streamable HTTP front: the gateway's listener for MCP clients on the network.

What a network listener needs in front of the session transport: Host/Origin checks
against DNS rebinding, a request-size limit, and model-key authentication
(``Authorization: Bearer`` or ``X-Model-Key``) answered with 401 before any MCP
processing. Sessions run on ``ExchangeTransport`` (a JSON body per reply unless the
exchange needs a stream); sessionless 2026-era requests take the SDK's single-exchange
path, which already answers JSON unless a notification comes first. In front of them all,
the fast lane (``proxy.front.lane``) answers ``tools/call`` and ``tools/list`` of initialised
sessions itself and hands everything else to the SDK path.

The server under it is uvicorn on its httptools parser when that is installed (measured
faster than h11 for the gateway's small requests; see bench/README.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import structlog
import uvicorn
from mcp.server import Server
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.config import GatewayConfig, ListenSpec
from proxy.front.exchange import ExchangeSessionManager
from proxy.front.lane import HttpLane, bind_connection
from proxy.relay import Relay

log = structlog.get_logger("securegateway.front")

IDENTITY_STATE_KEY = "securegateway.identity"
MAX_PRINCIPALS = 1024
"""Principals whose SDK user object the front keeps (beyond that, one is built per request)."""
Authenticate = Callable[[str | None], Any]
"""Maps a presented model key (or None) to an identity; returns None when refused."""


def security_settings(config: GatewayConfig, listen: ListenSpec) -> TransportSecuritySettings:
    """Host/Origin allow-lists: the listener's own loopback names plus what the operator adds."""
    hosts = [f"{listen.host}:{listen.port}", f"{listen.host}:*"]
    if listen.host in ("127.0.0.1", "localhost"):
        hosts += ["127.0.0.1:*", "localhost:*"]
    if listen.host in ("::1", "[::1]"):
        hosts += ["[::1]:*"]
    hosts += list(config.allowed_hosts)
    origins = [f"http://{h}" for h in hosts] + list(config.allowed_origins)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class ModelKeyAuth:
    """ASGI wrapper: resolve the model key to an identity, or answer 401 with a clear message."""

    def __init__(self, app: ASGIApp, authenticate: Authenticate) -> None:
        self.app = app
        self.authenticate = authenticate
        self._users: dict[str, AuthenticatedUser] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = model_key = None
        repeated: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                repeated = name if auth is not None else repeated
                auth = value.decode("latin-1")
            elif name == b"x-model-key":
                repeated = name if model_key is not None else repeated
                model_key = value.decode("latin-1")
        key = None
        if auth is not None and auth[:7].lower() == "bearer ":
            key = auth[7:].strip() or None
        key = key or model_key or None
        # Two credentials of one kind are ambiguous (a proxy in between may have added one):
        # refused, never resolved by picking the first or the last.
        identity = self.authenticate(key) if repeated is None else None
        if identity is None:
            if repeated is not None:
                message = f"more than one `{repeated.decode()}` header: send exactly one model key"
            elif key is None:
                message = "missing model key: send `Authorization: Bearer <model key>`"
            else:
                message = "unknown model key"
            body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": message}}).encode()
            await send({
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="mcp"')],
            })
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})[IDENTITY_STATE_KEY] = identity
        # The SDK binds each HTTP session to the principal that opened it: another model's
        # key cannot ride a session id it learned (it gets 404, as for an unknown session).
        principal = str(getattr(identity, "model_id", identity))
        user = self._users.get(principal)
        if user is None:  # one per principal: it carries nothing else (the models are a configured few)
            user = AuthenticatedUser(AccessToken(token="model-key", client_id=principal, scopes=[]))
            if len(self._users) < MAX_PRINCIPALS:
                self._users[principal] = user
        scope["user"] = user
        await self.app(scope, receive, send)


def http_app(
    server: Server[Any], config: GatewayConfig, listen: ListenSpec, authenticate: Authenticate, *,
    relay: Relay | None = None,
) -> ASGIApp:
    """The front's ASGI app; with ``relay``, hot requests of initialised sessions take the fast lane."""
    manager = ExchangeSessionManager(
        app=server,
        security_settings=security_settings(config, listen),
        max_request_body_size=config.max_message_bytes,
    )

    lane: HttpLane | None = None

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run(), anyio.create_task_group() as tg:
            if lane is not None:
                await tg.start(lane.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def close_sessions() -> None:
        # Open GET streams would hold uvicorn's graceful shutdown until its timeout; end
        # the sessions first (the manager keeps no public handle on them in mcp 2.3.0).
        for transport in list(getattr(manager, "_server_instances", {}).values()):
            with contextlib.suppress(Exception):
                await transport.terminate()

    sdk: ASGIApp = StreamableHTTPASGIApp(manager)
    if relay is not None:
        if bind_connection not in server.middleware:
            server.middleware.insert(0, bind_connection)  # outermost: sees every initialize's connection
        sdk = lane = HttpLane(sdk, manager, relay, config.max_message_bytes)
    endpoint = ModelKeyAuth(sdk, authenticate)
    app = Starlette(routes=[Route(listen.path, endpoint=endpoint)], lifespan=lifespan)
    app.state.close_sessions = close_sessions
    return _Front(app, endpoint, listen.path)


class _Front:
    """The front's ASGI app: a request for the MCP path goes straight to its endpoint; the rest
    (lifespan, other paths and their redirects and 404s) to the Starlette app.

    Starlette's middleware stack and router cost each request ~4 awaited layers and a route
    match, and do nothing for this one endpoint, which is a plain ASGI app that answers every
    request itself (its errors included); uvicorn answers 500 if it raises."""

    def __init__(self, app: Starlette, endpoint: ASGIApp, path: str) -> None:
        self.app = app
        self.state = app.state
        self._endpoint = endpoint
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self._path and not scope.get("root_path"):
            scope["app"] = self.app
            await self._endpoint(scope, receive, send)
            return
        await self.app(scope, receive, send)


HTTP_PARSER = "httptools" if importlib.util.find_spec("httptools") else "h11"
"""uvicorn's HTTP/1.1 parser: httptools when installed (a dependency), h11 otherwise."""


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway's task group owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def serve_http(
    app: ASGIApp, listen: ListenSpec, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on ``listen`` until cancelled, then close the listener gracefully.

    uvicorn runs shielded so that cancellation becomes an orderly shutdown (lifespan
    exit, connections drained within ``timeout_graceful_shutdown``) rather than an
    abandoned socket.
    """
    config = uvicorn.Config(
        app, host=listen.host.strip("[]"), port=listen.port, lifespan="on", log_level="warning",
        access_log=False, timeout_graceful_shutdown=3, http=HTTP_PARSER,
    )
    server = _Uvicorn(config)
    done = anyio.Event()

    async def run() -> None:
        try:
            with anyio.CancelScope(shield=True):
                await server.serve()
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            while not server.started:
                if done.is_set():
                    raise OSError(f"could not listen on {listen.url} (is the port in use?)")
                await anyio.sleep(0.01)
            log.info("listening", url=listen.url)
            task_status.started()
            await done.wait()
        finally:
            close_sessions = getattr(getattr(app, "state", None), "close_sessions", None)
            if close_sessions is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await close_sessions()
            server.should_exit = True
