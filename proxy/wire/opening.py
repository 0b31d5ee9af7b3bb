"""The stdio opening: a client's first messages answered before the SDK is loaded.

``import mcp`` is ~0.5 s of CPU, most of the gateway's start-up and more than the time
between its upstream being ready and the client's ``initialize`` (bench/README.md,
"Session start on stdio: the budget"). So the stdio front answers the opening itself:

- ``initialize`` of a 2025-era client (a plain request with well-formed params): the
  session is opened (its upstreams connected) and the result built by the relay exactly
  as on the SDK path (:meth:`Relay.describe`), the version negotiated as the SDK does
  (the client's if it is a handshake version, else the latest);
- ``notifications/initialized``: recorded;
- ``tools/list`` and ``tools/call``: the fast lane's (:mod:`proxy.wire.lane`), through a
  :class:`StandInConnection` that holds the session and its ids in flight;
- ``notifications/cancelled`` of a fast-lane call: the lane's;
- a line that is not JSON: ``-32700``, as the SDK path answers it.

The first message that needs anything else - any other method, a 2026 envelope, an
``initialize`` the opening does not vouch for, a second ``initialize``, a client answer,
an oversized line - brings the SDK server up (:meth:`Opening.sdk`): the recorded
``initialize`` (under a private id, its answer dropped) and ``notifications/initialized``
are replayed into it, the gateway hands it the open session (its ids in flight, its
client channel), and from then on the SDK owns the connection exactly as without the
opening. So does an upstream's request to the client (sampling, elicitation, roots):
:class:`OpeningChannel` brings the SDK up first; its notifications to the client are
written straight through the front's writer meanwhile.

This module, and every module the opening runs through, imports no ``mcp``, ``mcp_types``
or pydantic at module level (proxy/protocol.py; tests/proxy/wire/test_opening.py). With
``SECUREGATEWAY_DEBUG_MODULES=FILE`` the gateway writes the names of the modules it has
loaded to FILE when it exits (a test hook; nothing else changes).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from proxy.protocol import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    PARSE_ERROR,
    error_body,
    load_sdk,
)
from proxy.wire import codec
from proxy.wire.framing import Input, LineFeed, LineWriter, lines_of
from proxy.wire.spawn import CallPool, Spawner

if TYPE_CHECKING:
    from mcp.server import Server

    from proxy.relay import Relay
    from proxy.session import DownstreamSession
    from proxy.upstream.link import ClientHello
    from proxy.wire.front import SDKPath

__all__ = [
    "DEBUG_MODULES_ENV", "REPLAY_ID", "UNDECODABLE", "Lane", "LaneFactory", "Opening", "OpeningChannel",
    "OpeningHost", "StandInConnection", "debug_modules_at_exit", "decoded", "plain_initialize",
]

log = structlog.get_logger("securegateway.wire")

DEBUG_MODULES_ENV = "SECUREGATEWAY_DEBUG_MODULES"
WARMUP_ENV = "SECUREGATEWAY_SDK_WARMUP"
"""Seconds after the opening's first ``tools/list`` to import the SDK in a worker thread; unset
or ``off``: only when a message first needs it (the default: bench/README.md, "The opening")."""
REPLAY_ID = "securegateway-opening-initialize"
"""The id of the ``initialize`` replayed into the SDK; its answer is dropped."""
UNDECODABLE: Any = object()
"""What :func:`decoded` returns for a line it answered with ``-32700``."""
_PARSE_ERROR = error_body(PARSE_ERROR, "Parse error")
_CLIENT_INFO = frozenset({"name", "version", "title", "description", "websiteUrl", "icons"})
_INIT_PARAMS = frozenset({"protocolVersion", "capabilities", "clientInfo", "_meta"})


class Lane(Protocol):
    """Takes the messages it can answer itself; returns False to leave one to the SDK."""

    async def offer(self, message: dict[str, Any], tg: Spawner) -> bool: ...

    def offer_now(self, message: dict[str, Any], tg: Spawner) -> bool:
        """:meth:`offer` when nothing needs awaiting (False, with nothing done, otherwise)."""
        ...

    def attach(self, connection: Any) -> None: ...


LaneFactory = Callable[[LineWriter], Lane]
"""Builds the fast lane over the front's writer (so both lanes share the one writer)."""


class OpeningHost(Protocol):
    """What the opening needs from the gateway."""

    @property
    def relay(self) -> Relay: ...

    async def open_opening(self, hello: ClientHello, channel: OpeningChannel) -> DownstreamSession:
        """Open the stdio client's session (its upstreams connected) before the SDK is loaded."""
        ...

    def sdk_server(self) -> Server[Any]:
        """The SDK server (built, and the SDK imported, on the first call)."""
        ...

    def adopt(self, opening: Opening) -> None:
        """The SDK's replayed ``initialize`` is about to take ``opening``'s session over."""
        ...

    async def end(self, session: DownstreamSession) -> None: ...


