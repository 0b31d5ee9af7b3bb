"""Suspicious patterns in strings: prompt-injection phrasing, hidden Unicode, secrets.

:func:`scan_value` walks any JSON value (a call's arguments, a tool's result) and returns
:class:`Finding` values; the engine turns them into risk factors. It is on the hot path of
every call and of every result, so the common case is cheap:

* hidden characters are all non-ASCII, so ``str.isascii()`` (a C loop) skips that check for
  most strings; otherwise a single character-class search finds whether any is present;
* each injection pattern is split into branches that each start with a literal, and each
  branch is searched over the lower-cased text from the literal's rarest letter (see
  :class:`policy.secrets.LiteralSearch`), so CPython's fast literal-prefix search does the
  work instead of trying a leading alternation at every position;
* secrets come from :mod:`policy.secrets`, whose patterns are searched the same way, over
  the same lower-cased text;
* all strings of one value are joined and each detector makes one pass over the joined
  text, so the fixed cost of a pass is paid once per value, not once per string.

One finding is reported per (code, kind) per string, at its first occurrence. Excerpts are
short, show hidden characters as ``\\uXXXX`` escapes and never contain a secret.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .secrets import LiteralSearch, SecretHit, find_secrets

__all__ = ["Finding", "describe_findings", "scan_text", "scan_value"]

MAX_FINDINGS = 200
_CONTEXT = 24
_MAX_EXCERPT = 120


@dataclass(frozen=True, slots=True)
class Finding:
    """Something suspicious at ``path``; ``code`` is prompt_injection, hidden_unicode or secret."""

    code: str
    kind: str
    path: str
    excerpt: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "kind": self.kind, "path": self.path, "excerpt": self.excerpt}


@dataclass(frozen=True, slots=True)
class _Phrase:
    kind: str
    # The branches of ``lowered``, each starting with a literal anchor no other branch starts
    # with, so the leftmost branch match is the match of ``lowered``. CPython runs a leading
    # alternation at every position (~10 ms/MB); each branch alone is a fast literal search.
    branches: tuple[LiteralSearch, ...]
    words: tuple[str, ...]  # one of them occurs in text.lower() when the phrase matches
    anchors: tuple[LiteralSearch, ...]  # the words, searched from their rarest letter
    lowered: re.Pattern[str]  # runs over text.lower()
    fallback: re.Pattern[str]  # runs case-insensitively when lower() changes offsets

    def anchored(self, lowered: str) -> bool:
        return any(anchor.present(lowered) for anchor in self.anchors)


def _phrase(kind: str, words: tuple[str, ...], branches: tuple[tuple[str, str], ...], pattern: str) -> _Phrase:
    return _Phrase(
        kind,
        tuple(LiteralSearch.of(literal, rest) for literal, rest in branches),
        words,
        tuple(LiteralSearch.of(word) for word in words),
        re.compile(pattern),
        re.compile(pattern, re.IGNORECASE),
    )


_PREVIOUS = (
    r"(?:all\s+|any\s+|the\s+|your\s+|of\s+)*"
    r"(?:previous|prior|above|earlier|preceding|former|foregoing|system)"
)
_DIRECTIVES = (
    r"(?:instructions?|prompts?|directions?|directives?|rules|guidelines|messages?|context|commands?)"
)
_IGNORE_VERBS = ("ignore", "disregard", "forget", "override", "bypass")
_SYSTEM_NOUNS = r"\s*(?:prompt|message|instructions)"
_YOU_ARE = r"(?:\s+are|\s*'re|\s*’re)\s+now\b"
_CHAT_TOKENS = r"(?:im_start|im_end|system|endoftext|start_header_id)\|>"
_PHRASES: tuple[_Phrase, ...] = (
    _phrase(
        "ignore_previous_instructions",
        _IGNORE_VERBS,
        tuple((verb, rf"\s+{_PREVIOUS}\s+{_DIRECTIVES}") for verb in _IGNORE_VERBS),
        rf"(?:{'|'.join(_IGNORE_VERBS)})\s+{_PREVIOUS}\s+{_DIRECTIVES}",
    ),
    _phrase("you_are_now", ("now",), (("you", _YOU_ARE),), f"you{_YOU_ARE}"),
    _phrase(
        "system_prompt",
        ("system", "developer"),
        (("system", _SYSTEM_NOUNS), ("developer", _SYSTEM_NOUNS)),
        rf"(?:system|developer){_SYSTEM_NOUNS}",
    ),
    _phrase(
        "chat_template_token",
        ("<|", "[inst]", "<<sys>>"),
        (("<|", _CHAT_TOKENS), ("[inst]", ""), ("<<sys>>", "")),
        rf"<\|{_CHAT_TOKENS}|\[inst\]|<<sys>>",
    ),
)

_ZERO_WIDTH = "\u200b-\u200f\u2060-\u2064\ufeff"
_BIDI = "\u202a-\u202e\u2066-\u2069"
_TAGS = "\U000e0000-\U000e007f"
_ANY_HIDDEN = re.compile(f"[{_ZERO_WIDTH}{_BIDI}{_TAGS}]")
_HIDDEN_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("zero_width", re.compile(f"[{_ZERO_WIDTH}]")),
    ("bidi_control", re.compile(f"[{_BIDI}]")),
    ("tag_character", re.compile(f"[{_TAGS}]")),
)
_TAG_TEXT = re.compile("[\U000e0020-\U000e007e]+")
# Shown escaped in excerpts: hidden characters and C0/C1 controls.
_UNPRINTABLE = re.compile(f"[{_ZERO_WIDTH}{_BIDI}{_TAGS}\x00-\x1f\x7f-\x9f]")


def _escape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    return _UNPRINTABLE.sub(one, text)


def _excerpt(text: str, start: int, end: int, secrets: Sequence[SecretHit]) -> str:
    """A short window around ``[start, end)`` with secrets masked and hidden chars escaped."""
    lo = max(0, start - _CONTEXT)
    hi = min(len(text), max(end, start + 1) + _CONTEXT, lo + 4 * _CONTEXT)
    parts: list[str] = []
    cursor = lo
    for hit in secrets:
        if hit.end <= lo or hit.start >= hi:
            continue
        parts.append(_escape(text[cursor : max(cursor, hit.start)]))
        parts.append(f"[REDACTED:{hit.kind}]")
        cursor = max(cursor, hit.end)
    if cursor < hi:
        parts.append(_escape(text[cursor:hi]))
    body = "".join(parts)
    if len(body) > _MAX_EXCERPT:
        body, hi = body[:_MAX_EXCERPT], -1
    return ("…" if lo > 0 else "") + body + ("…" if hi < len(text) else "")


def _phrases(
    text: str, lowered: str, same_offsets: bool, path: str, secrets: Sequence[SecretHit], note: str
) -> list[Finding]:
    found: list[Finding] = []
    for phrase in _PHRASES:
        if not phrase.anchored(lowered):
            continue
        match = phrase.lowered.search(lowered) if same_offsets else phrase.fallback.search(text)
        if match is not None:
            excerpt = _excerpt(text, match.start(), match.end(), secrets)
            found.append(Finding("prompt_injection", phrase.kind, path, note + excerpt))
    return found


def _hidden_extras(text: str, path: str, seen: set[str]) -> list[Finding]:
    """Phrases split by hidden characters ("ig\u200bnore") or spelled in tag characters."""
    found: list[Finding] = []
    visible = _ANY_HIDDEN.sub("", text)
    lowered = visible.lower()
    for finding in _phrases(visible, lowered, len(visible) == len(lowered), path, (), _AFTER_REMOVAL):
        if finding.kind not in seen:
            seen.add(finding.kind)
            found.append(finding)
    tagged = "".join(chr(ord(char) - 0xE0000) for run in _TAG_TEXT.findall(text) for char in run)
    if tagged:
        lowered = tagged.lower()
        secrets = find_secrets(tagged)
        for finding in _phrases(tagged, lowered, len(tagged) == len(lowered), path, secrets, _IN_TAGS):
            if finding.kind not in seen:
                seen.add(finding.kind)
                found.append(finding)
    return found


_AFTER_REMOVAL = "(after removing hidden characters) "
_IN_TAGS = "(hidden in tag characters) "
# Joins the strings of one value so each detector makes one pass over all of them. No
# detector pattern can match across it: NUL is neither a word, whitespace nor secret
# character, and secret hits are clipped to their string anyway (tests/policy/
# test_detectors.py checks that joined and one-by-one scans agree).
_SEP = "\n\x00\n"


class _Batch:
    """Many strings scanned as one text; offsets map back to (string index, local offset)."""

    def __init__(self, paths: list[str], texts: list[str], text: str) -> None:
        self.paths = paths
        self.texts = texts
        self.text = text
        self.starts: list[int] = []
        cursor = 0
        for text in texts:
            self.starts.append(cursor)
            cursor += len(text) + len(_SEP)
        self.findings: list[list[Finding]] = [[] for _ in texts]
        self.secrets: list[list[SecretHit]] = [[] for _ in texts]

    def locate(self, offset: int) -> int:
        return bisect_right(self.starts, offset) - 1

    def end_of(self, index: int) -> int:
        return self.starts[index] + len(self.texts[index])

    def first_per_string(self, branches: Sequence[LiteralSearch], haystack: str) -> list[tuple[int, int, int]]:
        """(string index, local start, local end) of the first match in each string.

        A match is the leftmost of any branch's; branches never match at the same start.
        """
        out: list[tuple[int, int, int]] = []
        live = [branch for branch in branches if branch.may_occur(haystack)]
        # Each branch's next (start, end) at or after `position`, kept until passed, so a
        # branch that no longer matches is searched to the end once, not once per string.
        pending: list[tuple[int, int] | None] = [(-1, -1)] * len(live)
        position = 0
        while True:
            first: tuple[int, int] | None = None
            for slot, branch in enumerate(live):
                span = pending[slot]
                if span is not None and span[0] < position:
                    match = branch.pattern.search(haystack, position + branch.skip)
                    span = pending[slot] = None if match is None else (match.start() - branch.skip, match.end())
                if span is not None and (first is None or span[0] < first[0]):
                    first = span
            if first is None:
                return out
            start, end = first
            index = self.locate(start)
            base = self.starts[index]
            if start < self.end_of(index):
                out.append((index, start - base, min(end, self.end_of(index)) - base))
            if index + 1 >= len(self.texts):
                return out
            position = self.starts[index + 1]

    def scan(self) -> None:
        text = self.text
        lowered = text.lower()
        for hit in find_secrets(text, lowered=lowered):
            index = self.locate(hit.start)
            base, end = self.starts[index], self.end_of(index)
            if hit.start < end:
                self.secrets[index].append(SecretHit(hit.kind, hit.start - base, min(hit.end, end) - base))
        same_offsets = len(lowered) == len(text)
        for phrase in _PHRASES:
            if same_offsets:
                branches, haystack = phrase.branches, lowered
            elif phrase.anchored(lowered):
                branches, haystack = (LiteralSearch(phrase.fallback, 0, ()),), text
            else:
                continue
            for index, start, end in self.first_per_string(branches, haystack):
                excerpt = _excerpt(self.texts[index], start, end, self.secrets[index])
                self.findings[index].append(
                    Finding("prompt_injection", phrase.kind, self.paths[index], excerpt)
                )
        if not text.isascii() and _ANY_HIDDEN.search(text) is not None:
            hidden_in: set[int] = set()
            for kind, pattern in _HIDDEN_KINDS:
                for index, start, end in self.first_per_string((LiteralSearch(pattern, 0, ()),), text):
                    hidden_in.add(index)
                    excerpt = _excerpt(self.texts[index], start, end, self.secrets[index])
                    self.findings[index].append(Finding("hidden_unicode", kind, self.paths[index], excerpt))
            for index in sorted(hidden_in):
                seen = {f.kind for f in self.findings[index] if f.code == "prompt_injection"}
                self.findings[index].extend(_hidden_extras(self.texts[index], self.paths[index], seen))
        for index, hits in enumerate(self.secrets):
            reported: set[str] = set()
            for hit in hits:
                if hit.kind not in reported:
                    reported.add(hit.kind)
                    excerpt = _excerpt(self.texts[index], hit.start, hit.end, hits)
                    self.findings[index].append(Finding("secret", hit.kind, self.paths[index], excerpt))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_SCALARS = (int, float, bool, type(None))


def _strings(value: Any, path: str) -> tuple[list[str], list[str]]:
    """Paths and texts of every non-empty string in ``value``, in document order (iterative)."""
    paths: list[str] = []
    texts: list[str] = []
    if type(value) is dict:  # the usual arguments object: flat, strings and numbers
        prefix = f"{path}." if path else ""
        for key, item in value.items():
            kind = type(item)
            if kind is str:
                if item:
                    paths.append(f"{prefix}{key}")
                    texts.append(item)
            elif kind not in _SCALARS:
                paths.clear()
                texts.clear()
                break  # nested: walk it in document order below
        else:
            return paths, texts
    stack: list[tuple[Any, str]] = [(value, path)]
    seen: set[int] = set()
    while stack:
        current, where = stack.pop()
        kind = type(current)
        if kind is str:
            if current:
                paths.append(where)
                texts.append(current)
        elif kind in _SCALARS:
            continue
        elif isinstance(current, str):
            if current:
                paths.append(where)
                texts.append(str(current))
        elif isinstance(current, Mapping):
            if id(current) in seen:
                continue
            seen.add(id(current))
            prefix = f"{where}." if where else ""
            entries = [(item, f"{prefix}{key}") for key, item in current.items()]
            entries.reverse()
            stack.extend(entries)
        elif isinstance(current, list | tuple):
            if id(current) in seen:
                continue
            seen.add(id(current))
            stack.extend([(current[index], f"{where}[{index}]") for index in range(len(current) - 1, -1, -1)])
    return paths, texts


# Any anchor of any phrase, for rejecting short clean texts in one C-level search. Long texts
# use the per-branch literal searches instead, which beat an alternation there.
_ANY_ANCHOR = re.compile("|".join(re.escape(word) for phrase in _PHRASES for word in phrase.words))
_QUICK_LIMIT = 4096


def scan_value(value: Any, path: str = "") -> tuple[Finding, ...]:
    """Findings in every string nested anywhere in ``value`` (dict values, list items).

    Paths look like ``arguments.query`` or ``content[0].text``. Iterative, so arbitrarily deep
    JSON cannot exhaust the stack; at most MAX_FINDINGS are returned.
    """
    paths, texts = _strings(value, path)
    if not texts:
        return ()
    text = texts[0] if len(texts) == 1 else _SEP.join(texts)
    if (
        len(text) <= _QUICK_LIMIT
        and text.isascii()
        and _ANY_ANCHOR.search(text.lower()) is None
        and not find_secrets(text)
    ):
        return ()  # the common case: short, plain, nothing to report
    batch = _Batch(paths, texts, text)
    batch.scan()
    findings = [finding for per_string in batch.findings for finding in per_string]
    return tuple(findings[:MAX_FINDINGS])


def scan_text(text: str, path: str = "") -> list[Finding]:
    """Findings in one string (at most one per code and kind)."""
    return list(scan_value(text, path))


_CODE_TEXT = {
    "prompt_injection": "prompt-injection phrasing",
    "hidden_unicode": "hidden Unicode",
    "secret": "a secret",
}


def describe_findings(findings: Sequence[Finding], subject: str = "Arguments") -> str:
    """One plain sentence about what the scan found."""
    if not findings:
        return f"{subject} contain no suspicious patterns."
    parts = [
        f"{_CODE_TEXT.get(f.code, f.code)} ({f.kind}) at {f.path or 'the top level'}" for f in findings[:5]
    ]
    more = f" and {len(findings) - 5} more" if len(findings) > 5 else ""
    return f"{subject} contain suspicious patterns: {'; '.join(parts)}{more}."
