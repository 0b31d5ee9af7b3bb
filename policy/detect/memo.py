"""What the scan found in a large string, remembered by content: each one is scanned once.

A large payload usually crosses the gateway more than once: an echo or edit tool returns
its argument, and an MCP result often carries the same text twice (``content[0].text`` and
``structuredContent``). Scanning a megabyte costs milliseconds; looking it up costs its hash
(computed once per ``str`` object, ~0.5 ms per MB) and, on a hit, one ``memcmp``.

The key is the string itself (exact equality, so no collision can hand one text another's
findings) and the value is the findings without their path, which is the only part of a
finding that depends on where the string was (:func:`policy.detect.scan.scan_value` scans
each string on its own terms; tests/policy/detect/test_memo.py checks that a remembered
scan gives exactly the findings of a fresh one). The memo is bounded in entries and in
total characters held, least recently used first out; only strings of at least
:data:`MEMO_FROM` characters are remembered, so the many small strings of ordinary calls
neither pay for it nor push the large ones out. Nothing here raises.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .finding import Finding

__all__ = ["MEMO_FROM", "ScanMemo"]

MEMO_FROM = 32768
"""Strings at least this long (characters) are scanned on their own and remembered."""


class ScanMemo:
    """A bounded, thread-safe map from a string to its path-free findings."""

    def __init__(self, max_entries: int = 16, max_chars: int = 32 << 20) -> None:
        self._entries: OrderedDict[str, tuple[Finding, ...]] = OrderedDict()
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> tuple[Finding, ...] | None:
        """The findings remembered for ``text`` (paths empty), or None."""
        with self._lock:
            found = self._entries.get(text)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(text)
            self.hits += 1
            return found

    def put(self, text: str, findings: tuple[Finding, ...]) -> None:
        """Remember ``findings`` (paths empty) for ``text``; the oldest entries make room."""
        if len(text) > self._max_chars:
            return
        with self._lock:
            if text in self._entries:
                self._entries.move_to_end(text)
                return
            self._entries[text] = findings
            self._chars += len(text)
            while len(self._entries) > self._max_entries or self._chars > self._max_chars:
                old, _ = self._entries.popitem(last=False)
                self._chars -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0

    def __len__(self) -> int:
        return len(self._entries)
