"""Hidden-Unicode smuggling, told apart from the legitimate uses of the same characters.

Invisible characters carry text a person cannot see but a model reads: instructions
spelled in tag characters (U+E0000 block), bytes encoded as runs of variation selectors,
zero-width "binary" between letters, bidi overrides that make code or text display in a
different order than it is read (Trojan Source). Every one of them also has a legitimate
use, and flagging those would make the detector useless on real multilingual text:

=================  ============================================  ==========================
character          legitimate where                              flagged (``kind``)
=================  ============================================  ==========================
tag characters     an emoji flag subdivision: U+1F3F4, tag         anything else
                   letters/digits, U+E007F (England's flag)        (``tag_character``)
variation sel.     one after a base character (❤️, 1️⃣, 葛󠄀)          a run of two or more,
                                                                 VS17+ after a non-ideograph
                                                                 (``variation_selector``)
ZWJ U+200D         between emoji (👩‍💻) or in Arabic / Indic        elsewhere (``zero_width``)
ZWNJ U+200C        in Arabic-script (Persian) / Indic words        elsewhere
ZWSP U+200B        in Thai, Lao, Khmer, Myanmar, Tibetan text      elsewhere
LRM/RLM/ALM        anywhere (numbers in RTL text)                  never alone
bidi embed/        --                                              always: LRE RLE PDF LRO
override                                                           RLO (``bidi_control``)
bidi isolates      balanced, in text with RTL letters              unbalanced, or no RTL text
word joiner,       --                                              always (``zero_width``)
invisible ops,
BOM inside text
=================  ============================================  ==========================

A run of three or more zero-width characters is flagged whatever surrounds it: no
script needs that, and it is how zero-width steganography encodes bits.

:func:`hidden_spans` is called only for non-ASCII text; :func:`strip_hidden` removes the
flagged characters (and only those) so a result can be passed on without its payload.
"""

from __future__ import annotations

import re
import unicodedata

from .runs import SCAN_FROM, Layout, bytes_scanner, char_offsets, text_layout

__all__ = ["CANDIDATES", "hidden_spans", "may_hide", "strip_hidden"]

