"""The composition root: config in, a running gateway out.

``Gateway`` wires the downstream front (stdio or Streamable HTTP), one
``DownstreamSession`` per connected client, the relay middleware and the
tools/call chain. Every task it starts belongs to its task group; cancelling
``run()`` shuts everything down (upstream children reaped, listeners closed).
The SDK ``Server`` is built on first use: a stdio client's opening is served
without it (:mod:`proxy.wire.opening`), and the SDK loaded when a message first
needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from proxy.config import GatewayConfig
from proxy.downstream import serve_stdio
from proxy.intercept import CallNext, Interceptor, compose
from proxy.protocol import load_sdk
from proxy.relay import Relay, forward_tool_call
from proxy.route.ids import IN_FLIGHT_KEY, connection_of
from proxy.route.seams import LocalTool
from proxy.session import ClientChannel, DownstreamSession
from proxy.upstream.link import ClientHello
from proxy.upstream.prespawn import Prespawned
from proxy.wire.framing import Input, LineWriter
from proxy.wire.lane import FastLane
from proxy.wire.opening import Opening, debug_modules_at_exit

if TYPE_CHECKING:  # the SDK is loaded when a stdio client first needs it (proxy/wire/opening.py)
    from mcp.server import Server
    from mcp.server.context import ServerRequestContext

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
        self._middleware = list(middleware)  # e.g. tracing (proxy/telemetry.py), then the relay
        self._server: Server[Any] | None = None
        self._relay = Relay(self)
        self._lane: FastLane | None = None
        self._opening: Opening | None = None  # the stdio opening whose session the SDK is taking over
        self.sessions: set[DownstreamSession] = set()

    @property
    def server(self) -> Server[Any]:
        """The SDK server, whose only middleware is the relay; built (and the SDK imported) on
        first use: a stdio client's opening is answered without it (proxy/wire/opening.py)."""
        if self._server is None:
            load_sdk()
            from mcp.server import Server

            self._server = Server(self.config.name, version=GATEWAY_VERSION)
            self._server.middleware = [*self._middleware, self._relay]
        return self._server

    @property
    def relay(self) -> Relay:
        return self._relay

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
                    await serve_stdio(self._serve_stdio, max_message_bytes=self.config.max_message_bytes)
                else:
                    from proxy.front.http import http_app, serve_http

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
        opening = self._opening
        if opening is not None and opening.session is not None and ctx.request is None:
            return self._take_over(opening, opening.session, connection)  # the replayed initialize
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
        from proxy.mrtr import InputBridge  # SDK-based: loaded with the first 2026 client

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

    # ---- the stdio opening (OpeningHost) ---------------------------------------------------------

    async def open_opening(self, hello: ClientHello, channel: ClientChannel) -> DownstreamSession:
        """The stdio client's session, opened by its ``initialize`` before the SDK is loaded."""
        session = DownstreamSession(self.config, hello, channel, identity=self._stdio_identity,
                                    prespawned=self._prespawned)
        await self._start(session)
        return session

    def sdk_server(self) -> Server[Any]:
        return self.server

    def adopt(self, opening: Opening) -> None:
        self._opening = opening

    async def end(self, session: DownstreamSession) -> None:
        await self._end(session)

    def _take_over(self, opening: Opening, session: DownstreamSession, connection: Any) -> DownstreamSession:
        """The SDK connection takes the opening's session: its ids in flight, its client channel."""
        self._opening = None
        if opening.connection is not None:
            connection.state[IN_FLIGHT_KEY] = opening.connection.state[IN_FLIGHT_KEY]
        session.channel = connection
        if self._lane is not None:
            self._lane.attach(connection)
        connection.exit_stack.push_async_callback(self._end, session)
        return session

    # ---- internals -------------------------------------------------------------------------------

    async def _serve_stdio(self, source: Input, writer: LineWriter) -> None:
        debug_modules_at_exit()  # a test hook (SECUREGATEWAY_DEBUG_MODULES), off unless set
        if not self.config.fast_lane:  # the SDK serves everything, from the first message
            from proxy.wire.front import serve_lines

            await serve_lines(self.server, source, writer, max_message_bytes=self.config.max_message_bytes)
            return
        lane = self._open_lane(writer)
        await Opening(self, writer, lane).serve(source, max_message_bytes=self.config.max_message_bytes)

    def _open_lane(self, writer: LineWriter) -> FastLane:
        self._lane = FastLane(self._relay, writer)
        return self._lane

    def _identity(self, ctx: ServerRequestContext[Any, Any]) -> Any:
        request = ctx.request
        if request is not None:
            from proxy.front.http import IDENTITY_STATE_KEY

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
