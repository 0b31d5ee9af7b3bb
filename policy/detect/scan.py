"""Scan any JSON value for injection phrasing, hidden Unicode and secrets.

:func:`scan_value` walks a call's arguments or a tool's result and returns
:class:`~policy.detect.finding.Finding` values; the engine turns them into risk factors
and, for high-severity ones, denials. It is on the hot path of every call and of every
result, so the common case is cheap:

* the strings of a plain JSON value are gathered without their paths
  (:func:`~policy.detect.strings.plain_texts`); paths are built only for a string with a
  finding, and the findings are made path-free and placed afterwards (:func:`_placed`);
* all strings of one value are joined (:data:`SEP`) and each detector makes one pass over
  the joined text, so the fixed cost of a pass is paid once per value;
* the PRESCREEN below answers "nothing" for most payloads after one automaton pass; for MCP's
  usual one-text tool result that pass runs over its text alone, without the walk and the join
  (:func:`_usual_result_clean`);
* injection: the text is folded (:mod:`policy.detect.normalize`; for ASCII one
  ``bytes.translate``), one Aho-Corasick pass finds every anchor of every rule, and only
  rules with an anchor present run their expression, near that anchor
  (:mod:`policy.detect.injection`);
* hidden Unicode is all non-ASCII, so ``str.isascii()`` (a C loop) skips that check for
  most strings (:mod:`policy.detect.unicode`);
* secrets come from :mod:`policy.detect.secrets`, over the same lower-cased text;
* a large string (:data:`~policy.detect.memo.MEMO_FROM` characters or more) is scanned on
  its own, once per distinct content: its path-free findings are remembered
  (:mod:`policy.detect.memo`), so a result that repeats an argument, or carries the same
  text twice, costs a compare.

PRESCREEN -- the joined text has no finding when

* (ASCII text) the joint automaton (:mod:`policy.detect.anchors`) finds no anchor of either
  detector in its folded bytes; or
* (other text, shorter than 512 characters) the injection automaton finds no anchor in its
  folded bytes, no string holds a hidden-Unicode candidate character
  (:func:`~policy.detect.unicode.may_hide`) and no secret anchor occurs in it as the secret
  scanners read it (:func:`~policy.detect.secrets.secret_anchor_seen`).

Each negative implies every detector's negative: an injection rule is only ever tried at
one of its anchors' occurrences; every secret scanner's match starts at one of its anchors
in the lower-cased text (:data:`~policy.detect.secrets.ANCHORS`), which folding keeps at
the same offset (none holds a leetspeak character); every hidden-Unicode span is a
candidate character, and ASCII text has none. :func:`reference_scan` takes no shortcut
(general walk, every detector's own full pass, no memo); tests/policy/detect/
test_prescreen.py checks that both give the same findings on generated payloads, and that
a prescreen missing any one trigger does not.

One finding is reported per (code, kind) per string, at its first occurrence. Excerpts are
short, show hidden characters as ``\\uXXXX`` escapes and never contain a secret.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from .anchors import joint_hits, split_hits
from .finding import Finding
from .injection import ANCHORS, anchor_hits, byte_hits, char_hits, find_injections, spaced_anchor_seen
from .memo import MEMO_FROM, ScanMemo
from .normalize import VIEW_SEP, despace, fold, fold_ascii, fold_bytes
from .runs import Layout, text_layout
from .secrets import ANCHORS as SECRET_ANCHORS
from .secrets import SecretHit, find_secrets, secret_anchor_seen
from .strings import plain_texts, value_strings
from .unicode import hidden_spans, may_hide

__all__ = ["MAX_FINDINGS", "MEMO", "SEP", "reference_scan", "scan_strings", "scan_text", "scan_value", "value_strings"]

MAX_FINDINGS = 200
_CONTEXT = 24
_MAX_EXCERPT = 120
# Joins the strings of one value. No rule matches across it (NUL is neither a word,
# whitespace nor secret character, and every window is clipped to its string).
SEP = "\n\x00\n"
assert SEP == VIEW_SEP
_SEP_BYTES = SEP.encode("ascii")
_HIDDEN_SEVERITY = {"tag_character": "high", "variation_selector": "high"}
_HIGH_SECRETS = frozenset({"private_key", "putty_private_key"})
_UNPRINTABLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ufe00-\ufe0f"
                          "\U000e0000-\U000e01ef\x00-\x1f\x7f-\x9f]")


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


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _starts(texts: Sequence[str]) -> list[int]:
    starts: list[int] = []
    cursor = 0
    for text in texts:
        starts.append(cursor)
        cursor += len(text) + len(SEP)
    return starts


def _per_string(spans: Sequence[tuple[int, int, int]], starts: Sequence[int]) -> dict[int, list[tuple[int, int, int]]]:
    if len(starts) == 1:
        return {0: list(spans)}
    first = bisect_right(starts, min(item[1] for item in spans)) - 1
    if first + 1 == len(starts) or max(item[1] for item in spans) < starts[first + 1]:
        return {first: list(spans)}  # all in one string: the usual large result
    grouped: dict[int, list[tuple[int, int, int]]] = {}
    for item in spans:
        grouped.setdefault(bisect_right(starts, item[1]) - 1, []).append(item)
    return grouped


def _folded_secrets(folded: str, original: str, hits: Sequence[SecretHit], lo: int, hi: int) -> list[SecretHit]:
    """Secrets in ``folded[lo:hi]`` (offsets relative to ``lo``): the original's, located by
    value, and any the folded text shows itself. Only the window is searched."""
    window = folded[lo:hi]
    found = list(find_secrets(window))
    for hit in hits:
        value = fold(original[hit.start : hit.end])
        at = window.find(value) if value else -1
        while at >= 0:
            found.append(SecretHit(hit.kind, at, at + len(value)))
            at = window.find(value, at + len(value))
    found.sort(key=lambda item: item.start)
    return found


class _Scan:
    """One value's strings scanned as one text; findings gathered per string, without their
    paths (the caller places them: :func:`_placed`)."""

    def __init__(
        self, texts: list[str], text: str, lowered: str, starts: list[list[int]] | None = None, secrets: bool = True
    ) -> None:
        self.texts, self.text = texts, text
        self.starts = _starts(texts)
        self.findings: list[list[Finding]] = [[] for _ in texts]
        self.secrets: list[list[SecretHit]] = [[] for _ in texts]
        if not secrets:  # no anchor of any secret scanner: find_secrets would find nothing
            return
        for hit in find_secrets(text, lowered=lowered or None, starts=starts):
            index = bisect_right(self.starts, hit.start) - 1
            base, end = self.starts[index], self.starts[index] + len(texts[index])
            if hit.start < end:
                self.secrets[index].append(SecretHit(hit.kind, hit.start - base, min(hit.end, end) - base))

    def injections(
        self, folded: str, starts: list[int], data: bytes, hits: list[tuple[int, int, int]] | None = None
    ) -> None:
        if hits is None:
            hits = anchor_hits(folded, data)
        if not hits:
            return
        for index, own in _per_string(hits, starts).items():
            lo = starts[index]
            hi = starts[index + 1] - len(SEP) if index + 1 < len(starts) else len(folded)
            found = find_injections(folded, own, (lo, hi))
            seen = {hit.kind for hit in found}
            same = self.texts[index].isascii()  # folding kept every offset
            for hit in found:
                self._inject(index, folded, lo, hi, hit.kind, hit.severity, hit.start, hit.end, same)
            if spaced_anchor_seen(own):
                joined = despace(folded[lo:hi])
                for hit in find_injections(joined, anchor_hits(joined)):
                    if hit.kind not in seen:
                        self._inject(index, joined, 0, len(joined), hit.kind, hit.severity, hit.start, hit.end, False)

    def _inject(
        self, index: int, folded: str, lo: int, hi: int, kind: str, severity: str, start: int, end: int, same: bool
    ) -> None:
        if same:  # ASCII: folded offsets are the original's, so quote the original
            excerpt = _excerpt(self.texts[index], start - lo, end - lo, self.secrets[index])
        else:  # quote the folded text around the match, secrets masked (a secret may overhang)
            w_lo, w_hi = max(lo, start - 4 * _CONTEXT), min(hi, end + 8 * _CONTEXT)
            secrets = _folded_secrets(folded, self.texts[index], self.secrets[index], w_lo, w_hi)
            excerpt = _excerpt(folded[w_lo:w_hi], start - w_lo, end - w_lo, secrets)
            excerpt = ("…" if w_lo > lo and not excerpt.startswith("…") else "") + excerpt
        self.findings[index].append(Finding("prompt_injection", kind, "", excerpt, severity))

    def hidden(self, layouts: Sequence[Layout | None]) -> None:
        for index, text in enumerate(self.texts):
            layout = layouts[index]
            if layout is None:  # ASCII
                continue
            reported: set[str] = set()
            for kind, start, end in hidden_spans(text, layout):
                if kind in reported:
                    continue
                reported.add(kind)
                excerpt = _excerpt(text, start, end, self.secrets[index])
                severity = _HIDDEN_SEVERITY.get(kind, "medium")
                self.findings[index].append(Finding("hidden_unicode", kind, "", excerpt, severity))

    def secret_findings(self) -> None:
        for index, hits in enumerate(self.secrets):
            reported: set[str] = set()
            for hit in hits:
                if hit.kind not in reported:
                    reported.add(hit.kind)
                    excerpt = _excerpt(self.texts[index], hit.start, hit.end, hits)
                    severity = "high" if hit.kind in _HIGH_SECRETS else "medium"
                    self.findings[index].append(Finding("secret", hit.kind, "", excerpt, severity))


_UNICODE_SCREEN_BELOW = 512  # characters: non-ASCII text this short gets the prescreen (see _scan_joined)
MEMO = ScanMemo()
"""Findings of large strings by content (see :mod:`policy.detect.memo`)."""


def scan_value(value: Any, path: str = "") -> tuple[Finding, ...]:
    """Findings in every string nested anywhere in ``value`` (dict values, list items).

    Paths look like ``arguments.query`` or ``content[0].text``. Iterative, so arbitrarily deep
    JSON cannot exhaust the stack; at most MAX_FINDINGS are returned. The same findings as
    :func:`reference_scan`, which takes none of the shortcuts.
    """
    if type(value) is dict and _usual_result_clean(value):
        return ()
    texts = plain_texts(value)
    if texts is None:  # not plain JSON data (tuples, other mappings, str subclasses, shared containers)
        paths, texts = value_strings(value, path)
        if not texts:
            return ()
        return scan_strings(paths, texts, MEMO)
    # Plain data: the texts first, and the paths (strings.py: of the same texts, in the same
    # order) only when one of them has a finding.
    if not texts:
        return ()
    if len(texts) > 2:
        small = max(map(len, texts)) < MEMO_FROM
    else:  # the usual one or two strings: two len() calls cost a third of max(map(...))
        small = len(texts[0]) < MEMO_FROM and len(texts[-1]) < MEMO_FROM
    if not small:
        return scan_strings(value_strings(value, path)[0], texts, MEMO)
    per = _scan_joined(texts)  # the usual payload: small strings, scanned joined
    return () if per is None else _placed(per, value_strings(value, path)[0])


# MCP's usual tool result, ``{"content": [{"type": "text", "text": TEXT}], "isError": FLAG}``: its
# keys and its one fixed value hold no anchor of either detector (checked here), and no anchor
# spans SEP (none holds its NUL), so the joined text has an anchor exactly where TEXT has one.
_RESULT_WORDS = ("content", "isError", "type", "text")
assert not joint_hits(fold_ascii(SEP.join(_RESULT_WORDS)))
assert not any("\x00" in anchor for anchor in (*ANCHORS, *SECRET_ANCHORS))


def _usual_result_clean(value: dict[Any, Any]) -> bool:
    """True only when ``value`` is the usual one-text tool result and its ASCII text, shorter than
    :data:`MEMO_FROM` (longer ones go through the memo), has no anchor: the ASCII PRESCREEN of the
    joined text, without the walk and the join. False says nothing; the general path decides."""
    if len(value) == 2:
        flag = value.get("isError", value)
        if not (flag is None or type(flag) is bool):
            return False  # no ``isError`` key (the default is the dict itself), or a value to walk
    elif len(value) != 1:
        return False
    content = value.get("content")
    if type(content) is not list or len(content) != 1:
        return False
    item = content[0]
    if type(item) is not dict or len(item) != 2 or item.get("type") != "text":
        return False
    text = item.get("text")
    if type(text) is not str or len(text) >= MEMO_FROM or not text.isascii():
        return False
    for key in value:  # exact str keys: a subclass takes the general walk (value_strings)
        if type(key) is not str:
            return False
    for key in item:
        if type(key) is not str:
            return False
    return type(item["type"]) is str and not joint_hits(fold_ascii(text))


def reference_scan(value: Any, path: str = "") -> tuple[Finding, ...]:
    """:func:`scan_value` without its shortcuts: the general walk, every string scanned in one
    joined text by each detector's own full pass, no early return and no memo. What the
    tests hold the shortcuts to (tests/policy/detect/test_prescreen.py)."""
    paths, texts = value_strings(value, path)
    if not texts:
        return ()
    per = _scan_joined(texts, screen=False)
    return () if per is None else _placed(per, paths)


def _placed(per_string: list[list[Finding]], paths: list[str]) -> tuple[Finding, ...]:
    """Each string's path-free findings at its path, in document order, at most MAX_FINDINGS."""
    findings = [
        Finding(f.code, f.kind, where, f.excerpt, f.severity)
        for where, found in zip(paths, per_string, strict=True)
        for f in found
    ]
    return tuple(findings[:MAX_FINDINGS])


