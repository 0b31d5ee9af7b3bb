"""The floor of a Python stdio hop: the least any relay written in Python can do.

``FLOOR_UPSTREAM='["python", "-m", "demo.testserver"]' python -m bench.floor_relay`` spawns
the upstream (its argv as JSON in the environment, so that the relay's own argv never looks
like the upstream's to ``bench_gateway.find_pid``) and relays lines both
ways on uvloop: each line is read, parsed once (orjson, as a relay must to route it) and its
bytes written to the other pipe unchanged. No routing, no ids, no policy, no error handling:
not a relay anyone should run, only the mark the real message path is measured against
(``bench_gateway.py --floor``). What the relay alone costs above this is the gateway's own
work; what this costs above direct is two pipe hops and two parses.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import orjson

LIMIT = 1 << 25  # lines up to 32 MB
UPSTREAM_ENV = "FLOOR_UPSTREAM"


async def _pump(reader: asyncio.StreamReader, write: Callable[[bytes], object]) -> None:
    while line := await reader.readline():
        orjson.loads(line)
        write(line)


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

    async def client_to_upstream() -> None:
        try:
            await _pump(stdin, upstream.write)
        finally:
            upstream.close()  # the client is gone: so is the upstream's input, and it exits

    await asyncio.gather(client_to_upstream(), _pump(child.stdout, stdout.write))
    await child.wait()


def main() -> int:
    argv = orjson.loads(os.environ.get(UPSTREAM_ENV, "[]"))
    if not argv:
        print(f"usage: {UPSTREAM_ENV}='[argv...]' python -m bench.floor_relay", file=sys.stderr)
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
