"""The HTTP client for Streamable HTTP upstreams: one keep-alive pool per link, reused per call.

The SDK's client transport closes a POST's SSE response as soon as the JSON-RPC answer has
arrived, a moment before the server ends the stream. httpx discards a connection whose
response was closed unread, so every call to a handshake-era upstream (which answers with SSE)
opened a new TCP connection. ``DrainingTransport`` lets that tail arrive first: closing an
unfinished event stream reads what is left for a few milliseconds, and the connection goes
back to the pool when the server ends the stream in time (it does, right after the answer).
A stream that is still open after the budget (a cancelled call, the standalone GET stream) is
closed as before, so the server still sees the disconnect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import anyio
import httpx2
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

DRAIN_SECONDS = 0.05
DRAIN_BYTES = 256 * 1024


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
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _DrainOnClose(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def upstream_http_client(headers: Mapping[str, str]) -> httpx2.AsyncClient:
    """What ``create_mcp_http_client`` builds (same timeouts), over the draining pool."""
    return httpx2.AsyncClient(
        headers=dict(headers),
        timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
        transport=DrainingTransport(),
    )
