"""Issue 10 case 14: the admin API refuses DNS rebinding; exposed listeners are named at start-up.

A real gateway process with its admin API on 127.0.0.1, and a real HTTP client that sends
the Host and Origin a browser would send after a rebinding attack.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.conftest import ROOT, gateway_env, wait_port
from tests.e2e.conftest import ADMIN_KEY, cli, make_site

pytestmark = pytest.mark.anyio


async def test_case14_the_admin_api_refuses_a_foreign_host_or_origin(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", admin=True)
    admin = site.config.admin.listen
    assert admin is not None
    env = {**gateway_env(), "SECUREGATEWAY_ADMIN_KEY": ADMIN_KEY}
    proc = subprocess.Popen(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{admin.port}"
    try:
        await anyio.to_thread.run_sync(wait_port, admin.port, 60.0)
        async with httpx2.AsyncClient(base_url=base, headers={"X-Admin-Key": ADMIN_KEY}, timeout=10) as http:
            ok = await http.get("/api/policy")
            assert ok.status_code == 200 and ok.json()["version"] == 1
            rebound = await http.get("/api/policy", headers={"Host": f"attacker.example:{admin.port}"})
            assert rebound.status_code == 421 and rebound.json()["code"] == "invalid_host"
            assert "version" not in rebound.json()
            cross = await http.post(
                "/api/proposals/x/approve", headers={"Origin": "http://attacker.example"},
                json={"reviewer": "r"},
            )
            assert cross.status_code == 403 and cross.json()["code"] == "invalid_origin"
            same = await http.get("/api/policy", headers={"Origin": f"http://127.0.0.1:{admin.port}"})
            assert same.status_code == 200
    finally:
        proc.terminate()
        await anyio.to_thread.run_sync(lambda: proc.wait(timeout=20))


def test_case14_a_non_loopback_admin_listen_needs_allow_remote(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", admin=True)
    # The admin table holds the last listen of the file; point it at every interface.
    head, _, tail = site.config_path.read_text().rpartition('listen = "http://127.0.0.1:')
    site.config_path.write_text(head + 'listen = "http://0.0.0.0:' + tail)
    out = subprocess.run(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "admin.listen" in out.stderr and "allow_remote = true" in out.stderr


def test_case15_keys_generate_creates_the_key_directory_0700(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    keys = site.root / "state" / "keys"
    assert not keys.parent.exists()
    out = subprocess.run(cli("keys", "generate", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert (keys.stat().st_mode & 0o777) == 0o700
    assert ((keys / "policy.pem").stat().st_mode & 0o777) == 0o600
    assert (keys / "policy.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = subprocess.run(cli("keys", "generate", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
