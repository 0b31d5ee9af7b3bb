"""One long-lived connection to one upstream MCP server, supervised.

An ``UpstreamLink`` owns the transport (a stdio subprocess or a Streamable HTTP
session) and a raw dispatcher over it: for stdio the gateway's own correlator
(:class:`proxy.wire.dispatch.LineDispatcher`: one reader task, one encode per request,
answers as decoded dicts), for HTTP the SDK's ``JSONRPCDispatcher`` with requests POSTed by their
callers (:mod:`proxy.upstream.http_call`), for legacy SSE the SDK's ``JSONRPCDispatcher``.
Either way, messages that are only relayed are never re-modelled. The link performs
the handshake once, pins the protocol version the upstream answered, and restarts the
upstream when it crashes. Only the calls in flight at the crash fail (with a clear
JSON-RPC error); a call made while the link is restarting waits for the restart,
bounded by ``connect_timeout``, so callers do not notice it. An upstream that fails to
come back is retried with backoff, and calls fail fast meanwhile.

It speaks for exactly one downstream client (the handshake mirrors that client's
``clientInfo`` and capabilities), so upstream sampling, elicitation and roots
requests have exactly one place to go.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import structlog

from proxy import protocol
from proxy.config import UpstreamConfig
from proxy.protocol import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    LATEST_HANDSHAKE_VERSION,
    LATEST_MODERN_VERSION,
    METHOD_NOT_FOUND,
    PROTOCOL_VERSION_META_KEY,
    REQUEST_TIMEOUT,
    SERVER_INFO_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
    mcp_error,
)
from proxy.wire.dispatch import LineDispatcher, OnNotify, OnRequest, not_delivered_type
from proxy.wire.upstream import stdio_upstream

if TYPE_CHECKING:
    from mcp.shared.dispatcher import CallOptions
    from mcp.shared.dispatcher import ProgressFnT as ProgressFn

log = structlog.get_logger("securegateway.upstream")

UPSTREAM_UNAVAILABLE = -32003
"""Server-defined JSON-RPC code: the upstream is down or restarting."""

MAX_INPUT_ROUNDS = 10
"""input_required rounds a modern upstream may ask for in one call before the gateway gives up."""
NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
HANDSHAKE_REFUSED = frozenset({UNSUPPORTED_PROTOCOL_VERSION, METHOD_NOT_FOUND, INVALID_REQUEST})

OnUpstreamRequest = Callable[["UpstreamLink", str, Mapping[str, Any] | None], Awaitable[dict[str, Any]]]
OnUpstreamNotify = Callable[["UpstreamLink", str, Mapping[str, Any] | None], Awaitable[None]]
OnRestart = Callable[["UpstreamLink"], Coroutine[Any, Any, None]]


class Channel(Protocol):
    """What the link drives: the stdio correlator and the SDK's ``JSONRPCDispatcher`` alike."""

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]: ...

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None) -> None:
        ...

    async def run(
        self, on_request: OnRequest, on_notify: OnNotify, on_notify_intercept: Any = None, *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None: ...


@dataclass(frozen=True)
class ClientHello:
    """What the downstream client said about itself; mirrored to every upstream."""

    client_info: Mapping[str, Any]
    capabilities: Mapping[str, Any]
    protocol_version: str = LATEST_HANDSHAKE_VERSION


@dataclass
class UpstreamInfo:
    """What the upstream answered to ``initialize``; pinned for the link's lifetime."""

    protocol_version: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    server_info: dict[str, Any] = field(default_factory=dict)
    instructions: str | None = None

    @property
    def modern(self) -> bool:
        return self.protocol_version == LATEST_MODERN_VERSION


class UpstreamLink:
    """A supervised connection to one upstream for one downstream client."""

    def __init__(
        self,
        config: UpstreamConfig,
        hello: ClientHello,
        *,
        on_request: OnUpstreamRequest,
        on_notify: OnUpstreamNotify,
        on_restart: OnRestart,
        max_message_bytes: int,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
        process: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._hello = hello
        self._on_request = on_request
        self._on_notify = on_notify
        self._on_restart = on_restart
        self._max_message_bytes = max_message_bytes
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._dispatcher: Channel | None = None
        self._headers: dict[str, str] = {}
        self.info: UpstreamInfo | None = None
        self.last_error: str | None = None
        self.generation = 0
        self._restarting = False  # crashed after being up; the first restart attempt is running
        self._changed = anyio.Event()  # set (and replaced) whenever ready/restarting changes
        # Pre-spawned process hand-off (proxy/upstream/prespawn.py): called before each stdio
        # spawn, returns a process started for this link (or None: spawn one); raises what that
        # spawn raised. Only the first connect gets one.
        self._process = process

    @property
    def ready(self) -> bool:
        return self._dispatcher is not None

    # ---- calls -----------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        on_progress: ProgressFn | None = None,
        timeout: float | None = None,
        input_schema: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send one request upstream and return the raw result dict; raise MCPError on failure.

        ``input_schema`` (for tools/call) lets a sessionless HTTP upstream get the
        ``Mcp-Param-*`` headers its ``x-mcp-header`` annotations ask for."""
        disp = self._dispatcher or await self._await_restart()
        opts: CallOptions = {"timeout": timeout if timeout is not None else self.config.timeout}
        if on_progress is not None:
            opts["on_progress"] = on_progress
        if self._headers:
            opts["headers"] = self._headers
        try:
            try:
                info = self.info
                if info is None or not info.modern:  # _send, inlined: one frame fewer on every resume
                    return await disp.send_raw_request(method, params, opts)
                return await self._modern_request(disp, method, params, opts, input_schema)
            except protocol.MCP_ERRORS as exc:
                if not isinstance(exc, not_delivered_type()):
                    raise
                # it went down before the request reached it: send it to the restart
                log.info("upstream went away before the request was sent; waiting for the restart",
                         upstream=self.name, method=method)
                return await self._send(await self._await_restart(), method, params, opts, input_schema)
        except protocol.MCP_ERRORS as exc:
            if exc.code == CONNECTION_CLOSED and exc.message == "Connection closed":
                # the connection itself went: the gateway's words (its own session with the client is
                # fine). A request's own stream failing ("SSE stream ended without a response") is the
                # SDK transport's error for that request, passed on as a direct client would see it.
                raise mcp_error(
                    INTERNAL_ERROR, f"upstream `{self.name}` closed the connection while handling `{method}`"
                ) from None
            if exc.code == REQUEST_TIMEOUT:
                raise mcp_error(
                    REQUEST_TIMEOUT, f"upstream `{self.name}` did not answer `{method}` within {opts['timeout']:g}s"
                ) from None
            raise

    async def _send(
        self,
        disp: Channel,
        method: str,
        params: Mapping[str, Any] | None,
        opts: CallOptions,
        input_schema: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        if self.info is not None and self.info.modern:
            return await self._modern_request(disp, method, params, opts, input_schema)
        return await disp.send_raw_request(method, params, opts)

    async def _await_restart(self) -> Channel:
        """The dispatcher once a restart in progress completes; UPSTREAM_UNAVAILABLE otherwise."""
        with anyio.move_on_after(self.config.connect_timeout):
            while self._dispatcher is None and self._restarting:
                await self._changed.wait()
        if self._dispatcher is not None:
            return self._dispatcher
        why = f": {self.last_error}" if self.last_error else ""
        raise mcp_error(UPSTREAM_UNAVAILABLE, f"upstream `{self.name}` is unavailable{why}")

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _modern_request(
        self,
        disp: Channel,
        method: str,
        params: Mapping[str, Any] | None,
        opts: CallOptions,
        input_schema: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A 2026-era call: envelope and routing headers on every request; input_required
        rounds are answered by the downstream client and the call retried."""
        body = dict(params or {})
        for _ in range(MAX_INPUT_ROUNDS + 1):
            call_opts = self._modern_opts(method, body, opts, input_schema)
            result = await disp.send_raw_request(method, self._envelope(body), call_opts)
            if result.get("resultType") != "input_required":
                return result
            responses: dict[str, Any] = {}
            for key, ask in (result.get("inputRequests") or {}).items():
                responses[key] = await self._on_request(self, str(ask.get("method")), ask.get("params"))
            body = {k: v for k, v in body.items() if k not in ("inputResponses", "requestState")}
            if responses:
                body["inputResponses"] = responses
            if result.get("requestState") is not None:
                body["requestState"] = result["requestState"]
        raise mcp_error(INTERNAL_ERROR, f"upstream `{self.name}` asked for input more than {MAX_INPUT_ROUNDS} times")

    def _envelope(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        out = dict(params or {})
        meta = dict(out.get("_meta") or {})
        meta[PROTOCOL_VERSION_META_KEY] = LATEST_MODERN_VERSION
        meta[CLIENT_CAPABILITIES_META_KEY] = dict(self._hello.capabilities)
        meta[CLIENT_INFO_META_KEY] = dict(self._hello.client_info)
        out["_meta"] = meta
        return out

    def _modern_opts(
        self, method: str, params: Mapping[str, Any], opts: CallOptions, input_schema: Mapping[str, Any] | None = None
    ) -> CallOptions:
        if self.config.transport != "http":
            return opts
        from mcp.shared.inbound import (  # an HTTP upstream: the SDK is loaded
            MCP_METHOD_HEADER,
            MCP_NAME_HEADER,
            encode_header_value,
            mcp_param_headers,
            x_mcp_header_map,
        )

        headers = {"mcp-protocol-version": LATEST_MODERN_VERSION, MCP_METHOD_HEADER: method}
        name_key = NAME_PARAM.get(method)
        if name_key and isinstance(params.get(name_key), str):
            # the upstream's own name (the gateway's prefix is already gone from the body)
            headers[MCP_NAME_HEADER] = encode_header_value(params[name_key])
        arguments = params.get("arguments")
        if method == "tools/call" and input_schema and isinstance(arguments, Mapping):
            headers.update(mcp_param_headers(x_mcp_header_map(input_schema), arguments))
        return {**opts, "headers": headers}

    async def _listen(self, disp: Channel) -> None:
        """Modern upstreams announce list changes only on a subscriptions/listen stream."""
        caps = self.info.capabilities if self.info else {}
        wanted = {
            "toolsListChanged": bool((caps.get("tools") or {}).get("listChanged")),
            "promptsListChanged": bool((caps.get("prompts") or {}).get("listChanged")),
            "resourcesListChanged": bool((caps.get("resources") or {}).get("listChanged")),
        }
        if not any(wanted.values()):
            return
        params = {"notifications": {k: v for k, v in wanted.items() if v}}
        opts: CallOptions = {"request_id": f"listen-{self.generation}"}
        try:
            await disp.send_raw_request(
                "subscriptions/listen", self._envelope(params), self._modern_opts("subscriptions/listen", params, opts)
            )
        except protocol.MCP_ERRORS as exc:
            log.warning("upstream refused subscriptions/listen", upstream=self.name, error=exc.message)

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        disp = self._dispatcher
        if disp is not None:
            await disp.notify(method, params, {"headers": self._headers} if self._headers else None)

    # ---- supervision -----------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve until the upstream goes away, restart with backoff; runs until cancelled.

        ``task_status.started()`` fires after the first attempt, successful or not, so one
        failing upstream never holds up the others.
        """
        started = False
        backoff = self._backoff_initial
        while True:
            connected_at: float | None = None
            try:
                async with self._connect() as disp:
                    ended = anyio.Event()
                    async with anyio.create_task_group() as tg:
                        await tg.start(self._serve, disp, ended)
                        with anyio.fail_after(self.config.connect_timeout):
                            self.info = await self._handshake(disp)
                        self._dispatcher = disp
                        self._restarting = False
                        self._signal()
                        connected_at = anyio.current_time()
                        self.generation += 1
                        self.last_error = None
                        backoff = self._backoff_initial
                        log.info("upstream connected", upstream=self.name,
                                 protocol=self.info.protocol_version, generation=self.generation)
                        if self.info.modern:
                            tg.start_soon(self._listen, disp)
                        if not started:
                            started = True
                            task_status.started()
                        elif self.generation > 1:
                            tg.start_soon(self._on_restart, self)
                        await ended.wait()
                        tg.cancel_scope.cancel()
                self.last_error = "the upstream closed the connection"
            except anyio.get_cancelled_exc_class():
                self._restarting = False
                self._mark_down("gateway shutting down")
                raise
            except TimeoutError:
                self.last_error = f"no answer to `initialize` within {self.config.connect_timeout:g}s"
            except Exception as exc:  # supervision boundary: any failure means "down, retry"
                self.last_error = _describe(exc)
            # A link that was up restarts at once and callers wait for it; a restart that
            # failed backs off, and callers fail fast until the upstream is back.
            self._restarting = connected_at is not None
            self._mark_down(self.last_error)
            if connected_at is not None:  # at once, unless it is crashing as soon as it starts
                delay = 0.0 if anyio.current_time() - connected_at > 1.0 else self._backoff_initial
            else:
                delay, backoff = backoff, min(backoff * 2, self._backoff_max)
            log.warning("upstream down", upstream=self.name, error=self.last_error, retry_in=delay)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(delay)

    def _mark_down(self, why: str | None) -> None:
        self._dispatcher = None
        self.last_error = why
        self._signal()

    async def _serve(
        self,
        disp: Channel,
        ended: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await disp.run(self._dispatch_request, self._dispatch_notify, task_status=task_status)
        finally:
            self._lost(disp)
            ended.set()

    def _lost(self, disp: Channel) -> None:
        """``disp`` is down from this instant: new calls wait for the restart."""
        if self._dispatcher is disp:
            self._dispatcher = None
            self._restarting = True
            self._signal()

    async def _dispatch_request(
        self, dctx: Any, method: str, params: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        if method == "ping":
            return {}
        return await self._on_request(self, method, params)

    async def _dispatch_notify(
        self, dctx: Any, method: str, params: Mapping[str, Any] | None
    ) -> None:
        if method in ("notifications/progress", "notifications/subscriptions/acknowledged", "notifications/cancelled"):
            # progress goes through the per-request callback; the ack is ours alone; a cancel names the
            # upstream's own request to us, which the dispatcher has cancelled: the gateway's request
            # to the client, cancelled with it, is cancelled there under the client's id
            return
        await self._on_notify(self, method, params)

    async def _handshake(self, disp: Channel) -> UpstreamInfo:
        """Pin the upstream's era once: the handshake era when it accepts ``initialize``
        (most transparent for every client), else the sessionless era via ``server/discover``."""
        if self.config.protocol == LATEST_MODERN_VERSION:
            return await self._discover(disp)
        try:
            return await self._initialize(disp)
        except protocol.MCP_ERRORS as exc:
            if self.config.protocol != "auto" or exc.code not in HANDSHAKE_REFUSED:
                raise
            log.info("upstream refused initialize; trying server/discover", upstream=self.name, error=exc.message)
            return await self._discover(disp)

    async def _discover(self, disp: Channel) -> UpstreamInfo:
        result = await disp.send_raw_request(
            "server/discover", self._envelope(None),
            {"cancel_on_abandon": False, **self._modern_opts("server/discover", {}, {})},
        )
        supported = result.get("supportedVersions") or []
        if LATEST_MODERN_VERSION not in supported:
            raise mcp_error(UNSUPPORTED_PROTOCOL_VERSION, f"upstream supports none of our versions: {supported}")
        self._headers = {"mcp-protocol-version": LATEST_MODERN_VERSION} if self.config.transport == "http" else {}
        meta = result.get("_meta") or {}
        return UpstreamInfo(
            protocol_version=LATEST_MODERN_VERSION,
            capabilities=dict(result.get("capabilities") or {}),
            server_info=dict(meta.get(SERVER_INFO_META_KEY) or {}),
            instructions=result.get("instructions"),
        )

    async def _initialize(self, disp: Channel) -> UpstreamInfo:
        requested = self.config.protocol if self.config.protocol.startswith("2025") else LATEST_HANDSHAKE_VERSION
        result = await disp.send_raw_request(
            "initialize",
            {
                "protocolVersion": requested,
                "capabilities": dict(self._hello.capabilities),
                "clientInfo": dict(self._hello.client_info),
            },
            {"cancel_on_abandon": False},
        )
        version = str(result.get("protocolVersion", requested))
        if self.config.transport == "http":
            self._headers = {"mcp-protocol-version": version}
        await disp.notify("notifications/initialized", None, {"headers": self._headers} if self._headers else None)
        return UpstreamInfo(
            protocol_version=version,
            capabilities=dict(result.get("capabilities") or {}),
            server_info=dict(result.get("serverInfo") or {}),
            instructions=result.get("instructions"),
        )

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[Channel]:
        cfg = self.config
        if cfg.transport == "stdio":
            env = {k: os.environ[k] for k in cfg.env_passthrough if k in os.environ}
            env.update(cfg.env)
            # the fields of the SDK's StdioServerParameters (a pydantic model: not built on the opening path)
            params: Any = SimpleNamespace(command=cfg.command[0], args=list(cfg.command[1:]), env=env, cwd=cfg.cwd)
            adopted = await self._process() if self._process is not None else None  # pre-spawned hand-off
            async with stdio_upstream(
                params, upstream=self.name, max_message_bytes=self._max_message_bytes, errlog=sys.stderr,
                process=adopted,
            ) as pipe:
                disp = LineDispatcher(pipe.lines, pipe, upstream=self.name)
                disp.on_close = partial(self._lost, disp)
                yield disp
        elif cfg.sse:
            assert cfg.url is not None
            from mcp.client.sse import sse_client
            from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher

            from proxy.upstream.repair import repair_responses

            async with sse_client(cfg.url, headers=dict(cfg.headers), timeout=cfg.connect_timeout) as streams:
                yield JSONRPCDispatcher(*repair_responses(streams, self.name)[:2])
        else:
            assert cfg.url is not None
            # imported here, not at the top: a gateway with only stdio upstreams never loads aiohttp
            from proxy.upstream.http_call import http_channel
            from proxy.upstream.http_pool import upstream_http_client

            async with (
                upstream_http_client(cfg.headers) as http,
                # requests POSTed by their callers, the rest the SDK's (proxy/upstream/http_call.py)
                http_channel(
                    cfg.url, http_client=http, upstream=self.name, max_sse_event_size=self._max_message_bytes
                ) as channel,
            ):
                channel.on_close = partial(self._lost, channel)
                yield channel


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        inner = exc.exceptions[0] if exc.exceptions else exc
        return _describe(inner)
    if isinstance(exc, FileNotFoundError):
        return f"command not found: `{exc.filename}`"
    if protocol.is_mcp_error(exc):
        return f"{getattr(exc, 'message', exc)} (code {getattr(exc, 'code', '?')})"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
