"""The tools/call chain: interceptors ``(call, call_next) -> result``, composed once.

Interceptors are listed outermost first. Each returns a new result dict (a
CallToolResult on the wire) instead of mutating shared state; the innermost step
forwards the call to its upstream (or serves a gateway-local tool).

:func:`compose` folds the list once, at start-up, into plain functions: calling a step
returns the interceptor's own coroutine (no wrapper coroutine per layer), and an
interceptor that can tell cheaply that a call needs nothing from it (:class:`Bypass`)
is stepped over without being entered at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from proxy.session import DownstreamSession
from proxy.upstream.link import UpstreamLink

if TYPE_CHECKING:
    from mcp.shared.dispatcher import ProgressFnT

__all__ = ["Bypass", "CallNext", "Interceptor", "ToolCall", "ToolResult", "compose"]

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


@runtime_checkable
class Bypass(Protocol):
    """An interceptor that can say, cheaply and synchronously, that a call needs nothing from it.

    ``bypass(call)`` is True only when the interceptor would pass ``call`` straight to
    ``call_next`` and return its result unchanged; the chain then skips it. It must not
    await; if it raises, the interceptor runs as usual (and deals with the failure itself:
    skipping is never how an error is handled)."""

    def bypass(self, call: ToolCall) -> bool: ...


def compose(interceptors: Sequence[Interceptor], terminal: CallNext) -> CallNext:
    """Fold the interceptors around ``terminal`` once, at start-up."""
    chain = terminal
    for interceptor in reversed(interceptors):
        chain = _bind(interceptor, chain)
    return chain


def _bind(interceptor: Interceptor, call_next: CallNext) -> CallNext:
    bypass = interceptor.bypass if isinstance(interceptor, Bypass) else None
    if bypass is None:

        def step(call: ToolCall) -> Awaitable[ToolResult]:
            return interceptor(call, call_next)

        return step

    def skippable(call: ToolCall) -> Awaitable[ToolResult]:
        try:
            skip = bypass(call) is True  # only a plain True skips
        except Exception:
            skip = False
        return call_next(call) if skip else interceptor(call, call_next)

    return skippable
