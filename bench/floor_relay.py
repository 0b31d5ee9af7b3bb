"""The floor of a Python stdio hop: the least any relay written in Python can do.

``FLOOR_UPSTREAM='["python", "-m", "demo.testserver"]' python -m bench.floor_relay [plain]`` spawns
the upstream (its argv as JSON in the environment, so that the relay's own argv never looks
like the upstream's to ``bench_gateway.find_pid``) and relays lines both
ways on uvloop: each line is read, parsed once (orjson, as a relay must to route it) and its
bytes written to the other pipe unchanged. No routing, no ids, no policy, no error handling:
not a relay anyone should run, only the mark the real message path is measured against
(``bench_gateway.py --floor``). What the relay alone costs above this is the gateway's own
work; what this costs above direct is two pipe hops and two parses.

With ``FLOOR_AUDIT=FILE ... python -m bench.floor_relay durable`` it is the floor of a
*durable* hop instead, the least a relay can do that keeps the gateway's default audit promise
(``durability = "before-response"``): before a ``tools/call`` goes upstream, one fixed line
naming its id is appended to ``FILE`` (one ``write()``); the ``fdatasync`` that makes it durable
runs on the event loop right after the forward, while the upstream works, one flush for every
line written since the last (group commit); the call's reply is written only once a flush
covering its line has completed. (Measured here, 2 December 2026, load 1.5: this costs the
same p50 as the plain floor, 0.99x direct, where submitting the flush through Linux AIO as the
gateway does, proxy/audit/flush.py, cost 1.29x: a floor is the cheapest way, so it syncs
inline.) No policy, no event
built, no hash chain: what the full gateway costs above this is its own work, and what this
costs above the plain floor is what a durable record per call costs on this machine's disk.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import orjson

LIMIT = 1 << 25  # lines up to 32 MB
UPSTREAM_ENV = "FLOOR_UPSTREAM"
AUDIT_ENV = "FLOOR_AUDIT"
RECORD = b" " * 400  # about the size of a decision event


async def _pump(reader: asyncio.StreamReader, write: Callable[[bytes], object]) -> None:
    while line := await reader.readline():
        orjson.loads(line)
        write(line)


class _Durable:
    """One line per tools/call, written before the forward and group-committed by ``fdatasync``."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.written = 0  # lines written so far
        self.synced = 0  # lines a completed flush covers
        self.flushing: asyncio.Task[None] | None = None
        self.waiting: dict[object, int] = {}  # request id -> its line's number
        self.tasks: set[asyncio.Task[None]] = set()

    def record(self, request_id: object) -> None:
        os.write(self.fd, b'{"id":' + orjson.dumps(request_id) + b',"pad":"' + RECORD + b'"}\n')
        self.written += 1
        self.waiting[orjson.dumps(request_id)] = self.written

    def kick(self) -> None:
        if self.flushing is None and self.synced < self.written:
            self.flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:  # a task: it runs once the forward's loop pass is over
        while self.synced < self.written:
            target = self.written
            os.fdatasync(self.fd)
            self.synced = target
        self.flushing = None

    async def _held(self, line: bytes, seq: int, write: Callable[[bytes], object]) -> None:
        while self.synced < seq:
            self.kick()
            assert self.flushing is not None
            await asyncio.shield(self.flushing)
        write(line)

    def reply(self, line: bytes, message: object, write: Callable[[bytes], object]) -> None:
        seq = self.waiting.pop(orjson.dumps(message.get("id")), 0) if isinstance(message, dict) else 0
        if seq <= self.synced:
            write(line)
            return
        task = asyncio.get_running_loop().create_task(self._held(line, seq, write))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def _pump_in(reader: asyncio.StreamReader, write: Callable[[bytes], object], durable: _Durable) -> None:
    while line := await reader.readline():
        message = orjson.loads(line)
        call = isinstance(message, dict) and message.get("method") == "tools/call" and "id" in message
        if call:
            durable.record(message["id"])
        write(line)
        if call:
            durable.kick()


async def _pump_out(reader: asyncio.StreamReader, write: Callable[[bytes], object], durable: _Durable) -> None:
    while line := await reader.readline():
        durable.reply(line, orjson.loads(line), write)


async def _main(argv: list[str]) -> None:
    loop = asyncio.get_running_loop()
    child = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, limit=LIMIT)
    assert child.stdin is not None and child.stdout is not None
    stdin = asyncio.StreamReader(limit=LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin),
                                 os.fdopen(0, "rb", buffering=0, closefd=False))
    stdout, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", buffering=0, closefd=False))
    upstream = child.stdin.transport
    audit = os.environ.get(AUDIT_ENV)
    durable = _Durable(audit) if audit else None

    async def client_to_upstream() -> None:
        try:
            if durable is None:
                await _pump(stdin, upstream.write)
            else:
                await _pump_in(stdin, upstream.write, durable)
        finally:
            upstream.close()  # the client is gone: so is the upstream's input, and it exits

    replies = _pump(child.stdout, stdout.write) if durable is None else _pump_out(child.stdout, stdout.write, durable)
    await asyncio.gather(client_to_upstream(), replies)
    await child.wait()


USAGE = f"usage: {UPSTREAM_ENV}='[argv...]' [{AUDIT_ENV}=FILE] python -m bench.floor_relay [plain | durable]"


def main() -> int:
    argv = orjson.loads(os.environ.get(UPSTREAM_ENV, "[]"))
    mode = sys.argv[1] if len(sys.argv) > 1 else "plain"
    if not argv or mode not in ("plain", "durable") or (mode == "durable") != bool(os.environ.get(AUDIT_ENV)):
        print(USAGE + f"\n({AUDIT_ENV} is required with `durable` and only then)", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(argv))
    else:
        uvloop.run(_main(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
