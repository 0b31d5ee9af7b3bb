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
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog

from proxy import protocol
from proxy.catalog import LISTS
from proxy.enforce import DECISION_META_KEY, POLICY_DENIED, RESULT_BLOCKED, Verdict
from proxy.intercept import CallNext, ToolCall, ToolResult
from proxy.protocol import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MODERN_PROTOCOL_VERSIONS,
    SERVER_INFO_META_KEY,
    mcp_error,
)
from proxy.session import DownstreamSession, is_bridge
from proxy.tasks import TASK_METHODS, merged_capability
from proxy.upstream.link import ClientHello, UpstreamLink
from proxy.wire.framing import OVERSIZED_METHOD

if TYPE_CHECKING:  # the SDK is not loaded on a stdio client's opening (proxy/wire/opening.py)
    from mcp import MCPError
    from mcp.server.context import ServerRequestContext
    from mcp.shared.dispatcher import ProgressFnT

log = structlog.get_logger("securegateway.relay")

SESSION_KEY = "securegateway.session"
IN_FLIGHT_KEY = "securegateway.in_flight"
ENVELOPE_PREFIX = "io.modelcontextprotocol/"
REQUIRES = {  # the upstream capability without which a method does not exist here
    "prompts/list": "prompts", "prompts/get": "prompts", "completion/complete": "completions",
    "resources/list": "resources", "resources/templates/list": "resources", "resources/read": "resources",
    "resources/subscribe": "resources", "resources/unsubscribe": "resources", "logging/setLevel": "logging",
}
CACHEABLE = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"})

Handler = Callable[[DownstreamSession, "ServerRequestContext[Any, Any]"], Awaitable[dict[str, Any]]]


class LocalTool(Protocol):
    """A tool the gateway serves itself (``propose_policy``)."""

    definition: Mapping[str, Any]

    async def __call__(self, session: DownstreamSession, arguments: Mapping[str, Any]) -> ToolResult: ...


class AccessGate(Protocol):
    """The decision point for everything but tools/call (which runs the interceptor chain)."""

    async def authorize(
        self, session: DownstreamSession, *, method: str, kind: str, server: str, name: str,
        arguments: Mapping[str, Any],
    ) -> Verdict: ...

    async def unknown_tool(self, session: DownstreamSession, name: str) -> Verdict: ...

    def reaches(self, session: DownstreamSession, upstream: str) -> bool: ...

    async def screen(
        self, session: DownstreamSession, *, method: str, server: str, target: str, payload: Any,
        decision_id: str | None = None,
    ) -> Any: ...


