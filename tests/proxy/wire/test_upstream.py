"""The stdio upstream line transport: each line parsed once, exactly; bad lines answered.

Invariants: a well-formed response reaches the dispatcher as the decoded result, value
for value (no re-validation, no loss); anything else gets the SDK's validation (so the
repair of malformed responses still applies); a line over the limit fails its caller at
once with an error naming the limit, and the link keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse
from pydantic import ValidationError

from proxy.upstream.repair import malformed_response
from proxy.wire.framing import OVERSIZED_METHOD
from proxy.wire.upstream import encode_outbound, parse_line
from tests.e2e.test_stdio_wire import stdio_gateway
from tests.proxy.wire.test_front import replies_for
from tests.proxy.wire.test_lane import call

pytestmark = pytest.mark.anyio


def test_a_response_is_taken_as_decoded_big_integers_and_all() -> None:
    line = b'{"jsonrpc": "2.0", "id": 4, "result": {"n": 123456789012345678901234567890, "x": [1.5, null]}}'
    item = parse_line(line, "up")
    assert isinstance(item.message, JSONRPCResponse)  # type: ignore[union-attr]
    assert item.message.id == 4 and item.message.result == {"n": 123456789012345678901234567890, "x": [1.5, None]}


@pytest.mark.parametrize(("line", "kind"), [
    (b'{"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage", "params": {"maxTokens": 5}}', JSONRPCRequest),
    (b'{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}',
     JSONRPCNotification),
    (b'{"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "nope"}}', JSONRPCError),
])
def test_requests_notifications_and_errors_are_validated_by_the_sdk(line: bytes, kind: type) -> None:
    item = parse_line(line, "up")
    assert isinstance(item.message, kind)  # type: ignore[union-attr]


@pytest.mark.parametrize("result", ["[1, 2]", "null", '"text"'])
def test_a_non_object_result_still_reaches_the_repair(result: str) -> None:
    item = parse_line(f'{{"jsonrpc": "2.0", "id": 3, "result": {result}}}'.encode(), "up")
    assert isinstance(item, ValidationError)
    repaired = malformed_response(item, "up")
    assert repaired is not None and repaired.message.id == 3
    assert "non-object result" in repaired.message.error.message  # type: ignore[union-attr]


def test_a_line_that_is_not_json_is_an_exception_for_the_dispatcher_to_drop() -> None:
    assert isinstance(parse_line(b"{oops", "up"), ValueError)


def test_an_oversized_line_fails_its_caller_with_the_limit() -> None:
    item = parse_line({"jsonrpc": "2.0", "id": 9, "method": OVERSIZED_METHOD,
                       "params": {"bytes": 5000, "limit": 1024}}, "up")
    assert isinstance(item.message, JSONRPCError) and item.message.id == 9  # type: ignore[union-attr]
    assert "over the gateway's limit of 1024 bytes" in item.message.error.message  # type: ignore[union-attr]


def test_outbound_messages_are_the_sdk_wire_form() -> None:
    for message in (JSONRPCRequest(jsonrpc="2.0", id=1, method="tools/call", params={"name": "x", "n": 2**70}),
                    JSONRPCRequest(jsonrpc="2.0", id="a", method="ping"),
                    JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized"),
                    JSONRPCResponse(jsonrpc="2.0", id=5, result={"roots": []})):
        assert json.loads(encode_outbound(message)) == json.loads(message.model_dump_json(by_alias=True,
                                                                                         exclude_unset=True))


async def test_a_megabyte_answer_comes_back_exact_and_an_oversized_one_fails_at_once(tmp_path: Path) -> None:
    async with stdio_gateway(tmp_path, gateway="max_message_bytes = 4000000") as wire:
        text = "".join(chr(0x20 + (i * 7919) % 0x5E) for i in range(1_000_000))
        await wire.send(call(1, "search.echo", {"text": text}))
        assert (await replies_for(wire, 1))[1]["result"]["content"][0]["text"] == text
        with anyio.fail_after(15):  # well inside the upstream timeout: the caller is failed at once
            await wire.send(call(2, "search.big", {"size": 5_000_000}))
            error = (await replies_for(wire, 2))[2]
        assert "over the gateway's limit of 4000000 bytes" in json.dumps(error)
        await wire.send(call(3, "search.echo", {"text": "still here"}))
        assert (await replies_for(wire, 3))[3]["result"]["content"][0]["text"] == "still here"
