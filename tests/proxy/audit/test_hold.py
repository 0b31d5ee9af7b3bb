"""proxy.audit.hold: no tools/call reply leaves before every audit event written for it is durable.

Invariants, with the AIO flush and with the commit task: the reply (a result or the upstream's
error) is returned only once the sync covering the call's events has completed (the head
sidecar names them by then); a sync that fails turns the reply into the JSON-RPC error
``AUDIT_NOT_DURABLE``, never the result; the hold ends with the call (a record after it waits
for its own sync again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from policy.audit.log import JsonlAuditLog, read_head
from policy.audit.verify import verify_log
from proxy.audit.flush import AioFlusher, Done
from proxy.audit.hold import AUDIT_NOT_DURABLE, DurableReplies
from proxy.audit.writer import HOLD, AuditWriter
from proxy.intercept import ToolCall
from proxy.protocol import is_mcp_error
from tests.conftest import running

pytestmark = pytest.mark.anyio


def head_seq(path: Path) -> int:
    head = read_head(path)
    assert not isinstance(head, str)
    return 0 if head is None else head.seq


def a_call() -> ToolCall:
    return ToolCall(session=None, name="up.echo", server="up", tool="echo", arguments={}, params={})  # type: ignore[arg-type]


class UpstreamFailed(Exception):
    pass


@pytest.fixture(params=[True, False], ids=["aio", "commit-task"])
def aio(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(params=[True, False], ids=["fsync", "no-fsync"])
def fsync(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def break_the_sync(writer: AuditWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_submit(flusher: AioFlusher, fd: int, done: Done) -> bool:
        raise OSError(5, "Input/output error")  # what a failing disk reports, one way or the other

    def broken_sync() -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(AioFlusher, "submit", broken_submit)
    monkeypatch.setattr(writer.sink, "sync", broken_sync)


async def test_a_reply_leaves_only_once_its_calls_events_are_durable(tmp_path: Path, aio: bool, fsync: bool) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path, fsync=fsync), aio=aio)
    hold = DurableReplies(writer)
    async with running(writer):
        for n in range(1, 6):
            async def upstream(call: ToolCall, n: int = n) -> dict[str, Any]:
                await writer.record({"type": "gateway.started", "n": n})
                assert head_seq(path) < 2 * n - 1  # written, not durable yet: the hold must wait
                await writer.record({"type": "gateway.started", "n": -n})
                return {"content": [], "n": n}

            with anyio.fail_after(10):
                result = await hold(a_call(), upstream)
            assert result["n"] == n
            assert head_seq(path) >= 2 * n  # both of the call's events durable before the reply
            assert HOLD.get() is None
    writer.close()
    assert verify_log(path).ok


async def test_an_upstream_error_waits_for_the_sync_and_is_passed_on(tmp_path: Path, aio: bool) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path), aio=aio)
    hold = DurableReplies(writer)

    async def upstream(call: ToolCall) -> dict[str, Any]:
        await writer.record({"type": "gateway.started", "n": 1})
        raise UpstreamFailed("upstream said no")

    async with running(writer):
        with pytest.raises(UpstreamFailed), anyio.fail_after(10):
            await hold(a_call(), upstream)
        assert head_seq(path) >= 1 and HOLD.get() is None
    writer.close()


async def test_a_reply_whose_sync_failed_is_withheld_as_audit_not_durable(
    tmp_path: Path, aio: bool, fsync: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(JsonlAuditLog(path, fsync=fsync), aio=aio)
    failures: list[None] = []
    hold = DurableReplies(writer, on_failure=lambda: failures.append(None))

    async def upstream(call: ToolCall) -> dict[str, Any]:
        await writer.record({"type": "gateway.started", "n": 1})
        return {"content": [{"type": "text", "text": "the result must not leave"}]}

    async def failing_upstream(call: ToolCall) -> dict[str, Any]:
        await writer.record({"type": "gateway.started", "n": 2})
        raise UpstreamFailed("nor may this error")

    async with running(writer):
        break_the_sync(writer, monkeypatch)
        for seq, target in enumerate((upstream, failing_upstream), start=1):
            with pytest.raises(Exception) as caught, anyio.fail_after(10):
                await hold(a_call(), target)
            assert is_mcp_error(caught.value), caught.value
            assert caught.value.error.code == AUDIT_NOT_DURABLE  # type: ignore[attr-defined]
            assert HOLD.get() is None
            # The sidecar never names the event whose sync failed (a recovery may sync and name
            # the earlier one, which it found on reopening the file).
            assert head_seq(path) < seq
        assert len(failures) == 2
        monkeypatch.undo()
        result = await hold(a_call(), upstream)  # the disk is back: the log recovers, replies flow
        assert result["content"] and head_seq(path) >= 3
    writer.close()
    assert verify_log(path).ok
