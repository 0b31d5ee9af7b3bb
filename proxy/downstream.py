"""Client-facing fronts: stdio, and Streamable HTTP on loopback.

Both serve the same SDK ``Server`` (whose only middleware is the relay), so every
client era the SDK accepts is accepted here. On stdio the lines are framed and decoded by
the lean path (:mod:`proxy.wire`), whose fast lane answers hot requests itself. The HTTP front adds what a network
listener needs: Host/Origin checks against DNS rebinding, a request-size limit,
and model-key authentication (``Authorization: Bearer`` or ``X-Model-Key``)
answered with 401 before any MCP processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import structlog
import uvicorn
from mcp.server import Server
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.config import GatewayConfig, ListenSpec
from proxy.request_ids import UniqueRequestIds
from proxy.wire.framing import ByteSource, LineWriter
from proxy.wire.front import LaneFactory, serve_lines

log = structlog.get_logger("securegateway.downstream")

IDENTITY_STATE_KEY = "securegateway.identity"
Authenticate = Callable[[str | None], Any]
"""Maps a presented model key (or None) to an identity; returns None when refused."""


async def serve_stdio(server: Server[Any], *, max_message_bytes: int, lane: LaneFactory | None = None) -> None:
    """Serve one client over this process's stdin/stdout until it closes stdin.

    Pipes (the usual case) are read and written on the event loop; a regular file or
    other non-pipe goes through worker threads. Either way the lean front frames the
    lines and the fast lane (if given) answers the hot requests."""
    pipes = await _pipes()
    if pipes is None:
        source: ByteSource = _ThreadedSource(anyio.wrap_file(sys.stdin.buffer))
        writer = LineWriter(_ThreadedSink(sys.stdout.buffer))
    else:
        source, writer = pipes
    await serve_lines(server, source, writer, max_message_bytes=max_message_bytes, lane=lane)


class _ThreadedSource:
    def __init__(self, file: Any) -> None:
        self._file = file

    async def read(self, n: int) -> bytes:
        return bytes(await self._file.read1(n))  # what is there now: a pipe may not fill the buffer


class _ThreadedSink:
    """A blocking stdout (a regular file): written and flushed in place, nothing to drain."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    async def drain(self) -> None:
        return None


async def _pipes() -> tuple[asyncio.StreamReader, LineWriter] | None:
    """stdin/stdout as event-loop pipes: no worker-thread hop per message (asyncio only)."""
    try:
        loop = asyncio.get_running_loop()
        for fd in (0, 1):
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
                return None
        reader = asyncio.StreamReader(limit=2**20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(0, "rb", buffering=0, closefd=False))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", buffering=0, closefd=False)
        )
        return reader, LineWriter(asyncio.StreamWriter(transport, protocol, None, loop))
    except (RuntimeError, OSError, ValueError):
        return None


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip() or None
        key = key or headers.get("x-model-key") or None
        identity = self.authenticate(key)
        if identity is None:
            message = "missing model key: send `Authorization: Bearer <model key>`" if key is None else (
                "unknown model key"
            )
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
        scope["user"] = AuthenticatedUser(AccessToken(token="model-key", client_id=principal, scopes=[]))
        await self.app(scope, receive, send)


def http_app(server: Server[Any], config: GatewayConfig, listen: ListenSpec, authenticate: Authenticate) -> Starlette:
    manager = StreamableHTTPSessionManager(
        app=server,
        security_settings=security_settings(config, listen),
        max_request_body_size=config.max_message_bytes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    async def close_sessions() -> None:
        # Open GET streams would hold uvicorn's graceful shutdown until its timeout; end
        # the sessions first (the manager keeps no public handle on them in mcp 2.3.0).
        for transport in list(getattr(manager, "_server_instances", {}).values()):
            with contextlib.suppress(Exception):
                await transport.terminate()

    endpoint = ModelKeyAuth(
        UniqueRequestIds(StreamableHTTPASGIApp(manager), max_body_bytes=config.max_message_bytes), authenticate
    )
    app = Starlette(routes=[Route(listen.path, endpoint=endpoint)], lifespan=lifespan)
    app.state.close_sessions = close_sessions
    return app


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
        access_log=False, timeout_graceful_shutdown=3,
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
