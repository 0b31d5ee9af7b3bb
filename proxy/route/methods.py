"""The routes of every request but ``tools/call`` and the task methods, decided and screened.

Lists are merged and paginated (shared with the lean lanes through ``Relay.list_items``); a
prompt, a resource, a completion and a method passed through to a lone upstream are decided
and screened (:mod:`proxy.route.access`); ``logging/setLevel`` goes to every upstream that logs
and that the model may reach; ``subscriptions/listen`` is a sessionless client's change stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from proxy import protocol
from proxy.catalog import LISTS
from proxy.protocol import INVALID_PARAMS, METHOD_NOT_FOUND, mcp_error
from proxy.route.access import Access
from proxy.route.forward import forward
from proxy.route.seams import SessionHost
from proxy.session import DownstreamSession, is_bridge

if TYPE_CHECKING:  # the SDK is loaded at a stdio client's first need (proxy/wire/opening.py)
    from mcp.server.context import ServerRequestContext

__all__ = ["Methods"]


class Methods:
    """The route handlers ``(session, ctx) -> result`` the relay's table points at."""

    def __init__(self, host: SessionHost, access: Access) -> None:
        self._host = host
        self._access = access

    async def list(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        return await self.list_items(session, ctx.method, ctx.params or {})

    async def list_items(self, session: DownstreamSession, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One page of a merged list (``tools/list`` and friends); shared with the lean stdio lane."""
        kind = LISTS[method]
        items = await session.catalog.merged(method)
        if method == "tools/list":
            items = await self._host.visible_tools(session, items)  # the gateway's own tools first
        else:
            items = await self._access.listable(session, kind, items)
        page, next_cursor = session.catalog.page(items, params.get("cursor"))
        result: dict[str, Any] = {kind.field: page}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        return result

    async def prompts_get(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        params = dict(ctx.params or {})
        target = session.catalog.split(params.get("name"))
        if target is None:
            raise mcp_error(INVALID_PARAMS, f"unknown prompt `{str(params.get('name'))[:200]}`")
        link, params["name"] = target
        decision_id = await self._access.decide(
            session, ctx.method, "prompt", link.name, params["name"], params.get("arguments") or {}
        )
        result = await forward(link, ctx, params)
        return await self._access.screened(session, ctx.method, link.name, params["name"], result, decision_id)

    async def by_uri(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        uri = (ctx.params or {}).get("uri")
        link = await session.catalog.resource_owner(uri)
        assert isinstance(uri, str)  # resource_owner refuses anything else
        decision_id = await self._access.decide(session, ctx.method, "resource", link.name, uri, {"uri": uri})
        result = await forward(link, ctx, ctx.params)
        if ctx.method != "resources/read":
            return result
        return await self._access.screened(session, ctx.method, link.name, uri, result, decision_id)

    async def complete(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        params = dict(ctx.params or {})
        ref = dict(params.get("ref") or {})
        argument = params.get("argument")
        arguments: dict[str, Any] = {}
        if isinstance(argument, Mapping) and isinstance(argument.get("name"), str):
            arguments[argument["name"]] = argument.get("value")
        if ref.get("type") == "ref/prompt":
            target = session.catalog.split(ref.get("name"))
            if target is None:
                raise mcp_error(INVALID_PARAMS, f"unknown prompt `{str(ref.get('name'))[:200]}`")
            link, ref["name"] = target
            params["ref"] = ref
            kind, name = "prompt", ref["name"]
        elif ref.get("type") == "ref/resource":
            link = await session.catalog.resource_owner(ref.get("uri"))
            kind, name = "resource", str(ref.get("uri"))
            arguments = {"uri": name}
        else:
            raise mcp_error(INVALID_PARAMS, "`ref.type` must be `ref/prompt` or `ref/resource`")
        if not (link.info and "completions" in link.info.capabilities):
            raise mcp_error(METHOD_NOT_FOUND, f"upstream `{link.name}` does not offer completions", data=ctx.method)
        decision_id = await self._access.decide(session, ctx.method, kind, link.name, name, arguments)
        result = await forward(link, ctx, params)
        return await self._access.screened(session, ctx.method, link.name, name, result, decision_id)

    async def fan_out(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        """logging/setLevel applies to every upstream that logs and that the model may reach:
        decided (kind ``method``) and audited per upstream; denied only if every one is."""
        serving = [lk for lk in session.ready_links if lk.info and "logging" in lk.info.capabilities]
        allowed, denied = [], None
        for link in serving:
            try:
                await self._access.decide(session, ctx.method, "method", link.name, ctx.method,
                                   {"level": (ctx.params or {}).get("level")})
            except protocol.MCP_ERRORS as exc:  # this upstream is out of the model's reach: skipped
                denied = exc
                continue
            allowed.append(link)
        if denied is not None and not allowed:
            raise denied
        serving = allowed
        async with anyio.create_task_group() as tg:
            for link in serving:
                tg.start_soon(forward, link, ctx, ctx.params)
        return {}

    async def listen(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        """A sessionless client's change stream, fed by this identity's upstream notifications."""
        bridge = session.channel
        if not is_bridge(bridge):
            raise mcp_error(METHOD_NOT_FOUND, "Method not found", data=ctx.method)
        from mcp_types import SubscriptionsListenRequestParams  # a 2026 client: the SDK is loaded

        params = SubscriptionsListenRequestParams.model_validate(ctx.params or {}, by_name=False)
        result = await bridge.listen(ctx, params)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    async def unknown(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        """A method the gateway does not route: with one upstream it is passed through as is."""
        if len(session.links) == 1:
            (link,) = session.links.values()
            decision_id = await self._access.decide(session, ctx.method, "method", link.name, ctx.method, {})
            result = await forward(link, ctx, ctx.params)
            return await self._access.screened(session, ctx.method, link.name, ctx.method, result, decision_id)
        raise mcp_error(METHOD_NOT_FOUND, "Method not found", data=ctx.method)
