"""One request sent to its upstream as the client asked it, and its progress routed back."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from proxy.route.era import strip_envelope
from proxy.upstream.link import UpstreamLink

if TYPE_CHECKING:  # the SDK is loaded at a stdio client's first need (proxy/wire/opening.py)
    from mcp.server.context import ServerRequestContext
    from mcp.shared.dispatcher import ProgressFnT

__all__ = ["forward", "progress_relay"]


async def forward(
    link: UpstreamLink, ctx: ServerRequestContext[Any, Any], params: Mapping[str, Any] | None
) -> dict[str, Any]:
    return await link.request(ctx.method, strip_envelope(params), on_progress=progress_relay(ctx))


def progress_relay(ctx: ServerRequestContext[Any, Any]) -> ProgressFnT | None:
    """Route upstream progress back to the caller that asked for it (and only then)."""
    meta = (ctx.params or {}).get("_meta")
    if not isinstance(meta, Mapping) or meta.get("progressToken") is None:
        return None
    session = ctx.session

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        with contextlib.suppress(Exception):  # the caller may be gone (a finished MRTR round)
            await session.report_progress(progress, total, message)

    return relay
