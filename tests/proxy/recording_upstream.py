"""A minimal MCP upstream (raw JSON-RPC over stdio) that appends every message it receives,
one JSON line each, to the file named by its first argument: what the gateway forwarded,
byte for byte. Tools ``echo``; capabilities ``tools`` and ``logging``. Run as
``python -m tests.proxy.recording_upstream LOG``.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def reply(message: dict[str, Any]) -> dict[str, Any] | None:
    method, rid = message.get("method"), message.get("id")
    if rid is None:
        return None
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}, "logging": {}},
            "serverInfo": {"name": "recorder", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": json.dumps(message["params"].get("arguments"))}]}
    elif method in ("logging/setLevel", "ping"):
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def main() -> None:
    log = open(sys.argv[1], "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        log.write(json.dumps(message, sort_keys=True) + "\n")
        log.flush()
        answer = reply(message)
        if answer is not None:
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
