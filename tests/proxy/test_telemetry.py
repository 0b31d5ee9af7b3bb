"""OpenTelemetry traces (``[telemetry] traces``): spans from a real gateway, read with the SDK's
in-memory exporter; the console exporter and a missing extra through ``securegateway run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.config import parse_config
from proxy.errors import ConfigError
from tests.conftest import ROOT, connect, gateway_env, running
from tests.e2e.conftest import GPT_KEY, Site, cli, make_site

pytestmark = pytest.mark.anyio

POLICY = """\
rules:
  - id: gpt-search
    model: gpt-4o
    allow_tools: [search.*]
  - id: no-greet
    model: "*"
    deny_prompts: ["calendar.greet"]
"""
NEEDLE = "needle-value-7f3a"  # an argument value: must appear on no span
TOKEN = "sk-live-abcdefghijklmnopqrstuvwx"


def traced_site(root: Path, traces: str = "console", policy: str = POLICY) -> Site:
    site = make_site(root, policy=policy)
    with site.config_path.open("a") as f:
        f.write(f'\n[telemetry]\ntraces = "{traces}"\nservice_name = "gw-under-test"\n')
    return site


def everything(span: Any) -> str:
    """Every string a span exports: name, attributes, events."""
    parts = [span.name, json.dumps(dict(span.attributes or {}))]
    parts += [e.name + json.dumps(dict(e.attributes or {})) for e in span.events]
    return "\n".join(parts)


async def test_each_relayed_call_is_a_span_with_its_decision_and_no_argument_values(tmp_path: Path) -> None:
    site = traced_site(tmp_path / "s")
    app = site.app()
    exported = InMemorySpanExporter()
    app.tracing.add_exporter(exported, batch=False)
    async with running(app), connect(site.url, GPT_KEY) as gpt:
        allowed = await gpt.call_tool("search.echo", {"text": NEEDLE, "api_key": TOKEN})
        denied = await gpt.call_tool("calendar.add", {"a": 1, "b": 2})
        with pytest.raises(MCPError):
            await gpt.get_prompt("calendar.greet", {"who": NEEDLE})
        await gpt.read_resource("calendar://info")
    assert not allowed.is_error and denied.is_error
    spans = {s.name: s for s in exported.get_finished_spans()}
    audit = [json.loads(x) for x in site.audit_path.read_text().splitlines()]
    ids = {(e["server"], e["tool"]): e["decision_id"] for e in audit if e["type"] == "decision"}

    echo = spans["tools/call search.echo"]
    assert echo.attributes["securegateway.decision_id"] == ids[("search", "echo")]
    assert echo.attributes["securegateway.outcome"] == "allow"
    assert echo.attributes["securegateway.reason_code"] == "allowed"
    assert echo.attributes["securegateway.model"] == "gpt-4o"
    assert echo.attributes["securegateway.upstream"] == "search"
    assert echo.attributes["securegateway.tool"] == "search.echo"
    assert echo.resource.attributes["service.name"] == "gw-under-test"

    add = spans["tools/call calendar.add"]
    assert add.attributes["securegateway.outcome"] == "deny"
    assert add.attributes["securegateway.decision_id"] == ids[("calendar", "add")]
    assert add.attributes["securegateway.reason_code"] == "default_deny"

    greet = spans["prompts/get calendar.greet"]  # a non-tool decision has its span too
    assert greet.attributes["securegateway.outcome"] == "deny"
    assert greet.attributes["securegateway.decision_id"] == ids[("calendar", "greet")]
    assert greet.status.status_code.name == "ERROR"  # the client got a JSON-RPC error
    read = spans["resources/read"]
    assert read.attributes["securegateway.outcome"] == "allow"
    assert "securegateway.tool" not in read.attributes  # a resource's URI may carry a token
    assert "calendar://info" not in everything(read)
    for span in exported.get_finished_spans():
        text = everything(span)
        assert NEEDLE not in text and TOKEN not in text, span.name


async def test_a_client_traceparent_is_the_parent_and_the_upstream_request_is_untouched(tmp_path: Path) -> None:
    received = tmp_path / "received.jsonl"
    site = make_site(tmp_path / "s", policy="rules:\n  - model: '*'\n    allow_tools: [rec.*]\n",
                     upstreams=[("rec", [sys.executable, "-m", "tests.proxy.recording_upstream", str(received)])])
    (site.root / "model_keys.yaml").write_text(site.root.joinpath("model_keys.yaml").read_text()
                                               .replace('"search.*"]', '"search.*", "rec.*"]'))
    with site.config_path.open("a") as f:
        f.write('\n[telemetry]\ntraces = "console"\n')
    app = site.app()
    exported = InMemorySpanExporter()
    app.tracing.add_exporter(exported, batch=False)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    async with running(app), connect(site.url, GPT_KEY) as gpt:
        result = await gpt.call_tool("rec.echo", {"text": "x"}, meta={"traceparent": parent})
        plain = await gpt.call_tool("rec.echo", {"text": "y"})
    assert not result.is_error and not plain.is_error
    first, second = [s for s in exported.get_finished_spans() if s.name == "tools/call rec.echo"]
    assert format(first.context.trace_id, "032x") == trace_id
    assert first.parent is not None and format(first.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert second.parent is None  # no traceparent: a root span
    # the gateway's own span is never injected upstream: the client's _meta is forwarded as sent
    calls = [json.loads(line)["params"] for line in received.read_text().splitlines()
             if json.loads(line).get("method") == "tools/call"]
    assert [c.get("_meta") for c in calls] == [{"traceparent": parent}, None]


def test_traces_are_off_by_default_and_bad_telemetry_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    assert parse_config({}, path).telemetry.traces == "off"
    with pytest.raises(ConfigError) as err:
        parse_config({"telemetry": {"traces": "jaeger", "endpoint": "ftp://x", "service_name": " ", "x": 1}}, path)
    text = str(err.value)
    assert "telemetry.traces: must be one of off, console, otlp; got `jaeger`" in text
    assert "telemetry.endpoint: expected an http(s) url, got `ftp://x`" in text
    assert "telemetry.service_name: must not be empty" in text
    assert "telemetry.x: unknown key" in text


def test_with_traces_off_opentelemetry_sdk_is_never_imported(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s")
    code = (
        "import sys\nfrom proxy.bootstrap import build\nfrom proxy.config import load_config\n"
        f"app = build(load_config({str(site.config_path)!r}), model_key=None)\n"
        "app.runtime.audit.close()\n"
        "assert app.tracing is None\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'proxy.telemetry'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=gateway_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_console_traces_go_to_stderr_of_a_stdio_gateway(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", listen="stdio", policy=POLICY)
    with site.config_path.open("a") as f:
        f.write('\n[telemetry]\ntraces = "console"\n')
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search.echo",
                                                                       "arguments": {"text": NEEDLE}}},
    ]
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            cli("run", "--config", str(site.config_path), "--model-key", GPT_KEY), cwd=ROOT, env=gateway_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
            proc.stdin.flush()
            replies = []
            while len(replies) < 2:  # bounded by the test timeout; the gateway answers both
                line = proc.stdout.readline()
                assert line, "the gateway closed stdout"
                replies.append(json.loads(line))
            proc.stdin.close()  # the client is done: the gateway stops and flushes its spans
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [r.get("id") for r in replies] == [1, 2]  # stdout holds MCP messages only
    assert "result" in replies[1], replies[1]
    decision_id = replies[1]["result"]["_meta"]["io.securegateway/decision"]["decision_id"]
    stderr = errors.read_text()
    assert '"name": "tools/call search.echo"' in stderr
    assert f'"securegateway.decision_id": "{decision_id}"' in stderr
    assert NEEDLE not in stderr


def test_a_missing_extra_stops_start_up_naming_the_install_command(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", listen="stdio")
    with site.config_path.open("a") as f:
        f.write('\n[telemetry]\ntraces = "console"\n')
    # A real start-up on an interpreter where opentelemetry.sdk does not import.
    shadow = tmp_path / "shadow" / "opentelemetry" / "sdk"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'opentelemetry.sdk'\")\n")
    env = gateway_env()
    env["PYTHONPATH"] = str(tmp_path / "shadow") + os.pathsep + env["PYTHONPATH"]
    out = subprocess.run(cli("run", "--config", str(site.config_path), "--model-key", GPT_KEY), cwd=ROOT,
                         env=env, input="", capture_output=True, text=True, timeout=90)
    assert out.returncode != 0
    assert "telemetry.traces: `console` needs OpenTelemetry" in out.stderr
    assert "pip install 'securegateway[otel]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_otlp_without_its_exporter_names_the_otlp_extra(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the OTLP exporter is installed here")
    from proxy.config import TelemetryConfig
    from proxy.telemetry import open_tracing

    with pytest.raises(ConfigError, match=r"telemetry\.traces: `otlp` needs the OTLP exporter .*securegateway\[otlp\]"):
        open_tracing(TelemetryConfig(traces="otlp"))