async def decoded(line: bytes | dict[str, Any], writer: LineWriter) -> Any:
    """The decoded message of one line (an oversized line's stand-in as is); a line that is
    not JSON is answered ``-32700`` with ``id: null`` and gives :data:`UNDECODABLE`."""
    if isinstance(line, dict):
        return line
    try:
        return codec.decode(line)
    except codec.DecodeError as exc:
        log.warning("stdio line is not json", error=str(exc)[:200])
        await writer.send(codec.encode_error(None, _PARSE_ERROR))
        return UNDECODABLE


def plain_initialize(message: Any) -> bool:
    """An ``initialize`` the SDK would accept as is: the opening may answer it alone.

    Conservative: params of the spec's shape with JSON types the SDK's models accept;
    anything else (extra members, a 2026 envelope, odd types) is the SDK's to judge."""
    if not isinstance(message, dict) or message.get("method") != "initialize" or message.get("jsonrpc") != "2.0":
        return False
    if not {"jsonrpc", "id", "method", "params"}.issuperset(message):
        return False
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return False
    params = message.get("params")
    if not isinstance(params, dict) or not _INIT_PARAMS.issuperset(params) or "_meta" in params:
        return False
    info, caps = params.get("clientInfo"), params.get("capabilities")
    if not isinstance(params.get("protocolVersion"), str) or not isinstance(caps, dict):
        return False
    if not isinstance(info, dict) or not _CLIENT_INFO.issuperset(info) or "icons" in info:
        return False
    if not all(isinstance(info.get(k), str) for k in ("name", "version")):
        return False
    if not all(isinstance(v, str) for k, v in info.items() if k in ("title", "description", "websiteUrl")):
        return False
    # every capability is an object (or `null`, which the SDK reads as absent)
    return all(v is None or isinstance(v, dict) for v in caps.values())


class StandInConnection:
    """What the fast lane reads of an SDK connection, for the session the opening opened."""

    def __init__(self, protocol_version: str) -> None:
        self.protocol_version = protocol_version
        self.initialize_accepted = True
        self.state: dict[str, Any] = {}


