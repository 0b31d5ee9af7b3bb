"""Globs, argument lookup, path normalisation and condition predicates."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy import Condition
from policy.match import (
    MISSING,
    ConditionError,
    compile_condition,
    glob_reaches,
    glob_regex,
    json_equal,
    literal_prefix,
    lookup,
    normalize_path,
)


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/srv/docs", "/srv/docs"),
        ("/srv/docs/", "/srv/docs"),
        ("/srv/./docs//a", "/srv/docs/a"),
        ("/srv/docs/../../../../etc", "/etc"),
        ("//srv/docs", "/srv/docs"),
        ("///srv", "/srv"),
        ("/", "/"),
        ("/srv/.hidden/x", "/srv/.hidden/x"),
    ],
)
def test_paths_are_normalised_posix_style_and_never_climb_above_root(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


def test_lookup_follows_dotted_paths_into_objects_and_lists() -> None:
    arguments = {"a": {"b": [10, {"c": "deep"}]}, "x": "s"}
    assert lookup(arguments, ("a", "b", "1", "c")) == "deep"
    assert lookup(arguments, ("a", "b", "0")) == 10
    assert lookup(arguments, ("a", "b", "5")) is MISSING
    assert lookup(arguments, ("x", "y")) is MISSING
    assert lookup(arguments, ("nope",)) is MISSING


def test_json_equality_keeps_booleans_apart_from_numbers() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal(0, False)
    assert json_equal(None, None)
    assert not json_equal("1", 1)
    assert not json_equal([1], [1])  # only scalars compare


def test_glob_translation_and_literal_prefix() -> None:
    assert glob_regex("cal.*") == r"cal\..*"
    assert glob_regex("a**b?") == "a.*b."
    assert literal_prefix("calendar.list_*") == "calendar.list_"
    assert literal_prefix("*.delete") == ""
    assert literal_prefix("exact.name") == "exact.name"


def holds(op: str, value: Any, argument: Any) -> bool:
    return compile_condition(Condition("a", op, value))({"a": argument})


@pytest.mark.parametrize(
    ("op", "value", "argument", "expected"),
    [
        ("under", "/srv", "/srv/x", True),
        ("under", "/srv", "/srvx", False),
        ("under", "/", "/anything", True),
        ("under", "/srv/", "/srv/x", True),
        ("under", "/srv", "/srv/x\x00/../../etc", False),
        ("regex", "a+", "aaa", True),
        ("regex", "a+", "aab", False),
        ("not_regex", "a+", "aab", True),
        ("one_of", ("x", 2), 2.0, True),
        ("min", 3, 3, True),
        ("max", 3, 3.5, False),
        ("max_length", 2, "ab", True),
        ("max_length", 2, [1, 2, 3], False),
        ("max_length", 1, {"k": 1}, True),
        ("equals", "x", "x", True),
        ("equals", None, None, True),
    ],
)
def test_condition_predicates(op: str, value: Any, argument: Any, expected: bool) -> None:
    assert holds(op, value, argument) is expected


@pytest.mark.parametrize(
    ("op", "value", "argument", "message"),
    [
        ("min", 1, "1", "expected a number, got string"),
        ("max", 1, True, "expected a number, got boolean"),
        ("max_length", 1, 5, "expected a string, array or object, got number"),
        ("regex", "a", None, "expected a string, got null"),
        ("one_of", ("x", 1), True, "expected number or string, got boolean"),
        ("one_of", ("shutdown", "reboot"), ["shutdown"], "expected string, got array"),
        ("equals", "x", {"k": "x"}, "expected string, got object"),
        ("equals", None, 0, "expected null, got number"),
        ("under", "/srv", "srv/x", "relative path `srv/x` cannot be checked against a root"),
        ("regex", "(", "x", "invalid regex: RE2 cannot compile it: missing ): ("),
        ("frobnicate", 1, "x", "unknown condition `frobnicate`"),
    ],
)
def test_conditions_that_cannot_be_judged_raise_condition_error(
    op: str, value: Any, argument: Any, message: str
) -> None:
    with pytest.raises(ConditionError) as caught:
        holds(op, value, argument)
    assert str(caught.value) == message


def test_a_missing_argument_makes_any_condition_false_without_error() -> None:
    for op, value in [("under", "/srv"), ("min", 1), ("regex", "a"), ("not_regex", "a"), ("equals", None)]:
        assert compile_condition(Condition("x.y", op, value))({"x": {}}) is False


def test_regex_dot_matches_newlines_so_contains_cannot_be_dodged() -> None:
    assert holds("regex", ".*forbidden.*", "hello\nforbidden")
    assert holds("regex", ".*forbidden.*", "a\r\n\nforbidden\n")
    assert not holds("not_regex", ".*forbidden.*", "x\nforbidden\ny")


def test_nested_quantifiers_run_in_linear_time_on_re2() -> None:
    # a backtracking engine needs ~2^n steps for (a+)+b on n a's; 2^50 would never finish
    assert not holds("regex", "(a+)+b", "a" * 50)
    assert not holds("regex", "(a+)+b", "a" * 200_000 + "c")
    assert holds("regex", "(a+)+b", "a" * 200_000 + "b")


@pytest.mark.parametrize(
    ("pattern", "server", "reaches"),
    [
        ("calendar.*", "calendar", True),
        ("calendar.list_*", "calendar", True),
        ("calendar.list_events", "calendar", True),
        ("cal*", "calendar", True),
        ("*", "files", True),
        ("*.read", "files", True),
        ("ca?endar.*", "calendar", True),
        ("calendar.*", "cal", False),
        ("calendar.*", "calendarx", False),
        ("search.*", "calendar", False),
        ("calendar", "calendar", False),
    ],
)
def test_a_scope_glob_reaches_an_upstream_when_some_tool_of_it_is_inside(
    pattern: str, server: str, reaches: bool
) -> None:
    assert glob_reaches(pattern, f"{server}.") is reaches


# ---- the invariant behind "a deny condition cannot be dodged" (hypothesis) -------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(-5, 5, allow_nan=False),
    st.sampled_from(["a", "x", "/srv/a", "srv", "a\nb"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("ab"), inner, max_size=2)),
    max_leaves=6,
)
_conditions = st.one_of(
    st.tuples(st.just("equals"), _scalars),
    st.tuples(st.just("one_of"), st.lists(_scalars, min_size=1, max_size=3).map(tuple)),
    st.tuples(st.sampled_from(["min", "max"]), st.integers(-5, 5)),
    st.tuples(st.just("max_length"), st.integers(0, 3)),
    st.tuples(st.just("under"), st.sampled_from(["/", "/srv"])),
    st.tuples(st.sampled_from(["regex", "not_regex"]), st.sampled_from([".*a.*", "x", "(a+)+b", "[^\\n]*"])),
)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _judged(op: str, operand: Any) -> set[str]:
    if op == "equals":
        return {_json_type(operand)}
    if op == "one_of":
        return {_json_type(item) for item in operand}
    if op in ("min", "max"):
        return {"number"}
    if op == "max_length":
        return {"string", "array", "object"}
    return {"string"}


@settings(max_examples=400, deadline=None)
@given(_conditions, _values)
def test_a_condition_is_false_only_for_a_value_of_a_type_it_judges(condition: tuple[str, Any], value: Any) -> None:
    """So in a deny rule a value of any other type is a rule error (deny), never a silent pass."""
    op, operand = condition
    try:
        result = holds(op, operand, value)
    except ConditionError:
        return
    if not result:
        assert _json_type(value) in _judged(op, operand), (op, operand, value)
