"""A connection's state: the session ``initialize`` attached, and the request ids in flight."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from proxy.protocol import INVALID_REQUEST, mcp_error
from proxy.session import DownstreamSession

if TYPE_CHECKING:  # the SDK is loaded at a stdio client's first need (proxy/wire/opening.py)
    from mcp import MCPError
    from mcp.server.context import ServerRequestContext

__all__ = ["IN_FLIGHT_KEY", "SESSION_KEY", "attached", "claim_id", "connection_of", "duplicate_id", "id_key"]

SESSION_KEY = "securegateway.session"
IN_FLIGHT_KEY = "securegateway.in_flight"


def id_key(request_id: Any) -> tuple[str, Any]:
    """How a request id is held: ``1`` and ``"1"`` are different ids."""
    return (type(request_id).__name__, request_id)


def duplicate_id(request_id: Any) -> MCPError:
    return mcp_error(*duplicate_id_error(request_id))


def duplicate_id_error(request_id: Any) -> tuple[int, str]:
    """``(code, message)`` of the refusal of a request id already in flight."""
    return INVALID_REQUEST, f"request id `{str(request_id)[:80]}` is already in flight on this session"


@contextlib.contextmanager
def claim_id(ctx: ServerRequestContext[Any, Any], held: set[Any] | None) -> Any:
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


def attached(ctx: ServerRequestContext[Any, Any]) -> DownstreamSession | None:
    """The session ``initialize`` attached to this connection, if any."""
    connection = connection_of(ctx)
    return connection.state.get(SESSION_KEY) if connection is not None else None


def connection_of(ctx: ServerRequestContext[Any, Any]) -> Any:
    # ServerRequestContext carries the per-request ServerSession; the per-connection
    # object (with its `state` scratch and `exit_stack`) is its `_connection`. Pinned to
    # mcp==2.3.0; covered by the relay's end-to-end tests.
    return getattr(ctx.session, "_connection", None)
