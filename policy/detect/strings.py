"""The strings of a JSON value, in document order: what the detectors scan.

Two walks with one answer:

* :func:`value_strings` -- the paths and texts of every non-empty string of *any* value
  (dicts and other mappings, lists and tuples, ``str`` subclasses), the mappings' string keys
  included (each right before its value: an upstream can hide text in a key of
  ``structuredContent`` as well as in a value), iterative so arbitrarily
  deep input cannot exhaust the stack, and each container walked once (a shared or cyclic
  reference is not followed again);
* :func:`plain_texts` -- the texts alone, for the *plain* JSON values that every call and
  result is (exact ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``, nested
  at most :data:`PLAIN_DEPTH` deep); for anything else it answers ``None`` and the caller
  takes the general walk. It skips what the scan of an ordinary payload never needs -- a
  path per string and per container, ``isinstance`` checks against ABCs, a stack entry per
  item -- and costs a fifth of :func:`value_strings` on a small tool result.

INVARIANT (tests/policy/detect/test_strings.py): for every value ``v`` and path ``p``,
``plain_texts(v)`` is ``None`` or equals ``value_strings(v, p)[1]``. So the scan may look
at the texts first and build the paths only for a string that has a finding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["KEY_MARK", "PLAIN_DEPTH", "plain_texts", "value_strings"]

_SCALARS = (int, float, bool, type(None))

KEY_MARK = "#key"
"""Appended to a mapping key's path: the finding is in the key, not in the value under it."""

PLAIN_DEPTH = 64
"""Containers nested deeper than this are left to :func:`value_strings` (a recursion that
deep is rare in JSON, and the general walk needs no stack)."""


def value_strings(value: Any, path: str = "") -> tuple[list[str], list[str]]:
    """Paths and texts of every non-empty string in ``value``, in document order (iterative).

    Paths look like ``arguments.query`` or ``content[0].text``; a mapping's key is a string too,
    at ``<its value's path>#key`` (``arguments.query#key``), right before its value.
    """
    paths: list[str] = []
    texts: list[str] = []
    if type(value) is dict:  # the usual arguments object: flat, strings and numbers
        prefix = f"{path}." if path else ""
        for key, item in value.items():
            if type(key) is str and key:
                paths.append(f"{prefix}{key}{KEY_MARK}")
                texts.append(key)
            kind = type(item)
            if kind is str:
                if item:
                    paths.append(f"{prefix}{key}")
                    texts.append(item)
            elif kind not in _SCALARS:
                paths.clear()
                texts.clear()
                break  # nested: walk it in document order below
        else:
            return paths, texts
    stack: list[tuple[Any, str]] = [(value, path)]
    seen: set[int] = set()
    while stack:
        current, where = stack.pop()
        kind = type(current)
        if kind is str:
            if current:
                paths.append(where)
                texts.append(current)
        elif kind in _SCALARS:
            continue
        elif isinstance(current, str):
            if current:
                paths.append(where)
                texts.append(str(current))
        elif isinstance(current, Mapping):
            if id(current) in seen:
                continue
            seen.add(id(current))
            prefix = f"{where}." if where else ""
            entries: list[tuple[Any, str]] = []
            for key, item in current.items():
                if isinstance(key, str) and key:  # a key is scanned before its value
                    entries.append((str(key), f"{prefix}{key}{KEY_MARK}"))
                entries.append((item, f"{prefix}{key}"))
            entries.reverse()
            stack.extend(entries)
        elif isinstance(current, list | tuple):
            if id(current) in seen:
                continue
            seen.add(id(current))
            stack.extend([(current[index], f"{where}[{index}]") for index in range(len(current) - 1, -1, -1)])
    return paths, texts


def plain_texts(value: Any) -> list[str] | None:
    """The texts of :func:`value_strings` for a plain JSON value; ``None`` for any other.

    ``None`` also when a container occurs twice (the general walk follows it once) or nesting
    passes :data:`PLAIN_DEPTH`: the fast walk never guesses, it hands such values over.
    """
    kind = type(value)
    out: list[str] = []
    if kind is str:
        if value:
            out.append(value)
        return out
    if kind is dict:
        return out if _mapping(value, out, None, 0) else None
    if kind is list:
        return out if _items(value, out, None, 0) else None
    if kind is int or kind is float or kind is bool or value is None:
        return out
    return None


# The two loops differ only in what they iterate (keys and values, or items); each is written out
# because a shared helper per item would cost a call per string. ``seen`` holds the ids of
# the containers met so far, made at the first level that has a nested one and passed down.


def _mapping(value: dict[Any, Any], out: list[str], seen: set[int] | None, depth: int) -> bool:
    for key, item in value.items():
        if type(key) is not str:
            return False  # not JSON: the general walk decides what such a key is
        if key:
            out.append(key)
        kind = type(item)
        if kind is str:
            if item:
                out.append(item)
        elif kind is int or kind is bool or item is None or kind is float:
            continue
        elif kind is dict or kind is list:
            if seen is None:  # the first nested container: a flat value needs no set
                seen = {id(value)}
            key = id(item)
            if key in seen or depth == PLAIN_DEPTH:
                return False
            seen.add(key)
            if not (_mapping if kind is dict else _items)(item, out, seen, depth + 1):
                return False
        else:
            return False
    return True


def _items(value: list[Any], out: list[str], seen: set[int] | None, depth: int) -> bool:
    for item in value:
        kind = type(item)
        if kind is str:
            if item:
                out.append(item)
        elif kind is int or kind is bool or item is None or kind is float:
            continue
        elif kind is dict or kind is list:
            if seen is None:  # the first nested container: a flat value needs no set
                seen = {id(value)}
            key = id(item)
            if key in seen or depth == PLAIN_DEPTH:
                return False
            seen.add(key)
            if not (_mapping if kind is dict else _items)(item, out, seen, depth + 1):
                return False
        else:
            return False
    return True
