"""A stdio MCP upstream that answers when and how its tools say, spoken as raw JSON-RPC.

No SDK, so it can do what a well-behaved server would not: answer calls out of order,
late or never, answer ids nobody asked for, send non-JSON lines, malformed answers, crash
mid-call. Run as ``python -m tests.proxy.wire.scripted_upstream``. Tools:

- ``echo {text}``: answered at once;
- ``gather {text, n}``: held until ``n`` gather calls are held, then all answered in
  reverse order, after answers to unknown ids and lines that are not messages;
- ``late {text, delay}``: answered after ``delay`` seconds; ``never``: never answered;
- ``progress {steps}``: ``steps`` progress notifications for its token, then the answer;
- ``ask {method}``: asks the client ``method`` and answers with the client's reply;
- ``ask_and_cancel {method, after}``: asks the client, cancels the ask ``after`` seconds later;
  ``unowned``: the ids of client answers to requests nobody waits for (cancelled asks);
- ``bad_result`` / ``bad_error``: a non-object result / a malformed error for its id;
- ``cancels``: the ``notifications/cancelled`` received so far; ``pid``: the process id;
- ``crash``: exits at once, unanswered.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

_lock = threading.Lock()
_held: list[tuple[Any, str]] = []
_cancels: list[dict[str, Any]] = []
_asks: dict[str, Any] = {}  # id of our request to the client -> id of the call waiting for it
_unowned: list[Any] = []  # answers from the client to requests no call waits for (cancelled ones)


def send(message: Any) -> None:
    with _lock:
        sys.stdout.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        sys.stdout.flush()


def text(request_id: Any, value: str) -> None:
    send({"jsonrpc": "2.0", "id": request_id,
          "result": {"content": [{"type": "text", "text": value}], "structuredContent": {"text": value}}})


def call(request_id: Any, name: str, args: dict[str, Any], meta: dict[str, Any]) -> None:
    if name == "echo":
        text(request_id, args["text"])
    elif name == "gather":
        _held.append((request_id, args["text"]))
        if len(_held) >= args["n"]:
            send({"jsonrpc": "2.0", "id": 987654, "result": {"content": []}})  # nobody asked
            send({"jsonrpc": "2.0", "id": "stray", "error": {"code": -1, "message": "stray"}})
            send("this is not json")
            send("[1, 2, 3]")
            for held_id, value in reversed(_held):
                text(held_id, value)
            _held.clear()
    elif name == "late":
        threading.Timer(args["delay"], text, (request_id, args["text"])).start()
    elif name == "never":
        pass
    elif name == "progress":
        for step in range(args["steps"]):
            send({"jsonrpc": "2.0", "method": "notifications/progress",
                  "params": {"progressToken": meta["progressToken"], "progress": step + 1, "total": args["steps"]}})
        text(request_id, "done")
    elif name == "ask":
        ask_id = f"ask-{request_id}"
        _asks[ask_id] = request_id
        send({"jsonrpc": "2.0", "id": ask_id, "method": args["method"]})
    elif name == "ask_and_cancel":
        ask_id = f"cancelled-{request_id}"
        send({"jsonrpc": "2.0", "id": ask_id, "method": args["method"]})
        threading.Timer(args["after"], send, ({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                               "params": {"requestId": ask_id, "reason": "changed my mind"}},)).start()
        text(request_id, ask_id)
    elif name == "unowned":
        text(request_id, json.dumps(_unowned))
    elif name == "bad_result":
        send({"jsonrpc": "2.0", "id": request_id, "result": [1, 2]})
    elif name == "bad_error":
        send({"jsonrpc": "2.0", "id": request_id, "error": "oops"})
    elif name == "cancels":
        text(request_id, json.dumps(_cancels))
    elif name == "pid":
        text(request_id, str(os.getpid()))
    elif name == "crash":
        os._exit(3)
    else:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": f"unknown tool {name}"}})


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        method, request_id = message.get("method"), message.get("id")
        params = message.get("params") or {}
        if method is None:  # the client's answer to one of our requests
            waiting = _asks.pop(request_id, None)
            if waiting is not None:
                text(waiting, json.dumps(message.get("result", message.get("error"))))
            else:
                _unowned.append(request_id)
        elif method == "initialize":
            send({"jsonrpc": "2.0", "id": request_id, "result": {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}}, "serverInfo": {"name": "scripted", "version": "1"}}})
        elif method == "notifications/cancelled":
            _cancels.append(params)
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": []}})
        elif method == "tools/call":
            call(request_id, params["name"], params.get("arguments") or {}, params.get("_meta") or {})
        elif request_id is not None:
            send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "method not found"}})


if __name__ == "__main__":
    main()
