"""Issue 10, the audit log: a real gateway process, a real MCP client, the real CLI.

* case 9: a service-account JSON whose private key is written with ``\\n`` escapes is
  masked entire in the audit log;
* case 10: values masked by key name (authorization, cookie, session_id) do not reappear in
  the same event's reason, reasoning or risk factors;
* case 11: truncating the log and rewriting the head sidecar fails ``audit verify`` (exit 1,
  naming the unvouched tail), also with a replayed signed sidecar when the checkpoint file
  is kept;
* case 12: with ``require_signature``, rolling ``contracts.jsonl`` and ``policies.yaml`` back to
  an older signed version is refused at runtime (the newer version stays live), by
  ``policy verify`` and on restart, until ``policy verify --accept-rollback``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import ROOT, connect, gateway_env, wait_port
from tests.e2e.conftest import GPT_KEY, Site, cli, make_site, text_of

pytestmark = pytest.mark.anyio

PEM_BODY = (
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu",
    "NMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ",
)
PEM = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END PRIVATE KEY-----\n"
AUTHORIZATION = "Basic c2VydmljZTpodW50ZXIyLXN1cGVyLXNlY3JldA=="
COOKIE = "sid=Zx81KqPw0LmN3vBt7yHs"
SESSION_ID = "sess-4f9a8c71d2e04b6f"

POLICY = """\
rules:
  - id: calendar-read
    model: "*"
    allow_tools: [calendar.echo, calendar.record, calendar.list_events]
  - id: no-create
    model: "*"
    deny_tools: [calendar.create_event]
    reason: "no events for session {args.session_id} ({args.cookie})"
"""


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), cwd=ROOT, env=gateway_env(), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextlib.asynccontextmanager
async def gateway(site: Site) -> AsyncIterator[subprocess.Popen[bytes]]:
    assert site.url is not None
    port = int(site.url.split(":")[2].split("/")[0])
    proc = subprocess.Popen(
        cli("run", "--config", str(site.config_path)), cwd=ROOT, env=gateway_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        await anyio.to_thread.run_sync(wait_port, port, 60.0)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            await anyio.to_thread.run_sync(lambda: proc.wait(timeout=20))


def audit_events(site: Site) -> list[dict[str, Any]]:
    return [json.loads(line) for line in site.audit_path.read_text().splitlines()]


def fragments(secret: str, size: int = 12) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


async def test_case9_case10_no_secret_reaches_the_audit_log_in_any_form(tmp_path: Path) -> None:
    # A private key in arguments denies by default (suspicious_arguments); this test is about
    # how an allowed one is logged, so the policy tolerates secrets.
    site = make_site(tmp_path / "site", policy="settings: {tolerate_findings: [secret]}\n" + POLICY)
    service_account = json.dumps({"type": "service_account", "project_id": "demo", "private_key": PEM})
    async with gateway(site), connect(site.url or "", GPT_KEY) as client:
        # case 9: the JSON text of the file, its key written with \n escapes
        echoed = await client.call_tool("calendar.echo", {"text": service_account})
        assert not echoed.is_error and "service_account" in text_of(echoed)
        # case 10: a schema violation whose message quotes values masked by key name
        violated = await client.call_tool(
            "calendar.echo", {"text": {"authorization": AUTHORIZATION, "cookie": COOKIE}}
        )
        assert violated.is_error
        # ... and a reason template that quotes them
        denied = await client.call_tool("calendar.create_event", {"title": "t", "session_id": SESSION_ID,
                                                                  "cookie": COOKIE})
        assert denied.is_error
    events = audit_events(site)
    decisions = [e for e in events if e["type"] == "decision"]
    assert len(decisions) == 3
    sa, schema, template = decisions
    assert json.loads(sa["arguments"]["text"])["private_key"].startswith("[REDACTED:private_key]")
    assert "arguments.text" in sa["masked"]
    assert schema["decision"]["reason_code"] == "schema_violation"
    assert "[REDACTED]" in schema["decision"]["reason"]
    assert template["decision"]["reason_code"] != "allowed" and "[REDACTED]" in template["decision"]["reason"]
    assert {"arguments.session_id", "arguments.cookie"} <= set(template["masked"])
    raw = site.audit_path.read_text()
    for secret in (*PEM_BODY, AUTHORIZATION, COOKIE, SESSION_ID):
        leaked = [f for f in fragments(secret) if f in raw]
        assert not leaked, f"{leaked[0]!r} is in the audit log"
    verified = run_cli("audit", "verify", "--config", str(site.config_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "signed up to seq" in verified.stdout


def _swap(path: Path, data: bytes | None) -> bytes:
    """The file's bytes, replaced by ``data`` when given."""
    before = path.read_bytes()
    if data is not None:
        path.write_bytes(data)
    return before


def _truncate(path: Path, keep: int) -> dict[str, Any]:
    lines = path.read_bytes().splitlines(keepends=True)[:keep]
    path.write_bytes(b"".join(lines))
    return json.loads(lines[-1])