CANDIDATES = re.compile(
    "[\u180e\u200b-\u200d\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufe00-\ufe0f"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
# CANDIDATES in UTF-8: U+180E, U+200B-200D, U+202A-202E, U+2060-2064, U+2066-2069, U+FEFF,
# U+FE00-FE0F, U+E0000-E007F, U+E0100-E01EF.
_CANDIDATE_BYTES = re.compile(
    rb"\xe1\xa0\x8e|\xe2\x80[\x8b-\x8d\xaa-\xae]|\xe2\x81[\xa0-\xa4\xa6-\xa9]|\xef\xbb\xbf|\xef\xb8[\x80-\x8f]"
    rb"|\xf3\xa0[\x80\x81\x84-\x87]"
)
_CANDIDATE_SCAN = bytes_scanner(_CANDIDATE_BYTES)


def _candidate_search(data: bytes) -> object:
    return (_CANDIDATE_SCAN if len(data) >= SCAN_FROM else _CANDIDATE_BYTES).search(data)


def may_hide(data: bytes) -> bool:
    """Whether the UTF-8 ``data`` holds any :data:`CANDIDATES` character. False implies that
    :func:`hidden_spans` of its text finds nothing: every span it reports is a candidate."""
    return _candidate_search(data) is not None


_ZERO_WIDTH_CHARS = frozenset("\u200b\u200c\u200d\u2060\ufeff\u180e")
_RTL = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")
_JOINING_SCRIPTS = re.compile(
    "[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff\u0900-\u0dff\u0f00-\u0fff\u1000-\u109f]"
)
_SPACE_FREE_SCRIPTS = re.compile("[\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u1950-\u19df]")
_ISOLATES = {"\u2066": 1, "\u2067": 1, "\u2068": 1, "\u2069": -1}
_BLACK_FLAG = "\U0001f3f4"
_CANCEL_TAG = "\U000e007f"


def _is_emoji(char: str) -> bool:
    code = ord(char)
    return (
        0x1F000 <= code <= 0x1FAFF
        or 0x2600 <= code <= 0x27BF
        or 0x2300 <= code <= 0x23FF
        or 0x2B00 <= code <= 0x2BFF
        or char in "\u00a9\u00ae\u203c\u2049\u2122\u2139\u3030\u303d\u20e3"
        or 0xFE00 <= code <= 0xFE0F  # VS16 after the emoji before the joiner
    )


def _ideograph(char: str) -> bool:
    return unicodedata.name(char, "").startswith("CJK")


def _flag_tags(text: str) -> list[tuple[int, int]]:
    """Spans of tag characters that belong to emoji flag subdivision sequences."""
    spans: list[tuple[int, int]] = []
    start = text.find(_BLACK_FLAG)
    while start >= 0:
        end = start + 1
        while end < len(text) and "\U000e0030" <= text[end] <= "\U000e007a":
            end += 1
        if 1 < end - start <= 7 and end < len(text) and text[end] == _CANCEL_TAG:
            spans.append((start + 1, end + 1))
        start = text.find(_BLACK_FLAG, end)
    return spans


def _runs(positions: list[tuple[int, str]]) -> set[int]:
    """Indexes inside runs of 3+ zero-width characters or 2+ variation selectors."""
    inside: set[int] = set()
    group: list[int] = []
    family = ""
    for index, char in [*positions, (-2, "")]:
        kind = "vs" if ("\ufe00" <= char <= "\ufe0f" or char >= "\U000e0100") else (
            "zw" if char in _ZERO_WIDTH_CHARS else ""
        )
        if group and kind == family and index == group[-1] + 1:
            group.append(index)
            continue
        if family and len(group) >= (2 if family == "vs" else 3):
            inside.update(group)
        group, family = ([index], kind) if kind else ([], "")
    return inside


def _candidates(text: str, layout: Layout) -> list[tuple[int, str]]:
    """``(offset, character)`` of every CANDIDATES character; in mostly-ASCII text only its
    non-ASCII runs are searched (a wide-string regex pass costs ~6 ms per MB)."""
    data, runs = layout.data, layout.runs
    if runs is None:
        return [(match.start(), match.group()) for match in CANDIDATES.finditer(text)]
    runs = [(start, end) for start, end in runs if _CANDIDATE_BYTES.search(data, start, end) is not None]
    bases = char_offsets(data, [start for start, _ in runs])
    positions: list[tuple[int, str]] = []
    for start, end in runs:
        base = bases[start]
        island = data[start:end].decode("utf-8", "surrogatepass")
        positions.extend((base + match.start(), match.group()) for match in CANDIDATES.finditer(island))
    return positions


def hidden_spans(text: str, layout: Layout | None = None) -> list[tuple[str, int, int]]:
    """``(kind, start, end)`` of every smuggling character (or run) in ``text``, by position.

    ``layout`` may pass on the text's :class:`~policy.detect.runs.Layout` a caller has.
    """
    if layout is None:
        data = text.encode("utf-8", "surrogatepass")
        if _candidate_search(data) is None:
            return []  # a bytes search is several times faster than a str one on non-ASCII text
        layout = text_layout(text, data)
    elif layout.runs is None and _candidate_search(layout.data) is None:
        return []
    # With sparse runs every candidate is inside one: _candidates searches the runs only.
    positions = _candidates(text, layout)
    if not positions:
        return []
    found: list[tuple[str, int, int]] = []
    flags = _flag_tags(text) if _BLACK_FLAG in text else []
    in_flag = {index for lo, hi in flags for index in range(lo, hi)}
    runs = _runs(positions)
    rtl = any(char in _ISOLATES for _, char in positions) and _RTL.search(text) is not None
    depth = 0
    isolate_at: list[int] = []
    for index, char in positions:
        before = text[index - 1] if index > 0 else ""
        after = text[index + 1] if index + 1 < len(text) else ""
        kind: str | None = None
        if "\U000e0000" <= char <= "\U000e007f":
            kind = None if index in in_flag else "tag_character"
        elif "\ufe00" <= char <= "\ufe0f" or char >= "\U000e0100":
            vs17_alone = char >= "\U000e0100" and not (before and _ideograph(before))
            if index in runs or vs17_alone or not before or before.isspace():
                kind = "variation_selector"
        elif char in "\u202a\u202b\u202c\u202d\u202e":
            kind = "bidi_control"
        elif char in _ISOLATES:
            depth += _ISOLATES[char]
            isolate_at.append(index)
            if not rtl or depth < 0:
                kind = "bidi_control"
        elif index in runs:
            kind = "zero_width"
        elif char == "\u200d":
            emoji = bool(before) and bool(after) and (_is_emoji(before) or before in "\U0001f3fb\U0001f3fc")
            joining = bool(_JOINING_SCRIPTS.match(before) or _JOINING_SCRIPTS.match(after))
            kind = None if (emoji and _is_emoji(after)) or joining else "zero_width"
        elif char == "\u200c":
            kind = None if _JOINING_SCRIPTS.match(before) or _JOINING_SCRIPTS.match(after) else "zero_width"
        elif char == "\u200b":
            spaced = _SPACE_FREE_SCRIPTS.match(before) or _SPACE_FREE_SCRIPTS.match(after)
            kind = None if spaced else "zero_width"
        elif char == "\ufeff" and index == 0:
            kind = None  # a byte-order mark at the start of a file
        else:
            kind = "zero_width"  # word joiner, invisible operators, BOM inside text, MVS
        if kind is not None:
            found.append((kind, index, index + 1))
    if rtl and depth > 0:  # unclosed isolates in RTL text: flag where they were opened
        found.extend(("bidi_control", at, at + 1) for at in isolate_at if text[at] != "\u2069")
        found.sort(key=lambda item: item[1])
    return found


def strip_hidden(text: str) -> str:
    """``text`` without its smuggling characters; legitimate uses are kept."""
    spans = hidden_spans(text) if not text.isascii() else []
    if not spans:
        return text
    drop = {start for _, start, _ in spans}
    return "".join(char for index, char in enumerate(text) if index not in drop)
