"""Tool globs and argument conditions, compiled once into fast predicates.

Globs: ``*`` matches any run of characters *including dots* (so ``calendar.*`` covers
``calendar.events.list``), ``**`` means the same as ``*``, ``?`` matches one character, and
everything else is literal and case-sensitive. There are no character classes.

A compiled condition is a predicate over the call's arguments. It returns False when the
condition does not hold or its argument is absent, and raises :class:`ConditionError` when
the argument has a type the condition cannot judge (for a deny rule the engine then denies
conservatively). Every operator judges exactly one family of JSON types; a present value of
any other type is a :class:`ConditionError`, never "does not match", so a deny condition
cannot be dodged by sending ``["shutdown"]`` where ``"shutdown"`` is checked:

* ``equals`` / ``one_of``: the JSON type of the operand(s) (number covers int and float;
  ``true`` is not ``1``); ``null`` compares only with ``null``;
* ``min`` / ``max``: numbers; ``max_length``: strings, arrays, objects;
* ``under``, ``regex``, ``not_regex``: strings.

Regular expressions run on Google RE2 (linear time in the input, no backtracking, no
look-around or back-references), with ``.`` matching newlines, and must match the *whole*
value (``fullmatch``): ``.*forbidden.*`` is a "contains" check that a newline cannot dodge.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import re2

if TYPE_CHECKING:
    from .model import Condition

__all__ = [
    "MISSING",
    "ConditionCheck",
    "ConditionError",
    "compile_condition",
    "compile_globs",
    "compile_regex",
    "glob_reaches",
    "glob_regex",
    "json_equal",
    "literal_prefix",
    "lookup",
    "normalize_path",
    "tool_matches",
]

WILDCARDS = frozenset("*?")


class ConditionError(Exception):
    """A condition could not be judged (argument of the wrong type, uncompilable pattern)."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

ConditionCheck = Callable[[Mapping[str, Any]], bool]


def glob_regex(pattern: str) -> str:
    """The regular expression (for ``fullmatch``) equivalent to a tool glob."""
    out: list[str] = []
    for char in pattern:
        if char == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "".join(out)


def compile_globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regex matching any of ``patterns`` (None when there are none)."""
    if not patterns:
        return None
    return re.compile("(?s:" + "|".join(f"(?:{glob_regex(p)})" for p in patterns) + ")")


@lru_cache(maxsize=1024)
def _compiled_glob(pattern: str) -> re.Pattern[str]:
    return re.compile(f"(?s:{glob_regex(pattern)})")


def tool_matches(pattern: str, qualified_tool: str) -> bool:
    """Whether the glob ``pattern`` matches ``qualified_tool`` (``<server>.<tool>``) entirely."""
    return _compiled_glob(pattern).fullmatch(qualified_tool) is not None


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard (the whole glob when it has none)."""
    for index, char in enumerate(pattern):
        if char in WILDCARDS:
            return pattern[:index]
    return pattern


def lookup(arguments: Any, segments: tuple[str, ...]) -> Any:
    """The value at a dotted path (pre-split), or MISSING; digit segments index lists."""
    current = arguments
    for segment in segments:
        if isinstance(current, Mapping):
            if segment not in current:
                return MISSING
            current = current[segment]
        elif isinstance(current, list) and segment.isdigit():
            index = int(segment)
            if index >= len(current):
                return MISSING
            current = current[index]
        else:
            return MISSING
    return current


