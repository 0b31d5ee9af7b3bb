"""A loopback TCP relay that counts the connections made through it (for connection-reuse tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc


class CountingRelay:
    """Forwards every connection to ``127.0.0.1:target`` byte for byte; ``accepted`` counts them."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.accepted = 0
        self.port = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CountingRelay]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._handle)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        async with client, await anyio.connect_tcp("127.0.0.1", self.target) as server:

            async def pump(src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream) -> None:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    async for chunk in src:
                        await dst.send(chunk)
                with contextlib.suppress(Exception):
                    await dst.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, client, server)
                tg.start_soon(pump, server, client)
