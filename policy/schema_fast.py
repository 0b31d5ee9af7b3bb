"""A fast pre-check for the common, simple subset of JSON Schema.

``jsonschema`` is the authority, but on this hardware it needs ~30 µs for even a three-field
object, the whole per-call budget. Most MCP ``inputSchema`` documents use a handful of
keywords, so :func:`compile_fast` turns such a schema into nested closures that answer one
question: *is this instance certainly valid?*

The contract is one-sided: True implies ``jsonschema`` would also accept the instance (a
property test checks this against ``jsonschema`` on generated schemas and instances);
False means "not certain" and the caller asks ``jsonschema``, which then also produces the
messages. Anything outside the subset, or any value whose treatment differs subtly between
drafts (floats for ``integer``, enum members that are containers), answers False or makes
the whole schema unsupported (None), never True.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["FastCheck", "compile_fast"]

FastCheck = Callable[[Any], bool]

_DIALECTS = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-06/schema",
    }
)
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
    }
)
_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "enum", "const",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
        "pattern", "items", "minItems", "maxItems", "anyOf", "allOf",
    }
)  # fmt: skip


class _Unsupported(Exception):
    pass


def _is_number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "null": lambda value: value is None,
    "boolean": lambda value: type(value) is bool,
    # Floats with integral values are integers in draft 6+; "not certain" is the safe answer.
    "integer": lambda value: type(value) is int,
    "number": lambda value: type(value) is int or type(value) is float,
    "string": lambda value: type(value) is str,
    "array": lambda value: type(value) is list,
    "object": lambda value: type(value) is dict,
}


def _scalar_equal(left: Any, right: Any) -> bool:
    """Equal in a way jsonschema's ``equal`` certainly agrees with (scalars only)."""
    if type(left) is bool or type(right) is bool or left is None or right is None:
        return left is right
    if type(left) is str or type(right) is str:
        return type(left) is str and type(right) is str and left == right
    return _is_number(left) and _is_number(right) and left == right


def _every(checks: list[FastCheck]) -> FastCheck:
    """All of ``checks``, without generator overhead for the usual one to three."""
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)
    if len(checks) == 3:
        first, second, third = checks
        return lambda value: first(value) and second(value) and third(value)
    frozen = tuple(checks)

    def every(value: Any) -> bool:
        for check in frozen:  # noqa: SIM110 - a plain loop: no generator on the hot path
            if not check(value):
                return False
        return True

    return every


_OBJECT_KEYWORDS = ("properties", "required", "additionalProperties")


def _object(schema: Mapping[str, Any]) -> FastCheck:
    """``properties``, ``required`` and ``additionalProperties`` in one pass over the object."""
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    if not isinstance(properties, Mapping) or not all(isinstance(name, str) for name in properties):
        raise _Unsupported
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        raise _Unsupported
    subs = {name: _compile(sub) for name, sub in properties.items()}
    names = tuple(required)
    operand = schema.get("additionalProperties", True)
    closed = operand is False
    extra = None if operand is True or closed else _compile(operand)

    def check(value: Any) -> bool:
        if type(value) is not dict:
            return not isinstance(value, Mapping)  # other mappings: let jsonschema decide
        for name, item in value.items():
            sub = subs.get(name)
            if sub is not None:
                if not sub(item):
                    return False
            elif closed or (extra is not None and not extra(item)):
                return False
        for name in names:  # noqa: SIM110 - a plain loop: no generator on the hot path
            if name not in value:
                return False
        return True

    return check


def _compile(schema: Any) -> FastCheck:
    if schema is True:
        return lambda value: True
    if schema is False or not isinstance(schema, Mapping):
        raise _Unsupported
    checks: list[FastCheck] = []
    for keyword, operand in schema.items():
        if keyword in _ANNOTATIONS or keyword in _OBJECT_KEYWORDS:
            continue
        if keyword not in _KEYWORDS:
            raise _Unsupported
        check = _keyword(keyword, operand, schema)
        # The type test goes first: it is cheap and rejects most invalid values.
        if keyword == "type":
            checks.insert(0, check)
        else:
            checks.append(check)
    if any(keyword in schema for keyword in _OBJECT_KEYWORDS):
        checks.append(_object(schema))
    return _every(checks)


def _keyword(keyword: str, operand: Any, schema: Mapping[str, Any]) -> FastCheck:
    if keyword == "type":
        names = [operand] if isinstance(operand, str) else operand
        if not isinstance(names, list) or not names or not all(name in _TYPE_TESTS for name in names):
            raise _Unsupported
        tests = tuple(_TYPE_TESTS[name] for name in names)
        if len(tests) == 1:
            return tests[0]
        return lambda value: any(test(value) for test in tests)
    if keyword in ("enum", "const"):
        options = operand if keyword == "enum" else [operand]
        if not isinstance(options, list) or not all(
            item is None or type(item) in (bool, str) or _is_number(item) for item in options
        ):
            raise _Unsupported
        members = tuple(options)
        return lambda value: any(_scalar_equal(value, member) for member in members)
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if not _is_number(operand):
            raise _Unsupported
        bound = operand
        compare: Callable[[Any], bool] = {
            "minimum": lambda value: value >= bound,
            "maximum": lambda value: value <= bound,
            "exclusiveMinimum": lambda value: value > bound,
            "exclusiveMaximum": lambda value: value < bound,
        }[keyword]
        return lambda value: (
            compare(value) if _is_number(value) else type(value) in (str, list, dict, bool) or value is None
        )
    if keyword in ("minLength", "maxLength"):
        if not _is_count(operand):
            raise _Unsupported
        limit = operand
        if keyword == "minLength":
            return lambda value: type(value) is not str or len(value) >= limit
        return lambda value: type(value) is not str or len(value) <= limit
    if keyword == "pattern":
        if not isinstance(operand, str):
            raise _Unsupported
        try:
            compiled = re.compile(operand)
        except re.error:
            raise _Unsupported from None
        return lambda value: type(value) is not str or compiled.search(value) is not None
    if keyword == "items":
        if not isinstance(operand, Mapping | bool) or "prefixItems" in schema:
            raise _Unsupported
        item_check = _compile(operand)
        return lambda value: type(value) is not list or all(item_check(item) for item in value)
    if keyword in ("minItems", "maxItems"):
        if not _is_count(operand):
            raise _Unsupported
        size = operand
        if keyword == "minItems":
            return lambda value: type(value) is not list or len(value) >= size
        return lambda value: type(value) is not list or len(value) <= size
    # anyOf / allOf
    if not isinstance(operand, list) or not operand:
        raise _Unsupported
    branches = tuple(_compile(sub) for sub in operand)
    if keyword == "anyOf":
        return lambda value: any(branch(value) for branch in branches)
    return lambda value: all(branch(value) for branch in branches)


def compile_fast(schema: Any) -> FastCheck | None:
    """A certainly-valid check for ``schema``, or None when it uses anything outside the subset."""
    if isinstance(schema, Mapping) and "$schema" in schema:
        if schema["$schema"] not in _DIALECTS:
            return None
        schema = {key: value for key, value in schema.items() if key != "$schema"}
    try:
        return _compile(schema)
    except (_Unsupported, RecursionError, TypeError):
        return None
