"""The line transport to a stdio upstream: the SDK's ``stdio_client`` minus its parsing cost.

The SDK's client transport decodes the child's stdout as text, re-splits its whole
buffer on every chunk (quadratic in the size of a long line: a 1 MB answer costs
hundreds of scans) and pydantic-validates every line; it serialises every outbound
message through pydantic. Here each line is cut once by :class:`LineReader` (capped at
``gateway.max_message_bytes``) and decoded once; a well-formed response - the hot case -
becomes a ``JSONRPCResponse`` without re-validation (its result stays the decoded dict),
and only requests, notifications and errors from the upstream go through the SDK's
validator. Outbound requests are encoded straight from the dispatcher's message
fields. The SDK ``JSONRPCDispatcher`` still owns correlation, timeouts, cancellation and
progress, and process start and shutdown are the SDK's own helpers (pinned to
``mcp==2.3.0``): spawn in a new session, close stdin, wait, kill the tree.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import structlog
from mcp import StdioServerParameters
from mcp.client.stdio import (  # private helpers of mcp==2.3.0's stdio_client
    _create_platform_compatible_process,
    _drain_stdout,
    _stop_server_process,
    get_default_environment,
)
from mcp.shared.message import SessionMessage
from mcp_types import (
    INTERNAL_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

from proxy.wire import codec
from proxy.wire.framing import LineReader

__all__ = ["encode_outbound", "parse_line", "stdio_upstream"]

log = structlog.get_logger("securegateway.upstream")


def parse_line(line: bytes | dict[str, Any], upstream: str) -> SessionMessage | Exception:
    """One line from the upstream as the dispatcher consumes it (an exception for a bad one)."""
    if isinstance(line, dict):  # LineReader's stand-in for an oversized line: fail its caller now
        params = line["params"]
        log.warning("oversized upstream message", upstream=upstream, bytes=params["bytes"])
        return SessionMessage(JSONRPCError(jsonrpc="2.0", id=line["id"], error=ErrorData(
            code=INTERNAL_ERROR,
            message=f"upstream `{upstream}` sent a message of {params['bytes']} bytes, over the gateway's limit "
                    f"of {params['limit']} bytes (gateway.max_message_bytes)",
        )))
    try:
        message = codec.decode(line)
    except codec.DecodeError as exc:
        log.warning("upstream line is not json", upstream=upstream, error=str(exc)[:200])
        return ValueError(f"upstream `{upstream}` sent a line that is not JSON: {exc}")
    if type(message) is dict and "method" not in message and "error" not in message:
        request_id, result = message.get("id"), message.get("result")
        if type(result) is dict and type(request_id) in (int, str) and message.get("jsonrpc") == "2.0":
            return SessionMessage(JSONRPCResponse.model_construct(jsonrpc="2.0", id=request_id, result=result))
    try:
        return SessionMessage(jsonrpc_message_adapter.validate_python(message, by_name=False))
    except ValidationError as exc:
        return exc


def encode_outbound(message: Any) -> bytes:
    """A dispatcher-built message as one JSON line (no newline)."""
    if isinstance(message, JSONRPCRequest):
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": message.id, "method": message.method}
    elif isinstance(message, JSONRPCNotification):
        body = {"jsonrpc": "2.0", "method": message.method}
    elif isinstance(message, JSONRPCResponse):
        return codec.encode_result(message.id, message.result)
    else:
        return message.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
    if message.params is not None:
        body["params"] = message.params
    return codec.encode(body)


class _Stdout:
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def read(self, n: int) -> bytes:
        try:
            return bytes(await self._stream.receive(n))
        except anyio.EndOfStream:
            return b""


class _Stdin:
    """The dispatcher's write stream: each message written to the child's stdin as one line."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._closed = False

    async def send(self, item: SessionMessage, /) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            await self._stream.send(encode_outbound(item.message) + b"\n")
        except OSError as exc:  # the child went away under the write
            raise anyio.BrokenResourceError from exc

    def close(self) -> None:
        self._closed = True

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> _Stdin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@asynccontextmanager
async def stdio_upstream(
    params: StdioServerParameters, *, upstream: str, max_message_bytes: int, errlog: TextIO = sys.stderr,
    process: Any = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """Spawn the upstream (or adopt ``process``, one already spawned the same way: see
    proxy/upstream/prespawn.py) and yield ``(read, write)`` streams of ``SessionMessage``."""
    if process is None:
        try:
            process = await _create_platform_compatible_process(
                command=params.command, args=params.args, env=get_default_environment() | (params.env or {}),
                errlog=errlog, cwd=params.cwd,
            )
        except FileNotFoundError as exc:  # uvloop leaves out which file: name the command
            exc.filename = exc.filename or params.command
            raise
    assert process.stdin is not None and process.stdout is not None
    to_dispatcher, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream = _Stdin(process.stdin)
    shutting_down = False

    async def read_stdout() -> None:
        try:
            async with to_dispatcher:
                try:
                    async for line in LineReader(_Stdout(process.stdout), max_message_bytes):
                        try:
                            await to_dispatcher.send(parse_line(line, upstream))
                        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                            return  # the link is gone; only the drain below remains
                finally:
                    await _drain_stdout(process)
        except anyio.ClosedResourceError:
            pass  # our own shutdown closed stdout under the read
        except (anyio.BrokenResourceError, ConnectionError):
            if not shutting_down:
                log.exception("reading the upstream's stdout failed mid-session", upstream=upstream)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_stdout)
        try:
            yield read_stream, write_stream
        finally:
            shutting_down = True
            with anyio.CancelScope(shield=True):
                read_stream.close()
                write_stream.close()
                await _stop_server_process(process)
                await read_stream.aclose()
                await to_dispatcher.aclose()
            tg.cancel_scope.cancel()
