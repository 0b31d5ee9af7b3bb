"""Where a text's non-ASCII characters are, when there are few of them.

Most large payloads (code, logs, JSON, English documentation) are ASCII but for a handful
of typographic quotes, dashes or emoji, and a single such character sends a whole-string
pass down the slow path of every ``str`` operation (NFKC, case folding, regex search over
a wide string are several times slower than over ASCII). The detectors instead treat such
text as ASCII with a few *runs* of non-ASCII characters, found here by C loops over
the UTF-8 bytes (one `translate`, then `find`), and do the expensive work on the runs only.

:func:`sparse_runs` returns ``None`` when the text is dense with non-ASCII characters:
then per-run work would cost more than the whole-string pass, which callers fall back to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import re2

__all__ = ["MAX_RUN_DENSITY", "SCAN_FROM", "SPARSE_FROM", "Layout", "bytes_scanner", "char_offsets", "sparse_runs",
           "text_layout"]

# Strings at least this long (UTF-8 bytes) are worth looking at run by run.
SPARSE_FROM = 2048

# At most one non-ASCII byte in 128 and one run per 1024 bytes: per-run work costs a few
# microseconds, so beyond that the whole-string path is cheaper.
MAX_RUN_DENSITY = 1024
_MAX_BYTE_DENSITY = 128
_OPTIONS = re2.Options()
_OPTIONS.encoding = re2.Options.Encoding.LATIN1  # match bytes, not UTF-8 characters

SCAN_FROM = 4096
"""Bytes this long and more are searched by RE2 (:func:`bytes_scanner`) rather than ``re``."""


def bytes_scanner(pattern: re.Pattern[bytes]) -> re2._Regexp:
    """``pattern`` (bytes, no look-around) compiled by RE2 over bytes: for one search of a
    whole large text. CPython's ``re`` tries every alternative of an expression that does
    not start with a literal at every byte (~2-3 ms per MB when nothing is found); RE2's
    DFA reads each byte once (~1.3 ms per MB). Below :data:`SCAN_FROM` bytes ``re``'s
    lower fixed cost wins."""
    return re2.compile(pattern.pattern, _OPTIONS)


# Every byte to one of two: ASCII to `a`, any other to 0x80. Runs are then found with
# `bytes.find` (memchr), two calls per run.
_MARKED = bytes(0x61 if byte < 0x80 else 0x80 for byte in range(256))
_ASCII = bytes(range(128))
_CHUNK = 4096


def sparse_runs(data: bytes) -> list[tuple[int, int]] | None:
    """Byte spans of the maximal non-ASCII runs of UTF-8 ``data``, or None when they are many.

    Each span starts and ends on a character boundary (UTF-8 never puts an ASCII byte
    inside a multi-byte character). Only the 4 KB chunks that are not ASCII
    (``bytes.isascii``, a word-at-a-time C loop) are looked at, consecutive ones as one
    segment: a ``translate`` marks each byte ASCII or not, and each run is two ``find``
    calls on the marked copy (a run starts at the next mark and ends at the next ASCII
    byte, or at the segment's end, where an ASCII chunk follows). RE2's ``finditer``
    cost ~8 µs per run in its Python wrapper (2 ms per MB of package documentation);
    this costs ~0.7 ms.
    """
    size = len(data)
    # Dense text is told first, by deleting the ASCII bytes (the copy is small for the
    # sparse text that goes on).
    if len(data.translate(None, _ASCII)) * _MAX_BYTE_DENSITY > size:
        return None
    limit = size // MAX_RUN_DENSITY + 1
    runs: list[tuple[int, int]] = []
    dirty = [chunk for chunk in range(0, size, _CHUNK) if not data[chunk : chunk + _CHUNK].isascii()]
    index = 0
    while index < len(dirty):
        first = last = dirty[index]
        index += 1
        while index < len(dirty) and dirty[index] == last + _CHUNK:
            last = dirty[index]
            index += 1
        base = first
        marked = data[first : last + _CHUNK].translate(_MARKED)
        find, end_of = marked.find, len(marked)
        start = find(0x80)
        while start >= 0:
            end = find(0x61, start)
            if end < 0:
                end = end_of
            runs.append((base + start, base + end))
            if len(runs) > limit:
                return None
            start = find(0x80, end)
    return runs


@dataclass(frozen=True, slots=True)
class Layout:
    """A non-ASCII text's UTF-8 form, and its non-ASCII runs when they are few (else None)."""

    data: bytes
    runs: list[tuple[int, int]] | None


def text_layout(text: str, data: bytes | None = None) -> Layout:
    """The :class:`Layout` of ``text`` (``data``: its UTF-8 form, when the caller has it);
    runs are looked for in long texts only."""
    if data is None:
        data = text.encode("utf-8", "surrogatepass")
    return Layout(data, sparse_runs(data) if len(data) >= SPARSE_FROM else None)


def char_offsets(data: bytes, offsets: list[int]) -> dict[int, int]:
    """Character offset of each byte offset (sorted, on character boundaries) of UTF-8 ``data``."""
    chars: dict[int, int] = {}
    position = previous = 0
    for offset in offsets:
        position += len(data[previous:offset].decode("utf-8", "surrogatepass"))
        chars[offset] = position
        previous = offset
    return chars
