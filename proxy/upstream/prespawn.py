"""Stdio upstreams started before the gateway's own start-up, then adopted by their links.

A stdio upstream is usually a Python or Node program that itself takes hundreds of
milliseconds to start. The gateway used to spawn it only when the client's
``initialize`` arrived, i.e. after its own imports and set-up, so a client waited for
both start-ups one after the other. ``securegateway run`` on a stdio listener now
starts them right after reading gateway.toml, before the heavy imports, so the two
start-ups overlap; the first link of each upstream adopts its process instead of
spawning one. Spawning is the SDK's own (``mcp==2.3.0``'s
``_create_platform_compatible_process`` on POSIX): the same argv, environment
(:data:`DEFAULT_INHERITED_ENV_VARS` plus ``env_passthrough`` and ``env``), cwd, stderr
and new session as a link-spawned process. A spawn that fails (a command not found) is
kept and raised by the adopting link, so the error reads exactly as before.

This module is imported before ``mcp`` (that import is what the overlap hides), so it
must stay light: ``anyio`` and the standard library only.

Processes never adopted (start-up failed, or the client never initialized) are killed,
with their process group, when :func:`prespawned` exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import anyio
import anyio.abc

from proxy.config.model import UpstreamConfig

__all__ = ["DEFAULT_INHERITED_ENV_VARS", "Prespawned", "kill_group", "prespawned", "upstream_environment"]

DEFAULT_INHERITED_ENV_VARS = (
    ("APPDATA", "HOMEDRIVE", "HOMEPATH", "LOCALAPPDATA", "PATH", "PATHEXT", "PROCESSOR_ARCHITECTURE",
     "SYSTEMDRIVE", "SYSTEMROOT", "TEMP", "USERNAME", "USERPROFILE")
    if sys.platform == "win32"
    else ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")
)
"""``mcp.client.stdio.DEFAULT_INHERITED_ENV_VARS`` of mcp==2.3.0 (a test keeps them equal)."""

KILL_TIMEOUT = 2.0
"""Seconds between SIGTERM and SIGKILL of a process group nobody adopted."""


def upstream_environment(config: UpstreamConfig, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The child's environment: the SDK's safe defaults, ``env_passthrough``, then ``env``
    (what ``UpstreamLink`` and the SDK's ``get_default_environment`` compute together)."""
    env = {k: v for k in DEFAULT_INHERITED_ENV_VARS if (v := environ.get(k)) is not None and not v.startswith("()")}
    env.update({k: environ[k] for k in config.env_passthrough if k in environ})
    env.update(config.env)
    return env


class Prespawned:
    """Pre-started upstream processes by upstream name; each is handed out once."""

    def __init__(self) -> None:
        self._spawned: dict[str, anyio.abc.Process | Exception] = {}

    async def spawn(self, upstreams: Iterable[UpstreamConfig]) -> None:
        if sys.platform == "win32":  # the SDK spawns into a Job Object there: leave it to the links
            return
        for up in upstreams:
            if up.transport != "stdio" or not up.command:
                continue
            try:
                # Shielded: a signal's cancellation landing inside open_process (after the fork,
                # before it returns) would kill the child alone and lose it, leaving its own
                # children behind; finished, it is recorded, and the group kill below reaches all.
                with anyio.CancelScope(shield=True):
                    self._spawned[up.name] = await anyio.open_process(
                        list(up.command), env=upstream_environment(up), stderr=sys.stderr, cwd=up.cwd,
                        start_new_session=True,
                    )
            except Exception as exc:  # raised again by the link that adopts it, as its own spawn would
                if isinstance(exc, FileNotFoundError):
                    exc.filename = exc.filename or up.command[0]  # uvloop leaves out which file
                self._spawned[up.name] = exc

    def take(self, name: str) -> anyio.abc.Process | None:
        """The process started for upstream ``name`` (once; None afterwards or if there is none).
        Raises the spawn's own error when starting it failed."""
        found = self._spawned.pop(name, None)
        if isinstance(found, Exception):
            raise found
        return found

    def adopter(self, name: str) -> Any:
        """The ``process`` hook of ``UpstreamLink``: adopt this upstream's process on first connect."""

        async def adopt() -> anyio.abc.Process | None:
            return self.take(name)

        return adopt

    async def kill_unadopted(self) -> None:
        """Kill (process group and all) every process no link adopted, and reap it."""
        left = [p for p in self._spawned.values() if isinstance(p, anyio.abc.Process)]
        self._spawned.clear()
        with anyio.CancelScope(shield=True):
            for process in left:
                await kill_group(process)


async def kill_group(process: anyio.abc.Process) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_TIMEOUT), (signal.SIGKILL, KILL_TIMEOUT)):
        if process.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)  # start_new_session: the pid is the group id
        with anyio.move_on_after(wait):
            await process.wait()
    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.aclose()


@contextlib.asynccontextmanager
async def prespawned(upstreams: Iterable[UpstreamConfig]) -> AsyncIterator[Prespawned]:
    """Start every stdio upstream now; on exit (normal or not) kill the ones nobody adopted."""
    spawned = Prespawned()
    try:
        await spawned.spawn(upstreams)
        yield spawned
    finally:
        await spawned.kill_unadopted()
