"""A 2025-era Streamable HTTP upstream written on raw HTTP (aiohttp), to produce what the SDK server will not.

It keeps one session and its standalone GET stream, and its tools do what a real (or broken)
server may do on the wire:

- ``progress_on_get``: sends the call's progress on the GET stream (not on the call's own SSE
  reply), waits until the GET stream carried it, then answers with a JSON body; with
  ``after: true`` it sends one more progress on the GET stream after the answer;
- ``slow``: answers after ``delay`` seconds on an SSE reply (the call a client cancels); a
  ``notifications/cancelled`` POSTed for it is recorded in ``--log``;
- ``status``: answers with HTTP ``code`` (a 5xx, say) and a plain-text body;
- ``not_json``: a 200 ``application/json`` body that is not JSON;
- ``html``: a 200 ``text/html`` body;
- ``sse_cut``: an SSE reply that ends without the answer (no event ids: not resumable);
- ``expire``: forgets the session and answers 404 (so does every later request with its id);
- ``forget``: answers, then forgets the session (it expired between two calls);
- ``ask_then_cancel``: asks the client for a sampling (id ``up-1``) on the call's SSE reply, cancels
  that request with ``notifications/cancelled`` half a second later, then answers the call;
- ``die``: the process exits while the call's reply is open (later requests: connection refused).

Every message it receives is appended to ``--log`` as a JSON line. Run as
``python -m tests.e2e.stream_upstream --port N --log FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

TOOLS = [
    {"name": name, "description": f"raw {name}", "inputSchema": {"type": "object"}}
    for name in ("echo", "progress_on_get", "slow", "status", "not_json", "html", "sse_cut", "expire", "forget",
                 "ask_then_cancel", "die")
]


class Upstream:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.session: str | None = None
        self.get_queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.get_open = asyncio.Event()
        self.sent_on_get = 0

    def record(self, message: Any) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps(message) + "\n")

    async def get(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("mcp-session-id") != self.session:
            return web.Response(status=404, text="no such session")
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache",
                                               "mcp-session-id": self.session or ""})
        await response.prepare(request)
        queue = self.get_queue  # this session's
        self.get_open.set()
        try:
            while True:
                message = await queue.get()
                if message is None:
                    break
                await response.write(f"event: message\ndata: {json.dumps(message)}\n\n".encode())
                self.sent_on_get += 1
        finally:
            self.get_open.clear()
        return response

    async def delete(self, request: web.Request) -> web.Response:
        self.session = None
        self.get_queue.put_nowait(None)
        return web.Response(status=200)

    async def post(self, request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read())
        self.record(message)
        method, request_id = message.get("method"), message.get("id")
        if method == "initialize":
            self.get_queue.put_nowait(None)  # a GET stream of an earlier session ends
            self.get_queue = asyncio.Queue()
            self.session = uuid.uuid4().hex
            result = {"protocolVersion": message["params"]["protocolVersion"],
                      "capabilities": {"tools": {}}, "serverInfo": {"name": "stream", "version": "1"}}
            return self.json({"jsonrpc": "2.0", "id": request_id, "result": result})
        if request.headers.get("mcp-session-id") != self.session:
            return web.Response(status=404, text="session expired")
        if request_id is None or "method" not in message:
            return web.Response(status=202)
        if method == "tools/list":
            return self.json({"jsonrpc": "2.0", "id": request_id, "result": {"tools": TOOLS}})
        if method == "ping":
            return self.json({"jsonrpc": "2.0", "id": request_id, "result": {}})
        if method != "tools/call":
            return self.json({"jsonrpc": "2.0", "id": request_id,
                              "error": {"code": -32601, "message": "Method not found"}})
        params = message.get("params") or {}
        return await self.call(request, request_id, params.get("name"), params.get("arguments") or {},
                               (params.get("_meta") or {}).get("progressToken"))

    async def call(self, request: web.Request, request_id: Any, name: str, arguments: dict[str, Any],
                   token: Any) -> web.StreamResponse:
        if name == "echo":
            return self.json(answer(request_id, str(arguments.get("text", ""))))
        if name == "progress_on_get":
            await asyncio.wait_for(self.get_open.wait(), 10)
            steps = int(arguments.get("steps", 3))
            if token is not None:
                target = self.sent_on_get + steps
                for step in range(1, steps + 1):
                    self.get_queue.put_nowait(progress(token, step, steps))
                while self.sent_on_get < target:  # on the wire before the answer
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # and read by the client before the answer reaches it
            reply = self.json(answer(request_id, f"done {steps}"))
            if arguments.get("after") and token is not None:
                asyncio.get_running_loop().call_later(0.2, self.get_queue.put_nowait,
                                                      progress(token, steps + 1, steps))
            return reply
        if name == "slow":
            response = await self.sse(request)
            await asyncio.sleep(float(arguments.get("delay", 30)))
            await response.write(event(answer(request_id, "slow done")))
            return response
        if name == "status":
            return web.Response(status=int(arguments.get("code", 500)), text="upstream broke")
        if name == "not_json":
            return web.Response(status=200, body=b"{this is not json", content_type="application/json")
        if name == "html":
            return web.Response(status=200, text="<html>hello</html>", content_type="text/html")
        if name == "sse_cut":
            response = await self.sse(request)
            await response.write(event(progress(token or "none", 1, 2)))
            return response  # the stream ends here, no answer
        if name == "expire":
            self.session = None
            self.get_queue.put_nowait(None)
            return web.Response(status=404, text="session expired")
        if name == "forget":
            reply = self.json(answer(request_id, "forgotten"))
            self.session = None
            self.get_queue.put_nowait(None)
            return reply
        if name == "ask_then_cancel":
            response = await self.sse(request)
            await response.write(event({"jsonrpc": "2.0", "id": "up-1", "method": "sampling/createMessage", "params": {
                "messages": [{"role": "user", "content": {"type": "text", "text": "hi?"}}], "maxTokens": 5}}))
            await asyncio.sleep(0.5)
            await response.write(event({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                        "params": {"requestId": "up-1", "reason": "no longer needed"}}))
            await asyncio.sleep(0.3)
            await response.write(event(answer(request_id, "asked")))
            return response
        if name == "die":
            await self.sse(request)
            os._exit(0)
        return self.json({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": "unknown tool"}})

    def json(self, message: dict[str, Any]) -> web.Response:
        return web.Response(text=json.dumps(message), content_type="application/json",
                            headers={"mcp-session-id": self.session or ""})

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache",
                                               "mcp-session-id": self.session or ""})
        await response.prepare(request)
        return response


def answer(request_id: Any, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": text}]}}


def progress(token: Any, step: int, total: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": token, "progress": step, "total": total}}


def event(message: dict[str, Any]) -> bytes:
    return f"event: message\ndata: {json.dumps(message)}\n\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    upstream = Upstream(Path(args.log))
    app = web.Application()
    app.router.add_post("/mcp", upstream.post)
    app.router.add_get("/mcp", upstream.get)
    app.router.add_delete("/mcp", upstream.delete)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
