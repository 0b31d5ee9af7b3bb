"""JSON for the lean path: each line decoded once, each reply encoded once.

Measured on this machine (``bench`` notes in the package docstring): msgspec decodes a
small JSON-RPC line as fast as orjson and a 1 MB line ~20% faster, and it keeps integers
beyond 64 bits exact (orjson turns them into floats, which a transparent relay must not
do); orjson encodes ~1.5x faster on small replies and ~6x on a 1 MB string. So lines are
decoded with msgspec and replies encoded with orjson, falling back to msgspec for the one
value orjson refuses (an integer beyond 64 bits).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from proxy.protocol import INVALID_PARAMS, is_mcp_error

if TYPE_CHECKING:
    from mcp.shared.message import SessionMessage
    from mcp_types import ErrorData

__all__ = ["DecodeError", "decode", "encode", "encode_error", "encode_message", "encode_result", "handler_error"]

DecodeError = msgspec.DecodeError
_decoder = msgspec.json.Decoder()
_fallback_encoder = msgspec.json.Encoder()


def decode(line: bytes) -> Any:
    """One JSON value from one line; raise :class:`DecodeError` when it is not JSON.

    Invalid UTF-8 is replaced (U+FFFD) rather than refused, as the SDK's stdio
    transport does, so a stray byte in a string does not cost the whole message."""
    try:
        return _decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        repaired = line.decode("utf-8", "replace").encode("utf-8")
        if repaired == line:
            if isinstance(exc, msgspec.DecodeError):
                raise
            raise msgspec.DecodeError(str(exc)) from None
        return _decoder.decode(repaired)


def encode(value: Any) -> bytes:
    """Compact JSON bytes (no newline)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits (or a non-str key): the exact, slower encoder
        return _fallback_encoder.encode(value)


def encode_result(request_id: Any, result: Any) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "result": result})


def encode_error(request_id: Any, error: ErrorData | Mapping[str, Any]) -> bytes:
    """A JSON-RPC error reply; ``error`` is the SDK's ``ErrorData`` or the plain member
    (:func:`proxy.protocol.error_body`), so the opening path needs no SDK model."""
    body = error if isinstance(error, Mapping) else error.model_dump(by_alias=True, mode="json", exclude_unset=True)
    return encode({"jsonrpc": "2.0", "id": request_id, "error": body})


def handler_error(exc: BaseException) -> dict[str, Any] | None:
    """``mcp.shared.jsonrpc_dispatcher.handler_exception_to_error_data`` as a plain error member:
    an ``MCPError`` carries its own, a pydantic ``ValidationError`` is ``INVALID_PARAMS`` with
    empty ``data``; None for any other exception (each caller applies its catch-all)."""
    if is_mcp_error(exc):
        body: dict[str, Any] = exc.error.model_dump(by_alias=True, mode="json", exclude_unset=True)  # type: ignore[attr-defined]
        return body
    pydantic_core = sys.modules.get("pydantic_core")
    if pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError):
        return {"code": INVALID_PARAMS, "message": "Invalid request parameters", "data": ""}
    return None


def encode_message(message: SessionMessage) -> bytes:
    """An SDK-built message as the SDK's own stdio transport writes it (a response's
    result dict, already wire data, is encoded directly)."""
    from mcp_types import JSONRPCResponse

    msg = message.message
    if isinstance(msg, JSONRPCResponse):
        return encode_result(msg.id, msg.result)
    return msg.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
