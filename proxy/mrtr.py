"""Server-to-client requests for clients that cannot receive them (the 2026-07-28 era).

A sessionless client never gets a ``sampling/createMessage``, ``elicitation/create``
or ``roots/list`` request; it gets an ``input_required`` result instead and retries
the same ``tools/call`` with ``inputResponses`` and the ``requestState`` echoed
back. Handshake-era upstreams still send the request, so the gateway bridges the
two: the upstream call keeps running in the session's task group while the client
answers, and each retry hands the answer to the upstream request that is waiting.

The ``requestState`` the gateway mints is sealed (HMAC with a per-process key) and
bound to the model identity, so a client cannot resume another client's call.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from mcp import MCPError
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types import INVALID_PARAMS, INVALID_REQUEST

ResultFn = Callable[[], Awaitable[dict[str, Any]]]
_EVENTS: dict[str, Callable[[], ServerEvent]] = {
    "notifications/tools/list_changed": ToolsListChanged,
    "notifications/prompts/list_changed": PromptsListChanged,
    "notifications/resources/list_changed": ResourcesListChanged,
}


@dataclass
class _InputAsk:
    method: str
    params: Mapping[str, Any] | None
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: dict[str, Any] | None = None


@dataclass
class _Continuation:
    id: str
    upstream: str
    owner: str
    ask_send: Any
    ask_receive: Any
    done: anyio.Event = field(default_factory=anyio.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    outstanding: _InputAsk | None = None
    cancel: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class InputBridge:
    """The client channel of a sessionless client: input requests become MRTR rounds."""

    def __init__(self, owner: str, *, ttl: float = 300.0) -> None:
        self._owner = owner
        self._ttl = ttl
        self._key = secrets.token_bytes(32)
        self._running: dict[str, _Continuation] = {}
        self.task_group: anyio.abc.TaskGroup | None = None
        # Change notifications reach a sessionless client only on its subscriptions/listen
        # streams; one bus per identity, so no client hears about another's upstreams.
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus)

    # ---- ClientChannel ---------------------------------------------------------------------------

    async def send_raw_request(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> dict[str, Any]:
        raise MCPError(INVALID_REQUEST, f"the client cannot receive `{method}` outside a tools/call")

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> None:
        event = _EVENTS.get(method)
        if event is not None:
            await self.bus.publish(event())
        elif method == "notifications/resources/updated" and isinstance((params or {}).get("uri"), str):
            await self.bus.publish(ResourceUpdated(uri=str((params or {})["uri"])))
        # other notifications (logging outside a request) have no channel at this era

    async def ask(self, upstream: str, method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """An upstream wants client input: park it on that upstream's running call."""
        waiting = (
            c for c in self._running.values()
            if c.upstream == upstream and c.outstanding is None and not c.done.is_set()
        )
        cont = next(waiting, None)
        if cont is None:
            raise MCPError(INVALID_REQUEST, f"the client cannot receive `{method}`: no call of it is waiting")
        ask = _InputAsk(method, params)
        await cont.ask_send.send(ask)
        with anyio.fail_after(self._ttl):
            await ask.answered.wait()
        assert ask.answer is not None
        return ask.answer

    # ---- tools/call rounds -------------------------------------------------------------------------

    async def call(self, upstream: str, params: Mapping[str, Any], start: ResultFn) -> dict[str, Any]:
        """Run one round: start the call (or resume it from ``requestState``) until it completes or asks."""
        state = params.get("requestState")
        cont = self._start(upstream, start) if state is None else self._resume(state, params.get("inputResponses"))
        return await self._next(cont)

    def _start(self, upstream: str, start: ResultFn) -> _Continuation:
        if self.task_group is None:
            raise RuntimeError("input bridge used before its session started")
        send, receive = anyio.create_memory_object_stream[_InputAsk](8)
        cont = _Continuation(
            id=secrets.token_hex(12), upstream=upstream, owner=self._owner, ask_send=send, ask_receive=receive,
        )
        self._running[cont.id] = cont

        async def run() -> None:
            try:
                with cont.cancel, anyio.fail_after(self._ttl):
                    cont.result = await start()
            except BaseException as exc:  # delivered to whichever round is waiting
                cont.error = exc
                if not isinstance(exc, Exception):
                    raise
            finally:
                cont.done.set()
                send.close()
                if cont.outstanding is not None:  # the client never came back for this round
                    self._running.pop(cont.id, None)

        self.task_group.start_soon(run)
        return cont

    def _resume(self, state: Any, responses: Any) -> _Continuation:
        cont = self._running.get(self._unseal(state))
        if cont is None:
            raise MCPError(INVALID_PARAMS, "`requestState` is unknown or expired: start the call again")
        ask = cont.outstanding
        if ask is None:
            raise MCPError(INVALID_PARAMS, "`requestState` has no outstanding input request")
        answer = responses.get("r1") if isinstance(responses, Mapping) else None
        if not isinstance(answer, Mapping):
            raise MCPError(INVALID_PARAMS, "`inputResponses.r1` is required to resume this call")
        cont.outstanding = None
        ask.answer = dict(answer)
        ask.answered.set()
        return cont

    async def _next(self, cont: _Continuation) -> dict[str, Any]:
        ask: _InputAsk | None = None
        async with anyio.create_task_group() as tg:

            async def wait_done() -> None:
                await cont.done.wait()
                tg.cancel_scope.cancel()

            async def wait_ask() -> None:
                nonlocal ask
                try:
                    ask = await cont.ask_receive.receive()
                except anyio.EndOfStream:
                    return
                tg.cancel_scope.cancel()

            tg.start_soon(wait_done)
            try:
                await wait_ask()
            except anyio.get_cancelled_exc_class():
                if not tg.cancel_scope.cancel_called:
                    # The client gave up on this round (a 2026 cancel is a disconnect): the
                    # upstream call goes too, which sends the upstream its cancellation.
                    cont.cancel.cancel()
                raise
        if ask is not None:
            cont.outstanding = ask
            request: dict[str, Any] = {"method": ask.method}
            if ask.params is not None:
                request["params"] = dict(ask.params)
            return {"resultType": "input_required", "inputRequests": {"r1": request}, "requestState": self._seal(cont)}
        self._running.pop(cont.id, None)
        if cont.error is not None:
            if isinstance(cont.error, TimeoutError):
                raise MCPError(INVALID_REQUEST, "the call waited too long for client input and was abandoned")
            raise cont.error
        assert cont.result is not None
        return cont.result

    def _seal(self, cont: _Continuation) -> str:
        mac = hmac.new(self._key, f"{cont.id}:{cont.owner}".encode(), hashlib.sha256).hexdigest()[:32]
        return f"sg1.{cont.id}.{mac}"

    def _unseal(self, state: Any) -> str:
        parts = state.split(".") if isinstance(state, str) else []
        if len(parts) != 3 or parts[0] != "sg1":
            raise MCPError(INVALID_PARAMS, "`requestState` was not issued by this gateway")
        expected = hmac.new(self._key, f"{parts[1]}:{self._owner}".encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(expected, parts[2]):
            raise MCPError(INVALID_PARAMS, "`requestState` was not issued by this gateway")
        return parts[1]
