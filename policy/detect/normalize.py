"""Fold text into the one form the injection rules are written against.

Attackers dodge literal rules with spelling that a model still reads the same way: upper
case, fullwidth and other compatibility forms (``ｉｇｎｏｒｅ``), look-alike letters from
other scripts (Cyrillic ``іgnоrе``), invisible characters inside words (``ig\\u200bnore``),
text spelled in Unicode tag characters, leetspeak (``1gn0r3``) and spaced-out letters
(``i g n o r e``). :func:`fold` undoes all of these:

* ASCII text (the common case) is only lower-cased and leet-translated -- two C loops;
* other text is stripped of invisible characters, NFKC-normalised (fullwidth, ligatures,
  circled and mathematical letters become plain letters) and case-folded;
* a string mixing Latin with Cyrillic or Greek letters gets a second *view* with the
  look-alikes mapped to Latin (pure Russian or Greek text keeps its own letters, so its
  own-language rules still match);
* text hidden in tag characters is decoded into a further view.

Views are joined with :data:`VIEW_SEP` (never matched by any rule), so one search covers
them all. Offsets in the folded text do not map back to the original; findings quote the
folded text.
"""

from __future__ import annotations

import re
import unicodedata

from .runs import SCAN_FROM, Layout, bytes_scanner, text_layout

__all__ = ["INVISIBLE", "VIEW_SEP", "despace", "fold", "fold_ascii", "fold_bytes", "nfkc", "tag_runs"]

VIEW_SEP = "\n\x00\n"
_VIEW_SEP_BYTES = VIEW_SEP.encode("ascii")

# Format and other zero-width characters that render as nothing (Unicode Cf / default
# ignorables), variation selectors and tag characters: removed before matching.
INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
_INVISIBLE_BYTES = re.compile(
    rb"\xc2\xad|\xcd\x8f|\xd8\x9c|\xe1\x85[\x9f\xa0]|\xe1\x9e[\xb4\xb5]|\xe1\xa0[\x8b-\x8f]|\xe2\x80[\x8b-\x8f\xaa-\xae]"
    rb"|\xe2\x81[\xa0-\xaf]|\xe3\x85\xa4|\xef\xb8[\x80-\x8f]|\xef\xbb\xbf|\xef\xbe\xa0|\xf0\x9d\x85[\xb3-\xba]|\xf3\xa0"
)
# Runs of two or more tag characters U+E0020-E007E ("[\U000e0020-\U000e007e]{2,}"), in UTF-8:
# searched in the bytes, where the search skips to each F3 byte, instead of a wide-string
# regex pass that costs ~6 ms per MB of non-ASCII text. The expression starts with a plain
# literal so that the search can skip to it (~0.5 ms per MB; a leading group costs 30x more).
_INVISIBLE_SCAN = bytes_scanner(_INVISIBLE_BYTES)
_TAG_TEXT_BYTES = re.compile(
    rb"\xf3\xa0(?:\x80[\xa0-\xbf]|\x81[\x80-\xbe])(?:\xf3\xa0(?:\x80[\xa0-\xbf]|\x81[\x80-\xbe]))+"
)
# Leetspeak digits and symbols to letters, applied to UTF-8 bytes: str.translate with a
# table is a slow per-character loop for non-ASCII text (~30 ms/MB); ASCII bytes never
# occur inside a multi-byte UTF-8 sequence, so translating the encoded bytes is exact.
# "@" is left alone: it is rarely leetspeak in an attack and always part of an e-mail
# address, which the exfiltration rules must see.
_LEET_BYTES = bytes.maketrans(b"013457$", b"oieasts")
# ASCII lower case and leetspeak in one table (what ``lower()`` then _LEET_BYTES do to ASCII).
_FOLD_ASCII = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ013457$", b"abcdefghijklmnopqrstuvwxyzoieasts")
_CYRILLIC_GREEK = re.compile("[\u0370-\u03ff\u0400-\u04ff]")
_LATIN = re.compile("[a-z]")
_ASCII_LETTER = re.compile(b"[A-Za-z]")
# Look-alikes that a reader takes for Latin letters (after case folding).
_CONFUSABLE_MAP = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ɡ": "g", "ɑ": "a", "ı": "i",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w",
}  # fmt: skip
_CONFUSABLE = re.compile("[" + "".join(_CONFUSABLE_MAP) + "]")
# Four or more single letters each followed by one separator: "i g n o r e", "s.y.s.t.e.m".
_SPACED = re.compile(r"(?<![^\W\d_])(?:[^\W\d_][ .\-_*|/·]){3,}[^\W\d_](?![^\W\d_])")
_SEPARATORS = re.compile(r"[ .\-_*|/·]")


