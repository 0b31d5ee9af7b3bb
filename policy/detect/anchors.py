"""One automaton pass over ASCII text finds the anchors of both the injection rules and the secrets.

Each detector anchors its expressions on literals found by an Aho-Corasick automaton
(:mod:`policy.detect.injection`, :mod:`policy.detect.secrets`); over a large text each
automaton pass costs ~1.5-3.5 ms per MB, so ASCII text is searched once for both sets.

Exact, because of how the two texts relate: the injection rules search the folded text,
which for ASCII is ``text.lower()`` with leetspeak digits and ``$`` mapped to letters
(byte for byte, so offsets are kept), and the secret scanners search ``text.lower()``. No
secret anchor contains a leetspeak character, so every occurrence of one in the
lower-cased text is also in the folded text at the same offset; the folded text may show a
few more (``p4ss``), which the secret scanners, trying an anchored match at each, reject.
The injection hits are reported in the order the injection automaton alone reports them
(by end, longest first): the order at one position depends only on which patterns match
there. tests/policy/detect/test_anchors.py checks both on generated text.
"""

from __future__ import annotations

import ahocorasick_rs

from . import injection, secrets

__all__ = ["SPLIT", "anchor_pass", "joint_hits", "split_hits"]

# Only the ASCII injection anchors (a prefix of injection.ANCHORS, so their indexes are
# kept): the others cannot occur in ASCII text, and without them the DFA is smaller and
# ~25% faster on trigger-dense text.
SPLIT = sum(1 for anchor in injection.ANCHORS if anchor.isascii())
assert all(anchor.isascii() for anchor in (*injection.ANCHORS[:SPLIT], *secrets.ANCHORS))
_AUTOMATON = ahocorasick_rs.BytesAhoCorasick(
    [anchor.encode("ascii") for anchor in (*injection.ANCHORS[:SPLIT], *secrets.ANCHORS)],
    implementation=ahocorasick_rs.Implementation.DFA,
)


def joint_hits(folded: bytes) -> list[tuple[int, int, int]]:
    """Every anchor occurrence of both sets in the folded bytes of an ASCII text: injection
    anchors keep their indexes into :data:`~policy.detect.injection.ANCHORS`, secret
    anchors come after them (index - :data:`SPLIT` into :data:`~policy.detect.secrets.ANCHORS`).
    Empty: neither detector has anything to verify (see :mod:`policy.detect.scan`)."""
    hits: list[tuple[int, int, int]] = _AUTOMATON.find_matches_as_indexes(folded, overlapping=True)
    return hits


def split_hits(hits: list[tuple[int, int, int]]) -> tuple[list[tuple[int, int, int]], list[list[int]] | None]:
    """:func:`joint_hits` as the injection hits and the secret scanners' starts (None when
    no secret anchor occurs, so the scanners need not run)."""
    split = SPLIT
    injections = [hit for hit in hits if hit[0] < split]
    if len(injections) == len(hits):
        return injections, None
    return injections, secrets.scanner_starts([hit for hit in hits if hit[0] >= split], split)


def anchor_pass(folded: bytes) -> tuple[list[tuple[int, int, int]], list[list[int]]]:
    """For the folded bytes of an ASCII text (nothing else): the injection anchor hits
    (:func:`~policy.detect.injection.anchor_hits`) and the secret scanners' starts
    (:func:`~policy.detect.secrets.scanner_starts`)."""
    hits = joint_hits(folded)
    return [hit for hit in hits if hit[0] < SPLIT], secrets.scanner_starts(
        [hit for hit in hits if hit[0] >= SPLIT], SPLIT
    )