async def test_case11_a_truncated_log_with_a_rewritten_sidecar_fails_verify_naming_the_gap(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", policy=POLICY)
    anchor = tmp_path / "offhost" / "checkpoints.jsonl"
    text = site.config_path.read_text().replace(
        'file = "state/audit.jsonl"',
        f'file = "state/audit.jsonl"\ncheckpoint_every = 3\ncheckpoint_file = "{anchor}"',
    )
    site.config_path.write_text(text)
    async with gateway(site), connect(site.url or "", GPT_KEY) as client:
        for n in range(8):
            assert not (await client.call_tool("calendar.echo", {"text": f"call {n}"})).is_error
    assert run_cli("audit", "verify", "--config", str(site.config_path)).returncode == 0
    full = len(audit_events(site))
    assert any(e["type"] == "audit.checkpoint" for e in audit_events(site))
    sidecar = Path(f"{site.audit_path}.head")
    signed_sidecar = _swap(sidecar, None)

    # Cut the tail and write a sidecar naming the new last event, as anyone without the key can.
    last = _truncate(site.audit_path, full - 4)
    forged = {"schema": "securegateway.audit-head/1", "seq": last["seq"], "hash": last["hash"]}
    _swap(sidecar, json.dumps(forged).encode().ljust(511) + b"\n")
    missing = run_cli("audit", "verify", "--config", str(site.config_path), "--checkpoints", str(tmp_path / "none"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    out = run_cli("audit", "verify", "--config", str(site.config_path))
    assert out.returncode == 1, out.stdout
    # The checkpoint file names exactly which events are gone.
    assert f"the log ends at seq {last['seq']}" in out.stdout
    assert f"events {last['seq'] + 1} to" in out.stdout and "are missing" in out.stdout

    # Without the off-host file, the unsigned sidecar alone is what fails, naming the unvouched tail.
    bare = site.config_path.read_text().replace(f'checkpoint_file = "{anchor}"', "")
    site.config_path.write_text(bare)
    out = run_cli("audit", "verify", "--config", str(site.config_path), "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["first_bad"]["problem"] == "head_unsigned"
    assert f"the log ends at seq {last['seq']}" in report["message"]
    assert "may have been cut off" in report["message"]

    # A genuine signed sidecar copied from later and put back over a shorter log: head_mismatch/truncated.
    _swap(sidecar, signed_sidecar)
    out = run_cli("audit", "verify", "--config", str(site.config_path))
    assert out.returncode == 1 and "truncated" in out.stdout


def _require_signature(site: Site) -> None:
    text = site.config_path.read_text()
    text = text.replace("watch_interval = 0.1", "watch_interval = 0.1\nrequire_signature = true")
    site.config_path.write_text(text)


async def test_case12_a_rolled_back_policy_history_is_refused_and_the_newer_version_stays_live(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "site", policy=POLICY)
    _require_signature(site)
    config = str(site.config_path)
    policy_file = site.root / "policies.yaml"
    contracts = site.root / "state" / "contracts.jsonl"
    assert run_cli("keys", "generate", "--config", config).returncode == 0
    assert run_cli("policy", "sign", "--config", config).returncode == 0  # v1
    policy_file.write_text(POLICY.replace("calendar.list_events]", "calendar.list_events, calendar.add]"))
    assert run_cli("policy", "sign", "--config", config).returncode == 0  # v2: calendar.add allowed
    saved_log, saved_policy = contracts.read_bytes(), policy_file.read_text()
    policy_file.write_text(POLICY.replace("calendar.list_events]", "calendar.list_events, calendar.add, calendar.log]"))
    assert run_cli("policy", "sign", "--config", config).returncode == 0  # v3: calendar.log allowed too
    assert run_cli("policy", "verify", "--config", config).returncode == 0

    async with gateway(site) as proc, connect(site.url or "", GPT_KEY) as client:
        assert not (await client.call_tool("calendar.log", {"message": "v3 is live"})).is_error
        # Roll both files back to v2, as someone with write access to the state directory could.
        contracts.write_bytes(saved_log)
        policy_file.write_text(saved_policy)
        with anyio.fail_after(20):
            while not any(
                e["type"] == "policy.reload_failed" and e.get("code") == "policy_rollback" for e in audit_events(site)
            ):
                await anyio.sleep(0.1)
        # The previous (newer) version stays live.
        assert not (await client.call_tool("calendar.log", {"message": "still v3"})).is_error
        assert proc.poll() is None

    verify = run_cli("policy", "verify", "--config", config)
    assert verify.returncode == 1
    assert "policy rollback refused: the history ends at v2" in verify.stdout and "v3" in verify.stdout

    restart = run_cli("run", "--config", config, timeout=60)
    assert restart.returncode == 2
    assert "policy rollback refused" in restart.stderr and "--accept-rollback" in restart.stderr

    accepted = run_cli("policy", "verify", "--accept-rollback", "--config", config)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "accepted v2" in accepted.stdout and "was v3" in accepted.stdout
    async with gateway(site), connect(site.url or "", GPT_KEY) as client:
        assert (await client.call_tool("calendar.log", {"message": "v2 now"})).is_error
        assert not (await client.call_tool("calendar.add", {"a": 1, "b": 2})).is_error
