"""Forwards everything the client sends to the right upstream, untouched where possible.

Installed as the downstream server's only middleware, it sees every request and
notification before the SDK validates anything, and short-circuits with the
upstream's raw result: relayed messages are never re-modelled. Only what must
change is changed: names are namespaced, lists are merged and paginated, the
``initialize`` answer describes the merged server, and ``tools/call`` runs
through the interceptor chain (policy enforcement) before it is forwarded.

Every other request that reaches an upstream's data - ``prompts/get``,
``resources/read``, ``resources/subscribe``/``unsubscribe``, ``completion/complete`` -
is decided by the host's :class:`AccessGate` first (identity, key scope, rules, audit),
and what the upstream answers (or asks of the client) is screened by it before the
client sees it. A request id already in flight on the connection is refused with
``-32600``; the request that holds the id keeps it.

This module is the composition and the tools/call path (the chain, task-augmented calls, the
forward to the upstream); the pieces it composes are in :mod:`proxy.route` (seams, connection
ids, the 2026 envelope, the forward, the access gate, the other methods' routes).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from proxy.enforce import DECISION_META_KEY
from proxy.intercept import ToolCall, ToolResult
from proxy.protocol import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, MODERN_PROTOCOL_VERSIONS, mcp_error
from proxy.route.access import Access
from proxy.route.era import complete_for_modern

# under the names the tools/call path has always used here
from proxy.route.era import strip_envelope as _strip_envelope
from proxy.route.forward import forward as _forward
from proxy.route.forward import progress_relay as _progress_relay
from proxy.route.ids import IN_FLIGHT_KEY, SESSION_KEY, attached, claim_id, connection_of
from proxy.route.methods import Methods
from proxy.route.seams import SessionHost, StdioLane
from proxy.session import DownstreamSession, is_bridge
from proxy.tasks import TASK_METHODS, merged_capability
from proxy.upstream.link import ClientHello, UpstreamLink
from proxy.wire.framing import OVERSIZED_METHOD

if TYPE_CHECKING:  # the SDK is not loaded on a stdio client's opening (proxy/wire/opening.py)
    from mcp.server.context import ServerRequestContext
    from mcp.shared.dispatcher import ProgressFnT

log = structlog.get_logger("securegateway.relay")

REQUIRES = {  # the upstream capability without which a method does not exist here
    "prompts/list": "prompts", "prompts/get": "prompts", "completion/complete": "completions",
    "resources/list": "resources", "resources/templates/list": "resources", "resources/read": "resources",
    "resources/subscribe": "resources", "resources/unsubscribe": "resources", "logging/setLevel": "logging",
}

Handler = Callable[[DownstreamSession, "ServerRequestContext[Any, Any]"], Awaitable[dict[str, Any]]]


class Relay:
    """The downstream server's middleware: route, merge, intercept, forward."""

    def __init__(self, host: SessionHost) -> None:
        self._host = host
        self._stdio: StdioLane | None = None
        self._stream_ids: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()
        self._access = Access(host)
        methods = self._methods = Methods(host, self._access)
        self._routes: dict[str, Handler] = {
            "tools/list": methods.list,
            "prompts/list": methods.list,
            "resources/list": methods.list,
            "resources/templates/list": methods.list,
            "tools/call": self._tools_call,
            "prompts/get": methods.prompts_get,
            "resources/read": methods.by_uri,
            "resources/subscribe": methods.by_uri,
            "resources/unsubscribe": methods.by_uri,
            "completion/complete": methods.complete,
            "logging/setLevel": methods.fan_out,
            "subscriptions/listen": methods.listen,
            **{method: self._tasks for method in TASK_METHODS},
        }

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        method = ctx.method
        if ctx.request_id is None:
            return await self._notification(ctx, call_next)
        if method == "initialize":
            return await self._initialize(ctx, call_next)
        if method == OVERSIZED_METHOD:
            params = ctx.params or {}
            raise mcp_error(
                INVALID_REQUEST,
                f"message of {params.get('bytes')} bytes exceeds the gateway's limit of {params.get('limit')} bytes "
                "(gateway.max_message_bytes)",
            )
        if method in ("ping", "server/discover"):
            return await call_next(ctx) if method == "ping" else await self._discover(ctx)
        session = await self._session(ctx)
        if not self.offers(session, method):
            raise mcp_error(METHOD_NOT_FOUND, "Method not found", data=method)  # as a server without it answers
        with claim_id(ctx, self._held_ids(ctx)):
            handler = self._routes.get(method)
            if handler is None:
                result = await self._methods.unknown(session, ctx)
            else:
                result = await handler(session, ctx)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result = self.for_modern(session, method, result)
        return result

    def offers(self, session: DownstreamSession, method: str) -> bool:
        """Whether ``method`` exists here: False when it needs an upstream capability (``REQUIRES``)
        that none of the session's upstreams has; shared with the lean stdio lane."""
        needs = REQUIRES.get(method)
        return needs is None or any(lk.info and needs in lk.info.capabilities for lk in session.links.values())

    def for_modern(self, session: DownstreamSession, method: str, result: dict[str, Any]) -> dict[str, Any]:
        """A result as a 2026 client gets it (``resultType``, cache hints, the ``serverInfo`` stamp);
        shared with the lean stdio lane."""
        return complete_for_modern(method, result, self._host.server_identity(session)[0])

    async def list_items(self, session: DownstreamSession, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One page of a merged list (``tools/list`` and friends); shared with the lean lanes."""
        return await self._methods.list_items(session, method, params)

    def attach_stdio_lane(self, lane: StdioLane) -> None:
        """The stdio front's fast lane: told about a 2026-era stream's session and its ids.

        Only the stdio front opens one, and a stdio gateway serves exactly one stream."""
        self._stdio = lane

    def _held_ids(self, ctx: ServerRequestContext[Any, Any]) -> set[Any] | None:
        """Where this request's id is held while it runs (None: ids cannot collide here)."""
        connection = connection_of(ctx)
        if connection is None:
            return None
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return connection.state.setdefault(IN_FLIGHT_KEY, set())
        # A 2026 request gets a fresh connection of its own; on a duplex stream (stdio) the
        # stream's one notify-only outbound outlives them, so it keys the stream's ids. A
        # single-exchange request (HTTP) has no stream: its id cannot collide with another's.
        from mcp.server.connection import NotifyOnlyOutbound  # an SDK request context: the SDK is loaded

        outbound = getattr(connection, "outbound", None)
        if not isinstance(outbound, NotifyOnlyOutbound):
            return None
        return self._stream_ids.setdefault(outbound, set())

    # ---- lifecycle -------------------------------------------------------------------------------

    async def _initialize(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        hello = client_hello(ctx.params)
        connection = connection_of(ctx)
        if connection is not None and SESSION_KEY in connection.state:
            raise mcp_error(INVALID_REQUEST, "`initialize` was already received on this connection")
        result = await call_next(ctx)  # the SDK validates and negotiates first: nothing starts for a bad one
        session = await self._host.open_session(ctx, hello)
        self.opened(session)
        if connection is not None:
            connection.state[SESSION_KEY] = session
        if isinstance(result, dict):
            self.describe(session, result)
        return result

    def opened(self, session: DownstreamSession) -> DownstreamSession:
        """A session ``initialize`` just opened, made ready for the relay (the upstream->client screen)."""
        return self._access.attach_screen(session)

    def describe(self, session: DownstreamSession, result: dict[str, Any]) -> dict[str, Any]:
        """The ``initialize`` result's server half: merged capabilities, the identity, instructions
        (shared with the stdio opening, which answers ``initialize`` before the SDK is loaded)."""
        result["capabilities"] = self._capabilities(session)
        server_info, instructions = self._host.server_identity(session)
        result["serverInfo"] = server_info
        if instructions:
            result["instructions"] = instructions
        else:
            result.pop("instructions", None)
        return result

    async def _discover(self, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        session = await self._session(ctx)
        server_info, instructions = self._host.server_identity(session)
        result: dict[str, Any] = {
            "supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
            "capabilities": self._capabilities(session),
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": server_info},
        }
        if instructions:
            result["instructions"] = instructions
        return result

    def _capabilities(self, session: DownstreamSession) -> dict[str, Any]:
        caps: dict[str, Any] = {"tools": {"listChanged": True}}
        for link in session.ready_links:
            up = link.info.capabilities if link.info else {}
            if "prompts" in up:
                caps["prompts"] = {"listChanged": True}
            if "resources" in up:
                res = caps.setdefault("resources", {"listChanged": True})
                if (up.get("resources") or {}).get("subscribe"):
                    res["subscribe"] = True
            for simple in ("logging", "completions"):
                if simple in up:
                    caps[simple] = {}
            if isinstance(up.get("experimental"), dict):
                caps.setdefault("experimental", {}).update(up["experimental"])
        tasks = merged_capability(list(session.ready_links))
        if tasks is not None:
            caps["tasks"] = tasks
        return caps

    async def _session(self, ctx: ServerRequestContext[Any, Any]) -> DownstreamSession:
        session = attached(ctx)
        if session is not None:
            return session
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            session = self._access.attach_screen(await self._host.modern_session(ctx))
            held = self._held_ids(ctx)
            if self._stdio is not None and held is not None:
                self._stdio.modern_opened(session, held)
            return session
        raise mcp_error(INVALID_REQUEST, "the session is not initialized: send `initialize` first")

    async def _notification(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> None:
        await call_next(ctx)
        if ctx.method == "notifications/roots/list_changed":
            session = attached(ctx)
            if session is not None:
                for link in session.ready_links:
                    await link.notify(ctx.method, _strip_envelope(ctx.params))
        # notifications/cancelled was already applied by the dispatcher: cancelling the
        # relayed request's task sends a courtesy cancel to the upstream.

    # ---- routes ----------------------------------------------------------------------------------

    async def _tools_call(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        return await self.call_tool(session, ctx.params or {}, _progress_relay(ctx))

    async def call_tool(
        self, session: DownstreamSession, params: Mapping[str, Any], progress: ProgressFnT | None
    ) -> dict[str, Any]:
        """Route one tools/call and run it through the host's chain; shared with the lean stdio lane."""
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if type(name) is not str and not isinstance(name, str):
            raise mcp_error(INVALID_PARAMS, "`name` must be a string")
        if type(arguments) is not dict and not isinstance(arguments, Mapping):  # a decoded line's: a dict
            raise mcp_error(INVALID_PARAMS, "`arguments` must be an object")
        local = self._host.local_tools(session).get(name)
        if local is not None:
            return _as_task(session, params, "", await local(session, arguments))
        target = session.catalog.split(name)
        if target is None:
            await self._unknown_tool(session, name)
        assert target is not None
        link, tool = target
        definition = session.catalog.tool_definition(name)
        if definition is None and link.ready:
            await session.catalog.merged("tools/list")
            definition = session.catalog.tool_definition(name)
            if definition is None and link.config.prefix:
                await self._unknown_tool(session, name)
            # unprefixed: the gateway stands in for the server, which answers unknown names its own
            # way; the call is still decided (as `<upstream>.<name>`) before it is forwarded
        call = ToolCall(
            session=session,
            name=name,
            server=link.name,
            tool=tool,
            arguments=arguments,
            params=params,
            link=link,
            input_schema=(definition or {}).get("inputSchema"),
            progress=progress,
        )
        result = await self._host.tool_chain(call)
        return _as_task(session, params, link.name, result, tool) if "task" in params else result

    async def _tasks(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        async def forward(link: UpstreamLink, params: Mapping[str, Any]) -> dict[str, Any]:
            return await _forward(link, ctx, params)

        result = await session.tasks.handle(ctx.method, _strip_envelope(ctx.params), session.links, forward)
        task_id = (ctx.params or {}).get("taskId")
        origin = session.tasks.call_of(task_id)
        if ctx.method == "tasks/result" and origin is not None:
            # a task's result is the tool's result: screened as a tools/call result would be
            link = session.tasks.owner(session.links, task_id)
            result = await self._screened(session, "tools/call", link.name, origin[0], result, origin[1])
        return result

    # the access gate's answers the call path asks for (proxy/route/access.py)

    async def _screened(
        self, session: DownstreamSession, method: str, server: str, target: str, result: dict[str, Any],
        decision_id: str | None,
    ) -> dict[str, Any]:
        return await self._access.screened(session, method, server, target, result, decision_id)

    async def _unknown_tool(self, session: DownstreamSession, name: str) -> None:
        await self._access.unknown_tool(session, name)


def _as_task(
    session: DownstreamSession, params: Mapping[str, Any], upstream: str, result: dict[str, Any], tool: str = ""
) -> dict[str, Any]:
    """A task-augmented call: remember the upstream's task, or hold the gateway's own answer as one."""
    task = params.get("task")
    if not isinstance(task, Mapping) or merged_capability(list(session.ready_links)) is None:
        return result
    if isinstance(result.get("task"), Mapping) and upstream:
        decision = (result.get("_meta") or {}).get(DECISION_META_KEY)
        decision_id = decision.get("decision_id") if isinstance(decision, Mapping) else None
        session.tasks.created(upstream, result, tool, decision_id)
        return result
    return session.tasks.finished(result, task.get("ttl"))


async def forward_tool_call(call: ToolCall) -> ToolResult:
    """The innermost step of the tools/call chain: send it to the upstream under its own name."""
    link = call.link
    assert link is not None
    params = dict(_strip_envelope(call.params) or {})
    params["name"] = call.tool
    bridge = call.session.channel
    if is_bridge(bridge):
        rounds: dict[str, Any] = {k: params.pop(k) for k in ("inputResponses", "requestState") if k in params}
        return await bridge.call(
            link.name, rounds,
            lambda: link.request("tools/call", params, on_progress=call.progress, input_schema=call.input_schema),
        )
    return await link.request("tools/call", params, on_progress=call.progress, input_schema=call.input_schema)


def client_hello(params: Mapping[str, Any] | None) -> ClientHello:
    """What a client's ``initialize`` params say about it (mirrored to every upstream)."""
    params = params or {}
    return ClientHello(
        client_info=params.get("clientInfo") or {"name": "unknown", "version": "0"},
        capabilities=params.get("capabilities") or {},
        protocol_version=str(params.get("protocolVersion") or ""),
    )
