"""A 2026 client's requests and results: its envelope off before a handshake-era upstream, its
result shape (``resultType``, cache hints, the ``serverInfo`` stamp) on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.protocol import SERVER_INFO_META_KEY

__all__ = ["CACHEABLE", "ENVELOPE_PREFIX", "complete_for_modern", "strip_envelope"]

ENVELOPE_PREFIX = "io.modelcontextprotocol/"
CACHEABLE = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"})


def strip_envelope(params: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Drop a 2026 client's envelope keys before they reach a handshake-era upstream."""
    if not params:
        return params
    meta = params.get("_meta")
    if meta is None or not isinstance(meta, Mapping) or not any(str(k).startswith(ENVELOPE_PREFIX) for k in meta):
        return params
    kept = {k: v for k, v in meta.items() if not str(k).startswith(ENVELOPE_PREFIX)}
    out = dict(params)
    if kept:
        out["_meta"] = kept
    else:
        del out["_meta"]
    return out


def complete_for_modern(method: str, result: dict[str, Any], server_info: Mapping[str, Any]) -> dict[str, Any]:
    """A 2026 client needs ``resultType`` (and cache hints on cacheable results); every result
    carries the ``serverInfo`` stamp of the server the client sees (an upstream's own stamp
    names the upstream, not this one, so it is replaced)."""
    result = {**result, "resultType": result.get("resultType") or "complete"}
    if method in CACHEABLE and "ttlMs" not in result:
        result.update(ttlMs=0, cacheScope="private")
    meta = result.get("_meta")
    if meta is None or isinstance(meta, Mapping):
        result["_meta"] = {**(meta or {}), SERVER_INFO_META_KEY: dict(server_info)}
    return result
