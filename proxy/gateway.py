"""The composition root: config in, a running gateway out.

``Gateway`` wires the downstream front (stdio or Streamable HTTP), one
``DownstreamSession`` per connected client, the relay middleware and the
tools/call chain. Every task it starts belongs to its task group; cancelling
``run()`` shuts everything down (upstream children reaped, listeners closed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
import anyio.abc
import structlog
from mcp.server import Server
from mcp.server.context import ServerRequestContext

from proxy.config import GatewayConfig
from proxy.downstream import serve_stdio
from proxy.front.http import IDENTITY_STATE_KEY, http_app, serve_http
from proxy.intercept import CallNext, Interceptor, compose
from proxy.mrtr import InputBridge
from proxy.relay import Relay, forward_tool_call
from proxy.route.ids import connection_of
from proxy.route.seams import LocalTool
from proxy.session import DownstreamSession
from proxy.upstream.link import ClientHello
from proxy.upstream.prespawn import Prespawned
from proxy.wire.framing import LineWriter
from proxy.wire.lane import FastLane

log = structlog.get_logger("securegateway.gateway")

try:
    GATEWAY_VERSION = version("securegateway")
except PackageNotFoundError:  # running from a source tree
    GATEWAY_VERSION = "0.0.0"


class Gateway:
    """A running SecureGateway: fronts, sessions, relay and the tools/call chain."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        interceptors: Sequence[Interceptor] = (),
        local_tools: Mapping[str, LocalTool] | None = None,
        stdio_identity: Any = None,
        authenticate: Any = None,
        visible: Any = None,
        on_session: Any = None,
        access: Any = None,
        middleware: Sequence[Any] = (),
        prespawned: Prespawned | None = None,
    ) -> None:
        self.config = config
        self._chain = compose(interceptors, forward_tool_call)
        self._local_tools = dict(local_tools or {})
        self._stdio_identity = stdio_identity
        self._authenticate = authenticate or (lambda key: {"model_id": "anonymous"})
        self._visible = visible
        self._on_session = on_session
        self._access = access
        self._prespawned = prespawned  # stdio upstreams started by the CLI; the stdio session adopts them
        self._tg: anyio.abc.TaskGroup | None = None
        self._modern: dict[str, DownstreamSession] = {}
        self._modern_lock = anyio.Lock()
        self.server: Server[Any] = Server(config.name, version=GATEWAY_VERSION)
        self._relay = Relay(self)
        self.server.middleware = [*middleware, self._relay]  # e.g. tracing (proxy/telemetry.py), then the relay
        self._lane: FastLane | None = None
        self.sessions: set[DownstreamSession] = set()

    # ---- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the configured front until cancelled (HTTP) or until stdin closes (stdio)."""
        async with contextlib.AsyncExitStack() as stack:
            if any(up.transport == "http" for up in self.config.upstreams):
                # keep-alive to HTTP upstreams; only then: its TLS set-up costs start-up ~30 ms
                from proxy.upstream.http_pool import shared_pool  # (and aiohttp's import ~8% of it)

                await stack.enter_async_context(shared_pool())
            tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg = tg
            listen = self.config.listen
            try:
                if listen.kind == "stdio":
                    task_status.started()
                    await serve_stdio(
                        self.server, max_message_bytes=self.config.max_message_bytes,
                        lane=self._open_lane if self.config.fast_lane else None,
                    )
                else:
                    app = http_app(self.server, self.config, listen, self._authenticate,
                                   relay=self._relay if self.config.fast_lane else None)
                    await tg.start(serve_http, app, listen)
                    task_status.started()
                    await anyio.sleep_forever()
            finally:
                tg.cancel_scope.cancel()

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("the gateway is not running")
        return self._tg

    # ---- SessionHost (used by the relay) ---------------------------------------------------------

    async def open_session(self, ctx: ServerRequestContext[Any, Any], hello: ClientHello) -> DownstreamSession:
        connection = connection_of(ctx)
        if connection is None:
            raise RuntimeError("the SDK no longer exposes the connection on the request session")
        prespawned = self._prespawned if ctx.request is None else None  # the stdio client's session
        session = DownstreamSession(self.config, hello, connection, identity=self._identity(ctx), prespawned=prespawned)
        await self._start(session)
        if self._lane is not None and ctx.request is None:  # the stdio connection: its hot requests go lean
            self._lane.attach(connection)
        if connection is not None:
            connection.exit_stack.push_async_callback(self._end, session)
        return session

    async def modern_session(self, ctx: ServerRequestContext[Any, Any]) -> DownstreamSession:
        """Sessionless clients share one upstream session per model identity."""
        identity = self._identity(ctx)
        key = str(getattr(identity, "model_id", identity))
        async with self._modern_lock:
            session = self._modern.get(key)
            if session is None:
                caps = getattr(ctx.session, "client_capabilities", None)
                info = getattr(ctx.session, "client_params", None)
                hello = ClientHello(
                    client_info=info.client_info.model_dump(mode="json", exclude_none=True) if info else
                    {"name": "modern-client", "version": "0"},
                    capabilities=caps.model_dump(mode="json", by_alias=True, exclude_none=True) if caps else {},
                )
                prespawned = self._prespawned if ctx.request is None else None  # a 2026 client on stdio
                session = DownstreamSession(self.config, hello, InputBridge(key), identity=identity,
                                            prespawned=prespawned)
                await self._start(session)
                self._modern[key] = session
        return session

    def local_tools(self, session: DownstreamSession) -> Mapping[str, LocalTool]:
        return self._local_tools

    async def visible_tools(self, session: DownstreamSession, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The gateway's own tools, then the upstreams', each shown only if this model may use it."""
        # an unprefixed upstream's tool named like a gateway tool could never be called
        listed = [dict(tool.definition) for tool in self._local_tools.values()]
        listed += [t for t in tools if t.get("name") not in self._local_tools]
        if self._visible is None:
            return listed
        return [t for t in listed if self._visible(session, t)]

    @property
    def tool_chain(self) -> CallNext:
        return self._chain

    @property
    def access(self) -> Any:
        """The decision point for prompts, resources and completions (None: relay only)."""
        return self._access

    def server_identity(self, session: DownstreamSession) -> tuple[dict[str, Any], str | None]:
        links = list(session.links.values())
        if len(links) == 1 and links[0].info is not None:
            info = links[0].info  # one upstream: be it, as far as the client can tell
            return info.server_info or {"name": links[0].name, "version": "0"}, info.instructions
        names = ", ".join(f"`{n}`" for n in session.links)
        return {"name": self.config.name, "version": GATEWAY_VERSION}, (
            f"Tools from upstream servers {names} are namespaced as <server>{self.config.separator}<tool>."
            if links else None
        )

    # ---- internals -------------------------------------------------------------------------------

    def _open_lane(self, writer: LineWriter) -> FastLane:
        self._lane = FastLane(self._relay, writer)
        return self._lane

    def _identity(self, ctx: ServerRequestContext[Any, Any]) -> Any:
        request = ctx.request
        if request is not None:
            state = getattr(request, "scope", {}).get("state") or {}
            return state.get(IDENTITY_STATE_KEY)
        return self._stdio_identity

    async def _start(self, session: DownstreamSession) -> None:
        if self._on_session is not None:
            self._on_session(session)
        await self.task_group.start(session.run)
        self.sessions.add(session)

    async def _end(self, session: DownstreamSession) -> None:
        session.close()
        self.sessions.discard(session)
