"""The fast pre-check never accepts what jsonschema rejects (differential property test)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from policy.schema_fast import compile_fast

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from([0.0, 1.0, 2.0, -1.0]),
    st.text(max_size=4),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), children, max_size=3)
    ),
    max_leaves=8,
)
type_names = st.sampled_from(["null", "boolean", "integer", "number", "string", "array", "object"])


def schemas() -> st.SearchStrategy[Any]:
    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        keyword = st.one_of(
            st.tuples(
                st.just("type"), st.one_of(type_names, st.lists(type_names, min_size=1, max_size=3, unique=True))
            ),
            st.tuples(st.just("properties"), st.dictionaries(st.sampled_from(["a", "b", "c"]), children, max_size=3)),
            st.tuples(st.just("required"), st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)),
            st.tuples(st.just("additionalProperties"), st.one_of(st.booleans(), children)),
            st.tuples(st.just("enum"), st.lists(scalars, min_size=1, max_size=3)),
            st.tuples(st.just("const"), scalars),
            st.tuples(
                st.sampled_from(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]), st.integers(-3, 3)
            ),
            st.tuples(st.sampled_from(["minLength", "maxLength", "minItems", "maxItems"]), st.integers(0, 3)),
            st.tuples(st.just("pattern"), st.sampled_from(["^a", "b$", "[0-9]", "^$"])),
            st.tuples(st.just("items"), children),
            st.tuples(st.sampled_from(["anyOf", "allOf"]), st.lists(children, min_size=1, max_size=2)),
            st.tuples(st.just("description"), st.text(max_size=3)),
        )
        return st.lists(keyword, max_size=4).map(dict)

    return st.recursive(st.just({}), extend, max_leaves=6)


@settings(max_examples=500, deadline=None)
@given(schemas(), json_values)
def test_fast_check_accepts_only_what_jsonschema_accepts(schema: dict[str, Any], instance: Any) -> None:
    Draft202012Validator.check_schema(schema)
    fast = compile_fast(schema)
    if fast is not None and fast(instance):
        assert Draft202012Validator(schema).is_valid(instance), (schema, instance)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_typical_object_schema_is_decided_fast_for_valid_arguments(instance: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 3}, "b": {"type": "integer", "minimum": 0}},
        "required": ["a"],
        "additionalProperties": False,
    }
    fast = compile_fast(schema)
    assert fast is not None
    valid = Draft202012Validator(schema).is_valid(instance)
    if fast(instance):
        assert valid
    elif valid:
        # the only allowed disagreement: integral floats for "integer"
        assert isinstance(instance, dict) and isinstance(instance.get("b"), float)


def test_unsupported_keywords_and_dialects_opt_out() -> None:
    assert compile_fast({"$ref": "#/$defs/x", "$defs": {"x": {}}}) is None
    assert compile_fast({"type": "object", "patternProperties": {"^a": {}}}) is None
    assert compile_fast({"$schema": "http://json-schema.org/draft-04/schema#", "minimum": 1}) is None
    assert compile_fast({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}) is not None
