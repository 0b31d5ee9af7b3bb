"""policy.redact: masks by key and by content, reports paths, never mutates, digests the original."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.redact import DEFAULT_SENSITIVE_KEYS, MAX_DEPTH, REDACTED, Redacted, digest, redact

AWS = "AKIAIOSFODNN7EXAMPLE"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def test_values_under_sensitive_keys_are_replaced_whole() -> None:
    args = {
        "api_key": "not-shaped-like-a-secret",
        "headers": {"Authorization": "Basic dXNlcjpwYXNz", "Accept": "text/plain"},
        "url": "https://example.com",
    }
    result = redact(args, root="arguments")
    assert result.value == {
        "api_key": REDACTED,
        "headers": {"Authorization": REDACTED, "Accept": "text/plain"},
        "url": "https://example.com",
    }
    assert result.masked_paths == ("arguments.api_key", "arguments.headers.Authorization")


@pytest.mark.parametrize(
    "key",
    ["password", "PASSWORD", "Api-Key", "api_key", "apiKey", "X-API-KEY", "client_secret", "clientSecret",
     "DB_PASSWORD", "github_token", "Set-Cookie", "cookies", "private_key", "Proxy-Authorization",
     "aws.secret.access.key", "credentials"],
)  # fmt: skip
def test_sensitive_key_matching_ignores_case_separators_and_prefixes(key: str) -> None:
    assert redact({key: "x"}).value == {key: REDACTED}


@pytest.mark.parametrize("key", ["max_tokens", "token_count", "keyboard", "secretary", "passage", "author"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert redact({key: "value"}) == Redacted({key: "value"}, ())


def test_a_sensitive_key_masks_a_whole_subtree_of_any_type() -> None:
    result = redact({"credentials": {"user": "u", "pass": ["a", "b"]}, "token": 12345, "secret": None})
    assert result.value == {"credentials": REDACTED, "token": REDACTED, "secret": REDACTED}
    assert result.masked_paths == ("credentials", "secret", "token")


def test_secrets_inside_strings_are_masked_in_place() -> None:
    args = {"command": f"curl -H 'Authorization: Bearer abc123def456ghi789' https://x?k={AWS}"}
    result = redact(args, root="arguments")
    assert result.value == {
        "command": "curl -H 'Authorization: Bearer [REDACTED:bearer_token]' https://x?k=[REDACTED:aws_access_key]"
    }
    assert result.masked_paths == ("arguments.command",)


def test_list_items_are_walked_and_reported_with_their_index() -> None:
    args = {"items": [{"name": "a"}, {"name": "b", "token": "t"}, f"plain {GITHUB}"]}
    result = redact(args, root="arguments")
    assert result.value["items"][1] == {"name": "b", "token": REDACTED}
    assert result.value["items"][2] == "plain [REDACTED:github_token]"
    assert result.masked_paths == ("arguments.items[1].token", "arguments.items[2]")


def test_awkward_keys_are_quoted_in_paths() -> None:
    result = redact({"a.b": {"": {"password": "p"}}}, root="arguments")
    assert result.masked_paths == ('arguments["a.b"][""].password',)


def test_without_root_paths_start_at_the_top_level_and_the_root_is_dollar() -> None:
    assert redact({"token": "t"}).masked_paths == ("token",)
    assert redact([{"token": "t"}]).masked_paths == ("[0].token",)
    assert redact(f"key {AWS}") == Redacted("key [REDACTED:aws_access_key]", ("$",))


def test_a_secret_used_as_a_key_is_masked_and_does_not_leak_through_the_path() -> None:
    result = redact({AWS: 1, "other": 2}, root="arguments")
    assert result.value == {"[REDACTED:aws_access_key]": 1, "other": 2}
    assert result.masked_paths == ('arguments["[REDACTED:aws_access_key]"]',)
    assert all(AWS not in path for path in result.masked_paths)


def test_the_input_is_never_mutated() -> None:
    args: dict[str, Any] = {
        "password": "p",
        "nested": {"list": [{"token": "t"}, f"see {AWS}"], "keep": 1.5},
    }
    before = copy.deepcopy(args)
    result = redact(args, root="arguments")
    assert args == before
    assert result.value is not args
    assert result.value["nested"] is not args["nested"]


def test_nesting_deeper_than_the_bound_is_truncated_and_reported() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 5):
        deep = {"d": deep}
    result = redact(deep, root="arguments")
    expected_path = "arguments" + ".d" * MAX_DEPTH
    assert result.masked_paths == (expected_path,)
    node = result.value
    for _ in range(MAX_DEPTH):
        node = node["d"]
    assert node == "[TRUNCATED:depth]"


def test_non_json_values_become_markers_so_the_copy_is_strict_json() -> None:
    result = redact({"raw": b"\x00", "x": float("nan"), "t": (1, 2), 7: "int key"}, root="a")
    assert result.value == {"raw": "[UNSERIALIZABLE:bytes]", "x": "[NONFINITE:nan]", "t": [1, 2], "7": "int key"}
    assert set(result.masked_paths) == {"a.raw", "a.x"}
    json.dumps(result.value, allow_nan=False)


def test_custom_sensitive_keys_replace_the_defaults() -> None:
    result = redact({"ssn": "123", "password": "p"}, sensitive_keys=frozenset({"SSN"}))
    assert result.value == {"ssn": REDACTED, "password": "p"}
    assert "password" in DEFAULT_SENSITIVE_KEYS


def test_digest_is_sha256_of_canonical_json_of_the_original() -> None:
    args = {"b": [1, "é"], "a": {"password": "p"}}
    expected = hashlib.sha256('{"a":{"password":"p"},"b":[1,"é"]}'.encode()).hexdigest()
    assert digest(args) == "sha256:" + expected
    assert digest(args) != digest(redact(args).value)


def test_digest_is_stable_under_key_order() -> None:
    assert digest({"a": 1, "b": {"x": 1, "y": 2}}) == digest({"b": {"y": 2, "x": 1}, "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_digest_never_raises() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    deep: Any = 0
    for _ in range(5000):
        deep = [deep]
    for value in (cyclic, deep, {1: "a", "b": 2}, float("inf"), object(), b"raw", {"q": "lone \ud800 surrogate"}):
        assert digest(value).startswith("sha256:")


def test_a_lone_surrogate_is_digested_as_its_code_point() -> None:
    # JSON allows "\ud800"; the digest must not raise on the audit path of such a call.
    expected = hashlib.sha256('{"q":"\ud800"}'.encode("utf-8", "surrogatepass")).hexdigest()
    assert digest({"q": "\ud800"}) == "sha256:" + expected


@given(st.text() | st.text(alphabet=st.sampled_from('ab"\\/\x00\x1f\x7f\u2028\ud800\udfff\U0010ffff')))
def test_a_string_is_digested_as_the_sha256_of_its_json_text(text: str) -> None:
    # The fast path for one string (a clipped argument) hashes exactly the reference text,
    # control characters, quotes, U+2028 and lone surrogates included.
    reference = json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert digest(text) == "sha256:" + hashlib.sha256(reference).hexdigest()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_redaction_never_mutates_and_is_a_fixed_point(value: Any) -> None:
    before = copy.deepcopy(value)
    once = redact(value)
    assert value == before
    assert redact(once.value).value == once.value
    json.dumps(once.value, allow_nan=False)
