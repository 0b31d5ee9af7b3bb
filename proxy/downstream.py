"""Client-facing fronts: stdio, and Streamable HTTP on loopback.

Both serve the same SDK ``Server`` (whose only middleware is the relay), so every
client era the SDK accepts is accepted here. The HTTP front adds what a network
listener needs: Host/Origin checks against DNS rebinding, a request-size limit,
and model-key authentication (``Authorization: Bearer`` or ``X-Model-Key``)
answered with 401 before any MCP processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
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
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.config import GatewayConfig, ListenSpec
from proxy.request_ids import UniqueRequestIds

log = structlog.get_logger("securegateway.downstream")

IDENTITY_STATE_KEY = "securegateway.identity"
Authenticate = Callable[[str | None], Any]
"""Maps a presented model key (or None) to an identity; returns None when refused."""


OVERSIZED_METHOD = "securegateway/message_too_large"
"""Stand-in for a stdio request over the size limit; the relay answers it with a clear error."""
_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,20}|"(?:[^"\\]|\\.){0,200}")')


async def serve_stdio(server: Server[Any], *, max_message_bytes: int) -> None:
    """Serve one client over this process's stdin/stdout until it closes stdin."""
    pipes = await _pipes()
    if pipes is None:  # a regular file or other non-pipe: the SDK's thread-backed files
        stdin = CappedLines(anyio.wrap_file(sys.stdin.buffer), max_message_bytes)
        async with stdio_server(stdin=stdin) as (read, write):  # type: ignore[arg-type]
            await server.run(AnsweringReader(read, write), write, server.create_initialization_options())
        return
    reader, writer = pipes
    async with stdio_server(stdin=CappedLines(reader, max_message_bytes), stdout=writer) as (read, write):  # type: ignore[arg-type]
        await server.run(AnsweringReader(read, write), write, server.create_initialization_options())


class AnsweringReader:
    """The stdio read stream, answering lines that are not JSON-RPC messages as HTTP does.

    The SDK's stdio transport hands an unparseable line to the server as an exception,
    which drops it; JSON-RPC wants ``-32700`` (id null) for a line that is not JSON and
    ``-32600`` for JSON that is not a request (a non-string ``method``, a batch, a
    scalar). The id is echoed when the object carries a usable one, so the client's
    pending request is answered. A malformed *response* (it has ``result`` or ``error``)
    is dropped with a warning: answering it could start an error ping-pong.
    """

    def __init__(self, inner: Any, write: Any) -> None:
        self._inner = inner
        self._write = write

    @property
    def last_context(self) -> Any:  # the SDK restores the sender's contextvars from this
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, Exception):
                return item
            reply = invalid_message_reply(item)
            if reply is not None:
                await self._write.send(SessionMessage(reply))

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> AnsweringReader:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AnsweringReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def invalid_message_reply(exc: Exception) -> JSONRPCError | None:
    """The JSON-RPC error answering a line the transport could not turn into a message."""
    if not isinstance(exc, ValidationError):
        log.warning("unreadable stdio message dropped", error=str(exc)[:200])
        return None
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        log.warning("stdio line is not json", error=errors[0].get("msg"))
        return JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message="Parse error"))
    decoded = next((e.get("input") for e in errors if isinstance(e.get("input"), dict)), None)
    if isinstance(decoded, dict) and "method" not in decoded and ("result" in decoded or "error" in decoded):
        log.warning("malformed response from the client dropped", id=str(decoded.get("id"))[:100])
        return None
    rid = decoded.get("id") if isinstance(decoded, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        rid = None
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'message'}: {e.get('msg')}"
        for e in errors if e.get("loc") and e["loc"][0] == "JSONRPCRequest"
    ) or "not a JSON-RPC request object"
    log.warning("invalid stdio request", id=rid, detail=detail[:200])
    return JSONRPCError(
        jsonrpc="2.0", id=rid, error=ErrorData(code=INVALID_REQUEST, message=f"Invalid request: {detail[:300]}")
    )


class _PipeReader:
    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream

    async def read1(self, n: int) -> bytes:
        return await self._stream.read(n)


class _PipeWriter:
    """Text-file face of a non-blocking stdout pipe (what ``stdio_server`` writes to)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


async def _pipes() -> tuple[_PipeReader, _PipeWriter] | None:
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
        return _PipeReader(reader), _PipeWriter(asyncio.StreamWriter(transport, protocol, None, loop))
    except (RuntimeError, OSError, ValueError):
        return None


class CappedLines:
    """stdin as lines of at most ``limit`` bytes, never holding a longer one in memory.

    An oversized request is replaced by a small ``securegateway/message_too_large`` request
    with the same id, which the relay answers with a JSON-RPC error naming the limit; an
    oversized notification (no id to answer) is dropped with a warning.
    """

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._buf = bytearray()
        self._scanned = 0
        self._dropped = 0
        self._prefix = b""
        self._eof = False

    def __aiter__(self) -> CappedLines:
        return self

    async def __anext__(self) -> str:
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                self._scanned = 0
                if self._dropped or len(line) > self._limit:
                    stand_in = self._stand_in(self._prefix or line[:4096], self._dropped + len(line))
                    if stand_in is None:
                        continue
                    return stand_in
                if not line.strip():
                    continue  # a blank line between messages is not a message
                return line.decode("utf-8", "replace")
            self._scanned = len(self._buf)
            if len(self._buf) > self._limit:
                if not self._dropped:
                    self._prefix = bytes(self._buf[:4096])
                self._dropped += len(self._buf)
                self._buf.clear()
                self._scanned = 0
            if self._eof:
                if self._buf or self._dropped:
                    self._buf += b"\n"
                    continue
                raise StopAsyncIteration
            chunk = await self._raw.read1(1 << 16)  # what is there now: a pipe may not fill 64 KiB
            if not chunk:
                self._eof = True
            self._buf += chunk

    def _stand_in(self, prefix: bytes, size: int) -> str | None:
        self._dropped, self._prefix = 0, b""
        match = _ID.search(prefix)
        log.warning("oversized message refused", bytes=size, limit=self._limit, answered=match is not None)
        if match is None:
            return None  # a notification or garbage: nothing to answer
        request = {"jsonrpc": "2.0", "id": json.loads(match.group(1)), "method": OVERSIZED_METHOD,
                   "params": {"bytes": size, "limit": self._limit}}
        return json.dumps(request)


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
