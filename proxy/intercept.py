"""The tools/call chain: interceptors ``(call, call_next) -> result``, composed once.

Interceptors are listed outermost first. Each returns a new result dict (a
CallToolResult on the wire) instead of mutating shared state; the innermost step
forwards the call to its upstream (or serves a gateway-local tool).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcp.shared.dispatcher import ProgressFnT

from proxy.session import DownstreamSession
from proxy.upstream.link import UpstreamLink

ToolResult = dict[str, Any]
CallNext = Callable[["ToolCall"], Awaitable[ToolResult]]
Interceptor = Callable[["ToolCall", CallNext], Awaitable[ToolResult]]


@dataclass(frozen=True)
class ToolCall:
    """One tools/call as the chain sees it."""

    session: DownstreamSession
    name: str  # as the client sent it
    server: str  # the upstream's name ("" for gateway-local tools)
    tool: str  # the upstream's own tool name
    arguments: Mapping[str, Any]
    params: Mapping[str, Any]  # the raw tools/call params (``_meta`` included)
    link: UpstreamLink | None = None
    input_schema: Mapping[str, Any] | None = None
    progress: ProgressFnT | None = None

    @property
    def qualified(self) -> str:
        """The dotted ``<upstream>.<tool>`` form policies use, whatever the wire separator."""
        return f"{self.server}.{self.tool}" if self.server else self.tool


def compose(interceptors: Sequence[Interceptor], terminal: CallNext) -> CallNext:
    """Fold the interceptors around ``terminal`` once, at start-up."""
    chain = terminal
    for interceptor in reversed(interceptors):
        chain = _bind(interceptor, chain)
    return chain


def _bind(interceptor: Interceptor, call_next: CallNext) -> CallNext:
    async def step(call: ToolCall) -> ToolResult:
        return await interceptor(call, call_next)

    return step