def scan_strings(
    paths: list[str], texts: list[str], memo: ScanMemo | None, memo_from: int = MEMO_FROM
) -> tuple[Finding, ...]:
    """Findings of ``texts`` (non-empty, at ``paths``), in document order.

    Strings of at least ``memo_from`` characters are scanned one by one, each distinct one
    once, looked up in and added to ``memo`` (when given, else one for this call only); the
    rest are scanned joined. The findings are the same either way: no rule matches across
    strings.
    """
    if max(map(len, texts)) < memo_from:
        joined = _scan_joined(texts)
        return () if joined is None else _placed(joined, paths)
    per: list[list[Finding]] = [[] for _ in texts]
    small = [index for index, text in enumerate(texts) if len(text) < memo_from]
    if small:
        found = _scan_joined([texts[i] for i in small])
        for index, own in zip(small, found or [[] for _ in small], strict=True):
            per[index] = own
    # Without a memo, a call's own one still scans the same text twice in one value only once
    # (content + structuredContent).
    memo = memo if memo is not None else ScanMemo()
    for index, text in enumerate(texts):
        if len(text) < memo_from:
            continue
        bare = memo.get(text)
        if bare is None:
            alone = _scan_joined([text])
            bare = tuple(alone[0]) if alone is not None else ()
            memo.put(text, bare)
        per[index] = list(bare)
    return _placed(per, paths)


