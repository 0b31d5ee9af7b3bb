"""proxy/protocol.py: the SDK's constants and error type, held equal to the SDK's own."""

from __future__ import annotations

from proxy import protocol


def test_the_protocol_constants_are_the_sdks() -> None:
    import mcp.client.stdio
    import mcp_types
    import mcp_types.version

    from proxy.wire import upstream

    for name in ("PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
                 "CONNECTION_CLOSED", "REQUEST_TIMEOUT", "UNSUPPORTED_PROTOCOL_VERSION", "PROTOCOL_VERSION_META_KEY",
                 "SERVER_INFO_META_KEY", "CLIENT_INFO_META_KEY", "CLIENT_CAPABILITIES_META_KEY"):
        assert getattr(protocol, name) == getattr(mcp_types, name), name
    for name in ("HANDSHAKE_PROTOCOL_VERSIONS", "MODERN_PROTOCOL_VERSIONS", "LATEST_HANDSHAKE_VERSION",
                 "LATEST_MODERN_VERSION"):
        assert getattr(protocol, name) == getattr(mcp_types.version, name), name
    assert upstream.PROCESS_TERMINATION_TIMEOUT == mcp.client.stdio.PROCESS_TERMINATION_TIMEOUT
    for rid in ("7", 7, "x", "07"):
        from mcp.shared.dispatcher import coerce_request_id

        assert protocol.coerce_request_id(rid) == coerce_request_id(rid)
    error = protocol.mcp_error(protocol.INVALID_PARAMS, "m", data={"k": 1})
    assert isinstance(error, protocol.MCP_ERRORS) and protocol.is_mcp_error(error)
    assert error.error.model_dump(exclude_unset=True) == protocol.error_body(protocol.INVALID_PARAMS, "m", {"k": 1})
