"""MCP protocol constants and the SDK's error type, without importing the SDK.

``import mcp`` costs ~0.5 s of CPU (``mcp_types``' pydantic models), most of a stdio
session's start. The modules that answer a stdio client's opening - ``initialize``,
``tools/list``, ``tools/call`` (:mod:`proxy.wire.opening`) - therefore import no ``mcp``,
``mcp_types`` or pydantic at module level; what they need of the SDK is here:

- the JSON-RPC/MCP error codes, ``_meta`` keys and protocol-version lists, copied from
  ``mcp_types`` of mcp==2.3.0 (tests/proxy/test_protocol.py holds them equal to the SDK's);
- :func:`mcp_error`, the one constructor of the SDK's ``MCPError`` (it loads the SDK: an
  error on the opening path costs the import once, and is the SDK's own exception, so
  every handler and dispatcher recognises it);
- ``MCP_ERRORS``, for ``except protocol.MCP_ERRORS``: the tuple ``(MCPError,)`` once the
  SDK is loaded, ``()`` before (nothing can have raised one then). It is looked up when an
  exception reaches the clause, so a clause written before the SDK loaded still matches.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp import MCPError

__all__ = [
    "CLIENT_CAPABILITIES_META_KEY", "CLIENT_INFO_META_KEY", "CONNECTION_CLOSED", "HANDSHAKE_PROTOCOL_VERSIONS",
    "INTERNAL_ERROR", "INVALID_PARAMS", "INVALID_REQUEST", "LATEST_HANDSHAKE_VERSION", "LATEST_MODERN_VERSION",
    "METHOD_NOT_FOUND", "MODERN_PROTOCOL_VERSIONS", "PARSE_ERROR", "PROTOCOL_VERSION_META_KEY", "REQUEST_TIMEOUT",
    "SERVER_INFO_META_KEY", "UNSUPPORTED_PROTOCOL_VERSION", "coerce_request_id", "error_body", "is_mcp_error",
    "load_sdk", "mcp_error", "progress_token_from_params", "sdk_loaded",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
CONNECTION_CLOSED = -32000
REQUEST_TIMEOUT = -32001
UNSUPPORTED_PROTOCOL_VERSION = -32022

PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"
CLIENT_INFO_META_KEY = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_META_KEY = "io.modelcontextprotocol/clientCapabilities"

HANDSHAKE_PROTOCOL_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_PROTOCOL_VERSIONS: tuple[str, ...] = ("2026-07-28",)
LATEST_HANDSHAKE_VERSION = "2025-11-25"
LATEST_MODERN_VERSION = "2026-07-28"


_SDK_IMPORT = threading.Lock()


def load_sdk() -> None:
    """Import the SDK, one thread at a time.

    The stdio opening imports it in a worker thread (proxy/wire/opening.py) while the event
    loop may need it at the same moment (an error to raise); two threads importing one
    package tree at once can be handed a partially initialised module (Python's import-lock
    deadlock avoidance), so every first import of the SDK on the gateway's paths goes
    through this lock. Once loaded it costs a dictionary lookup."""
    if "mcp.server" in sys.modules and "mcp.shared.exceptions" in sys.modules and _SDK_IMPORT.acquire(blocking=False):
        _SDK_IMPORT.release()  # loaded, and no import in flight
        return
    from policy.schema import warm_up as import_jsonschema

    with _SDK_IMPORT:
        # the SDK imports jsonschema, which the first tools/call's argument check imports on the
        # loop: that import is serialised by its own lock (policy/schema.py), so it goes first
        import_jsonschema()
        import mcp.server  # noqa: F401  (the package, and its server side)


def sdk_loaded() -> bool:
    """Whether the SDK's error type exists in this process yet."""
    return "mcp.shared.exceptions" in sys.modules


def mcp_error(code: int, message: str, data: Any = None) -> MCPError:
    """The SDK's ``MCPError(code, message, data)`` (loads the SDK on first use)."""
    load_sdk()
    from mcp import MCPError

    return MCPError(code, message, data)


def is_mcp_error(exc: BaseException) -> bool:
    module = sys.modules.get("mcp.shared.exceptions")
    return module is not None and isinstance(exc, module.MCPError)


def __getattr__(name: str) -> Any:
    if name == "MCP_ERRORS":
        module = sys.modules.get("mcp.shared.exceptions")
        error = getattr(module, "MCPError", None) if module is not None else None
        return (error,) if error is not None else ()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def error_body(code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC ``error`` member as the SDK writes it (``data`` left out when None)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return body


def coerce_request_id(request_id: Any) -> Any:
    """``mcp.shared.dispatcher.coerce_request_id``: "7" and 7 are one id for correlation."""
    if isinstance(request_id, str):
        try:
            return int(request_id)
        except ValueError:
            pass
    return request_id


def progress_token_from_params(params: Mapping[str, Any] | None) -> Any:
    """``mcp.shared.jsonrpc_dispatcher.progress_token_from_params``: ``_meta.progressToken``, never a bool."""
    match params:
        case {"_meta": {"progressToken": str() | int() as token}} if not isinstance(token, bool):
            return token
        case _:
            return None
