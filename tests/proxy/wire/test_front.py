"""The lean stdio front on the wire: a real ``securegateway run`` process, raw lines in and out.

Invariant: every line gets exactly the answer JSON-RPC asks for, whichever lane serves
it: CRLF-terminated requests are served, an oversized request gets an error naming the
limit (and the session goes on), and a line of invalid UTF-8 is repaired, not fatal.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_stdio_wire import Wire, stdio_gateway

pytestmark = pytest.mark.anyio

async def replies_for(wire: Wire, *ids: object) -> dict[object, dict[str, Any]]:
    """Replies until every id in ``ids`` is answered (the lanes answer in their own order)."""
    got: dict[object, dict[str, Any]] = {}
    while not set(ids) <= set(got):
        reply = await wire.reply()
        got.setdefault(reply.get("id"), reply)
    return got


CALL = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "search.echo", "arguments": {"text": "crlf"}}}


async def test_crlf_terminated_requests_are_served_by_either_lane(tmp_path) -> None:
    async with stdio_gateway(tmp_path) as wire:
        await wire.send('{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": '
                        '{"name": "search.echo", "arguments": {"text": "crlf"}}}\r',
                        '{"jsonrpc": "2.0", "id": 3, "method": "ping"}\r')
        by_id = await replies_for(wire, 2, 3)
    assert by_id[2]["result"]["content"][0]["text"] == "crlf"
    assert by_id[3] == {"jsonrpc": "2.0", "id": 3, "result": {}}


async def test_an_oversized_request_gets_an_error_naming_the_limit_and_the_session_goes_on(tmp_path) -> None:
    async with stdio_gateway(tmp_path, gateway="max_message_bytes = 8192") as wire:
        big = {"id": "huge", **CALL, "params": {"name": "search.echo", "arguments": {"text": "x" * 100_000}}}
        await wire.send(big, {**CALL, "id": 4})
        replies = await replies_for(wire, "huge", 4)
    huge = replies["huge"]
    assert huge["error"]["code"] == -32600
    assert "exceeds the gateway's limit of 8192 bytes" in huge["error"]["message"]
    assert replies[4]["result"]["content"][0]["text"] == "crlf"


async def test_a_line_with_invalid_utf8_is_repaired_not_fatal(tmp_path) -> None:
    async with stdio_gateway(tmp_path) as wire:
        assert wire.proc.stdin is not None
        await wire.proc.stdin.send(b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": '
                                   b'{"name": "search.echo", "arguments": {"text": "caf\xe9"}}}\n')
        replies = await wire.replies_until(5)
    assert replies[-1]["result"]["content"][0]["text"] == "caf\ufffd"


async def test_a_fast_lane_request_before_initialize_is_left_to_the_sdk(tmp_path) -> None:
    """No session yet: the relay's own answer, not a crash or a silent drop."""
    from tests.e2e.test_stdio_wire import INIT, INITIALIZED

    async with stdio_gateway(tmp_path) as wire:
        await wire.send({**CALL, "id": 6})
        assert (await wire.reply())["result"]["content"][0]["text"] == "crlf"
    # the same request on a fresh process before initialize
    import anyio

    from tests.conftest import ROOT, gateway_env
    from tests.e2e.conftest import GPT_KEY, cli, make_site

    site = make_site(tmp_path / "fresh", listen="stdio")
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    async with await anyio.open_process(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env,
                                        stderr=None) as proc:
        raw = Wire(proc)
        try:
            with anyio.fail_after(60):
                await raw.send({**CALL, "id": 7}, INIT, INITIALIZED, {**CALL, "id": 8})
                replies = await replies_for(raw, 7, 1, 8)
        finally:
            proc.kill()
    assert replies[7]["error"]["code"] in (-32600, -32602)  # the SDK path's answer before initialize
    assert "result" in replies[1]
    assert replies[8]["result"]["content"][0]["text"] == "crlf"
