"""One connected downstream client and the upstream sessions that serve it.

Each downstream client gets its own long-lived link to every upstream (never a new
upstream session per call), opened when the client connects and closed when it
goes away. Server-to-client traffic from an upstream therefore has exactly one
destination: this client.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import anyio
import anyio.abc
import structlog

from proxy.catalog import CHANGED, Catalog
from proxy.config import GatewayConfig
from proxy.tasks import TaskRoutes
from proxy.upstream.link import ClientHello, UpstreamLink
from proxy.upstream.prespawn import Prespawned

if TYPE_CHECKING:
    from proxy.mrtr import InputBridge

log = structlog.get_logger("securegateway.session")


def is_bridge(channel: Any) -> TypeGuard[InputBridge]:
    """Whether ``channel`` is a sessionless client's :class:`~proxy.mrtr.InputBridge` (none exists
    before :mod:`proxy.mrtr`, which needs the SDK, is loaded)."""
    mrtr = sys.modules.get("proxy.mrtr")
    return mrtr is not None and isinstance(channel, mrtr.InputBridge)


ScreenFn = Callable[[str, str, Mapping[str, Any] | None], Awaitable[Mapping[str, Any] | None]]


class ClientChannel(Protocol):
    """The standalone channel to the downstream client (the SDK's ``Connection`` fits)."""

    async def send_raw_request(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> dict[str, Any]:
        ...

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> None:
        ...


class DownstreamSession:
    """Upstream links, merged catalog and per-client state for one downstream client."""

    def __init__(
        self,
        config: GatewayConfig,
        hello: ClientHello,
        channel: ClientChannel,
        *,
        identity: Any = None,
        risk: Any = None,
        prespawned: Prespawned | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.config = config
        self.hello = hello
        self.channel = channel
        self.identity = identity
        self.risk = risk
        # Screens what an upstream asks of the client (sampling, elicitation) before it is
        # relayed: returns the params to send, or raises to refuse (set by the relay).
        self.screen: ScreenFn | None = None
        self.links: dict[str, UpstreamLink] = {
            up.name: UpstreamLink(
                up,
                hello,
                on_request=self._upstream_request,
                on_notify=self._upstream_notify,
                on_restart=self._upstream_restarted,
                max_message_bytes=config.max_message_bytes,
                process=prespawned.adopter(up.name) if prespawned is not None else None,
            )
            for up in config.upstreams
        }
        self.catalog = Catalog(list(self.links.values()), separator=config.separator, page_size=config.page_size)
        self.tasks = TaskRoutes()
        self._closed = anyio.Event()

    @property
    def ready_links(self) -> Sequence[UpstreamLink]:
        return [link for link in self.links.values() if link.ready]

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect every upstream concurrently, report ready, serve until ``close()``."""
        async with anyio.create_task_group() as tg:
            if hasattr(self.channel, "task_group"):
                self.channel.task_group = tg  # MRTR continuations live as long as the session
            async with anyio.create_task_group() as starting:
                for link in self.links.values():
                    starting.start_soon(tg.start, link.run)
            down = {n: link.last_error for n, link in self.links.items() if not link.ready}
            log.info("session open", session=self.id, upstreams=len(self.links), down=down or None)
            task_status.started()
            try:
                await self._closed.wait()
            finally:
                tg.cancel_scope.cancel()
        log.info("session closed", session=self.id)

    def close(self) -> None:
        self._closed.set()

    # ---- upstream -> client ----------------------------------------------------------------------

    async def _upstream_request(
        self, link: UpstreamLink, method: str, params: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        # sampling/createMessage, elicitation/create, roots/list: the client answers, the
        # answer goes back to the upstream that asked (the dispatcher correlates the ids).
        if self.screen is not None:
            params = await self.screen(link.name, method, params)
        ask = getattr(self.channel, "ask", None)
        if ask is not None:  # a sessionless client: the request becomes an input_required round
            return await ask(link.name, method, params)
        # bounded: a client that never answers (or never opened its GET stream) must not
        # leave the upstream's request hanging for ever
        return await self.channel.send_raw_request(method, params, {"timeout": link.config.timeout})

    async def _upstream_notify(self, link: UpstreamLink, method: str, params: Mapping[str, Any] | None) -> None:
        methods = CHANGED.get(method)
        if methods is not None:
            self.catalog.invalidate(link.name, methods)
        await self.channel.notify(method, params)

    async def _upstream_restarted(self, link: UpstreamLink) -> None:
        """A restarted upstream may serve different lists: drop the cache and tell the client."""
        self.catalog.invalidate(link.name)
        caps = link.info.capabilities if link.info else {}
        for note, key in (
            ("notifications/tools/list_changed", "tools"),
            ("notifications/prompts/list_changed", "prompts"),
            ("notifications/resources/list_changed", "resources"),
        ):
            if key in caps:
                await self.channel.notify(note, None)