class OpeningChannel:
    """The session's channel to the client until the SDK takes the connection over.

    Notifications are written straight through the front's writer (as the SDK's connection
    writes them); a request to the client brings the SDK up, then goes through its
    connection (which the gateway has made the session's channel by then)."""

    def __init__(self, opening: Opening) -> None:
        self._opening = opening

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> None:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            body["params"] = dict(params)
        try:
            await self._opening.writer.send(codec.encode(body))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            log.debug("notification dropped: client gone", method=method)

    async def send_raw_request(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> dict[str, Any]:
        await self._opening.sdk()
        session = self._opening.session
        channel = session.channel if session is not None else None
        if channel is None or channel is self:
            raise RuntimeError("the SDK did not take the stdio session over")
        result: dict[str, Any] = await channel.send_raw_request(method, params, opts)
        return result


class Opening:
    """One stdio connection: the opening served here, the rest by the SDK once it is needed."""

    def __init__(self, host: OpeningHost, writer: LineWriter, lane: Lane) -> None:
        self.host = host
        self.writer = writer
        self.lane = lane
        self.session: DownstreamSession | None = None
        self.connection: StandInConnection | None = None
        self._initialize: dict[str, Any] | None = None  # the answered initialize's params
        self._initialized: dict[str, Any] | None = None  # notifications/initialized, if it came
        self._sdk: SDKPath | None = None
        self._starting = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._warmup = _warmup_delay()
        self._taken: tuple[bytes, Any] | None = None  # a line _take_now decoded and left to the loop

    @property
    def sdk_up(self) -> bool:
        return self._sdk is not None

    async def serve(self, source: Input, *, max_message_bytes: int) -> None:
        """Serve the client over ``source`` and the writer until the source ends."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            calls = CallPool(tg)  # the fast lane's calls, one task each (proxy/wire/spawn.py)
            await tg.start(calls.run)
            lines = lines_of(source, max_message_bytes)
            feed = lines if isinstance(lines, LineFeed) and calls.native else None
            if feed is not None:
                feed.take = partial(self._take_now, calls)  # a tools/call starts in the read callback
            try:
                async for line in lines:
                    taken = self._taken
                    if taken is not None and taken[0] is line:
                        message, self._taken = taken[1], None  # decoded once already, by _take_now
                    else:
                        message = await decoded(line, self.writer)
                    if message is UNDECODABLE:
                        continue
                    if self._sdk is None and not self._starting.locked() and await self._take(message):
                        continue
                    if isinstance(message, dict) and await self.lane.offer(message, calls):
                        if self._warmup is not None and message.get("method") == "tools/list":
                            tg.start_soon(_warm, self._warmup)
                            self._warmup = None
                        continue
                    if self._sdk is None and _lane_cancel(message):
                        continue  # the lane applied it; no SDK request can carry that id
                    await (await self.sdk()).deliver(message)
                if feed is not None:
                    feed.take = None
                if self._sdk is not None:
                    await self._sdk.finish()  # the SDK answers what it holds and closes the connection
                elif self.session is not None:
                    await self.host.end(self.session)
            finally:
                if feed is not None:
                    feed.take = None
                tg.cancel_scope.cancel()  # fast-lane calls of a client that went away

    def _take_now(self, calls: Spawner, line: bytes) -> bool:
        """The feed's taker (the serve loop idle, nothing queued): a ``tools/call`` the lane can
        start without awaiting is started right here. What the loop would do first for it
        (``_take``: ``initialize`` and ``notifications/initialized`` only) never applies to a
        ``tools/call``; anything else goes to the loop, decoded already."""
        try:
            message = codec.decode(line)
        except codec.DecodeError:
            return False  # the loop answers it -32700
        if type(message) is dict and message.get("method") == "tools/call" and self.lane.offer_now(message, calls):
            return True
        self._taken = (line, message)
        return False

    async def _take(self, message: Any) -> bool:
        """Answer ``initialize`` / record ``notifications/initialized``; False: not the opening's."""
        if self._initialize is None:
            if not plain_initialize(message):
                return False
            await self._answer_initialize(message)
            return True
        if (
            isinstance(message, dict) and message.get("method") == "notifications/initialized"
            and "id" not in message and self._initialized is None and message.get("jsonrpc") == "2.0"
            and isinstance(message.get("params", {}), dict) and not (message.get("params") or {}).get("_meta")
        ):
            self._initialized = message
            return True
        return False

    async def _answer_initialize(self, message: dict[str, Any]) -> None:
        from proxy.relay import IN_FLIGHT_KEY, SESSION_KEY, client_hello

        params = message["params"]
        requested = params["protocolVersion"]
        negotiated = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        relay = self.host.relay
        try:
            session = relay.opened(await self.host.open_opening(client_hello(params), OpeningChannel(self)))
        except Exception as exc:  # the wire boundary: answered as the SDK path answers it
            log.exception("opening the stdio session failed")
            error = codec.handler_error(exc) or {"code": 0, "message": str(exc)}
            await self.writer.send(codec.encode_error(message["id"], error))
            return  # not initialised: the client may try again
        self._initialize = params
        self.session = session
        connection = StandInConnection(negotiated)
        connection.state[SESSION_KEY] = session
        connection.state[IN_FLIGHT_KEY] = set()
        self.connection = connection
        self.lane.attach(connection)
        result = relay.describe(session, {"protocolVersion": negotiated})
        await self.writer.send(codec.encode_result(message["id"], result))

    async def sdk(self) -> SDKPath:
        """The SDK path, brought up on first need (the recorded opening replayed into it)."""
        if self._sdk is not None:
            return self._sdk
        async with self._starting:
            if self._sdk is not None:
                return self._sdk
            # imported in a worker thread: fast-lane calls in flight go on meanwhile (~0.55 s of CPU)
            await anyio.to_thread.run_sync(_import_sdk, abandon_on_cancel=True)
            from proxy.wire.front import SDKPath

            assert self._tg is not None
            path = SDKPath(self.host.sdk_server(), self.writer, drop=frozenset({REPLAY_ID}))
            path.start(self._tg)
            if self._initialize is not None:
                log.debug("the SDK takes the stdio connection over", initialized=self._initialized is not None)
                self.host.adopt(self)
                # the SDK runs `initialize` inline: the next send returns once it is done
                await path.deliver({"jsonrpc": "2.0", "id": REPLAY_ID, "method": "initialize",
                                    "params": self._initialize})
                if self._initialized is not None:
                    await path.deliver(self._initialized)
            self._sdk = path
            return path


def _warmup_delay() -> float | None:
    text = os.environ.get(WARMUP_ENV, "").strip().lower()
    if text in ("", "off"):
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        log.warning("ignored: not a number of seconds", variable=WARMUP_ENV, value=text[:40])
        return None


async def _warm(delay: float) -> None:
    """Import the SDK (and the front's SDK path) in a worker thread, so the first message that
    needs it finds it loaded; the event loop keeps serving meanwhile (between GIL switches)."""
    await anyio.sleep(delay)
    try:
        await anyio.to_thread.run_sync(_import_sdk, abandon_on_cancel=True)
    except Exception:  # an import that fails will fail (and be reported) at its first use instead
        log.debug("sdk warm-up import failed", exc_info=True)


def _import_sdk() -> None:
    load_sdk()  # one thread at a time (proxy/protocol.py)
    import proxy.wire.front  # noqa: F401


def _lane_cancel(message: Any) -> bool:
    return isinstance(message, dict) and message.get("method") == "notifications/cancelled" and "id" not in message


def debug_modules_at_exit() -> None:
    """With :data:`DEBUG_MODULES_ENV` set, write this process's module names there at exit."""
    if os.environ.get(DEBUG_MODULES_ENV):
        atexit.register(_dump_modules, os.environ[DEBUG_MODULES_ENV])


def _dump_modules(path: str) -> None:
    """The test hook of :data:`DEBUG_MODULES_ENV`: the modules this process loaded."""
    with open(path, "w", encoding="utf-8") as out:
        json.dump(sorted(sys.modules), out)

