"""Canonical JSON: one byte form per value, so digests and signatures agree."""

from __future__ import annotations

import pytest

from policy.canonical import canonical_bytes, canonical_json, digest


def test_keys_are_sorted_and_whitespace_is_gone() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": True}]}) == '{"a":[1,{"c":true,"d":null}],"b":1}'


def test_text_is_utf8_not_escaped() -> None:
    assert canonical_bytes({"k": "café"}) == '{"k":"café"}'.encode()


def test_digest_is_sha256_prefixed_and_order_independent() -> None:
    one, two = digest({"a": 1, "b": 2}), digest({"b": 2, "a": 1})
    assert one == two and one.startswith("sha256:") and len(one) == 71


def test_nan_has_no_canonical_form() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
