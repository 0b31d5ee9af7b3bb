"""``securegateway run`` ends quickly once its client closes stdin (proxy/cli: ``console``),
and the quick exit loses nothing: the audit log is closed and verifies, the upstream is
reaped, exit handlers run, and a thread still running is waited for."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import ROOT, gateway_env
from tests.e2e.conftest import cli, make_site
from tests.proxy.cli.test_startup import PID_THEN_SERVE, alive, gateway, script, wait_for

pytestmark = pytest.mark.anyio


async def test_closing_stdin_ends_the_gateway_with_its_audit_log_closed_and_its_upstream_reaped(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "upstream.pid"
    site = make_site(tmp_path / "site", listen="stdio",
                     upstreams=[("calendar", [sys.executable, script(tmp_path, PID_THEN_SERVE), str(pid_file),
                                              "calendar"])])
    async with gateway(site.config_path) as client:
        upstream = int(await wait_for(pid_file))
        await client.initialize()
        call = await client.request(2, "tools/call", {"name": "calendar.echo", "arguments": {"text": "kept"}})
        assert call["result"]["content"][0]["text"] == "kept"
        assert client.process.stdin is not None
        await client.process.stdin.aclose()
        with anyio.fail_after(30):
            code = await client.process.wait()
        assert code == 0
        assert not alive(upstream)
    events = [json.loads(line) for line in site.audit_path.read_text().splitlines()]
    assert [e["type"] for e in events if e["type"] != "audit.checkpoint"][-1] == "gateway.stopped"
    assert any(e["type"] == "decision" for e in events)
    verify = subprocess.run(cli("audit", "verify", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _run_console(tmp_path: Path, before: str) -> subprocess.CompletedProcess[str]:
    """``console()`` for a ``run`` that fails at once (a missing config), after ``before``."""
    program = textwrap.dedent(before) + textwrap.dedent(f"""\
        import sys
        from proxy.cli import console
        sys.argv = ["securegateway", "run", "--config", {str(tmp_path / "missing.toml")!r}]
        console()
    """)
    return subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=gateway_env(), capture_output=True,
                          text=True, timeout=120)


def test_the_quick_exit_still_runs_the_exit_handlers_and_keeps_the_exit_code(tmp_path: Path) -> None:
    marker = tmp_path / "atexit"
    out = _run_console(tmp_path, f"""\
        import atexit, pathlib
        atexit.register(pathlib.Path({str(marker)!r}).write_text, "ran")
    """)
    assert out.returncode == 2
    assert "missing.toml" in out.stderr
    assert marker.read_text() == "ran"


def test_a_thread_still_running_at_exit_is_waited_for(tmp_path: Path) -> None:
    marker = tmp_path / "thread"
    started = time.monotonic()
    out = _run_console(tmp_path, f"""\
        import pathlib, threading, time
        def late():
            time.sleep(1.0)
            pathlib.Path({str(marker)!r}).write_text("finished")
        threading.Thread(target=late).start()
    """)
    assert out.returncode == 2
    assert marker.read_text() == "finished"
    assert time.monotonic() - started >= 1.0


def test_the_collector_is_back_on_once_the_gateway_is_built_with_the_start_up_heap_frozen() -> None:
    from proxy.cli import _serving_heap

    gc.disable()  # as console() leaves it for a run
    try:
        _serving_heap()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_collector_left_on_is_not_frozen() -> None:
    from proxy.cli import _serving_heap

    assert gc.isenabled()
    _serving_heap()
    assert gc.get_freeze_count() == 0
