"""The correlator of a stdio upstream: one reader, one writer, a table of waiting callers.

It stands where the SDK's ``JSONRPCDispatcher`` stood on the stdio leg, with the same
contract towards :class:`~proxy.upstream.link.UpstreamLink` (``send_raw_request``,
``notify``, ``run``) but none of its per-call machinery: no memory-stream hop per
message, no task per outbound request, no pydantic model of either the request or its
answer, no tracing span. A request is encoded once (orjson) straight to the child's stdin;
an answer is decoded once by the reader and handed to its caller as the decoded dict.

Invariants (tests/proxy/wire/test_dispatch.py):

- every request has its own id and exactly one outcome: the answer carrying that id, the
  upstream's error for it, ``REQUEST_TIMEOUT`` after ``opts["timeout"]`` seconds, or
  ``CONNECTION_CLOSED`` when the upstream goes away (every caller in flight then; a caller
  whose request was never written gets :class:`NotDelivered`, which the link retries once the
  upstream is back); ``on_close`` is told before any waiter wakes, so the link is down
  before the first failed caller can call again;
- an answer whose id no caller waits for (unknown, late, duplicate) is logged and dropped:
  it never reaches another caller;
- a caller that gives up (timeout or cancellation) after its request was written sends the
  upstream ``notifications/cancelled`` for that id, unless ``cancel_on_abandon`` is false
  (``initialize``); a cancellation never hides the courtesy cancel, and the write is bounded;
- ``notifications/progress`` for a waiting request reaches that caller's ``on_progress``,
  in wire order and therefore before its answer;
- a response no parser accepts (a non-object ``result``, a malformed ``error``, both) fails
  its own caller at once with the text of :func:`proxy.upstream.repair.describe_malformed`;
  a line over the size limit fails the caller whose id it carries;
- requests from the upstream (sampling, elicitation, roots/list, ping) run in their own task
  in the correlator's task group and are answered once, unless the upstream cancelled them;
  notifications other than progress go to ``on_notify``, each in its own task, so a slow
  downstream never stalls the reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from proxy.protocol import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT, coerce_request_id, mcp_error
from proxy.upstream.repair import describe_malformed
from proxy.wire import codec
from proxy.wire.framing import LineFeed

if TYPE_CHECKING:
    from mcp import MCPError
    from mcp.shared.dispatcher import CallOptions, ProgressFnT

__all__ = ["ABANDON_WRITE_TIMEOUT", "LineDispatcher", "LineSink", "OnNotify", "OnRequest", "not_delivered_type"]

log = structlog.get_logger("securegateway.upstream")

ABANDON_WRITE_TIMEOUT = 5.0
"""Bound on the courtesy ``notifications/cancelled`` write (the SDK's own value)."""
SHUTDOWN_WRITE_TIMEOUT = 1.0
"""Bound on answering an upstream request with ``CONNECTION_CLOSED`` at shutdown."""

OnRequest = Callable[[Any, str, Mapping[str, Any] | None], Awaitable[dict[str, Any]]]
"""``(context, method, params) -> result`` for a request from the upstream (context: None)."""
OnNotify = Callable[[Any, str, Mapping[str, Any] | None], Awaitable[None]]


class LineSink(Protocol):
    """Where whole lines go: ``send`` writes one (no newline), ``BrokenResourceError`` once gone."""

    async def send(self, data: bytes) -> None: ...


class _Waiter:
    """One outbound request awaiting its outcome (set once: by the reader, the close or the timer).

    On asyncio the outcome is a bare future and the timeout a loop timer: an ``anyio.Event``
    and a ``move_on_after`` scope per call cost ~6 us more (measured), and the caller's own
    cancellation still reaches it (cancelling the task cancels the future it awaits)."""

    __slots__ = ("_event", "_future", "error", "on_progress", "result", "timed_out")

    def __init__(self, on_progress: ProgressFnT | None, loop: asyncio.AbstractEventLoop | None) -> None:
        self.on_progress = on_progress
        self.result: dict[str, Any] | None = None
        self.error: MCPError | None = None
        self.timed_out = False
        self._future: asyncio.Future[None] | None = loop.create_future() if loop is not None else None
        self._event: anyio.Event | None = anyio.Event() if loop is None else None

    def set(self) -> None:
        if self._future is not None:
            if not self._future.done():
                self._future.set_result(None)
        else:
            assert self._event is not None
            self._event.set()

    def is_set(self) -> bool:
        if self._future is not None:
            return self._future.done() and not self._future.cancelled()
        assert self._event is not None
        return self._event.is_set()

    async def wait(self) -> None:
        if self._future is not None:
            await self._future
        else:
            assert self._event is not None
            await self._event.wait()


@dataclass(slots=True, eq=False)
class _Serving:
    """One request from the upstream being handled."""

    scope: anyio.CancelScope
    cancelled: bool = False


def _key(request_id: Any) -> Any:
    """The correlation key of a wire id: "7" and 7 are one id (the SDK's rule)."""
    return coerce_request_id(request_id)


if TYPE_CHECKING:

    class NotDelivered(MCPError):
        """What :func:`not_delivered_type` makes (for type checkers; made at run time on first use)."""


_not_delivered_type: type[MCPError] | None = None


def not_delivered_type() -> type[MCPError]:
    """``NotDelivered``: ``CONNECTION_CLOSED`` for a request that never reached the upstream (it
    was gone before the write), so the caller may safely send it again once the upstream is
    back. A subclass of the SDK's ``MCPError``, so it is made when first needed (the SDK is
    not loaded before then: proxy/protocol.py)."""
    global _not_delivered_type
    if _not_delivered_type is None:
        from mcp import MCPError

        class NotDelivered(MCPError):
            __doc__ = not_delivered_type.__doc__
            __module__ = __name__

        _not_delivered_type = NotDelivered
    return _not_delivered_type


def __getattr__(name: str) -> Any:
    if name == "NotDelivered":
        return not_delivered_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _backend_checkpoint() -> Callable[[], Awaitable[None]]:
    """``anyio.lowlevel.checkpoint_if_cancelled`` of the running backend, looked up once: the public
    function asks which backend runs on every call (~2 us: sniffio, ``current_task``, a
    ``getpid``). anyio's backend lookup is internal, so the public function stands in if it moves."""
    try:
        from anyio._core._eventloop import get_async_backend

        checkpoint: Callable[[], Awaitable[None]] = get_async_backend().checkpoint_if_cancelled
    except Exception:  # an anyio without it: the public (per-call lookup) function
        return anyio.lowlevel.checkpoint_if_cancelled
    return checkpoint


def _closed() -> MCPError:
    return mcp_error(CONNECTION_CLOSED, "Connection closed")


def _not_delivered() -> MCPError:
    return not_delivered_type()(CONNECTION_CLOSED, "Connection closed")


class LineDispatcher:
    """Correlates requests to answers over one line transport (see the module docstring)."""

    def __init__(
        self,
        lines: AsyncIterable[bytes | dict[str, Any]],
        sink: LineSink,
        *,
        upstream: str,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._lines = lines
        self.on_close = on_close  # told synchronously, before any waiter wakes
        self._sink = sink
        self._upstream = upstream
        self._next_id = 0
        self._waiting: dict[Any, _Waiter] = {}
        self._serving: dict[Any, _Serving] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # asyncio's, once running (else anyio events)
        self._running = False
        self._closed = False
        self._taken: tuple[bytes, Any] | None = None  # a line _take decoded and left to the reader
        self._checkpoint_if_cancelled: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint_if_cancelled

    @property
    def in_flight(self) -> int:
        """Outbound requests waiting for their outcome."""
        return len(self._waiting)

    # ---- outbound ----------------------------------------------------------------------------

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        """Send one request and return its result dict; ``MCPError`` for every other outcome."""
        if self._closed:
            raise _not_delivered()
        if not self._running:
            raise RuntimeError("LineDispatcher.send_raw_request called before run()")
        opts = opts or {}
        supplied = opts.get("request_id")
        if supplied is not None:
            request_id: Any = supplied
            key = coerce_request_id(supplied)
            if key in self._waiting:
                raise ValueError(f"request id {supplied!r} is already in flight")
        else:
            self._next_id += 1
            while self._next_id in self._waiting:  # past a supplied integer id still in flight
                self._next_id += 1
            request_id = key = self._next_id
        on_progress = opts.get("on_progress")
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params or on_progress is not None:
            out = params if type(params) is dict else dict(params or {})
            if on_progress is not None or "_meta" in out:
                # as the SDK sends it: the request id doubles as the progress token; an empty
                # `_meta` is left out, and so are empty params (never `"params": null`)
                out = dict(out)
                meta = dict(out.get("_meta") or {})
                if on_progress is not None:
                    meta["progressToken"] = request_id
                if meta:
                    out["_meta"] = meta
                else:
                    del out["_meta"]
            if out:
                body["params"] = out
        line = codec.encode(body)
        loop = self._loop
        waiter = _Waiter(on_progress, loop)
        self._waiting[key] = waiter
        timeout = opts.get("timeout")
        cancel_on_abandon = opts.get("cancel_on_abandon", True)
        written = False
        timer: asyncio.TimerHandle | None = None
        try:
            # a cancellation before the write means the request was never issued; after it
            # starts, the line may be out (it is buffered whole), so it counts as issued
            await self._checkpoint_if_cancelled()
            written = True
            try:
                await self._sink.send(line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._close()  # its stdin is gone: so is the upstream, for every caller
                raise _not_delivered() from None
            future = waiter._future
            if timeout is None:
                await waiter.wait()
            elif future is not None:  # asyncio: the future awaited directly, one frame fewer per resume
                timer = loop.call_later(timeout, self._expire, key, waiter)  # type: ignore[union-attr]
                await future
            else:
                with anyio.move_on_after(timeout):
                    await waiter.wait()
                waiter.timed_out = not waiter.is_set()
            if waiter.timed_out:
                if cancel_on_abandon:
                    await self._courtesy_cancel(request_id, f"timed out after {timeout}s", shield=False)
                raise mcp_error(REQUEST_TIMEOUT, f"Request {method!r} timed out")
        except anyio.get_cancelled_exc_class():
            if written and cancel_on_abandon:
                await self._courtesy_cancel(request_id, "caller cancelled", shield=True)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiting.get(key) is waiter:
                del self._waiting[key]
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def _expire(self, key: Any, waiter: _Waiter) -> None:
        """The timer of a request whose answer did not come in time: it stops waiting for it."""
        if self._waiting.get(key) is waiter and not waiter.is_set():
            del self._waiting[key]  # an answer from now on is late: logged and dropped
            waiter.timed_out = True
            waiter.set()

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None) -> None:
        """Send one notification; dropped (debug-logged) once the upstream is gone."""
        if self._closed:
            log.debug("notification dropped: upstream closed", upstream=self._upstream, method=method)
            return
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            body["params"] = dict(params)
        await self._send_quiet(codec.encode(body), method)

    async def _courtesy_cancel(self, request_id: Any, reason: str, *, shield: bool) -> None:
        with anyio.move_on_after(ABANDON_WRITE_TIMEOUT, shield=shield) as scope:
            await self.notify("notifications/cancelled", {"requestId": request_id, "reason": reason})
        if scope.cancelled_caught:
            log.warning("courtesy cancel gave up: upstream write blocked", upstream=self._upstream,
                        request_id=request_id)

    async def _send_quiet(self, line: bytes, what: str) -> None:
        try:
            await self._sink.send(line)
            # a notification (a courtesy cancel above all) or an answer to the upstream yields
            # once after its write, as anyio's process stream did before the sink wrote to the
            # asyncio writer directly: a cancelled call then ends after the tasks its
            # cancellation woke (tests/proxy/test_bad_input.py's client that disconnects
            # mid-call, over HTTP, was answered otherwise). Requests, the hot path, do not.
            await anyio.lowlevel.cancel_shielded_checkpoint()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            log.debug("write dropped: upstream closed", upstream=self._upstream, message=what)

    # ---- inbound -----------------------------------------------------------------------------

    async def run(
        self,
        on_request: OnRequest,
        on_notify: OnNotify,
        on_notify_intercept: Any = None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """The one reader: route every line until the upstream's output ends (single-shot)."""
        del on_notify_intercept  # the link intercepts nothing; kept for the SDK's run() shape
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    self._loop = asyncio.get_running_loop()
                except RuntimeError:  # another backend: anyio's events and scopes
                    self._loop = None
                self._checkpoint_if_cancelled = _backend_checkpoint()
                self._running = True
                task_status.started()
                lines = self._lines
                feed = lines if isinstance(lines, LineFeed) else None
                if feed is not None:
                    feed.take = self._take  # answers are settled in the pipe's read callback
                try:
                    async for line in lines:
                        if not isinstance(line, bytes):  # the reader's stand-in for an oversized line
                            self._oversized(line)
                            continue
                        taken = self._taken
                        if taken is not None and taken[0] is line:
                            message = taken[1]  # decoded once already, by _take
                            self._taken = None
                        else:
                            try:
                                message = codec.decode(line)
                            except codec.DecodeError as exc:
                                log.warning("upstream line is not json", upstream=self._upstream,
                                            error=str(exc)[:200])
                                continue
                        if not self._answered(message):
                            await self._route(message, on_request, on_notify)
                finally:
                    if feed is not None:
                        feed.take = None
                    self._close()
                    tg.cancel_scope.cancel()  # handlers of upstream requests end with the upstream
        finally:
            self._close()
            self._tg = None

    def _take(self, line: bytes) -> bool:
        """The feed's taker (the reader idle, nothing queued): a well-formed answer settles its
        caller right here; anything else goes to the reader, decoded already."""
        try:
            message = codec.decode(line)
        except codec.DecodeError:
            return False  # the reader decodes it again, and logs it
        if self._answered(message):
            return True
        self._taken = (line, message)
        return False

    def _answered(self, message: Any) -> bool:
        """The hot case: a well-formed answer to a caller, settled (or, unknown, dropped)."""
        if type(message) is not dict or "method" in message:
            return False
        result = message.get("result")
        if type(result) is not dict or "error" in message or message.get("jsonrpc") != "2.0":
            return False
        request_id = message.get("id")
        kind = type(request_id)
        if kind is not int and kind is not str:
            return False
        waiter = self._waiting.pop(request_id if kind is int else _key(request_id), None)
        if waiter is None:
            self._unknown(request_id)
        else:
            waiter.result = result
            waiter.set()
        return True

    def _close(self) -> None:
        """Closed from now on: every caller waiting gets ``CONNECTION_CLOSED`` (idempotent)."""
        self._running = False
        if not self._closed and self.on_close is not None:
            self.on_close()
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.error = _closed()
            waiter.set()

    def _settle(self, request_id: Any, error: MCPError) -> None:
        waiter = self._waiting.pop(coerce_request_id(request_id), None)
        if waiter is None:
            self._unknown(request_id)
            return
        waiter.error = error
        waiter.set()

    def _unknown(self, request_id: Any) -> None:
        log.warning("upstream answered an id no call is waiting for; dropped", upstream=self._upstream,
                    request_id=str(request_id)[:100])

    def _oversized(self, stand_in: dict[str, Any]) -> None:
        params = stand_in["params"]
        log.warning("oversized upstream message", upstream=self._upstream, bytes=params["bytes"])
        self._settle(stand_in["id"], mcp_error(
            INTERNAL_ERROR,
            f"upstream `{self._upstream}` sent a message of {params['bytes']} bytes, over the gateway's limit "
            f"of {params['limit']} bytes (gateway.max_message_bytes)",
        ))

    async def _route(self, message: Any, on_request: OnRequest, on_notify: OnNotify) -> None:
        """Everything but a well-formed answer: errors, malformed answers, requests, notifications."""
        if type(message) is not dict:
            log.warning("upstream sent a line that is not a JSON-RPC message", upstream=self._upstream,
                        kind=type(message).__name__)
            return
        method = message.get("method")
        if "method" not in message:
            self._answer_other(message)
            return
        params = message.get("params")
        if type(method) is not str or message.get("jsonrpc") != "2.0" or not (params is None or type(params) is dict):
            log.warning("upstream sent an invalid JSON-RPC message; dropped", upstream=self._upstream,
                        method=str(method)[:100])
            return
        if "id" not in message:
            await self._notification(method, params, on_notify)
            return
        request_id = message["id"]
        if type(request_id) not in (int, str):
            log.warning("upstream sent a request with an invalid id; dropped", upstream=self._upstream, method=method)
            return
        assert self._tg is not None
        self._tg.start_soon(self._serve, request_id, method, params, on_request)

    def _answer_other(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        error = message.get("error")
        if (
            "result" not in message and type(error) is dict and message.get("jsonrpc") == "2.0"
            and type(error.get("code")) is int and type(error.get("message")) is str
            and type(request_id) in (int, str)
        ):
            self._settle(request_id, mcp_error(error["code"], error["message"], error.get("data")))
            return
        found = describe_malformed(message, self._upstream)
        if found is not None:
            self._settle(found[0], mcp_error(INTERNAL_ERROR, found[1]))
            return
        # no usable id (an error with `"id": null`, say): no caller can own it
        log.warning("upstream sent an answer no call can own; dropped", upstream=self._upstream,
                    request_id=str(request_id)[:100], error=str(error)[:200] if error is not None else None)

    async def _notification(self, method: str, params: dict[str, Any] | None, on_notify: OnNotify) -> None:
        if method == "notifications/progress":
            await self._progress(params)
            return  # progress belongs to its caller alone
        if method == "notifications/cancelled":
            request_id = (params or {}).get("requestId")
            if type(request_id) in (int, str) and (serving := self._serving.get(_key(request_id))):
                serving.cancelled = True
                serving.scope.cancel()
        assert self._tg is not None
        self._tg.start_soon(self._notify_contained, on_notify, method, params)

    async def _progress(self, params: dict[str, Any] | None) -> None:
        """Awaited in the read loop: progress reaches its caller in wire order, before the answer."""
        if params is None:
            return
        match params:
            case {"progressToken": str() | int() as token, "progress": int() | float() as progress} if (
                type(token) is not bool and type(progress) is not bool
            ):
                waiter = self._waiting.get(coerce_request_id(token))
                if waiter is None or waiter.on_progress is None:
                    return
                total, text = params.get("total"), params.get("message")
                try:
                    await waiter.on_progress(
                        float(progress),
                        float(total) if isinstance(total, int | float) and type(total) is not bool else None,
                        text if isinstance(text, str) else None,
                    )
                except Exception:  # a callback's failure is its own, never the reader's
                    log.exception("progress callback raised", upstream=self._upstream)
            case _:
                pass

    async def _notify_contained(self, on_notify: OnNotify, method: str, params: dict[str, Any] | None) -> None:
        try:
            await on_notify(None, method, params)
        except Exception:
            log.exception("notification handler raised", upstream=self._upstream, method=method)

    async def _serve(self, request_id: Any, method: str, params: dict[str, Any] | None, on_request: OnRequest) -> None:
        """Handle one request from the upstream and answer it once (never after its cancel)."""
        key = coerce_request_id(request_id)
        serving = _Serving(anyio.CancelScope())
        self._serving[key] = serving  # a duplicate id replaces the older entry, as in the SDK
        answered = False
        try:
            with serving.scope:
                try:
                    result = await on_request(None, method, params)
                    line = codec.encode_result(request_id, result)
                except Exception as exc:
                    error = codec.handler_error(exc)
                    if error is None:
                        log.exception("handler of an upstream request raised", upstream=self._upstream,
                                      method=method)
                        error = {"code": 0, "message": str(exc)}  # the SDK dispatcher's code, kept
                    line = codec.encode_error(request_id, error)
                finally:
                    if self._serving.get(key) is serving:
                        del self._serving[key]
                if not serving.cancelled:
                    answered = True
                    await self._send_quiet(line, method)
        except anyio.get_cancelled_exc_class():
            if not answered and not serving.cancelled:  # shutdown: do not leave the upstream waiting
                closed = codec.encode_error(request_id, {"code": CONNECTION_CLOSED, "message": "Connection closed"})
                with anyio.move_on_after(SHUTDOWN_WRITE_TIMEOUT, shield=True):
                    await self._send_quiet(closed, method)
            raise
