"""The lean codec keeps every JSON value exact, integers beyond 64 bits included."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp_types import ErrorData

from proxy.wire import codec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_decode_of_encode_is_the_identity_for_any_json_value(value: object) -> None:
    assert codec.decode(codec.encode(value)) == value
    assert codec.decode(json.dumps(value).encode()) == json.loads(json.dumps(value))


def test_integers_beyond_64_bits_survive_both_ways() -> None:
    line = b'{"id": 1, "result": {"n": 123456789012345678901234567890, "m": -18446744073709551617}}'
    decoded = codec.decode(line)
    assert decoded["result"]["n"] == 123456789012345678901234567890
    assert json.loads(codec.encode(decoded)) == json.loads(line)


def test_invalid_utf8_is_replaced_not_refused() -> None:
    assert codec.decode(b'{"text": "caf\xe9"}') == {"text": "caf\ufffd"}


@pytest.mark.parametrize("line", [b"{", b"not json", b'{"a": 1} trailing', b""])
def test_lines_that_are_not_json_raise_decode_error(line: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode(line)


def test_an_error_reply_carries_data_only_when_set() -> None:
    assert json.loads(codec.encode_error(3, ErrorData(code=-32600, message="bad"))) == {
        "jsonrpc": "2.0", "id": 3, "error": {"code": -32600, "message": "bad"}}
    with_data = json.loads(codec.encode_error(None, ErrorData(code=-1, message="m", data={"k": [1]})))
    assert with_data["error"]["data"] == {"k": [1]} and with_data["id"] is None
