"""A real MCP server whose one tool says it ran, then hangs: a call caught mid-flight upstream.

Run as ``python -m tests.e2e.signal_server MARKER`` (stdio). ``hang`` appends
``ran <note> <pid>`` to MARKER (the moment the call has reached the upstream) and then
sleeps for a minute, so a test can kill the gateway while the call is executing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
from mcp import types
from mcp.server import Server
from mcp.server.stdio import stdio_server


def build(marker: str) -> Server[Any]:
    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"note": {"type": "string"}}}
        return types.ListToolsResult(tools=[types.Tool(name="hang", input_schema=schema)])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        note = (params.arguments or {}).get("note", "")
        with open(marker, "a") as f:
            f.write(f"ran {note} {os.getpid()}\n")
        await anyio.sleep(60)
        return types.CallToolResult(content=[types.TextContent(type="text", text="woke")])

    return Server("signal", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    server = build(sys.argv[1])
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
