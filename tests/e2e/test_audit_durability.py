"""Durability of decision events, end to end: real client, gateway, upstreams, audit log on disk.

For both ``[audit] durability`` modes: a reply (allowed result or denial) reaches the client
only once its decision event is durable (the head sidecar, which the log advances only after
the fsync, names it); concurrent calls share fsyncs; a failed fsync turns the reply into an
error and never into a silent allow; and a gateway killed (SIGKILL) while a call executes
upstream leaves that call's decision event in the log, which still verifies.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from policy.audit.log import read_head
from policy.audit.verify import verify_log
from proxy.audit.flush import AioFlusher, Done
from proxy.audit.hold import AUDIT_NOT_DURABLE
from tests.conftest import ROOT, connect, gateway_env, running
from tests.e2e.conftest import GPT_KEY, Site, cli, make_site

pytestmark = pytest.mark.anyio

DECISION = "io.securegateway/decision"
MODES = ["before-response", "before-forward"]


def durable_site(root: Path, mode: str, **kwargs: Any) -> Site:
    site = make_site(root, **kwargs)
    text = site.config_path.read_text()
    site.config_path.write_text(
        text.replace('file = "state/audit.jsonl"', f'file = "state/audit.jsonl"\ndurability = "{mode}"', 1)
    )
    return site


def patch_flush(monkeypatch: pytest.MonkeyPatch, disk: Callable[[int], None]) -> None:
    """Route the log's flushes, on the loop (``os.fdatasync``) and through Linux AIO, via ``disk``
    (which records them, or raises the EIO a healthy disk cannot produce), then to the real one."""
    real, real_submit = os.fdatasync, AioFlusher.submit

    def fdatasync(fd: int) -> None:
        disk(fd)
        real(fd)

    def submit(flusher: AioFlusher, fd: int, done: Done) -> bool:
        disk(fd)
        return real_submit(flusher, fd, done)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(AioFlusher, "submit", submit)


def decisions(site: Site) -> dict[str, dict[str, Any]]:
    events = [json.loads(line) for line in site.audit_path.read_text().splitlines() if line.strip()]
    return {e["decision_id"]: e for e in events if e["type"] == "decision"}


def upstream_calls(site: Site) -> list[str]:
    return site.marker.read_text().splitlines() if site.marker.exists() else []


def start_gateway(site: Site) -> subprocess.Popen[bytes]:
    """``securegateway run`` on ``site``, as a real process (killed by the tests, not stopped)."""
    return subprocess.Popen(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def until_listening(site: Site, gateway: subprocess.Popen[bytes]) -> None:
    """Return once a client can list tools through ``gateway``; fail if it exits first."""
    assert site.url is not None
    with anyio.fail_after(60):
        while True:
            try:
                async with connect(site.url, GPT_KEY) as client:
                    await client.list_tools()
                return
            except Exception:
                assert gateway.poll() is None, "the gateway exited before listening"
                await anyio.sleep(0.1)


@pytest.mark.parametrize("mode", MODES)
async def test_a_reply_reaches_the_client_only_once_its_decision_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    site = durable_site(tmp_path / "site", mode)
    app = site.app()
    writer = app.runtime.audit
    writer.sync_in_thread = True  # a slow disk that does not stall the event loop: replies could overtake it
    sink = writer.sink
    real_sync = sink.sync
    seen: list[tuple[int, list[str]]] = []  # per sync: the head it covers, what had reached the upstream
    expect: list[str | None] = [None]  # the upstream's line for the allowed call in flight

    def slow_sync() -> None:
        if threading.current_thread() is threading.main_thread():
            real_sync()  # a synchronous caller on the loop (tool pinning): not the commit under test
            return
        target = sink.head.seq
        # A slow disk. In before-response the upstream runs meanwhile: wait (bounded) until it has.
        patience = 10.0 if mode == "before-response" and expect[0] else 0.3
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and not (expect[0] and expect[0] in upstream_calls(site)):
            time.sleep(0.01)
        seen.append((target, upstream_calls(site)))
        real_sync()

    async with running(app), connect(site.url, GPT_KEY) as client:
        monkeypatch.setattr(sink, "sync", slow_sync)
        for n in range(2):
            expect[0] = f"called n{n}"
            allowed = await client.call_tool("calendar.record", {"note": f"n{n}"})
            assert not allowed.is_error
            expect[0] = None
            denied = await client.call_tool("calendar.create_event", {"title": "x"})
            assert denied.is_error and denied.structured_content["reason_code"] == "default_deny"
            for reply in (allowed.meta[DECISION], denied.structured_content):
                seq = decisions(site)[reply["decision_id"]]["seq"]
                assert read_head(site.audit_path).seq >= seq  # type: ignore[union-attr]
                if reply["allowed"]:
                    # the sync that covered the decision: before the upstream ran (before-forward),
                    # or while it ran (before-response: the forward did not wait for the disk)
                    covering = next(calls for target, calls in seen if target >= seq)
                    assert (f"called n{n}" in covering) == (mode == "before-response")
    assert verify_log(site.audit_path).ok


@pytest.mark.parametrize("mode", MODES)
async def test_concurrent_calls_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    site = durable_site(tmp_path / "site", mode)
    app = site.app()
    syncs: list[int] = []
    calls = 24
    async with running(app), connect(site.url, GPT_KEY) as client:
        await client.call_tool("search.echo", {"text": "warm"})
        with monkeypatch.context() as patched:
            patch_flush(patched, syncs.append)
            results: list[Any] = []

            async def caller(n: int) -> None:
                results.append(await client.call_tool("search.echo", {"text": f"c{n}"}))

            async with anyio.create_task_group() as tg:
                for n in range(calls):
                    tg.start_soon(caller, n)
    assert len(results) == calls and not any(r.is_error for r in results)
    assert 1 <= len(syncs) < calls  # group commit: fewer fsyncs than calls
    ids = decisions(site)
    assert all(r.meta[DECISION]["decision_id"] in ids for r in results)
    assert verify_log(site.audit_path).ok


@pytest.mark.parametrize("mode", MODES)
async def test_a_failed_fsync_withholds_the_reply_and_never_allows_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    site = durable_site(tmp_path / "site", mode)
    app = site.app()
    disk_fails = [False]

    def disk(fd: int) -> None:
        if disk_fails[0]:
            raise OSError(errno.EIO, "Input/output error")

    async with running(app), connect(site.url, GPT_KEY) as client:
        await client.call_tool("calendar.record", {"note": "before"})
        failures = app.metrics.audit_failures._value.get()
        patch_flush(monkeypatch, disk)
        disk_fails[0] = True
        if mode == "before-response":
            with pytest.raises(MCPError) as caught:
                await client.call_tool("calendar.record", {"note": "during"})
            assert caught.value.error.code == AUDIT_NOT_DURABLE
            assert caught.value.error.data["reason_code"] == "audit_not_durable"
            assert caught.value.error.data["allowed"] is True
            # the call had been forwarded (its event was written first), only its reply is withheld
            assert upstream_calls(site) == ["called before", "called during"]
            assert caught.value.error.data["decision_id"] in decisions(site)
        else:
            refused = await client.call_tool("calendar.record", {"note": "during"})
            assert refused.is_error and refused.structured_content["reason_code"] == "gateway_error"
            assert "audit log unavailable" in refused.structured_content["reason"]
            assert upstream_calls(site) == ["called before"]  # never forwarded
        assert app.metrics.audit_failures._value.get() > failures
        disk_fails[0] = False
        after = await client.call_tool("calendar.record", {"note": "after"})  # the log reopens and carries on
        assert not after.is_error
    assert upstream_calls(site)[-1] == "called after"
    assert verify_log(site.audit_path).ok


@pytest.mark.parametrize("mode", MODES)
async def test_a_gateway_killed_while_a_call_runs_upstream_leaves_its_decision_in_the_log(
    tmp_path: Path, mode: str
) -> None:
    marker = tmp_path / "ran.txt"
    site = durable_site(
        tmp_path / "site", mode,
        upstreams=[("search", [sys.executable, "-m", "tests.e2e.signal_server", str(marker)])],
        policy="rules:\n  - id: hang\n    model: gpt-4o\n    allow_tools: [search.hang]\n",
    )
    gateway = start_gateway(site)
    upstream_pid: int | None = None
    try:
        await until_listening(site, gateway)
        assert site.url is not None
        outcome: list[Any] = []

        async def call() -> None:
            try:
                async with connect(site.url, GPT_KEY) as client:
                    outcome.append(await client.call_tool("search.hang", {"note": "killed-mid-call"}))
            except Exception as exc:  # the connection dies with the gateway
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(30):
                while not marker.exists() or "killed-mid-call" not in marker.read_text():
                    assert not outcome, f"the call ended before it reached the upstream: {outcome[0]!r}"
                    await anyio.sleep(0.01)
            upstream_pid = int(marker.read_text().split()[-1])
            gateway.send_signal(signal.SIGKILL)  # right after the call reached the upstream
            gateway.wait(timeout=10)
            with anyio.fail_after(30):
                while not outcome:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(timeout=10)
        if upstream_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(upstream_pid, signal.SIGKILL)
    hung = [e for e in decisions(site).values() if e["tool"] == "hang"]
    assert len(hung) == 1 and hung[0]["decision"]["allowed"] is True
    assert hung[0]["arguments"] == {"note": "killed-mid-call"}
    report = verify_log(site.audit_path, require_head=False)
    assert report.ok, report
    checked = subprocess.run(cli("audit", "verify", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("mode", MODES)
async def test_a_gateway_killed_mid_burst_leaves_every_executed_and_answered_call_in_a_log_that_verifies(
    tmp_path: Path, mode: str
) -> None:
    """SIGKILL a real gateway while eight callers keep calls in flight (group commits and Linux AIO
    flushes in progress): every call that reached the upstream and every call answered has its
    decision event; the log verifies as it was left, and again after the gateway reopens it."""
    site = durable_site(tmp_path / "site", mode)

    gateway = start_gateway(site)
    answered: list[str] = []  # decision ids of the replies that reached a caller
    try:
        await until_listening(site, gateway)

        async def caller(n: int) -> None:
            with contextlib.suppress(Exception):  # the connection dies with the gateway
                async with connect(site.url, GPT_KEY) as client:
                    for k in range(1000):
                        result = await client.call_tool("calendar.record", {"note": f"b{n}-{k}"})
                        answered.append(result.meta[DECISION]["decision_id"])

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(caller, n)
            with anyio.fail_after(60):
                while len(answered) < 60:
                    await anyio.sleep(0.005)
            gateway.send_signal(signal.SIGKILL)  # mid-burst: calls written, forwarded, flushing
            gateway.wait(timeout=10)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(timeout=10)
    logged = decisions(site)
    notes = {e["arguments"]["note"] for e in logged.values() if e["tool"] == "record"}
    executed = [line.removeprefix("called ") for line in upstream_calls(site)]
    assert len(executed) >= 60
    assert set(executed) <= notes  # no call ran upstream without its decision event
    assert set(answered) <= set(logged)  # no caller saw a reply whose decision is not in the log
    report = verify_log(site.audit_path)
    assert report.ok, report
    gateway = start_gateway(site)  # reopening: recovery (a torn tail, a sidecar behind) and then carrying on
    try:
        await until_listening(site, gateway)
        async with connect(site.url, GPT_KEY) as client:
            assert not (await client.call_tool("calendar.record", {"note": "after"})).is_error
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    checked = subprocess.run(cli("audit", "verify", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
