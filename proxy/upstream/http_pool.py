"""The HTTP client for Streamable HTTP upstreams: one keep-alive pool shared by every link.

Every link (one per downstream session and upstream) gets its own ``httpx2.AsyncClient``
(its own headers and cookie jar: an upstream's cookies never cross from one client's
session to another's) over one connection pool per event loop, so calls reuse connections
across calls and across sessions; a new session opens only the connection its standalone
GET stream holds. The pool has no connection cap, because each open session holds one
connection for that stream: a cap would make session N+1 wait for a free connection.

The SDK's client transport closes a POST's SSE response as soon as the JSON-RPC answer has
arrived, a moment before the server ends the stream. httpx discards a connection whose
response was closed unread, so every call to a handshake-era upstream (which answers with SSE)
opened a new TCP connection. ``DrainingTransport`` lets that tail arrive first: closing an
unfinished event stream reads what is left for a few milliseconds, and the connection goes
back to the pool when the server ends the stream in time (it does, right after the answer).
A stream that is still open after the budget (a cancelled call, the standalone GET stream) is
closed as before, so the server still sees the disconnect.

Request POSTs of the lean transport (:mod:`proxy.upstream.http_lean`) go over the same
pool's ``aiohttp`` half: one ``aiohttp.ClientSession`` per event loop (no cookie jar of its
own: each link's httpx jar is read and fed per request), over a connector with no
connection cap that keeps idle connections alive, closed with the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
import anyio
import anyio.lowlevel
import httpx2
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

DRAIN_SECONDS = 0.05
DRAIN_BYTES = 256 * 1024
KEEPALIVE_CONNECTIONS = 64
"""Idle connections the shared pool keeps open (the rest close when they go idle)."""
KEEPALIVE_SECONDS = 1.5
"""How long an idle connection of the lean (aiohttp) half is reused. Shorter than the servers'
own keep-alive timeouts (uvicorn, hypercorn, Node: 5 s; gunicorn: 2 s), so that the gateway,
not the server, retires an idle connection: a server that closes one just as a request is
written on it would fail that request (a POST is not retried: it may have been applied)."""


class _DrainOnClose(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner
        self._chunks = inner.__aiter__()
        self._finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk
        self._finished = True

    async def aclose(self) -> None:
        try:
            if not self._finished:
                with anyio.move_on_after(DRAIN_SECONDS):
                    drained = 0
                    async for chunk in self._chunks:
                        drained += len(chunk)
                        if drained > DRAIN_BYTES:
                            break
        except Exception:  # a broken tail only means the connection is not reused
            pass
        finally:
            await self._inner.aclose()


class DrainingTransport(httpx2.AsyncBaseTransport):
    """``httpx2.AsyncHTTPTransport`` whose event-stream responses finish before they close."""

    def __init__(self) -> None:
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS)
        self._inner = httpx2.AsyncHTTPTransport(limits=limits)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _DrainOnClose(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Borrowed(httpx2.AsyncBaseTransport):
    """The shared pool as one client sees it: closing the client does not close the pool."""

    def __init__(self, pool: DrainingTransport) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._pool.handle_async_request(request)

    async def aclose(self) -> None:
        pass


@dataclass
class _Shared:
    transport: DrainingTransport = field(default_factory=DrainingTransport)
    users: int = 0
    _lean: aiohttp.ClientSession | None = None

    def lean(self) -> aiohttp.ClientSession:
        if self._lean is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS)
            self._lean = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=MCP_DEFAULT_TIMEOUT,
                                              sock_read=MCP_DEFAULT_SSE_READ_TIMEOUT),
            )
        return self._lean

    async def aclose(self) -> None:
        await self.transport.aclose()
        if self._lean is not None:
            await self._lean.close()


_POOLS: dict[anyio.lowlevel.EventLoopToken, _Shared] = {}


@contextlib.asynccontextmanager
async def shared_pool() -> AsyncIterator[DrainingTransport]:
    """Hold this event loop's shared pool open for the block (the gateway holds it while it runs,
    so that idle connections outlive the sessions that opened them); it closes with its last user."""
    token = anyio.lowlevel.current_token()
    shared = _POOLS.get(token)
    if shared is None:
        shared = _POOLS[token] = _Shared()
    shared.users += 1
    try:
        yield shared.transport
    finally:
        shared.users -= 1
        if shared.users == 0:
            if _POOLS.get(token) is shared:
                del _POOLS[token]
            with anyio.CancelScope(shield=True):
                await shared.aclose()


@contextlib.asynccontextmanager
async def upstream_http_client(headers: Mapping[str, str]) -> AsyncIterator[httpx2.AsyncClient]:
    """What ``create_mcp_http_client`` builds (same timeouts), over this event loop's shared pool."""
    async with (
        shared_pool() as pool,
        httpx2.AsyncClient(
            headers=dict(headers),
            timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
            transport=_Borrowed(pool),
        ) as client,
    ):
        yield client


@contextlib.asynccontextmanager
async def lean_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The shared pool's aiohttp session. Inside ``upstream_http_client`` (as every link uses it)
    the pool is already held and is not counted again; outside it, the block holds it."""
    shared = _POOLS.get(anyio.lowlevel.current_token())
    if shared is not None and shared.users:
        yield shared.lean()
        return
    async with shared_pool():
        yield _POOLS[anyio.lowlevel.current_token()].lean()


def shared_pool_users() -> int:
    """Holders of this event loop's shared pool: the running gateway and its links (for tests)."""
    shared = _POOLS.get(anyio.lowlevel.current_token())
    return 0 if shared is None else shared.users
