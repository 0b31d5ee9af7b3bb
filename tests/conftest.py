"""Shared fixtures: real upstream servers (stdio subprocesses and Streamable HTTP on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]

# Property tests judge behaviour, not speed: a loaded CI machine must not fail them on
# generation time or per-example deadlines (speed lives in bench/).
settings.register_profile("securegateway", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("securegateway")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_LISTEN_LOW = 20000
_EPHEMERAL_LOW = _ephemeral_low()


def free_port() -> int:
    """A loopback port free now, for a server a test starts next.

    Picked below the kernel's ephemeral range where there is room: a port the kernel hands out
    for ``bind(0)`` is also what it hands to outgoing connections (any process's), so one of
    those could take it between this check and the server's bind (seen in CI: EADDRINUSE).
    Ports below the range are only ever taken by explicit binds."""
    rng = random.SystemRandom()
    if _EPHEMERAL_LOW - _LISTEN_LOW >= 1000:
        for _ in range(64):
            port = rng.randrange(_LISTEN_LOW, _EPHEMERAL_LOW)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_cmd(name: str, *extra: str) -> list[str]:
    """argv for the bundled test server as a stdio upstream."""
    return [sys.executable, "-m", "demo.testserver", "--name", name, *extra]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def http_upstream(name: str, *extra: str) -> Iterator[str]:
    """The bundled test server on Streamable HTTP at 127.0.0.1:<free port>; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [*server_cmd(name, "--http", f"127.0.0.1:{port}"), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def http_upstream_factory() -> Iterator[Any]:
    with contextlib.ExitStack() as stack:
        yield lambda name, *extra: stack.enter_context(http_upstream(name, *extra))


def gateway_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextlib.asynccontextmanager
async def running(target: Any) -> AsyncIterator[None]:
    """Run ``target.run`` (a task_status-aware coroutine) in a task group for the block's duration."""
    async with anyio.create_task_group() as tg:
        await tg.start(target.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def connect(url: str, key: str | None = None, **client_kwargs: Any) -> AsyncIterator[Any]:
    """A real MCP client (the SDK's ``Client``) on Streamable HTTP, sending ``key`` as a bearer token."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {key}"} if key else None
    client_kwargs.setdefault("mode", "legacy")
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http, max_sse_event_size=None), **client_kwargs) as client,
    ):
        yield client