def fold(text: str) -> str:
    """``text`` lower-cased, normalised and de-obfuscated, with any extra views appended."""
    if text.isascii():
        return _leet(text.lower())
    return fold_bytes(text).decode("utf-8", "surrogatepass")


def fold_bytes(text: str, layout: Layout | None = None) -> bytes:
    """:func:`fold` as UTF-8 bytes, what the anchor automaton searches (no decode, no re-encode).

    ``layout`` may pass on the text's :func:`~policy.detect.runs.layout` a caller already has.
    """
    if text.isascii():
        return text.encode("ascii").translate(_FOLD_ASCII)
    layout = layout if layout is not None else text_layout(text)
    if layout.runs is None:
        return _fold_whole(text, layout.data)
    return _fold_runs(layout.data, layout.runs)


def fold_ascii(text: str) -> bytes:
    """:func:`fold_bytes` of an ASCII ``text``: one ``translate`` does case and leetspeak."""
    return text.encode("ascii").translate(_FOLD_ASCII)


def _plain(text: str, data: bytes | None = None) -> str:
    """Invisibles removed, NFKC, case folded: the main view before leetspeak."""
    # Byte searches over the UTF-8 form are several times faster than str searches on
    # non-ASCII text; the prefilter matches a superset of the invisible characters.
    data = text.encode("utf-8", "surrogatepass") if data is None else data
    if (_INVISIBLE_SCAN if len(data) >= SCAN_FROM else _INVISIBLE_BYTES).search(data) is not None:
        text = INVISIBLE.sub("", text)
    if not unicodedata.is_normalized("NFKC", text):  # a quick check; most text already is
        text = nfkc(text)
    return text.casefold()


_NFKC_CHUNK = 2048
_NFKC_SMALL = 128
_ASCII_CHAR = re.compile("[\x00-\x7f]")


def nfkc(text: str, chunk: int = _NFKC_CHUNK) -> str:
    """``unicodedata.normalize("NFKC", text)``, normalising only the pieces that need it.

    Large text that is not normalised usually has a few characters that are (a fullwidth
    comma in Chinese prose), and NFKC of a whole megabyte costs ~40-80 ms. Exact: the text
    is cut only right before an ASCII character, which is a starter that never composes
    with what precedes it and blocks composition across it (no canonical composition has
    an ASCII second character, and reordering stops at a starter), so normalising the
    pieces one by one and joining them is normalising the whole. Pieces that pass the
    quick check (``is_normalized``) are kept as they are; the others are cut smaller once.
    """
    if len(text) <= chunk:
        return unicodedata.normalize("NFKC", text)
    pieces: list[str] = []
    start = 0
    size = len(text)
    search = _ASCII_CHAR.search
    while start < size:
        cut = start + chunk
        if cut >= size:
            cut = size
        else:
            boundary = search(text, cut)
            cut = size if boundary is None else boundary.start()
        piece = text[start:cut]
        if unicodedata.is_normalized("NFKC", piece):
            pieces.append(piece)
        elif chunk > _NFKC_SMALL:  # look closer: the few characters that change are usually far apart
            pieces.append(nfkc(piece, _NFKC_SMALL))
        else:
            pieces.append(unicodedata.normalize("NFKC", piece))
        start = cut
    return "".join(pieces)


def tag_runs(data: bytes) -> list[str]:
    """The runs of two or more tag characters in UTF-8 ``data``, in order."""
    return [run.decode("utf-8") for run in _TAG_TEXT_BYTES.findall(data)]


