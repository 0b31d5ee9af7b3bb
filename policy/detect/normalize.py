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

__all__ = ["INVISIBLE", "VIEW_SEP", "despace", "fold"]

VIEW_SEP = "\n\x00\n"

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
_TAG_TEXT = re.compile("[\U000e0020-\U000e007e]{2,}")
# Leetspeak digits and symbols to letters, applied to UTF-8 bytes: str.translate with a
# table is a slow per-character loop for non-ASCII text (~30 ms/MB); ASCII bytes never
# occur inside a multi-byte UTF-8 sequence, so translating the encoded bytes is exact.
_LEET_BYTES = bytes.maketrans(b"013457@$", b"oieasts" + b"s")
_CYRILLIC_GREEK = re.compile("[\u0370-\u03ff\u0400-\u04ff]")
_LATIN = re.compile("[a-z]")
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
    # Byte searches over the UTF-8 form are several times faster than str searches on
    # non-ASCII text; both prefilters below match a superset of their characters.
    data = text.encode("utf-8", "surrogatepass")
    hidden = _TAG_TEXT.findall(text) if b"\xf3\xa0" in data else []
    visible = INVISIBLE.sub("", text) if _INVISIBLE_BYTES.search(data) is not None else text
    if not unicodedata.is_normalized("NFKC", visible):  # a quick check; most text already is
        visible = unicodedata.normalize("NFKC", visible)
    plain = visible.casefold()
    views = [_leet(plain)]
    if _CYRILLIC_GREEK.search(plain) is not None and _LATIN.search(plain) is not None:
        views.append(_leet(_CONFUSABLE.sub(lambda match: _CONFUSABLE_MAP[match.group()], plain)))
    if hidden:
        decoded = "".join(chr(ord(char) - 0xE0000) for run in hidden for char in run)
        views.append(_leet(decoded.lower()))
    return views[0] if len(views) == 1 else VIEW_SEP.join(views)


def _leet(text: str) -> str:
    return text.encode("utf-8", "surrogatepass").translate(_LEET_BYTES).decode("utf-8", "surrogatepass")


def despace(folded: str) -> str:
    """``folded`` with spaced-out letter runs joined (``i g n o r e`` -> ``ignore``).

    Costly on large text (a regex at every position), so the scanner calls it only on
    strings where a spaced-out keyword was seen.
    """
    return _SPACED.sub(lambda match: _SEPARATORS.sub("", match.group()), folded)