class SessionHost(Protocol):
    """What the relay needs from the gateway: sessions, local tools, the tools/call chain."""

    async def open_session(self, ctx: ServerRequestContext[Any, Any], hello: ClientHello) -> DownstreamSession: ...

    def modern_session(self, ctx: ServerRequestContext[Any, Any]) -> Awaitable[DownstreamSession]: ...

    def local_tools(self, session: DownstreamSession) -> Mapping[str, LocalTool]: ...

    async def visible_tools(self, session: DownstreamSession, tools: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    @property
    def tool_chain(self) -> CallNext: ...

    def server_identity(self, session: DownstreamSession) -> tuple[dict[str, Any], str | None]: ...

    @property
    def access(self) -> AccessGate | None: ...


class StdioLane(Protocol):
    """What the relay tells the stdio fast lane about a 2026-era stdio stream.

    A 2026 (sessionless) client has no connection object that lives across its requests:
    the lane learns the identity's session, and the set holding the stream's ids in flight
    (shared by both lanes), from the first request the SDK path served."""

    def modern_opened(self, session: DownstreamSession, held: set[Any]) -> None: ...


class Relay:
    """The downstream server's middleware: route, merge, intercept, forward."""

    def __init__(self, host: SessionHost) -> None:
        self._host = host
        self._stdio: StdioLane | None = None
        self._stream_ids: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()
        self._routes: dict[str, Handler] = {
            "tools/list": self._list,
            "prompts/list": self._list,
            "resources/list": self._list,
            "resources/templates/list": self._list,
            "tools/call": self._tools_call,
            "prompts/get": self._prompts_get,
            "resources/read": self._by_uri,
            "resources/subscribe": self._by_uri,
            "resources/unsubscribe": self._by_uri,
            "completion/complete": self._complete,
            "logging/setLevel": self._fan_out,
            "subscriptions/listen": self._listen,
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
        needs = REQUIRES.get(method)
        if needs is not None and not any(lk.info and needs in lk.info.capabilities for lk in session.links.values()):
            raise mcp_error(METHOD_NOT_FOUND, "Method not found", data=method)  # as a server without it answers
        with _claim_id(ctx, self._held_ids(ctx)):
            handler = self._routes.get(method)
            if handler is None:
                result = await self._unknown(session, ctx)
            else:
                result = await handler(session, ctx)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result = self.for_modern(session, method, result)
        return result

    def for_modern(self, session: DownstreamSession, method: str, result: dict[str, Any]) -> dict[str, Any]:
        """A result as a 2026 client gets it (``resultType``, cache hints, the ``serverInfo`` stamp);
        shared with the lean stdio lane."""
        return _complete_for_modern(method, result, self._host.server_identity(session)[0])

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
        return self._attach_screen(session)

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
        session = _attached(ctx)
        if session is not None:
            return session
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            session = self._attach_screen(await self._host.modern_session(ctx))
            held = self._held_ids(ctx)
            if self._stdio is not None and held is not None:
                self._stdio.modern_opened(session, held)
            return session
        raise mcp_error(INVALID_REQUEST, "the session is not initialized: send `initialize` first")

    def _attach_screen(self, session: DownstreamSession) -> DownstreamSession:
        """Upstream -> client requests (sampling, elicitation) pass the same result scan."""
        gate = self._host.access
        if gate is not None and session.screen is None:

            async def screen(upstream: str, method: str, params: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
                outcome = await gate.screen(session, method=method, server=upstream, target=method, payload=params)
                if outcome.payload is None and outcome.findings:
                    codes = ", ".join(sorted({f.code for f in outcome.findings}))
                    raise mcp_error(
                        RESULT_BLOCKED, f"the gateway withheld `{method}` from the client: it contained {codes}"
                    )
                return params if not outcome.findings else outcome.payload

            session.screen = screen
        return session

    async def _decide(
        self, session: DownstreamSession, method: str, kind: str, server: str, name: str, arguments: Any
    ) -> str | None:
        """Ask the gate; raise the JSON-RPC denial (decision in ``data``) or return the decision id."""
        gate = self._host.access
        if gate is None:
            return None
        args = dict(arguments) if isinstance(arguments, Mapping) else {}
        verdict = await gate.authorize(session, method=method, kind=kind, server=server, name=name, arguments=args)
        if not verdict.allowed:
            reason = verdict.view.get("reason", "denied by policy")
            raise mcp_error(POLICY_DENIED, f"denied: {reason}", data=verdict.view)
        return verdict.decision.decision_id

    async def _screened(
        self, session: DownstreamSession, method: str, server: str, target: str, result: dict[str, Any],
        decision_id: str | None,
    ) -> dict[str, Any]:
        gate = self._host.access
        if gate is None:
            return result
        outcome = await gate.screen(
            session, method=method, server=server, target=target, payload=result, decision_id=decision_id
        )
        if not outcome.findings:
            return result
        if outcome.payload is None:
            codes = ", ".join(sorted({f.code for f in outcome.findings}))
            raise mcp_error(RESULT_BLOCKED, f"the gateway withheld the `{method}` result: it contained {codes}")
        return dict(outcome.payload)

    async def _notification(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> None:
        await call_next(ctx)
        if ctx.method == "notifications/roots/list_changed":
            session = _attached(ctx)
            if session is not None:
                for link in session.ready_links:
                    await link.notify(ctx.method, _strip_envelope(ctx.params))
        # notifications/cancelled was already applied by the dispatcher: cancelling the
        # relayed request's task sends a courtesy cancel to the upstream.

    # ---- routes ----------------------------------------------------------------------------------

    async def _list(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        return await self.list_items(session, ctx.method, ctx.params or {})

    async def list_items(self, session: DownstreamSession, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One page of a merged list (``tools/list`` and friends); shared with the lean stdio lane."""
        kind = LISTS[method]
        items = await session.catalog.merged(method)
        if method == "tools/list":
            items = await self._host.visible_tools(session, items)  # the gateway's own tools first
        else:
            items = await self._listable(session, kind, items)
        page, next_cursor = session.catalog.page(items, params.get("cursor"))
        result: dict[str, Any] = {kind.field: page}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        return result

    async def _listable(
        self, session: DownstreamSession, kind: Any, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Prompts and resources of upstreams the model's key scope does not reach are not listed."""
        gate = self._host.access
        if gate is None:
            return items
        kept: list[dict[str, Any]] = []
        for item in items:
            name = item.get(kind.key)
            if kind.namespaced:
                target = session.catalog.split(name)
                owner = target[0].name if target is not None else None
            else:
                try:
                    owner = (await session.catalog.resource_owner(name)).name
                except protocol.MCP_ERRORS:
                    owner = None
            if owner is not None and gate.reaches(session, owner):
                kept.append(item)
        return kept

    async def _tools_call(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        return await self.call_tool(session, ctx.params or {}, _progress_relay(ctx))

    async def call_tool(
        self, session: DownstreamSession, params: Mapping[str, Any], progress: ProgressFnT | None
    ) -> dict[str, Any]:
        """Route one tools/call and run it through the host's chain; shared with the lean stdio lane."""
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if not isinstance(name, str):
            raise mcp_error(INVALID_PARAMS, "`name` must be a string")
        if not isinstance(arguments, Mapping):
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
        return _as_task(session, params, link.name, await self._host.tool_chain(call), tool)

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

    async def _unknown_tool(self, session: DownstreamSession, name: str) -> None:
        gate = self._host.access
        data = (await gate.unknown_tool(session, name)).view if gate is not None else None
        raise mcp_error(INVALID_PARAMS, f"unknown tool `{name[:200]}`", data=data)

    async def _prompts_get(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        params = dict(ctx.params or {})
        target = session.catalog.split(params.get("name"))
        if target is None:
            raise mcp_error(INVALID_PARAMS, f"unknown prompt `{str(params.get('name'))[:200]}`")
        link, params["name"] = target
        decision_id = await self._decide(
            session, ctx.method, "prompt", link.name, params["name"], params.get("arguments") or {}
        )
        result = await _forward(link, ctx, params)
        return await self._screened(session, ctx.method, link.name, params["name"], result, decision_id)

    async def _by_uri(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        uri = (ctx.params or {}).get("uri")
        link = await session.catalog.resource_owner(uri)
        assert isinstance(uri, str)  # resource_owner refuses anything else
        decision_id = await self._decide(session, ctx.method, "resource", link.name, uri, {"uri": uri})
        result = await _forward(link, ctx, ctx.params)
        if ctx.method != "resources/read":
            return result
        return await self._screened(session, ctx.method, link.name, uri, result, decision_id)

    async def _complete(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        params = dict(ctx.params or {})
        ref = dict(params.get("ref") or {})
        argument = params.get("argument")
        arguments: dict[str, Any] = {}
        if isinstance(argument, Mapping) and isinstance(argument.get("name"), str):
            arguments[argument["name"]] = argument.get("value")
        if ref.get("type") == "ref/prompt":
            target = session.catalog.split(ref.get("name"))
            if target is None:
                raise mcp_error(INVALID_PARAMS, f"unknown prompt `{str(ref.get('name'))[:200]}`")
            link, ref["name"] = target
            params["ref"] = ref
            kind, name = "prompt", ref["name"]
        elif ref.get("type") == "ref/resource":
            link = await session.catalog.resource_owner(ref.get("uri"))
            kind, name = "resource", str(ref.get("uri"))
            arguments = {"uri": name}
        else:
            raise mcp_error(INVALID_PARAMS, "`ref.type` must be `ref/prompt` or `ref/resource`")
        if not (link.info and "completions" in link.info.capabilities):
            raise mcp_error(METHOD_NOT_FOUND, f"upstream `{link.name}` does not offer completions", data=ctx.method)
        decision_id = await self._decide(session, ctx.method, kind, link.name, name, arguments)
        result = await _forward(link, ctx, params)
        return await self._screened(session, ctx.method, link.name, name, result, decision_id)

    async def _fan_out(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        """logging/setLevel applies to every upstream that logs and that the model may reach:
        decided (kind ``method``) and audited per upstream; denied only if every one is."""
        serving = [lk for lk in session.ready_links if lk.info and "logging" in lk.info.capabilities]
        allowed, denied = [], None
        for link in serving:
            try:
                await self._decide(session, ctx.method, "method", link.name, ctx.method,
                                   {"level": (ctx.params or {}).get("level")})
            except protocol.MCP_ERRORS as exc:  # this upstream is out of the model's reach: skipped
                denied = exc
                continue
            allowed.append(link)
        if denied is not None and not allowed:
            raise denied
        serving = allowed
        async with anyio.create_task_group() as tg:
            for link in serving:
                tg.start_soon(_forward, link, ctx, ctx.params)
        return {}

    async def _listen(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        """A sessionless client's change stream, fed by this identity's upstream notifications."""
        bridge = session.channel
        if not is_bridge(bridge):
            raise mcp_error(METHOD_NOT_FOUND, "Method not found", data=ctx.method)
        from mcp_types import SubscriptionsListenRequestParams

        params = SubscriptionsListenRequestParams.model_validate(ctx.params or {}, by_name=False)
        result = await bridge.listen(ctx, params)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    async def _unknown(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        """A method the gateway does not route: with one upstream it is passed through as is."""
        if len(session.links) == 1:
            (link,) = session.links.values()
            decision_id = await self._decide(session, ctx.method, "method", link.name, ctx.method, {})
            result = await _forward(link, ctx, ctx.params)
            return await self._screened(session, ctx.method, link.name, ctx.method, result, decision_id)
        raise mcp_error(METHOD_NOT_FOUND, "Method not found", data=ctx.method)


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


async def _forward(
    link: UpstreamLink, ctx: ServerRequestContext[Any, Any], params: Mapping[str, Any] | None
) -> dict[str, Any]:
    return await link.request(ctx.method, _strip_envelope(params), on_progress=_progress_relay(ctx))


def _progress_relay(ctx: ServerRequestContext[Any, Any]) -> ProgressFnT | None:
    """Route upstream progress back to the caller that asked for it (and only then)."""
    meta = (ctx.params or {}).get("_meta")
    if not isinstance(meta, Mapping) or meta.get("progressToken") is None:
        return None
    session = ctx.session

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        with contextlib.suppress(Exception):  # the caller may be gone (a finished MRTR round)
            await session.report_progress(progress, total, message)

    return relay


def _strip_envelope(params: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Drop a 2026 client's envelope keys before they reach a handshake-era upstream."""
    if not params:
        return params
    meta = params.get("_meta")
    if not isinstance(meta, Mapping) or not any(str(k).startswith(ENVELOPE_PREFIX) for k in meta):
        return params
    kept = {k: v for k, v in meta.items() if not str(k).startswith(ENVELOPE_PREFIX)}
    out = dict(params)
    if kept:
        out["_meta"] = kept
    else:
        del out["_meta"]
    return out


def _complete_for_modern(method: str, result: dict[str, Any], server_info: Mapping[str, Any]) -> dict[str, Any]:
    """A 2026 client needs ``resultType`` (and cache hints on cacheable results); every result
    carries the ``serverInfo`` stamp of the server the client sees (an upstream's own stamp
    names the upstream, not this one, so it is replaced)."""
    result = {**result, "resultType": result.get("resultType") or "complete"}
    if method in CACHEABLE and "ttlMs" not in result:
        result.update(ttlMs=0, cacheScope="private")
    meta = result.get("_meta")
    if meta is None or isinstance(meta, Mapping):
        result["_meta"] = {**(meta or {}), SERVER_INFO_META_KEY: dict(server_info)}
    return result


def id_key(request_id: Any) -> tuple[str, Any]:
    """How a request id is held: ``1`` and ``"1"`` are different ids."""
    return (type(request_id).__name__, request_id)


def duplicate_id(request_id: Any) -> MCPError:
    return mcp_error(*duplicate_id_error(request_id))


def duplicate_id_error(request_id: Any) -> tuple[int, str]:
    """``(code, message)`` of the refusal of a request id already in flight."""
    return INVALID_REQUEST, f"request id `{str(request_id)[:80]}` is already in flight on this session"


def client_hello(params: Mapping[str, Any] | None) -> ClientHello:
    """What a client's ``initialize`` params say about it (mirrored to every upstream)."""
    params = params or {}
    return ClientHello(
        client_info=params.get("clientInfo") or {"name": "unknown", "version": "0"},
        capabilities=params.get("capabilities") or {},
        protocol_version=str(params.get("protocolVersion") or ""),
    )


@contextlib.contextmanager
def _claim_id(ctx: ServerRequestContext[Any, Any], held: set[Any] | None) -> Any:
    """Hold this request's id in ``held`` while it runs; a second holder gets -32600."""
    if held is None or ctx.request_id is None:
        yield
        return
    key = id_key(ctx.request_id)
    if key in held:
        raise duplicate_id(ctx.request_id)
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)


def _attached(ctx: ServerRequestContext[Any, Any]) -> DownstreamSession | None:
    """The session ``initialize`` attached to this connection, if any."""
    connection = connection_of(ctx)
    return connection.state.get(SESSION_KEY) if connection is not None else None


def connection_of(ctx: ServerRequestContext[Any, Any]) -> Any:
    # ServerRequestContext carries the per-request ServerSession; the per-connection
    # object (with its `state` scratch and `exit_stack`) is its `_connection`. Pinned to
    # mcp==2.3.0; covered by the relay's end-to-end tests.
    return getattr(ctx.session, "_connection", None)