def _decoded_tags(hidden: list[str]) -> str:
    return "".join(chr(ord(char) - 0xE0000) for run in hidden for char in run).lower()


def _confusable(plain: str) -> str:
    return _CONFUSABLE.sub(lambda match: _CONFUSABLE_MAP[match.group()], plain)


def _fold_whole(text: str, data: bytes) -> bytes:
    """:func:`fold_bytes` of non-ASCII text, one whole-string pass per step. The views are
    kept as UTF-8 bytes, which is what the automaton searches (no decode and re-encode)."""
    hidden = tag_runs(data) if b"\xf3\xa0" in data else []
    plain = _plain(text, data)
    views = [_leet_bytes(plain)]
    if _CYRILLIC_GREEK.search(plain) is not None and _LATIN.search(plain) is not None:
        views.append(_leet_bytes(_confusable(plain)))
    if hidden:
        views.append(_leet_bytes(_decoded_tags(hidden)))
    return views[0] if len(views) == 1 else _VIEW_SEP_BYTES.join(views)


def _fold_runs(data: bytes, runs: list[tuple[int, int]]) -> bytes:
    """:func:`fold_bytes` of mostly-ASCII text: ASCII stretches folded as bytes, runs alone.

    Exact: every step but the view decisions works character by character except NFKC,
    and NFKC never combines across the boundary *before* an ASCII character, so each run
    is folded together with the one ASCII character before it (``e`` + U+0301 is ``é``).
    Leetspeak maps ASCII bytes only, so it applies piece by piece too.
    """
    pieces: list[bytes] = []
    islands: list[tuple[int, str]] = []  # (index in pieces, folded run before leetspeak)
    stretches: list[tuple[int, int]] = []  # the ASCII stretches between runs
    hidden: list[str] = []
    seen: dict[bytes, tuple[str, bytes]] = {}  # island bytes -> (plain, folded bytes)
    cursor = 0
    for start, end in runs:
        lo = start - 1 if start > 0 else 0
        stretches.append((cursor, lo))
        pieces.append(data[cursor:lo].translate(_FOLD_ASCII))
        raw = data[lo:end]
        if b"\xf3\xa0" in raw:
            hidden.extend(tag_runs(data[start:end]))
        known = seen.get(raw)
        if known is None:  # the same few islands recur (`n’t`, `s’`, `—`): each folded once
            plain = _plain(raw.decode("utf-8", "surrogatepass"), raw)
            known = seen[raw] = (plain, plain.encode("utf-8", "surrogatepass").translate(_LEET_BYTES))
        plain = known[0]
        islands.append((len(pieces), plain))
        pieces.append(known[1])
        cursor = end
    stretches.append((cursor, len(data)))
    pieces.append(data[cursor:].translate(_FOLD_ASCII))
    views = [b"".join(pieces)]
    mixed = any(_CYRILLIC_GREEK.search(plain) is not None for _, plain in islands) and (
        any(_LATIN.search(plain) is not None for _, plain in islands)
        or any(_ASCII_LETTER.search(data, lo, hi) is not None for lo, hi in stretches)
    )
    if mixed:
        for index, plain in islands:
            pieces[index] = _confusable(plain).encode("utf-8", "surrogatepass").translate(_LEET_BYTES)
        views.append(b"".join(pieces))
    if hidden:
        views.append(_decoded_tags(hidden).encode("utf-8", "surrogatepass").translate(_LEET_BYTES))
    return views[0] if len(views) == 1 else _VIEW_SEP_BYTES.join(views)


def _leet_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass").translate(_LEET_BYTES)


def _leet(text: str) -> str:
    return text.encode("utf-8", "surrogatepass").translate(_LEET_BYTES).decode("utf-8", "surrogatepass")


def despace(folded: str) -> str:
    """``folded`` with spaced-out letter runs joined (``i g n o r e`` -> ``ignore``).

    Costly on large text (a regex at every position), so the scanner calls it only on
    strings where a spaced-out keyword was seen.
    """
    return _SPACED.sub(lambda match: _SEPARATORS.sub("", match.group()), folded)