def _scan_joined(texts: list[str], screen: bool = True) -> list[list[Finding]] | None:
    """Each string's path-free findings, all strings scanned as one joined text; None when
    there are none.

    ``screen`` (the default) returns None as soon as no detector can find anything, the
    PRESCREEN of the module docstring, and hands each detector the anchors already found;
    without it every detector makes its own full pass (:func:`reference_scan`).
    """
    text = texts[0] if len(texts) == 1 else SEP.join(texts)
    plain = text.isascii()
    lowered = ""  # find_secrets lowers its ASCII copy of other text
    layouts: list[Layout | None] = []
    hits: list[tuple[int, int, int]] | None = None
    secret_starts: list[list[int]] | None = None
    secrets = True
    if plain:
        data = fold_ascii(text)
        if screen:
            joint = joint_hits(data)  # one automaton pass for both detectors (anchors.py)
            if not joint:
                return None  # PRESCREEN (ASCII): no anchor of either detector, nothing to verify
            hits, secret_starts = split_hits(joint)
            secrets = secret_starts is not None
        lowered = text.lower()
        folded, fold_starts = data.decode("ascii"), None
    else:
        # Each string encoded once; its layout (where its non-ASCII runs are) is shared by
        # folding and the hidden-Unicode check.
        layouts = [None if t.isascii() else text_layout(t) for t in texts]
        encoded = [fold_bytes(t, layout) for t, layout in zip(texts, layouts, strict=True)]
        data = _SEP_BYTES.join(encoded)
        raw = byte_hits(data) if screen else None
        # Below _UNICODE_SCREEN_BELOW only: over a longer text the extra secret-anchor pass
        # costs more than the fixed costs the early return saves.
        if screen and len(text) < _UNICODE_SCREEN_BELOW:
            secrets = secret_anchor_seen(text)
            if not raw and not secrets and not any(layout is not None and may_hide(layout.data) for layout in layouts):
                return None  # PRESCREEN (other text): no anchor of either detector, no hidden candidate
        parts = [part.decode("utf-8", "surrogatepass") for part in encoded]
        folded, fold_starts = SEP.join(parts), _starts(parts)
        if raw is not None:
            hits = char_hits(folded, data, raw)
    scan = _Scan(texts, text, lowered, secret_starts, secrets)
    scan.injections(folded, fold_starts or scan.starts, data, hits)
    if not plain:
        scan.hidden(layouts)
    scan.secret_findings()
    return scan.findings if any(scan.findings) else None


def scan_text(text: str, path: str = "") -> list[Finding]:
    """Findings in one string (at most one per code and kind)."""
    return list(scan_value(text, path))
