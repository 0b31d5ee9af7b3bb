"""What the relay needs from the gateway: sessions, local tools, the tools/call chain, the gate."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from proxy.enforce import Verdict
from proxy.intercept import CallNext, ToolResult
from proxy.session import DownstreamSession
from proxy.upstream.link import ClientHello

if TYPE_CHECKING:  # the SDK is loaded at a stdio client's first need (proxy/wire/opening.py)
    from mcp.server.context import ServerRequestContext

__all__ = ["AccessGate", "LocalTool", "SessionHost", "StdioLane"]


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
