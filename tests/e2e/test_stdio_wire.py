"""The stdio front answers lines that are not JSON-RPC requests, as the HTTP front does.

Invariant: every line a client writes that is not a valid message gets exactly one
JSON-RPC error (``-32700`` with ``id: null`` when it is not JSON, ``-32600`` when it is
JSON but not a request, echoing a usable id), and the session keeps serving.
Driven through a real ``securegateway run`` subprocess writing raw lines.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from tests.conftest import ROOT, gateway_env
from tests.e2e.conftest import GPT_KEY, cli, make_site

pytestmark = pytest.mark.anyio

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


class Wire:
    """Raw newline-delimited JSON to and from a gateway process."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self._buf = b""

    async def send(self, *lines: str | dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        await self.proc.stdin.send(data.encode())

    async def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with anyio.fail_after(60):  # each reply bounded, not the whole session (fixtures outlive a scope)
            while b"\n" not in self._buf:
                self._buf += await self.proc.stdout.receive()
        line, _, self._buf = self._buf.partition(b"\n")
        return dict(json.loads(line))

    async def replies_until(self, last_id: object) -> list[dict[str, Any]]:
        out = []
        while True:
            out.append(await self.reply())
            if out[-1].get("id") == last_id:
                return out


@asynccontextmanager
async def stdio_gateway(tmp_path: Path, gateway: str = "") -> AsyncIterator[Wire]:
    site = make_site(tmp_path / "site", listen="stdio", gateway=gateway)
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    async with await anyio.open_process(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env,
                                        stderr=None) as proc:
        wire = Wire(proc)
        try:
            await wire.send(INIT, INITIALIZED)
            assert "result" in await wire.reply()
            yield wire
        finally:
            proc.kill()


async def test_malformed_json_gets_a_parse_error_with_a_null_id_and_the_session_goes_on(tmp_path: Path) -> None:
    async with stdio_gateway(tmp_path) as wire:
        await wire.send('{"jsonrpc": "2.0", "id": 2, "method": "tools/list"', "not json at all",
                        {"jsonrpc": "2.0", "id": 3, "method": "ping"})
        replies = await wire.replies_until(3)
    assert replies[:2] == [{"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}] * 2
    assert replies[2] == {"jsonrpc": "2.0", "id": 3, "result": {}}


@pytest.mark.parametrize(("line", "answered_id"), [
    ('{"jsonrpc": "2.0", "id": 7, "method": 42}', 7),                    # method not a string
    ('{"jsonrpc": "2.0", "id": "s", "method": null}', "s"),
    ('{"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": 5}', 8),  # params not an object
    ('{"jsonrpc": "2.0", "id": {"x": 1}, "method": 1}', None),           # no usable id
    ('[{"jsonrpc": "2.0", "id": 9, "method": "ping"}]', None),             # a batch
    ('"just a string"', None),
    ("12", None),
])
async def test_json_that_is_not_a_request_gets_invalid_request(
    tmp_path: Path, line: str, answered_id: object
) -> None:
    async with stdio_gateway(tmp_path) as wire:
        await wire.send(line, {"jsonrpc": "2.0", "id": "after", "method": "ping"})
        replies = await wire.replies_until("after")
    assert len(replies) == 2, replies
    assert replies[0]["id"] == answered_id
    assert replies[0]["error"]["code"] == -32600
    assert replies[0]["error"]["message"].startswith("Invalid request")
    assert replies[1] == {"jsonrpc": "2.0", "id": "after", "result": {}}


async def test_blank_lines_and_a_malformed_response_get_no_answer(tmp_path: Path) -> None:
    async with stdio_gateway(tmp_path) as wire:
        await wire.send("", "   ", '{"jsonrpc": "2.0", "id": 99, "result": 1, "error": {}}',
                        {"jsonrpc": "2.0", "id": 4, "method": "ping"})
        replies = await wire.replies_until(4)
    assert replies == [{"jsonrpc": "2.0", "id": 4, "result": {}}]


async def test_a_valid_call_after_garbage_is_still_decided_and_answered(tmp_path: Path) -> None:
    async with stdio_gateway(tmp_path) as wire:
        await wire.send("{{{", {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                                "params": {"name": "search.echo", "arguments": {"text": "fine"}}})
        replies = await wire.replies_until(5)
    assert replies[0]["error"]["code"] == -32700
    assert len(replies) == 2, replies  # pinning tools on first use announces nothing
    assert replies[1]["result"]["content"][0]["text"] == "fine"
    assert replies[1]["result"]["_meta"]["io.securegateway/decision"]["allowed"] is True
