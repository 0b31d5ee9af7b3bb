"""LineReader / LineWriter: whole lines, however the bytes arrive; oversized lines refused.

Invariant: for any split of a byte stream into chunks, the reader yields the same
messages as splitting the whole stream on newlines (CR stripped, blank lines skipped);
a line over the limit is never held in memory and becomes a stand-in request with its id
(or nothing, when it names no id).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire.framing import FEED_HIGH, JOIN_BELOW, OVERSIZED_METHOD, LineFeed, LineReader, LineWriter

pytestmark = pytest.mark.anyio


class Chunks:
    """A byte source handing out the given chunks, one per read (what a pipe does)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)
        self.largest_read = 0

    async def read(self, n: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self._chunks:
            return b""
        chunk = self._chunks.pop(0)
        if len(chunk) > n:
            chunk, rest = chunk[:n], chunk[n:]
            self._chunks.insert(0, rest)
        return chunk


async def read_all(chunks: list[bytes], limit: int = 1 << 20) -> list[Any]:
    return [line async for line in LineReader(Chunks(chunks), limit)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def expected(data: bytes) -> list[bytes]:
    lines = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    return [line for line in lines if line.strip()]


lines_strategy = st.lists(
    st.one_of(
        st.dictionaries(st.text(max_size=5), st.text(max_size=30), max_size=4).map(
            lambda d: json.dumps(d, ensure_ascii=False).encode()
        ),
        st.sampled_from([b"", b"  ", b"not json", "\u00e9t\u00e9 \u2603".encode()]),
    ),
    max_size=12,
)


@given(lines=lines_strategy, ends=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=12, max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_any_chunking_yields_the_same_lines(lines: list[bytes], ends: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    got = anyio.run(read_all, split(data, cuts))
    assert got == expected(data)


async def test_a_read_of_exactly_one_line_gives_that_line() -> None:
    # one line per read is how a pipe usually hands messages over (the reader's fast path)
    chunks = [b'{"a":1}\n', b'{"b":2}\r\n', b"  \n", b"\n", b'{"c"', b':3}\n', b'{"d":4}\n']
    assert await read_all(chunks) == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}']
    oversized = await read_all([b'{"id":9,"x":"' + b"y" * 64 + b'"}\n', b'{"e":5}\n'], limit=32)
    assert oversized[0]["id"] == 9 and oversized[0]["method"] == OVERSIZED_METHOD
    assert oversized[1:] == [b'{"e":5}']


async def test_a_last_line_without_a_newline_still_counts() -> None:
    assert await read_all([b'{"a": 1}\n{"b"', b": 2}"]) == [b'{"a": 1}', b'{"b": 2}']


async def test_crlf_is_stripped_and_blank_lines_skipped() -> None:
    assert await read_all([b"\r\n", b'{"id": 1}\r', b"\n\n  \n"]) == [b'{"id": 1}']


@pytest.mark.parametrize("chunk", [7, 100, 5000])
async def test_an_oversized_request_becomes_a_stand_in_with_its_id(chunk: int) -> None:
    big = b'{"jsonrpc": "2.0", "id": "big-1", "method": "tools/call", "params": {"x": "' + b"y" * 5000 + b'"}}'
    data = big + b"\n" + b'{"id": 2}\n'
    got = await read_all([data[i:i + chunk] for i in range(0, len(data), chunk)], limit=1024)
    assert got[0] == {"jsonrpc": "2.0", "id": "big-1", "method": OVERSIZED_METHOD,
                      "params": {"bytes": len(big), "limit": 1024}}
    assert got[1:] == [b'{"id": 2}']


async def test_an_oversized_line_without_an_id_is_dropped_and_reading_goes_on() -> None:
    data = b'{"method": "notifications/x", "params": {"x": "' + b"y" * 4000 + b'"}}\n{"id": 3}\n'
    assert await read_all([data[i:i + 512] for i in range(0, len(data), 512)], limit=1024) == [b'{"id": 3}']


async def test_an_oversized_line_is_never_held_whole() -> None:
    """The buffer stays near the limit while megabytes of one line stream past."""
    reader = LineReader(Chunks([b'{"id": 9, "x": "'] + [b"z" * 65536] * 64 + [b'"}\n']), 4096)
    peak = 0

    async def watch() -> Any:
        nonlocal peak
        async for item in reader:
            return item

    original = reader._source.read

    async def tracked(n: int) -> bytes:
        nonlocal peak
        peak = max(peak, len(reader._split._buf))
        return await original(n)

    reader._source.read = tracked  # type: ignore[method-assign]
    item = await watch()
    assert item["id"] == 9 and item["method"] == OVERSIZED_METHOD
    assert peak < 4096 + 65536 * 2


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        await anyio.lowlevel.checkpoint()  # let another sender run between lines


async def test_concurrent_senders_never_interleave_within_a_line() -> None:
    sink = Sink()
    writer = LineWriter(sink)

    async def sender(n: int) -> None:
        for i in range(50):
            await writer.send(json.dumps({"sender": n, "i": i, "pad": "p" * (n * 100)}).encode())

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(sender, n)
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in sink.writes)
    seen = [json.loads(w) for w in sink.writes]
    for n in range(5):
        assert [m["i"] for m in seen if m["sender"] == n] == list(range(50))


async def test_long_lines_written_without_a_copy_still_never_interleave() -> None:
    sink = Sink()
    writer = LineWriter(sink)

    async def sender(n: int) -> None:
        for i in range(5):
            await writer.send(json.dumps({"sender": n, "i": i, "pad": "p" * (JOIN_BELOW + n)}).encode())

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(sender, n)
    lines = b"".join(sink.writes).split(b"\n")
    assert lines[-1] == b""
    seen = [json.loads(line) for line in lines[:-1]]  # each line whole: no other sender's bytes inside
    assert sorted((m["sender"], m["i"]) for m in seen) == [(n, i) for n in range(4) for i in range(5)]


# ---- LineFeed: the same cut, driven by the read callback ------------------------------------------


class PausableTransport:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False


async def feed_through(chunks: list[bytes], takes: Any, limit: int = 1 << 20, busy: int = 0) -> dict[str, Any]:
    """Feed ``chunks`` one loop turn apart into a LineFeed whose reader spends ``busy`` turns on each
    line; ``takes(line)`` says which lines the taker takes. Every line handled, in order, and by whom."""
    feed = LineFeed(limit)
    handled: list[tuple[str, Any]] = []
    idle_when_taken: list[bool] = []

    def take(line: bytes) -> bool:
        idle_when_taken.append(feed._waiter is not None and not feed._queue)
        if takes(line):
            handled.append(("taken", line))
            return True
        return False

    feed.take = take

    async def reader() -> None:
        async for item in feed:
            handled.append(("read", item))
            for _ in range(busy):
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        for chunk in chunks:
            await anyio.lowlevel.checkpoint()
            feed.feed_data(chunk)
        feed.feed_eof()
    return {"lines": [item for _, item in handled], "handled": handled, "idle": idle_when_taken}


@given(lines=lines_strategy, ends=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=12, max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
       taken=st.sets(st.integers(min_value=0, max_value=11)), busy=st.integers(min_value=0, max_value=3))
def test_a_feed_handles_every_line_once_in_wire_order_whatever_the_taker_takes(
    lines: list[bytes], ends: list[bytes], cuts: list[int], taken: set[int], busy: int
) -> None:
    data = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    wanted = expected(data)
    chosen = {wanted[i] for i in taken if i < len(wanted)}
    got = anyio.run(feed_through, split(data, cuts), chosen.__contains__, 1 << 20, busy)
    assert got["lines"] == wanted  # the taker's lines and the reader's, together, are the stream in order
    assert all(got["idle"])  # the taker only ever saw a line while the reader waited with nothing queued
    assert all(kind == "read" for kind, line in got["handled"] if line not in chosen)


async def test_a_line_arriving_while_the_reader_is_busy_waits_behind_it_even_if_the_taker_would_take_it() -> None:
    got = await feed_through([b'{"a":1}\n{"b":2}\n', b'{"c":3}\n'], lambda line: line != b'{"a":1}', busy=3)
    assert got["lines"] == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert got["handled"][1] == ("read", b'{"b":2}')  # queued behind the first: never taken out of turn


async def test_a_feed_cuts_oversized_and_partial_lines_like_the_reader() -> None:
    big = b'{"jsonrpc": "2.0", "id": 4, "method": "x", "params": {"x": "' + b"y" * 3000 + b'"}}'
    data = b'{"a"' + b':1}\n' + big + b"\n" + b'{"last": 1}'
    chunks = [data[i:i + 100] for i in range(0, len(data), 100)]
    got = await feed_through(chunks, lambda line: True, limit=1024)
    assert got["lines"][0] == b'{"a":1}'
    assert got["lines"][1]["method"] == OVERSIZED_METHOD and got["lines"][1]["id"] == 4  # never offered to take
    assert got["lines"][2] == b'{"last": 1}'
    assert await read_all(chunks, limit=1024) == got["lines"]


async def test_a_taker_that_raises_loses_no_line() -> None:
    def take(line: bytes) -> bool:
        raise RuntimeError("broken taker")

    got = await feed_through([b'{"a":1}\n', b'{"b":2}\n'], take)
    assert got["lines"] == [b'{"a":1}', b'{"b":2}']


async def test_a_feed_pauses_its_transport_while_its_backlog_is_large_and_resumes_once_read() -> None:
    feed = LineFeed(1 << 20)
    transport = PausableTransport()
    feed.attach(transport)
    line = b'{"pad": "' + b"p" * 60_000 + b'"}\n'
    for _ in range(FEED_HIGH // len(line) + 2):
        feed.feed_data(line)
    assert transport.paused and transport.pauses == 1
    read = 0
    async for _ in feed:
        read += 1
        if not transport.paused:
            break
    assert read >= (FEED_HIGH // 2) // len(line)  # resumed only once the backlog was down to half
    feed.close()  # nobody reads any more: what comes is dropped, and reading is never paused again
    for _ in range(FEED_HIGH // len(line) + 2):
        feed.feed_data(line)
    assert not transport.paused and not feed._queue
    assert [item async for item in feed] == []


class _Transport:
    def __init__(self, closing: bool, buffered: int) -> None:
        self.closing, self.buffered = closing, buffered

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


@pytest.mark.parametrize(("transport", "drain"), [
    (None, True),  # not an asyncio stream: always drained
    (_Transport(closing=False, buffered=0), False),  # drain would return at once
    (_Transport(closing=False, buffered=1), True),  # something is buffered: drain may wait for room
    (_Transport(closing=True, buffered=0), True),  # closing: drain is where the end is reported
])
def test_a_write_is_drained_unless_the_transport_is_open_with_nothing_buffered(transport: Any, drain: bool) -> None:
    from proxy.wire.framing import must_drain

    assert must_drain(transport) is drain


async def test_a_writer_whose_reader_went_away_fails_instead_of_dropping_lines_silently() -> None:
    import asyncio
    import os

    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        os.fdopen(write_fd, "wb", buffering=0))
    writer = LineWriter(asyncio.StreamWriter(transport, protocol, None, loop))
    await writer.send(b'{"a": 1}')
    assert os.read(read_fd, 100) == b'{"a": 1}\n'
    os.close(read_fd)
    with pytest.raises((ConnectionError, OSError)):
        for _ in range(3):
            await writer.send(b'{"b": 2}')
    transport.close()
