"""Argument validation against inputSchema: outcomes, messages, caching."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from policy import schema as schema_module
from policy.schema import SchemaCheck, check_arguments, clear_cache

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string", "maxLength": 10}, "limit": {"type": "integer", "maximum": 5}},
    "required": ["query"],
    "additionalProperties": False,
}


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_cache()


def test_valid_arguments_pass() -> None:
    assert check_arguments(SCHEMA, {"query": "hi", "limit": 2}) == SchemaCheck("valid")
    assert check_arguments(SCHEMA, {"query": "hi"}).sentence() == "No schema violation."


def test_violations_are_listed_with_their_paths() -> None:
    check = check_arguments(SCHEMA, {"limit": 9, "extra": 1})
    assert check.status == "invalid" and check.violated
    assert check.messages == (
        "at arguments: 'query' is a required property",
        "at arguments: Additional properties are not allowed ('extra' was unexpected)",
        "at arguments.limit: 9 is greater than the maximum of 5",
    )
    assert [factor.code for factor in check.factors()] == ["schema_violation"]


def test_messages_never_repeat_a_secret_from_the_arguments() -> None:
    check = check_arguments({"type": "object", "properties": {"k": {"type": "integer"}}}, {"k": "AKIAIOSFODNN7EXAMPLE"})
    assert check.messages == ("at arguments.k: '[REDACTED:aws_access_key]' is not of type 'integer'",)


def test_no_schema_means_not_validated() -> None:
    check = check_arguments(None, {"anything": 1})
    assert check.status == "absent" and not check.violated and check.factors() == ()


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "no-such-type"},
        {"properties": 5},
        ["not", "an", "object"],
        {"type": "object", "properties": {"x": {"$ref": "https://example.invalid/schema.json"}}},
        {"type": "number", "maximum": float("nan")},
    ],
)
def test_an_invalid_or_unresolvable_schema_is_reported_not_raised(schema: Any) -> None:
    check = check_arguments(schema, {"x": 1})
    assert check.status == "schema_error"
    assert check.sentence().startswith("The tool's input schema is invalid (")
    assert [factor.code for factor in check.factors()] == ["invalid_schema"]


def test_non_dict_mappings_are_validated_as_objects() -> None:
    assert check_arguments(SCHEMA, MappingProxyType({"query": "hi"})).status == "valid"


def test_a_validator_is_built_once_per_distinct_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real = schema_module._build

    def counting(schema: Any) -> Any:
        built.append(schema)
        return real(schema)

    monkeypatch.setattr(schema_module, "_build", counting)
    for _ in range(3):
        check_arguments(SCHEMA, {"query": "a"})
        check_arguments(dict(SCHEMA), {"query": "a"})  # equal content, different object
    check_arguments({"type": "object"}, {})
    assert len(built) == 2


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema_module, "CACHE_SIZE", 4)
    for index in range(20):
        check_arguments({"type": "object", "maxProperties": index}, {})
    assert len(schema_module._by_digest) <= 4
    assert len(schema_module._by_identity) <= 4


def test_integral_floats_count_as_integers_like_jsonschema_says() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert check_arguments(schema, {"n": 3.0}).status == "valid"
    assert check_arguments(schema, {"n": 3.5}).status == "invalid"
    assert check_arguments(schema, {"n": True}).status == "invalid"


_RACE = """
import random, sys, threading, time
from policy.schema import check_arguments, warm_up
sys.setswitchinterval(1e-4)  # hand the GIL over often: the imports interleave
failed = []
def warm():
    time.sleep(random.random() * 0.01)
    try:
        warm_up()
    except BaseException as exc:
        failed.append(repr(exc))
worker = threading.Thread(target=warm)
worker.start()
time.sleep(random.random() * 0.01)
try:
    status = check_arguments({"type": "object", "properties": {"q": {"type": "string"}}}, {"q": 1}).status
except BaseException as exc:
    status = repr(exc)
worker.join()
print(status, failed)
"""


def test_a_first_check_racing_the_warm_up_import_gets_a_real_answer() -> None:
    # The gateway warms the validator library up in a worker thread while the event loop may be
    # checking its first call: unserialised, one in four such races handed a thread a partially
    # initialised jsonschema (ImportError -> a gateway_error deny). Fresh interpreters: the race is
    # at the import, which happens once per process.
    import subprocess
    import sys

    from tests.conftest import ROOT, gateway_env

    outcomes = [
        subprocess.run(
            [sys.executable, "-c", _RACE], cwd=ROOT, env=gateway_env(), capture_output=True, text=True, timeout=60,
        )
        for _ in range(12)
    ]
    assert [(o.returncode, o.stdout.strip()) for o in outcomes] == [(0, "invalid []")] * 12, outcomes[0].stderr
