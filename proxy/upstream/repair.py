"""Answers an upstream sent that no JSON-RPC parser accepts still reach the waiting caller.

The SDK's transports hand a line that fails validation to the dispatcher as an exception,
and the dispatcher cannot tell which request it answered: a response whose ``result`` is a
list, ``null`` or a string would leave the caller waiting for the whole upstream timeout.
:func:`repair_responses` wraps an upstream's read stream and turns such a malformed
*response* (it has an ``id`` and a ``result`` or ``error``, and no ``method``) into a
JSON-RPC error for that id at once. Anything else passes through untouched. The stdio
leg has no SDK transport in between: its correlator (``proxy.wire.dispatch``) asks
:func:`describe_malformed` about the decoded line itself, so both legs word a fault alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from mcp.shared.message import SessionMessage

log = structlog.get_logger("securegateway.upstream")

__all__ = ["describe_malformed", "malformed_response", "repair_responses"]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def describe_malformed(raw: Any, upstream: str) -> tuple[int | str, str] | None:
    """The id and the error text for a raw *response* no JSON-RPC parser accepts (None if it is not one).

    The one description of a malformed answer, shared by both legs: the SDK's transports
    (HTTP, legacy SSE) reach it through :func:`malformed_response`, the stdio correlator
    (``proxy.wire.dispatch``) calls it with the decoded line."""
    if not isinstance(raw, Mapping) or "method" in raw:
        return None
    request_id = raw.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    if "result" in raw and "error" in raw:
        message = f"upstream `{upstream}` answered with both a result and an error"
    elif "result" in raw:
        if isinstance(raw["result"], Mapping) and raw.get("jsonrpc") != "2.0":
            message = f"upstream `{upstream}` answered without `\"jsonrpc\": \"2.0\"`"
        else:
            message = (
                f"upstream `{upstream}` answered with a non-object result ({_json_type(raw['result'])}); "
                "a JSON-RPC result must be an object"
            )
    elif "error" in raw:
        message = f"upstream `{upstream}` answered with a malformed error object"
    else:
        return None
    log.warning("malformed upstream response", upstream=upstream, request_id=request_id)
    return request_id, message


def malformed_response(exc: BaseException, upstream: str) -> SessionMessage | None:
    """The error to deliver for a response that failed validation, or None if it was not one."""
    from mcp.shared.message import SessionMessage  # the SDK transports' path: the SDK is loaded
    from mcp_types import INTERNAL_ERROR, ErrorData, JSONRPCError
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return None
    for problem in exc.errors():
        found = describe_malformed(problem.get("input"), upstream)
        if found is not None:
            request_id, message = found
            error = JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=INTERNAL_ERROR, message=message))
            return SessionMessage(error)
    return None


class _RepairingStream:
    """The read stream's face (``async with``, ``async for``, attributes) with repair applied."""

    def __init__(self, inner: Any, upstream: str) -> None:
        self._inner = inner
        self._upstream = upstream

    async def __aenter__(self) -> _RepairingStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)

    def __aiter__(self) -> _RepairingStream:
        return self

    async def __anext__(self) -> Any:
        item = await self._inner.__anext__()
        if isinstance(item, BaseException):
            repaired = malformed_response(item, self._upstream)
            if repaired is not None:
                return repaired
        return item

    async def receive(self) -> Any:
        return await self.__anext__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def repair_responses(streams: Any, upstream: str) -> Any:
    """``(read, write, ...)`` with the read stream wrapped; the rest as given."""
    read, *rest = streams
    return (_RepairingStream(read, upstream), *rest)
