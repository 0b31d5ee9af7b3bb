"""A fast-lane request's HTTP reply, shaped as its exchange goes: a JSON body or an SSE stream.

The choice is :class:`~proxy.front.exchange.ExchangeTransport`'s: a JSON body when the answer
is the first message for the request; SSE when progress comes first, or when the call runs
silent past ``PING_INTERVAL`` (pings then keep an idle-read timeout between client and gateway
from cutting it, one per silent interval); the client's ``Accept`` decides when it allows only
one type (JSON only: progress is dropped and nothing pings).

The request's own task runs the call and sends the answer; progress is sent by the task that
reports it, and pings by the front's one :class:`Pinger` task (in the app's lifespan task
group). So a request costs no task, no stream and no timer of its own (a task group, a task and
a memory stream per request were ~4% of the gateway's CPU per HTTP call). A reply's sends are
serialised by a lock made only when a second sender appears; once the answer is being sent,
nothing else is.
"""

from __future__ import annotations

import math
from typing import Final

import anyio
import anyio.abc
from mcp.server.streamable_http import CONTENT_TYPE_JSON, CONTENT_TYPE_SSE, MCP_SESSION_ID_HEADER
from starlette.types import Send

from proxy.front import exchange

__all__ = ["LaneReply", "Pinger"]

_JSON: Final = (b"content-type", CONTENT_TYPE_JSON.encode())
_SSE_HEADERS: Final = [
    (b"content-type", CONTENT_TYPE_SSE.encode()),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
_SESSION: Final = MCP_SESSION_ID_HEADER.encode()
PING_SEND_SECONDS: Final = 1.0
"""How long the pinger waits for one ping to be written (a client that stops reading holds it)."""


def frame(data: bytes) -> bytes:
    return b"event: message\r\ndata: " + data + b"\r\n\r\n"


async def send_json(send: Send, session_id: str | None, body: bytes) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if session_id:
        headers.append((_SESSION, session_id.encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LaneReply:
    """One request's reply (see the module docstring)."""

    __slots__ = ("_answered", "_committed", "_json_only", "_lock", "_send", "_session_id", "_sse_only", "deadline")

    def __init__(self, send: Send, session_id: str | None, *, json_only: bool, sse_only: bool) -> None:
        self._send = send
        self._session_id = session_id
        self._json_only = json_only
        self._sse_only = sse_only
        self._committed = False  # the SSE headers are out
        self._answered = False
        self._lock: anyio.Lock | None = None
        self.deadline = math.inf
        """When the pinger pings this reply next, unless something else is sent first."""

    @property
    def pings(self) -> bool:
        return not self._json_only

    async def progress(self, line: bytes) -> bool:
        """Stream one progress message (the reply commits to SSE); False when it was dropped."""
        if self._answered or self._json_only:
            return False
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._answered:
                return False
            await self._commit()
            await self._send({"type": "http.response.body", "body": frame(line), "more_body": True})
        return True

    async def ping(self) -> None:
        """An SSE comment, unless the answer or another message is going out."""
        if self._answered or self._json_only:
            return
        if self._lock is None:
            self._lock = anyio.Lock()
        if self._lock.locked():
            return  # a message is being written: traffic enough
        self._lock.acquire_nowait()
        try:
            with anyio.move_on_after(PING_SEND_SECONDS):
                await self._commit()
                await self._send({"type": "http.response.body", "body": exchange._PING, "more_body": True})
        finally:
            self._lock.release()

    async def answer(self, data: bytes, *, stream: bool = False) -> None:
        """Send the request's answer: the JSON body, or the stream's last event (with ``stream``,
        an event whenever the client takes SSE: a cancelled call's answer, ``proxy/front/lane.py``)."""
        self._answered = True  # from here on nothing else is sent
        if self._lock is not None:
            await self._lock.acquire()  # a progress message or a ping still being written
        if not self._committed and not self._sse_only and (self._json_only or not stream):
            await send_json(self._send, self._session_id, data)
            return
        await self._commit()
        await self._send({"type": "http.response.body", "body": frame(data), "more_body": False})

    async def _commit(self) -> None:
        if self._committed:
            return
        self._committed = True
        headers = list(_SSE_HEADERS)
        if self._session_id:
            headers.append((_SESSION, self._session_id.encode()))
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})


class Pinger:
    """The front's one ping task: a reply silent for ``interval`` gets a ping, then one per interval.

    Replies are kept in deadline order for free: every deadline is set to now + ``interval``
    (on watch, after a ping, after progress), so a reply (re)inserted goes last. The task sleeps
    until the first deadline and waits on an event only while nothing is watched: under steady
    load it wakes about once per interval, not once per request."""

    def __init__(self, interval: float | None = None) -> None:
        self._interval = interval  # None: ``exchange.PING_INTERVAL``, read when used
        self._replies: dict[LaneReply, None] = {}
        self._idle: anyio.Event | None = None
        self.running = False

    def watch(self, reply: LaneReply) -> None:
        interval = exchange.PING_INTERVAL if self._interval is None else self._interval
        reply.deadline = anyio.current_time() + interval
        self._replies[reply] = None
        if self._idle is not None:
            self._idle.set()

    def touch(self, reply: LaneReply) -> None:
        """Something was sent: the silence starts again."""
        if self._replies.pop(reply, False) is None:
            self.watch(reply)

    def forget(self, reply: LaneReply) -> None:
        self._replies.pop(reply, None)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            while True:
                if not self._replies:
                    self._idle = anyio.Event()
                    await self._idle.wait()
                    self._idle = None
                    continue
                reply = next(iter(self._replies))
                delay = reply.deadline - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                    continue
                self.touch(reply)
                await reply.ping()
        finally:
            self.running = False
