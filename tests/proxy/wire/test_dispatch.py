"""The stdio correlator: every caller gets its own outcome, whatever the upstream does.

Invariants (proxy/wire/dispatch.py): each request has exactly one outcome - its answer,
the upstream's error, a timeout or the connection's end; answers to unknown or abandoned
ids are dropped without touching anyone else; an abandoned request is cancelled upstream;
progress reaches its caller before the answer; malformed answers fail their own caller at
once; requests from the upstream are answered. Tested against a real upstream process that
misbehaves on purpose (scripted_upstream.py), and as a property over interleavings against
an in-memory peer.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT

from proxy.config import UpstreamConfig
from proxy.upstream.link import ClientHello, UpstreamLink
from proxy.wire import codec
from proxy.wire.dispatch import LineDispatcher

pytestmark = pytest.mark.anyio

SCRIPTED = (sys.executable, "-m", "tests.proxy.wire.scripted_upstream")


@dataclass
class Harness:
    link: UpstreamLink
    asked: list[tuple[str, Any]] = field(default_factory=list)
    notes: list[tuple[str, Any]] = field(default_factory=list)
    restarts: int = 0

    async def tool(self, name: str, **arguments: Any) -> str:
        result = await self.link.request("tools/call", {"name": name, "arguments": arguments})
        return str(result["structuredContent"]["text"])

    async def cancels(self) -> list[dict[str, Any]]:
        return list(json.loads(await self.tool("cancels")))


@asynccontextmanager
async def scripted(*, timeout: float = 20.0, connect_timeout: float = 20.0) -> AsyncIterator[Harness]:
    """A running link to the scripted upstream; its requests and notifications recorded."""
    harness: Harness

    async def on_request(link: UpstreamLink, method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        harness.asked.append((method, params))
        if method == "elicitation/create":  # a client that refuses
            raise MCPError(-32042, "the user declined")
        if method == "sampling/createMessage":  # a client that takes its time
            try:
                await anyio.sleep(30)
            finally:
                harness.asked.append(("ended", method))
        return {"roots": [{"uri": "file:///work", "name": "work"}]}

    async def on_notify(link: UpstreamLink, method: str, params: Mapping[str, Any] | None) -> None:
        harness.notes.append((method, params))

    async def on_restart(link: UpstreamLink) -> None:
        harness.restarts += 1

    config = UpstreamConfig(name="up", command=SCRIPTED, timeout=timeout, connect_timeout=connect_timeout)
    link = UpstreamLink(config, ClientHello({"name": "test", "version": "1"}, {"roots": {}}),
                        on_request=on_request, on_notify=on_notify, on_restart=on_restart,
                        max_message_bytes=1 << 20, backoff_initial=0.05)
    harness = Harness(link)
    async with anyio.create_task_group() as tg:
        await tg.start(link.run)
        assert link.ready, link.last_error
        try:
            yield harness
        finally:
            tg.cancel_scope.cancel()


async def test_many_calls_in_flight_each_get_their_own_answer_when_answered_out_of_order() -> None:
    got: dict[int, str] = {}
    async with scripted() as up:

        async def one(i: int) -> None:
            got[i] = await up.tool("gather", text=f"answer {i}", n=24)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(24):
                    tg.start_soon(one, i)
            # the strays (an unknown id, a stray error, non-JSON, a non-message) disturbed nobody
            assert await up.tool("echo", text="after") == "after"
    assert got == {i: f"answer {i}" for i in range(24)}


async def test_a_timeout_fails_only_its_call_is_cancelled_upstream_and_its_late_answer_is_dropped() -> None:
    async with scripted(timeout=1.0) as up:
        outcomes: dict[str, Any] = {}

        async def outcome(key: str, name: str, **arguments: Any) -> None:
            try:
                outcomes[key] = await up.tool(name, **arguments)
            except MCPError as exc:
                outcomes[key] = exc

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(outcome, "late", "late", text="too late", delay=2.0))
                tg.start_soon(partial(outcome, "echo", "echo", text="meanwhile"))
            assert outcomes["echo"] == "meanwhile"
            timed_out = outcomes["late"]
            assert isinstance(timed_out, MCPError) and timed_out.code == REQUEST_TIMEOUT
            assert "upstream `up` did not answer `tools/call` within 1s" in timed_out.message
            cancels = await up.cancels()
            assert [c["reason"] for c in cancels] == ["timed out after 1.0s"]
            await anyio.sleep(1.5)  # the late answer arrives now, for an id nobody waits for
            assert await up.tool("echo", text="next") == "next"
            assert up.link.ready


async def test_a_cancelled_caller_sends_notifications_cancelled_for_its_request() -> None:
    async with scripted() as up:
        with anyio.fail_after(30):
            with anyio.move_on_after(0.5):
                await up.tool("never")
            cancels: list[dict[str, Any]] = []
            while not cancels:
                cancels = await up.cancels()
            assert cancels == [{"requestId": cancels[0]["requestId"], "reason": "caller cancelled"}]
            assert isinstance(cancels[0]["requestId"], int)
            assert await up.tool("echo", text="still fine") == "still fine"


async def test_progress_reaches_its_caller_in_order_before_the_answer() -> None:
    seen: list[tuple[float, float | None]] = []
    async with scripted() as up:

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total))

        with anyio.fail_after(30):
            result = await up.link.request("tools/call", {"name": "progress", "arguments": {"steps": 5}},
                                           on_progress=on_progress)
    assert result["structuredContent"] == {"text": "done"}
    assert seen == [(float(i), 5.0) for i in range(1, 6)]
    assert not any(method == "notifications/progress" for method, _ in up.notes)


@pytest.mark.parametrize(("tool", "text"), [
    ("bad_result", "upstream `up` answered with a non-object result (array)"),
    ("bad_error", "upstream `up` answered with a malformed error object"),
])
async def test_a_malformed_answer_fails_its_own_call_at_once(tool: str, text: str) -> None:
    async with scripted(timeout=60) as up:
        with anyio.fail_after(15):  # not the upstream's 60 s timeout
            with pytest.raises(MCPError) as caught:
                await up.tool(tool)
            assert caught.value.code == INTERNAL_ERROR and text in caught.value.message
            assert await up.tool("echo", text="ok") == "ok"


async def test_an_upstream_error_answer_reaches_its_caller_as_is() -> None:
    async with scripted() as up:
        with anyio.fail_after(15), pytest.raises(MCPError) as caught:
            await up.tool("no_such_tool")
    assert caught.value.code == -32602 and caught.value.message == "unknown tool no_such_tool"


async def test_requests_from_the_upstream_go_to_the_link_handler_and_ping_is_answered_by_the_link() -> None:
    async with scripted() as up:
        with anyio.fail_after(15):
            roots = json.loads(await up.tool("ask", method="roots/list"))
            pong = json.loads(await up.tool("ask", method="ping"))
    assert roots == {"roots": [{"uri": "file:///work", "name": "work"}]}
    assert pong == {}
    assert up.asked == [("roots/list", None)]


async def test_a_refused_upstream_request_is_answered_with_the_clients_error() -> None:
    async with scripted() as up:
        with anyio.fail_after(15):
            error = json.loads(await up.tool("ask", method="elicitation/create"))
    assert error == {"code": -32042, "message": "the user declined"}


async def test_an_upstream_request_the_upstream_cancels_is_stopped_and_never_answered() -> None:
    async with scripted() as up:
        with anyio.fail_after(20):
            await up.tool("ask_and_cancel", method="sampling/createMessage", after=0.3)
            while ("ended", "sampling/createMessage") not in up.asked:  # the handler was interrupted
                await anyio.sleep(0.05)
            await anyio.sleep(0.3)
            assert json.loads(await up.tool("unowned")) == []  # and nothing was sent for it


# ---- the property over interleavings, against an in-memory peer ----------------------------------


class _Sink:
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.permutations(range(8)),
    silent=st.sets(st.integers(0, 7), max_size=3),
    strays=st.lists(st.sampled_from(["unknown", "stray-error", "garbage", "non-message", "progress"]), max_size=6),
)
def test_every_interleaving_gives_each_caller_exactly_its_own_outcome(
    order: list[int], silent: set[int], strays: list[str]
) -> None:
    """Answers in any order, strays anywhere, some calls never answered (they time out and are
    cancelled; their late answers come after): each caller gets its own answer or its timeout,
    the peer sees a cancel for exactly the abandoned ids, and no waiter is left behind."""

    async def main() -> None:
        to_gw, lines = anyio.create_memory_object_stream[bytes](100)
        sink, from_gw = anyio.create_memory_object_stream[bytes](100)
        disp = LineDispatcher(lines, _Sink(sink), upstream="mem")
        outcomes: dict[int, Any] = {}

        async def peer() -> None:
            ids: dict[int, Any] = {}
            while len(ids) < 8:
                request = json.loads(await from_gw.receive())
                ids[request["params"]["n"]] = request["id"]
            pending = [n for n in order if n not in silent]
            for i, n in enumerate(pending):
                if i < len(strays):
                    await to_gw.send({
                        "unknown": codec.encode({"jsonrpc": "2.0", "id": 10_000 + i, "result": {"n": -1}}),
                        "stray-error": codec.encode({"jsonrpc": "2.0", "id": "x", "error": {"code": 1, "message": ""}}),
                        "garbage": b"{not json",
                        "non-message": b'"just a string"',
                        "progress": codec.encode({"jsonrpc": "2.0", "method": "notifications/progress",
                                                  "params": {"progressToken": 10_000, "progress": 1}}),
                    }[strays[i]])
                await to_gw.send(codec.encode({"jsonrpc": "2.0", "id": ids[n], "result": {"n": n}}))
            cancelled = set()
            while len(cancelled) < len(silent):
                note = json.loads(await from_gw.receive())
                assert note["method"] == "notifications/cancelled"
                cancelled.add(note["params"]["requestId"])
            assert cancelled == {ids[n] for n in silent}
            for n in silent:  # late: nobody waits for these any more
                await to_gw.send(codec.encode({"jsonrpc": "2.0", "id": ids[n], "result": {"n": n}}))

        async def caller(n: int) -> None:
            opts: Any = {"timeout": 0.05 if n in silent else math.inf}
            try:
                outcomes[n] = (await disp.send_raw_request("tools/call", {"n": n}, opts))["n"]
            except MCPError as exc:
                outcomes[n] = exc.code

        async def nothing(*_: Any) -> Any:
            return {}

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(disp.run, nothing, nothing)
                async with anyio.create_task_group() as calls:
                    calls.start_soon(peer)
                    for n in range(8):
                        calls.start_soon(caller, n)
                await anyio.wait_all_tasks_blocked()
                assert disp.in_flight == 0
                to_gw.close()  # EOF: the reader ends
        assert outcomes == {n: REQUEST_TIMEOUT if n in silent else n for n in range(8)}
        with pytest.raises(MCPError, match="Connection closed"):
            await disp.send_raw_request("ping", None)

    anyio.run(main)


async def test_when_the_upstream_goes_away_every_waiting_caller_gets_connection_closed() -> None:
    to_gw, lines = anyio.create_memory_object_stream[bytes](10)
    sink, from_gw = anyio.create_memory_object_stream[bytes](10)
    disp = LineDispatcher(lines, _Sink(sink), upstream="mem")
    codes: list[int] = []

    async def caller() -> None:
        try:
            await disp.send_raw_request("tools/call", {"name": "x"}, {"timeout": 30})
        except MCPError as exc:
            codes.append(exc.code)

    async def nothing(*_: Any) -> Any:
        return {}

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(disp.run, nothing, nothing)
            async with anyio.create_task_group() as calls:
                for _ in range(3):
                    calls.start_soon(caller)
                for _ in range(3):
                    await from_gw.receive()
                to_gw.close()
    assert codes == [CONNECTION_CLOSED] * 3  # which the link words as "closed the connection"


async def test_a_real_upstream_is_read_in_the_pipe_callback_and_slow_progress_still_comes_before_the_answer() -> None:
    """The answer settles its caller in the read callback only while the reader has nothing in hand:
    behind a progress callback still running, it waits its turn (proxy/wire/framing.py LineFeed)."""
    from proxy.wire.framing import LineFeed

    events: list[str] = []
    async with scripted() as up:
        disp = up.link._dispatcher
        assert isinstance(disp, LineDispatcher) and isinstance(disp._lines, LineFeed)
        assert disp._lines.take is not None  # the correlator's taker is installed while it runs

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            await anyio.sleep(0.02)  # the answer is on the pipe by now
            events.append(f"progress {progress:g}")

        with anyio.fail_after(30):
            result = await up.link.request("tools/call", {"name": "progress", "arguments": {"steps": 3}},
                                           on_progress=on_progress)
        events.append("answer")
        assert result["structuredContent"] == {"text": "done"}
        assert await up.tool("echo", text="next") == "next"  # and the next answer is taken at once again
    assert events == ["progress 1", "progress 2", "progress 3", "answer"]


async def test_a_caller_cancelled_before_its_request_is_written_never_sends_it_nor_a_cancel() -> None:
    to_gw, lines = anyio.create_memory_object_stream[bytes](10)
    sink, from_gw = anyio.create_memory_object_stream[bytes](10)
    disp = LineDispatcher(lines, _Sink(sink), upstream="mem")

    async def nothing(*_: Any) -> Any:
        return {}

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(disp.run, nothing, nothing)
            with anyio.CancelScope() as scope:
                scope.cancel()  # cancelled before the call: the request is never issued
                await disp.send_raw_request("tools/call", {"n": 1}, {"timeout": 30})
            assert scope.cancelled_caught and disp.in_flight == 0

            async def answer() -> None:
                request = json.loads(await from_gw.receive())
                assert request["params"] == {"n": 2}  # the first line out: no n=1, no cancel for it
                await to_gw.send(codec.encode({"jsonrpc": "2.0", "id": request["id"], "result": {"n": 2}}))

            tg.start_soon(answer)
            assert (await disp.send_raw_request("tools/call", {"n": 2}, {"timeout": 30}))["n"] == 2
            to_gw.close()
