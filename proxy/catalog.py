"""The merged view of every upstream's tools, prompts and resources for one client.

Tools and prompts are exposed as ``<upstream><sep><name>``, except for the one
upstream an operator may mark ``prefix = false``, whose names are exposed as the
server's own (a gateway standing in for that server); such a name that would read
as another upstream's prefixed name is hidden, so every name routes one way only.
Resources keep their URIs and are routed back to whichever upstream listed them. Each upstream's list
is read in full (every page) and cached while the upstream promises to announce
changes (``listChanged``); otherwise it is read fresh on every list request. The
merged list is paginated towards the client with the gateway's own cursor.

When a :class:`~proxy.tools.guard.ToolGuard` is attached (``catalog.guard``), every tool,
prompt and resource template of a fresh list is reviewed (scanned, pin-checked) as it is
adopted, and suspended items (quarantined, changed, unapproved) are left out of the merged
list -- their definitions stay known, so a call is refused with a reason instead of
``unknown tool``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from proxy import protocol
from proxy.protocol import INVALID_PARAMS, mcp_error
from proxy.tools.guard import ToolGuard, guard_key
from proxy.upstream.link import UpstreamLink


@dataclass(frozen=True)
class ListKind:
    method: str
    field: str  # the result field holding the items
    capability: str  # the upstream capability that serves it
    key: str  # the item field that names it
    namespaced: bool  # rename items as <upstream><sep><name>


LISTS: dict[str, ListKind] = {
    "tools/list": ListKind("tools/list", "tools", "tools", "name", True),
    "prompts/list": ListKind("prompts/list", "prompts", "prompts", "name", True),
    "resources/list": ListKind("resources/list", "resources", "resources", "uri", False),
    "resources/templates/list": ListKind(
        "resources/templates/list", "resourceTemplates", "resources", "uriTemplate", False
    ),
}
CHANGED: dict[str, tuple[str, ...]] = {
    "notifications/tools/list_changed": ("tools/list",),
    "notifications/prompts/list_changed": ("prompts/list",),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
}
MAX_UPSTREAM_PAGES = 1000
# Lists whose items a ToolGuard reviews, and what it calls them.
_GUARDED = {"tools/list": "tool", "prompts/list": "prompt", "resources/templates/list": "resource_template"}

log = structlog.get_logger("securegateway.catalog")


class Catalog:
    """Merged lists and name/URI routing for one downstream session."""

    def __init__(self, links: Sequence[UpstreamLink], *, separator: str, page_size: int) -> None:
        self._links = {link.name: link for link in links}
        self._order = [link.name for link in links]
        self._bare = next((link for link in links if not link.config.prefix), None)
        self.separator = separator
        self.page_size = page_size
        self._cache: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._tools: dict[str, dict[str, Any]] = {}  # exposed name -> upstream tool definition
        self._tool_owner: dict[str, str] = {}  # exposed name -> upstream
        self._resource_owner: dict[str, str] = {}
        self._templates: list[tuple[re.Pattern[str], str]] = []
        self.guard: ToolGuard | None = None
        # Guard keys of the items last adopted per (upstream, method), in list order.
        self._guard_keys: dict[tuple[str, str], list[str]] = {}

    # ---- naming ----------------------------------------------------------------------------------

    def qualify(self, upstream: str, name: str) -> str:
        if self._bare is not None and self._bare.name == upstream:
            return name
        return f"{upstream}{self.separator}{name}"

    def split(self, qualified: Any) -> tuple[UpstreamLink, str] | None:
        """``calendar.create_event`` -> (calendar link, ``create_event``); None if no upstream owns it.

        A name no prefixed upstream claims belongs to the unprefixed upstream, if any."""
        if not isinstance(qualified, str):
            return None
        prefixed = self._prefixed(qualified)
        if prefixed is not None:
            return prefixed
        if self._bare is not None and qualified:
            return self._bare, qualified
        return None

    def _prefixed(self, qualified: str) -> tuple[UpstreamLink, str] | None:
        upstream, sep, name = qualified.partition(self.separator)
        link = self._links.get(upstream)
        if not sep or not name or link is None or not link.config.prefix:
            return None
        return link, name

    def tool_definition(self, qualified: str) -> dict[str, Any] | None:
        return self._tools.get(qualified)

    # ---- lists -----------------------------------------------------------------------------------

    def invalidate(self, upstream: str, methods: Iterable[str] | None = None) -> None:
        for method in methods or LISTS:
            self._cache.pop((upstream, method), None)

    async def merged(self, method: str) -> list[dict[str, Any]]:
        """Every ready upstream's items for ``method``, namespaced, in upstream order."""
        kind = LISTS[method]
        serving = [
            link for name in self._order
            if (link := self._links[name]).ready and link.info and kind.capability in link.info.capabilities
        ]
        per_upstream: dict[str, list[dict[str, Any]]] = {}

        async def fetch(link: UpstreamLink) -> None:
            try:
                per_upstream[link.name] = await self._items(link, kind)
            except protocol.MCP_ERRORS:
                per_upstream[link.name] = []  # a failing upstream must not hide the others' items

        async with anyio.create_task_group() as tg:
            for link in serving:
                tg.start_soon(fetch, link)
        merged: list[dict[str, Any]] = []
        guard = self.guard
        for link in serving:
            items = per_upstream.get(link.name, ())
            keys = self._guard_keys.get((link.name, kind.method))
            if guard is not None and guard.active and keys is not None and len(keys) == len(items):
                items = [item for item, key in zip(items, keys, strict=True) if guard.suspended(key) is None]
            merged.extend(items)
        return merged

    async def _items(self, link: UpstreamLink, kind: ListKind) -> list[dict[str, Any]]:
        cached = self._cache.get((link.name, kind.method))
        if cached is not None:
            return cached
        raw: list[dict[str, Any]] = []
        cursor: Any = None
        for _ in range(MAX_UPSTREAM_PAGES):
            result = await link.request(kind.method, {"cursor": cursor} if cursor is not None else None)
            raw.extend(item for item in result.get(kind.field) or () if isinstance(item, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                break
        items = self._adopt(link.name, kind, raw)
        assert link.info is not None
        if (link.info.capabilities.get(kind.capability) or {}).get("listChanged"):
            self._cache[(link.name, kind.method)] = items
        return items

    def _adopt(self, upstream: str, kind: ListKind, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items = self._adopt_items(upstream, kind, raw)
        guard = self.guard
        if guard is not None and guard.active and kind.method in _GUARDED:
            what = _GUARDED[kind.method]
            keys = [guard_key(what, upstream, str(original.get(kind.key, ""))) for original in raw]
            for key, original in zip(keys, raw, strict=True):
                guard.review(what, key, original)
            self._guard_keys[(upstream, kind.method)] = keys
        return items

    def _adopt_items(self, upstream: str, kind: ListKind, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if kind.namespaced:
            items = [{**item, kind.key: self.qualify(upstream, str(item.get(kind.key, "")))} for item in raw]
            if self._bare is not None and self._bare.name == upstream:
                items = self._unambiguous(upstream, kind, items)
            if kind.method == "tools/list":
                for name in [n for n, owner in self._tool_owner.items() if owner == upstream]:
                    del self._tools[name]  # a tool the upstream no longer lists is unknown again
                    del self._tool_owner[name]
                for item in items:
                    self._tools[item["name"]] = item
                    self._tool_owner[item["name"]] = upstream
            return items
        if kind.method == "resources/list":
            for item in raw:
                if isinstance(item.get("uri"), str):
                    self._resource_owner[item["uri"]] = upstream
        else:
            self._templates = [t for t in self._templates if t[1] != upstream]
            for item in raw:
                template = item.get("uriTemplate")
                if isinstance(template, str):
                    self._templates.append((_template_regex(template), upstream))
        return raw

    def _unambiguous(self, upstream: str, kind: ListKind, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """An unprefixed name that reads as another upstream's prefixed name would route there: hide it."""
        kept = []
        for item in items:
            name = str(item.get(kind.key, ""))
            if not name or self._prefixed(name) is not None:
                log.warning("unprefixed name hidden: it collides with another upstream's names",
                            upstream=upstream, name=name[:200], kind=kind.field)
                continue
            kept.append(item)
        return kept

    def page(self, items: list[dict[str, Any]], cursor: Any) -> tuple[list[dict[str, Any]], str | None]:
        """Slice the merged list for the client; raise INVALID_PARAMS for a cursor we did not mint."""
        start = 0
        if cursor is not None:
            start = _decode_cursor(cursor)
        end = start + self.page_size
        next_cursor = _encode_cursor(end) if end < len(items) else None
        return items[start:end], next_cursor

    # ---- resource routing ------------------------------------------------------------------------

    async def resource_owner(self, uri: Any) -> UpstreamLink:
        if not isinstance(uri, str):
            raise mcp_error(INVALID_PARAMS, "`uri` must be a string")
        link = self._find_owner(uri)
        if link is None:
            # Not seen yet: read the lists (a client may go straight to a known URI).
            await self.merged("resources/list")
            await self.merged("resources/templates/list")
            link = self._find_owner(uri)
        if link is None:
            candidates = [
                lk for lk in self._links.values() if lk.ready and lk.info and "resources" in lk.info.capabilities
            ]
            if len(candidates) == 1:
                return candidates[0]
            raise mcp_error(INVALID_PARAMS, f"unknown resource `{uri[:200]}`: no upstream lists it")
        return link

    def _find_owner(self, uri: str) -> UpstreamLink | None:
        owner = self._resource_owner.get(uri)
        if owner is None:
            owner = next((up for rx, up in self._templates if rx.fullmatch(uri)), None)
        return self._links.get(owner) if owner else None


def _template_regex(template: str) -> re.Pattern[str]:
    """A permissive matcher for an RFC 6570 URI template (enough to route, not to expand)."""
    out, pos = [], 0
    for m in re.finditer(r"\{([+#./;?&]?)[^}]*\}", template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(".*" if m.group(1) in ("+", "#", "?", "&", ";") else "[^/]*")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def _decode_cursor(cursor: Any) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(str(cursor).encode()))
        offset = data["o"] if isinstance(data, Mapping) else None
    except (binascii.Error, ValueError, KeyError, UnicodeDecodeError):
        offset = None
    if not isinstance(offset, int) or offset < 0:
        raise mcp_error(INVALID_PARAMS, "invalid cursor")
    return offset
