"""A regular expression that starts with a literal, searched from the literal's rarest character.

CPython's ``re`` finds a literal prefix with a fast substring search, but that search slows
down with every false start on a common first letter: ``eyJ`` costs ~4x more than
``J(?<=eyJ)`` on English text. :class:`LiteralSearch` rotates the search onto the rarest
character and checks the rest of the literal with a look-behind; match offsets are shifted
back by the skipped length, so the hits are exactly those of ``finditer`` over the plain
pattern. Used by :mod:`policy.detect.secrets`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["LiteralSearch"]


# Characters from most to least frequent, roughly, in English prose and source code. Any
# other character (capitals, digits, most punctuation) counts as rarer than all of them.
_FREQUENT = " etaoinsrhldcumfp_-.gwybvkjxqz"


def _rarity(char: str) -> int:
    rank = _FREQUENT.find(char)
    return len(_FREQUENT) if rank < 0 else rank


@dataclass(frozen=True)
class LiteralSearch:
    """A regular expression that starts with ``literal``, searched from its rarest character.

    ``pattern`` matches ``skip`` characters into
    where the plain expression would; ``rare`` are characters of the literal outside
    ``_FREQUENT``, any of which missing from a text rules the literal out.
    """

    pattern: re.Pattern[str]
    skip: int
    rare: tuple[str, ...]
    literal: str

    @classmethod
    def build(cls, source: str) -> LiteralSearch:
        """For ``source``, whose leading letters, digits, ``_`` and ``-`` are literal.

        ``source`` must not be an alternation at its top level.
        """
        literal = re.match(r"[A-Za-z0-9_\-]+", source)
        # A literal character directly followed by a quantifier would be optional.
        if literal is None or re.match(r"[?*+{]", source[literal.end() :]):
            raise ValueError(f"`{source}` does not start with a literal")
        return cls._rotated(literal.group(), literal.group(), source[literal.end() :])

    @classmethod
    def of(cls, literal: str, rest: str = "") -> LiteralSearch:
        """For the plain string ``literal`` followed by the expression ``rest``."""
        return cls._rotated(literal, re.escape(literal), rest)

    @classmethod
    def _rotated(cls, literal: str, escaped: str, rest: str) -> LiteralSearch:
        skip = max(range(len(literal)), key=lambda index: (_rarity(literal[index]), -index))
        head = escaped if skip == 0 else f"{re.escape(literal[skip:])}(?<={escaped})"
        rare = tuple(dict.fromkeys(char for char in literal if _FREQUENT.find(char) < 0))
        return cls(re.compile(head + rest), skip, rare, literal)

    def may_occur(self, text: str) -> bool:
        """False only when the literal cannot occur in ``text`` (one ``memchr`` per rare char)."""
        return all(char in text for char in self.rare)

    def present(self, text: str) -> bool:
        """Whether the expression matches anywhere in ``text``."""
        return self.may_occur(text) and self.pattern.search(text) is not None

    def matches_at(self, text: str, starts: list[int]) -> Iterator[tuple[int, re.Match[str]]]:
        """What :meth:`matches` yields, trying only the literal occurrences at ``starts`` (sorted).

        ``starts`` must include every occurrence of the literal (a superset is fine): every
        match starts at one, so an anchored ``match`` per occurrence finds them all, and
        skipping occurrences inside the previous match keeps ``matches``' non-overlap.
        """
        match_at, skip = self.pattern.match, self.skip
        end = 0
        for start in starts:
            if start < end:
                continue
            match = match_at(text, start + skip)
            if match is not None:
                yield start, match
                end = match.end()

    def matches(self, text: str) -> Iterator[tuple[int, re.Match[str]]]:
        """``(start, match)`` for each match that ``finditer`` over the plain expression finds."""
        if not self.may_occur(text):
            return
        search, skip = self.pattern.search, self.skip
        position = 0
        # Not finditer: a match may start (at its rare character) `skip` characters before
        # the previous one ends, where finditer over the plain expression would not look.
        while (match := search(text, position)) is not None:
            yield match.start() - skip, match
            position = match.end() + skip
