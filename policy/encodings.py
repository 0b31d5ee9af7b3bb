"""Decoded views of escaped text, each able to map its offsets back to the original.

A secret rarely reaches the gateway as clean text: a service-account JSON pasted into an
argument carries its private key with ``\\n`` escapes, a JSON document nested in a string
doubles them (``\\\\n``), a URL carries ``%0A`` and ``%2B``. The secret scanners match the
*decoded* form, so redaction scans these views too and masks, in the original text, the
whole span that a hit in a view came from.

Decoders, each applied to the text and to every view it produced (up to ``MAX_LAYERS``
deep, at most ``MAX_VIEWS`` views):

* backslash: a run of one or more ``\\`` then ``n`` ``r`` ``t`` ``b`` ``f``, ``uXXXX``,
  ``xXX`` or any other character becomes that one character (``\\"`` -> ``"``); a run of
  backslashes stands for any depth of JSON or string-literal escaping;
* percent: ``%XX`` becomes the character with that code (``%2525`` decodes in two layers);
* form: the percent decoder, with ``+`` as a space too (``application/x-www-form-urlencoded``).

Views are for *finding* secrets only: a lenient decoder can at worst widen a mask.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_LAYERS", "MAX_VIEWS", "View", "decoded_views", "may_be_encoded"]

MAX_LAYERS = 4
MAX_VIEWS = 8

_BACKSLASH = re.compile(r"\\++(?:u([0-9A-Fa-f]{4})|x([0-9A-Fa-f]{2})|([^\\]))", re.DOTALL)
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_FORM = re.compile(r"%([0-9A-Fa-f]{2})|\+")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


@dataclass(frozen=True)
class View:
    """``text`` decoded from ``parent`` (or from the original text when ``parent`` is None).

    Character ``at[k]`` of ``text`` came from the escape ``source[k]`` (a half-open span of
    the parent's text); every other character maps one to one, shifted by the escapes before it.
    """

    text: str
    at: tuple[int, ...]
    source: tuple[tuple[int, int], ...]
    parent: View | None = None

    def _start(self, index: int) -> int:
        k = bisect.bisect_right(self.at, index) - 1
        if k < 0:
            return index
        if self.at[k] == index:
            return self.source[k][0]
        return self.source[k][1] + index - self.at[k] - 1

    def _end(self, index: int) -> int:
        k = bisect.bisect_right(self.at, index) - 1
        if k < 0:
            return index + 1
        if self.at[k] == index:
            return self.source[k][1]
        return self.source[k][1] + index - self.at[k]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that ``text[start:end]`` was decoded from."""
        if end <= start:
            return start, start  # pragma: no cover - hits are never empty
        first, last = self._start(start), self._end(end - 1)
        return self.parent.original_span(first, last) if self.parent is not None else (first, last)


def _unbackslash(match: re.Match[str]) -> str:
    hex4, hex2, char = match.groups()
    if hex4 is not None:
        return chr(int(hex4, 16))
    if hex2 is not None:
        return chr(int(hex2, 16))
    return _SIMPLE.get(char, char)


def _unpercent(match: re.Match[str]) -> str:
    code = match.group(1)
    return " " if code is None else chr(int(code, 16))


_DECODERS: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    ("\\", _BACKSLASH, _unbackslash),
    ("%", _PERCENT, _unpercent),
    ("+", _FORM, _unpercent),
)


def may_be_encoded(text: str) -> bool:
    """False when no decoder can change ``text`` (three ``memchr``)."""
    return "\\" in text or "%" in text or "+" in text


_Decoded = tuple[str, list[int], list[tuple[int, int]]]


def _decode(text: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> _Decoded | None:
    pieces: list[str] = []
    at: list[int] = []
    source: list[tuple[int, int]] = []
    cursor = 0
    length = 0
    for match in pattern.finditer(text):
        start, end = match.span()
        pieces.append(text[cursor:start])
        length += start - cursor
        at.append(length)
        source.append((start, end))
        pieces.append(replace(match))
        length += 1
        cursor = end
    if not at:
        return None
    pieces.append(text[cursor:])
    return "".join(pieces), at, source


def decoded_views(text: str) -> list[View]:
    """Every distinct decoded form of ``text`` (not ``text`` itself), shallowest first."""
    if not may_be_encoded(text):
        return []
    seen = {text}
    views: list[View] = []
    frontier: list[tuple[str, View | None]] = [(text, None)]
    for _ in range(MAX_LAYERS):
        following: list[tuple[str, View | None]] = []
        for current, parent in frontier:
            for trigger, pattern, replace in _DECODERS:
                if trigger not in current:
                    continue
                decoded = _decode(current, pattern, replace)
                if decoded is None or decoded[0] in seen:
                    continue
                view = View(decoded[0], tuple(decoded[1]), tuple(decoded[2]), parent)
                seen.add(view.text)
                views.append(view)
                if len(views) >= MAX_VIEWS:
                    return views
                following.append((view.text, view))
        if not following:
            break
        frontier = following
    return views
