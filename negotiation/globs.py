"""Glob algebra for the guardrails: containment and overlap of tool globs, judged as globs.

The policy's globs have only ``*`` (any run, dots included) and ``?`` (one character), so
both questions are exact here, for tools no client has listed yet as much as for listed ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from policy import tool_matches

__all__ = ["glob_within", "globs_overlap", "matches_any", "within_any"]


_STAR = object()
_ONE = object()


@lru_cache(maxsize=65536)
def glob_within(pattern: str, envelope: str) -> bool:
    """Whether every tool ``pattern`` can match is matched by ``envelope`` (sound, and exact
    for the ``*``/``?`` globs the policy uses).

    ``pattern``'s wildcards become marker symbols; ``envelope`` must match that symbol
    string as a glob, where its ``*`` may cover any symbols and its ``?`` any single
    character or a ``?`` marker, never a ``*`` marker. Greedy wildcard matching with
    backtracking to the last ``*``: no regular expression, no compile per pair.
    """
    symbols: list[object] = [_STAR if c == "*" else _ONE if c == "?" else c for c in pattern]
    i = j = 0
    star_j, star_i = -1, 0
    while i < len(symbols):
        if j < len(envelope) and envelope[j] == "*":
            star_j, star_i = j, i
            j += 1
        elif j < len(envelope) and (
            (envelope[j] == "?" and symbols[i] is not _STAR) or (envelope[j] not in "*?" and envelope[j] == symbols[i])
        ):
            i += 1
            j += 1
        elif star_j >= 0:
            star_i += 1
            i, j = star_i, star_j + 1
        else:
            return False
    return all(char == "*" for char in envelope[j:])


@lru_cache(maxsize=65536)
def globs_overlap(a: str, b: str) -> bool:
    """Whether some tool name matches both globs (exact: a walk of the product automaton).

    A state is a position in each glob. A ``*`` may match nothing (step past it) or one more
    character (stay); ``?`` matches any one character; a literal only itself. The alphabet is
    unbounded, so two wildcards can always agree on a character.
    """
    start = (0, 0)
    seen = {start}
    stack = [start]
    while stack:
        i, j = stack.pop()
        if i == len(a) and j == len(b):
            return True
        moves: list[tuple[int, int]] = []
        if i < len(a) and a[i] == "*":
            moves.append((i + 1, j))
        if j < len(b) and b[j] == "*":
            moves.append((i, j + 1))
        if i < len(a) and j < len(b):
            ca, cb = a[i], b[j]
            if ca in "*?" or cb in "*?" or ca == cb:
                moves.append((i if ca == "*" else i + 1, j if cb == "*" else j + 1))
        for move in moves:
            if move not in seen:
                seen.add(move)
                stack.append(move)
    return False


def within_any(pattern: str, globs: Iterable[str]) -> bool:
    return any(glob_within(pattern, glob) for glob in globs)


def matches_any(globs: Iterable[str], tool: str) -> bool:
    return any(tool_matches(glob, tool) for glob in globs)