def normalize_path(path: str) -> str:
    """POSIX normalisation where ``..`` cannot climb above ``/`` and ``//x`` means ``/x``."""
    if (
        path.startswith("/")
        and "//" not in path
        and "/." not in path
        and (len(path) == 1 or not path.endswith("/"))
    ):
        return path  # already normal: no empty, "." or ".." segment, no trailing slash
    normalized = posixpath.normpath(path)
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    return normalized


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_equal(left: Any, right: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, ``1`` is ``1.0``, only scalars compare."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return left is None and right is None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _wrong_type(expected: str, value: Any) -> ConditionError:
    return ConditionError(f"expected {expected}, got {_type_name(value)}")


def _predicate(op: str, operand: Any) -> Callable[[Any], bool]:
    """The test for one present argument value."""
    if op in ("equals", "one_of"):
        options = tuple(operand) if op == "one_of" else (operand,)
        if not options:
            raise ConditionError("`one_of` needs at least one value")
        judged = frozenset(_type_name(option) for option in options)
        expected = " or ".join(sorted(judged))

        def same(value: Any) -> bool:
            if _type_name(value) not in judged:
                raise _wrong_type(expected, value)
            return any(json_equal(value, option) for option in options)

        return same
    if op in ("min", "max"):
        if not _is_number(operand) or math.isnan(operand):
            raise ConditionError(f"`{op}` needs a number")
        bound = operand

        def in_range(value: Any) -> bool:
            if not _is_number(value):
                raise _wrong_type("a number", value)
            return bool(value >= bound) if op == "min" else bool(value <= bound)

        return in_range
    if op == "max_length":
        limit = operand

        def short_enough(value: Any) -> bool:
            if not isinstance(value, str | list | tuple | Mapping):
                raise _wrong_type("a string, array or object", value)
            return len(value) <= limit

        return short_enough
    if op == "under":
        if not isinstance(operand, str) or not operand.startswith("/"):
            raise ConditionError("`under` needs an absolute root")
        root = normalize_path(operand)
        prefix = root if root.endswith("/") else root + "/"

        def inside(value: Any) -> bool:
            if not isinstance(value, str):
                raise _wrong_type("a path string", value)
            if "\x00" in value:
                return False
            if not value.startswith("/"):
                raise ConditionError(f"relative path `{value[:80]}` cannot be checked against a root")
            path = normalize_path(value)
            return path == root or path.startswith(prefix)

        return inside
    if op in ("regex", "not_regex"):
        compiled = compile_regex(operand)
        want = op == "regex"

        def full_match(value: Any) -> bool:
            if not isinstance(value, str):
                raise _wrong_type("a string", value)
            return (compiled.fullmatch(value) is not None) is want

        return full_match
    raise ConditionError(f"unknown condition `{op}`")


def _regex_options() -> Any:
    options = re2.Options()
    options.dot_nl = True  # `.` matches newlines: a "contains" check cannot be dodged with one
    options.log_errors = False
    return options


_RE2_OPTIONS = _regex_options()


def compile_regex(pattern: Any) -> Any:
    """A policy pattern compiled by RE2 (``.`` matches newlines); ConditionError when RE2 refuses it."""
    if not isinstance(pattern, str):
        raise ConditionError(f"a regular expression must be a string, got {_type_name(pattern)}")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ConditionError(f"invalid regex: RE2 cannot compile it: {detail}") from None
    except (TypeError, ValueError) as exc:
        raise ConditionError(f"invalid regex: RE2 cannot compile it: {exc}") from None


def glob_reaches(pattern: str, prefix: str) -> bool:
    """Whether the glob ``pattern`` fully matches some string that starts with ``prefix``.

    Used to ask whether a key scope such as ``cal*`` or ``calendar.list_*`` reaches the
    upstream ``calendar`` (some ``calendar.<name>`` lies inside it). Runs the glob as a set
    of positions over ``prefix``; whatever part of the glob is left can always be completed.
    """
    states = {0}

    def close(found: set[int]) -> set[int]:
        out = set(found)
        stack = list(found)
        while stack:
            position = stack.pop()
            if position < len(pattern) and pattern[position] == "*" and position + 1 not in out:
                out.add(position + 1)
                stack.append(position + 1)
        return out

    states = close(states)
    for char in prefix:
        following: set[int] = set()
        for position in states:
            if position >= len(pattern):
                continue
            token = pattern[position]
            if token == "*":
                following.add(position)
            elif token == "?" or token == char:
                following.add(position + 1)
        states = close(following)
        if not states:
            return False
    return True


def compile_condition(condition: Condition) -> ConditionCheck:
    """A predicate over the arguments; uncompilable conditions raise whenever checked."""
    segments = tuple(condition.arg.split("."))
    try:
        test = _predicate(condition.op, condition.value)
    except ConditionError as exc:
        failure = str(exc)

        def broken(arguments: Mapping[str, Any]) -> bool:
            raise ConditionError(failure)

        return broken

    if len(segments) == 1:
        key = segments[0]

        def check_top(arguments: Mapping[str, Any]) -> bool:
            value = arguments.get(key, MISSING)
            return value is not MISSING and test(value)

        return check_top

    def check(arguments: Mapping[str, Any]) -> bool:
        value = lookup(arguments, segments)
        return value is not MISSING and test(value)

    return check
