"""What the scan found in a large string, remembered by content: each one is scanned once.

A large payload usually crosses the gateway more than once: an echo or edit tool returns
its argument, and an MCP result often carries the same text twice (``content[0].text`` and
``structuredContent``). Scanning a megabyte costs milliseconds; looking it up costs a compare.

The key is the string itself (exact equality, so no collision can hand one text another's
findings) and the value is the findings without their path, which is the only part of a
finding that depends on where the string was (:func:`policy.detect.scan.scan_value` scans
each string on its own terms; tests/policy/detect/test_memo.py checks that a remembered
scan gives exactly the findings of a fresh one). The strings are not hashed: hashing a
megabyte costs ~0.7 ms, and each copy a JSON decoder makes is a new ``str`` whose hash is
not cached, so an echoed argument would be hashed three times per call. An entry is found
instead by a *fingerprint* (length, first and last characters: ~0.2 us) and confirmed by
``==`` (one ``memcmp``, ~0.05 ms per MB); the memo holds few entries, so a lookup compares
at most that many fingerprints and confirms at most that many strings, whatever the input.

The memo is bounded in entries and in total characters held, least recently used first out;
only strings of at least :data:`MEMO_FROM` characters are remembered, so the many small
strings of ordinary calls neither pay for it nor push the large ones out. Nothing here raises.
"""

from __future__ import annotations

import threading

from .finding import Finding

__all__ = ["MEMO_FROM", "ScanMemo"]

MEMO_FROM = 32768
"""Strings at least this long (characters) are scanned on their own and remembered."""


_EDGE = 64  # characters of each end in a fingerprint


def _fingerprint(text: str) -> tuple[int, str, str]:
    return len(text), text[:_EDGE], text[-_EDGE:]


class ScanMemo:
    """A bounded, thread-safe map from a string to its path-free findings."""

    def __init__(self, max_entries: int = 16, max_chars: int = 32 << 20) -> None:
        # Least recently used first: (fingerprint, text, findings).
        self._entries: list[tuple[tuple[int, str, str], str, tuple[Finding, ...]]] = []
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _find(self, key: tuple[int, str, str], text: str) -> int:
        """The index of ``text``'s entry, or -1 (caller holds the lock)."""
        for index in range(len(self._entries) - 1, -1, -1):
            fingerprint, held, _ = self._entries[index]
            if fingerprint == key and (held is text or held == text):
                return index
        return -1

    def get(self, text: str) -> tuple[Finding, ...] | None:
        """The findings remembered for ``text`` (paths empty), or None."""
        key = _fingerprint(text)
        with self._lock:
            index = self._find(key, text)
            if index < 0:
                self.misses += 1
                return None
            entry = self._entries.pop(index)
            self._entries.append(entry)
            self.hits += 1
            return entry[2]

    def put(self, text: str, findings: tuple[Finding, ...]) -> None:
        """Remember ``findings`` (paths empty) for ``text``; the oldest entries make room."""
        if len(text) > self._max_chars:
            return
        key = _fingerprint(text)
        with self._lock:
            index = self._find(key, text)
            if index >= 0:
                self._entries.append(self._entries.pop(index))
                return
            self._entries.append((key, text, findings))
            self._chars += len(text)
            while len(self._entries) > self._max_entries or self._chars > self._max_chars:
                _, old, _ = self._entries.pop(0)
                self._chars -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0

    def __len__(self) -> int:
        return len(self._entries)
