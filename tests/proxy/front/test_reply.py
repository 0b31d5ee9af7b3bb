"""A fast-lane reply (proxy/front/reply.py) over an ASGI ``send`` that records what it is given.

The end-to-end cases (JSON vs SSE selection, pings on a silent call, progress first) run through
a real gateway in test_exchange.py and test_lane.py; these pin the reply's own rules: an answer
that comes first is one JSON body; a silent reply gets one ping per interval from the one pinger
task and nothing once answered; the answer waits out a write in progress so frames never
interleave; JSON-only replies never ping or stream.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from proxy.front.reply import LaneReply, Pinger

pytestmark = pytest.mark.anyio


class Recorder:
    """An ASGI ``send``: keeps every message; ``hold`` makes body writes wait (a slow client)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.hold: anyio.Event | None = None

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)
        if self.hold is not None and message["type"] == "http.response.body":
            await self.hold.wait()

    def kinds(self) -> list[str]:
        out = []
        for m in self.messages:
            if m["type"] == "http.response.start":
                out.append(dict(m["headers"])[b"content-type"].decode())
            elif m["body"].startswith(b": ping"):
                out.append("ping")
            elif m["body"].startswith(b"event: message"):
                out.append("event" if m.get("more_body") else "last event")
            else:
                out.append("body")
        return out


async def test_an_answer_that_comes_first_is_one_json_body_and_is_never_pinged() -> None:
    send = Recorder()
    pinger = Pinger(interval=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(pinger.run)
        reply = LaneReply(send, "sid", json_only=False, sse_only=False)
        pinger.watch(reply)
        pinger.forget(reply)
        await reply.answer(b'{"jsonrpc":"2.0","id":1,"result":{}}')
        await anyio.sleep(0.15)
        tg.cancel_scope.cancel()
    assert send.kinds() == ["application/json", "body"]
    assert (b"mcp-session-id", b"sid") in send.messages[0]["headers"]


async def test_a_silent_reply_is_pinged_once_per_interval_then_answered_as_the_last_event() -> None:
    send = Recorder()
    pinger = Pinger(interval=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(pinger.run)
        reply = LaneReply(send, None, json_only=False, sse_only=False)
        pinger.watch(reply)
        await anyio.sleep(0.18)
        pinger.forget(reply)
        await reply.answer(b"{}")
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    kinds = send.kinds()
    assert kinds[0] == "text/event-stream" and kinds[-1] == "last event"
    assert 2 <= kinds.count("ping") <= 4


async def test_the_answer_waits_for_a_progress_write_in_progress() -> None:
    send = Recorder()
    reply = LaneReply(send, None, json_only=False, sse_only=False)
    send.hold = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reply.progress, b'{"progress":1}')
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(reply.answer, b"{}")
        await anyio.wait_all_tasks_blocked()
        assert send.kinds() == ["text/event-stream", "event"]  # the answer has not cut in
        send.hold.set()
    assert send.kinds() == ["text/event-stream", "event", "last event"]
    assert not await reply.progress(b'{"progress":2}')  # nothing after the answer


async def test_a_json_only_reply_never_streams_or_pings() -> None:
    send = Recorder()
    pinger = Pinger(interval=0.02)
    reply = LaneReply(send, None, json_only=True, sse_only=False)
    assert not reply.pings
    assert not await reply.progress(b'{"progress":1}')
    await reply.ping()
    await reply.answer(b"{}")
    assert send.kinds() == ["application/json", "body"]
    assert not pinger.running
