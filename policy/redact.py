"""Redaction of tool arguments before they are written anywhere, and the digest of the original.

The audit log stores a *redacted copy* of every argument value plus the digest of the
*original*, so the log never holds a credential while a reviewer holding the original
request can still prove it is the one that was decided on.

Rules, applied while walking nested dicts and lists (the input is never mutated):

* a value under a sensitive key name is replaced entirely by ``"[REDACTED]"``, whatever its
  type; a key is sensitive when its normalised form (lower case, ``-`` ``_`` ``.`` and spaces
  removed) equals or ends with a normalised name of ``sensitive_keys``
  (``DB_PASSWORD`` -> ``dbpassword`` ends with ``password``);
* every other string, and every dict key, goes through :func:`mask_text`: each secret that
  :func:`policy.detect.secrets.find_secrets` finds in the text *or in a decoded view of it*
  (:mod:`policy.encodings`: ``\\n`` escapes at any depth, ``\\uXXXX``, ``%XX``, ``+``) is
  replaced entire, escapes and all, by ``[REDACTED:<kind>]``;
* a container nested deeper than ``MAX_DEPTH`` is replaced by ``"[TRUNCATED:depth]"``;
* a value with no JSON form becomes a marker (``"[UNSERIALIZABLE:bytes]"``,
  ``"[NONFINITE:nan]"``), so the copy always serialises as strict JSON.

Each replaced value's path is reported in ``masked_paths``: ``root`` then ``.key`` per dict
level and ``[i]`` per list index (``arguments.headers.Authorization``,
``arguments.items[2].token``). A key that is empty or contains ``.`` ``[`` ``]`` ``"`` or ``\\``
is written JSON-quoted in brackets (``arguments["a.b"]``). With an empty ``root`` the
top-level value itself is ``$``.

A value masked by key name may also be quoted elsewhere in the same record (a schema
violation message, a reason template, another argument). :class:`Redacted` keeps those
values (``hidden``, never printed) and :func:`scrub` removes them, in their quoted,
escaped, whitespace-collapsed and truncated forms, from any other value; see
``policy.audit.decision.decision_event``. :func:`redact_text` is the same for free text
(proposal justifications, reviewer comments).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from policy.detect.secrets import SecretHit, find_secrets, mask_hits
from policy.encodings import decoded_views, may_be_encoded

__all__ = [
    "DEFAULT_SENSITIVE_KEYS",
    "MAX_DEPTH",
    "REDACTED",
    "SECRET_JOIN",
    "Redacted",
    "collect_strings",
    "contains_secret",
    "digest",
    "find_text_secrets",
    "is_sensitive_key",
    "mask_text",
    "normalise_key",
    "redact",
    "redact_text",
    "scrub",
    "scrub_all",
    "strings_contain_secret",
    "strings_contain_secret_memo",
    "value_contains_secret",
]

REDACTED = "[REDACTED]"
TRUNCATED = "[TRUNCATED:depth]"
MAX_DEPTH = 64

DEFAULT_SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "apikey",
        "authorization",
        "privatekey",
        "clientsecret",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "accesskey",
        "secretkey",
        "sessionid",
    }
)

_SEPARATORS = re.compile(r"[-_.\s]")
_PLAIN_KEY = re.compile(r"[^.\[\]\"\\]+")


@dataclass(frozen=True)
class Redacted:
    """A redacted copy of a value, and the paths of every field that differs from the original."""

    value: Any
    masked_paths: tuple[str, ...]
    # The original values masked by key name, for :func:`scrub`; never shown or compared.
    hidden: tuple[str, ...] = field(default=(), repr=False, compare=False)


def _text_hits(text: str) -> tuple[list[SecretHit], list[str]]:
    """Merged hits (spans of ``text``) and the secrets' text as found, plain and decoded."""
    hits = find_secrets(text)
    found = [text[hit.start : hit.end] for hit in hits]
    for view in decoded_views(text):
        for hit in find_secrets(view.text):
            start, end = view.original_span(hit.start, hit.end)
            hits.append(SecretHit(hit.kind, start, end))
            found += [view.text[hit.start : hit.end], text[start:end]]
    if len(hits) < 2:
        return hits, found
    hits.sort(key=lambda hit: (hit.start, -hit.end))
    merged: list[SecretHit] = []
    for hit in hits:
        if merged and hit.start < merged[-1].end:
            if hit.end > merged[-1].end:  # no fragment of either may survive
                merged[-1] = SecretHit(merged[-1].kind, merged[-1].start, hit.end)
            continue
        merged.append(hit)
    return merged, [text[hit.start : hit.end] for hit in merged] + found


def find_text_secrets(text: str) -> list[SecretHit]:
    """Every secret in ``text`` or in a decoded view of it, as spans of ``text``; merged, ordered."""
    return _text_hits(text)[0]


def contains_secret(text: str) -> bool:
    """Whether :func:`mask_text` would change ``text``."""
    return bool(find_text_secrets(text))


# Joins the strings of a value for one scan. No pattern can match across it: no secret
# pattern's left context, character classes or look-arounds accept a line feed except the PEM
# body (whose match needs its header, inside one string) and the PuTTY key lines (a line feed
# then a printable character, which the second line feed denies). So a joined scan finds a
# secret exactly when one of the strings has one (tests/policy/test_redact_properties.py).
SECRET_JOIN = "\n\n"


def strings_contain_secret(strings: Iterable[str]) -> bool:
    """Whether any of ``strings`` holds a secret, plain or encoded (:func:`contains_secret` of each).

    The plain text of all of them is scanned once, joined by :data:`SECRET_JOIN`; only strings
    that a decoder could change (a ``\\``, ``%`` or ``+``) have their decoded views scanned one by one.
    """
    items = strings if isinstance(strings, list) else list(strings)
    if not items:
        return False
    joined = items[0] if len(items) == 1 else SECRET_JOIN.join(items)
    if find_secrets(joined):
        return True
    if not may_be_encoded(joined):
        return False
    encoded = (text for text in items if may_be_encoded(text))
    return any(find_secrets(view.text) for text in encoded for view in decoded_views(text))


# Strings a scan found free of secrets: the scanners are a pure function of the text, so a
# string seen clean once is clean for good. Most strings of a decision event (reasoning
# sentences, rule ids and notes, schema keys, digests) come back on every call; bounded,
# emptied when full, and only short strings are kept.
_KNOWN_CLEAN: dict[str, None] = {}
_KNOWN_CLEAN_MAX = 8192
_KNOWN_CLEAN_LENGTH = 512


def strings_contain_secret_memo(strings: list[str]) -> bool:
    """:func:`strings_contain_secret`, scanning only the strings not already seen clean."""
    known = _KNOWN_CLEAN
    fresh = [text for text in strings if text not in known]
    if not fresh:
        return False
    if strings_contain_secret(fresh):
        return True
    if len(known) + len(fresh) > _KNOWN_CLEAN_MAX:
        known.clear()
    for text in fresh:
        if len(text) <= _KNOWN_CLEAN_LENGTH:
            known[text] = None
    return False


def collect_strings(value: Any, out: list[str], depth: int = 0) -> list[str]:
    """Every string and string key inside ``value`` (to ``MAX_DEPTH``), appended to ``out``."""
    if isinstance(value, str):
        out.append(value)
    elif depth > MAX_DEPTH:
        pass
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif item is not None and not isinstance(item, bool | int | float):
                collect_strings(item, out, depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                out.append(key)
            if isinstance(item, str):
                out.append(item)
            elif item is not None and not isinstance(item, bool | int | float):
                collect_strings(item, out, depth + 1)
    return out


def value_contains_secret(value: Any, depth: int = 0) -> bool:
    """Whether any string (or key) inside ``value`` holds a secret, plain or encoded.

    Collects the strings rather than scanning a serialisation of ``value`` (JSON escaping
    would give every string with a quote or a newline backslashes to decode, for nothing),
    then scans them together (:func:`strings_contain_secret`).
    """
    return strings_contain_secret(collect_strings(value, [], depth))


def mask_text(text: str) -> tuple[str, tuple[str, ...]]:
    """``text`` with every secret, in plain or escaped form, replaced by ``[REDACTED:<kind>]``.

    Returns the masked text and the sorted kinds found (empty when nothing was masked).
    """
    return mask_hits(text, find_text_secrets(text))


# Values shorter than this are hidden only where they appear quoted: replacing every
# occurrence of "ab" in a reason would make it unreadable and protect nothing.
_MIN_BARE = 4
# An occurrence cut short (by a message's length cap) is hidden when this much matched.
_MIN_PREFIX = 8
_FRAGMENT = 12
_ELLIPSES = ("\u2026", "...")
_QUOTES = ("'", '"', "`")


_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
_PERCENT_ASCII = {code: f"%{code:02X}" for code in range(128) if chr(code) not in _UNRESERVED}


def _percent(value: str) -> str:
    """``value`` percent-encoded as a URL component (what ``urllib.parse.quote(v, safe="")`` gives)."""
    if value.isascii():
        return value.translate(_PERCENT_ASCII)
    return "".join(
        char.translate(_PERCENT_ASCII) if char.isascii()
        else "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        for char in value
    )


def _forms(value: str) -> set[str]:
    """The ways ``value`` is written when a message or a serialiser quotes it."""
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        " ".join(value.split()),
        _percent(value),
        _percent(value).replace("%20", "+"),
    }
    forms |= {" ".join(form.split()) for form in list(forms)}
    return {form for form in forms if form}


# Bounds on the work a record's hidden values can cause (the audit path of every call):
# at most this many forms are looked for; 12-character runs are indexed from the first
# 4 KiB of each, 128 KiB in all, and searched for in at most 4 MiB of the record's text.
_MAX_FORMS = 512
_MAX_GRAM_SOURCE = 128 << 10
_MAX_GRAM_FORM = 4096
_MAX_GRAM_TEXT = 4 << 20


class _Hider:
    """The hidden values of one record, indexed once, hidden from any number of its strings."""

    def __init__(self, hidden: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in hidden:
            if value:
                forms |= _forms(value)
            if len(forms) >= _MAX_FORMS:
                break
        self.short = [form for form in forms if len(form) < _MIN_BARE]
        # Longest first, so a whole value wins over a shorter one it contains.
        self.long = sorted((form for form in forms if len(form) >= _MIN_BARE), key=len, reverse=True)
        self.grams: set[str] = set()
        budget = _MAX_GRAM_SOURCE
        for form in self.long:
            if len(form) < _FRAGMENT or budget <= 0:
                continue
            indexed = form[:_MAX_GRAM_FORM]
            budget -= len(indexed)
            self.grams.update(indexed[i : i + _FRAGMENT] for i in range(len(indexed) - _FRAGMENT + 1))
        self.text_budget = _MAX_GRAM_TEXT

    def __bool__(self) -> bool:
        return bool(self.short or self.long)

    def spans(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for form in self.short:
            for quote_char in _QUOTES:
                needle = quote_char + form + quote_char
                start = text.find(needle)
                while start >= 0:
                    spans.append((start + 1, start + 1 + len(form)))
                    start = text.find(needle, start + 1)
        for form in self.long:
            # Whole, or its start cut short by a length cap ("…") or the end of the text.
            head = form[:_MIN_PREFIX]
            start = text.find(head)
            while start >= 0:
                matched = len(head)
                limit = min(len(form), len(text) - start)
                while matched < limit and text[start + matched] == form[matched]:
                    matched += 1
                end = start + matched
                ellipsis = next((mark for mark in _ELLIPSES if text.startswith(mark, end)), None)
                if matched == len(form) or end == len(text) or ellipsis:
                    spans.append((start, end + (len(ellipsis) if ellipsis else 0)))
                start = text.find(head, start + 1)
        if self.grams and len(text) >= _FRAGMENT and self.text_budget > 0:
            # Any 12-character run of a hidden value, wherever it is: what survives when a
            # message quoted only part of it or something else masked the rest.
            self.text_budget -= len(text)
            grams = self.grams
            spans.extend(
                (i, i + _FRAGMENT) for i in range(len(text) - _FRAGMENT + 1) if text[i : i + _FRAGMENT] in grams
            )
        return spans

    def hide(self, text: str) -> str:
        spans = sorted(self.spans(text))
        if not spans:
            return text
        parts: list[str] = []
        cursor = 0
        for start, end in spans:
            if end <= cursor:
                continue
            parts.append(text[cursor : max(start, cursor)])
            if start >= cursor:
                parts.append(REDACTED)
            cursor = end
        parts.append(text[cursor:])
        return "".join(parts)


def redact_text(text: str, *, hidden: Iterable[str] = ()) -> str:
    """Free text (a justification, a reviewer's comment) safe to store or show.

    Every secret :func:`mask_text` finds is masked, and so is every value of ``hidden``
    (values masked by key name elsewhere in the same record) wherever it is quoted.
    """
    masked = mask_text(text)[0]
    hider = _Hider(hidden)
    return hider.hide(masked) if hider else masked


# Fields that identify rather than describe: never rewritten by scrub, so a chosen value
# cannot make a record unreadable where it matters (reason codes, rule ids, digests).
_IDENTIFIERS = frozenset(
    {"reason_code", "effect", "decision_id", "rule_id", "policy_digest", "arguments_digest", "schema", "code"}
)


def scrub(value: Any, hidden: Iterable[str], *, root: str = "") -> Redacted:
    """``value`` with every quoted occurrence of a ``hidden`` value replaced by ``"[REDACTED]"``.

    ``masked_paths`` names the strings that changed. ``value`` must be plain JSON data (the
    output of :func:`redact`); it is not mutated.
    """
    return scrub_all({root: value}, hidden)[root]


def scrub_all(parts: Mapping[str, Any], hidden: Iterable[str]) -> dict[str, Redacted]:
    """:func:`scrub` of each value of ``parts`` (root -> value), indexing ``hidden`` once."""
    hider = _Hider(hidden)
    if not hider:
        return {root: Redacted(value, ()) for root, value in parts.items()}
    out: dict[str, Redacted] = {}
    for root, value in parts.items():
        changed: list[str] = []
        copy = _scrub_walk(hider, value, root or "$", 0, changed)
        out[root] = Redacted(copy, tuple(dict.fromkeys(changed)))
    return out


def _scrub_walk(hider: _Hider, item: Any, path: str, depth: int, changed: list[str]) -> Any:
    if isinstance(item, str):
        hidden_text = hider.hide(item)
        if hidden_text != item:
            changed.append(path)
        return hidden_text
    if depth >= MAX_DEPTH:
        return item
    if isinstance(item, Mapping):
        return {
            key: sub if key in _IDENTIFIERS else _scrub_walk(hider, sub, _child(path, str(key)), depth + 1, changed)
            for key, sub in item.items()
        }
    if isinstance(item, list | tuple):
        return [_scrub_walk(hider, sub, _item(path, index), depth + 1, changed) for index, sub in enumerate(item)]
    return item


def _leaves(value: Any, depth: int = 0) -> Iterable[str]:
    """The text of every string and number inside ``value`` (what a message could quote)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)
    elif depth < MAX_DEPTH and isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item, depth + 1)
    elif depth < MAX_DEPTH and isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item, depth + 1)


def normalise_key(name: str) -> str:
    """The comparison form of a key name: lower case, without ``-`` ``_`` ``.`` or spaces."""
    return _SEPARATORS.sub("", name.lower())


# The same few key names come back on every call (schemas, arguments): normalise them once.
_normal_key = functools.lru_cache(maxsize=4096)(normalise_key)


def _is_sensitive(key: str, names: tuple[str, ...]) -> bool:
    return (_normal_key(key) if len(key) <= 128 else normalise_key(key)).endswith(names)


def _child(path: str, key: str) -> str:
    part = f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{json.dumps(key, ensure_ascii=False)}]"
    if path == "$":
        return part[1:] if part.startswith(".") else part
    return path + part


def _item(path: str, index: int) -> str:
    return f"{'' if path == '$' else path}[{index}]"


class _Walker:
    def __init__(self, names: frozenset[str]) -> None:
        self.names = _suffixes(names)
        self.masked: list[str] = []
        self.hidden: list[str] = []

    def walk(self, value: Any, path: str, depth: int) -> Any:
        if isinstance(value, str):
            hits, found = _text_hits(value)
            if not hits:
                return value
            self.masked.append(path)
            # Another part of the record may quote the secret cut short or half-masked (an
            # excerpt window, a message length cap): scrub hides any 12-character run of it.
            self.hidden.extend(found)
            return mask_hits(value, hits)[0]
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            self.masked.append(path)
            return f"[NONFINITE:{value}]"
        if isinstance(value, Mapping | list | tuple):
            if depth >= MAX_DEPTH:
                self.masked.append(path)
                return TRUNCATED
            if isinstance(value, Mapping):
                return self._walk_mapping(value, path, depth)
            return [self.walk(item, _item(path, index), depth + 1) for index, item in enumerate(value)]
        self.masked.append(path)
        return f"[UNSERIALIZABLE:{type(value).__name__}]"

    def _walk_mapping(self, value: Mapping[Any, Any], path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # Sorted so that masked_paths does not depend on insertion order.
        for raw_key in sorted(value, key=str):
            key = str(raw_key)
            key_hits, key_found = _text_hits(key)
            safe_key, kinds = mask_hits(key, key_hits)
            if kinds:
                self.hidden.extend(key_found)
                while safe_key in out:  # two keys masked to the same text stay distinct
                    safe_key += "'"
            # The path names the masked key: a secret used as a key must not leak through it.
            child = _child(path, safe_key)
            if kinds:
                self.masked.append(child)
            item = value[raw_key]
            if _is_sensitive(key, self.names):
                self.masked.append(child)
                self.hidden.extend(_leaves(item))
                out[safe_key] = REDACTED
            else:
                out[safe_key] = self.walk(item, child, depth + 1)
        return out


@functools.lru_cache(maxsize=32)
def _suffixes(names: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(names))


@functools.lru_cache(maxsize=32)
def _sensitive_names(sensitive_keys: frozenset[str]) -> frozenset[str]:
    return frozenset(normalise_key(name) for name in sensitive_keys)


def is_sensitive_key(key: str, sensitive_keys: frozenset[str] = DEFAULT_SENSITIVE_KEYS) -> bool:
    """Whether :func:`redact` replaces the value under ``key`` whatever it is (see the rules above)."""
    if sensitive_keys is DEFAULT_SENSITIVE_KEYS and len(key) <= 128:
        return _default_sensitive(key)
    return _is_sensitive(key, _suffixes(_sensitive_names(sensitive_keys)))


@functools.lru_cache(maxsize=4096)
def _default_sensitive(key: str) -> bool:
    return _is_sensitive(key, _suffixes(_sensitive_names(DEFAULT_SENSITIVE_KEYS)))


def redact(value: Any, *, root: str = "", sensitive_keys: frozenset[str] = DEFAULT_SENSITIVE_KEYS) -> Redacted:
    """A copy of ``value`` safe to write to a log, and the paths of what was replaced."""
    walker = _Walker(_sensitive_names(sensitive_keys))
    copy = walker.walk(value, root or "$", 0)
    return Redacted(
        value=copy, masked_paths=tuple(dict.fromkeys(walker.masked)), hidden=tuple(dict.fromkeys(walker.hidden))
    )


def _marker(obj: Any) -> str:
    return f"[UNSERIALIZABLE:{type(obj).__name__}]"


def _plain(value: Any, depth: int, active: set[int]) -> Any:
    """``value`` with string keys, cycles and runaway depth replaced by markers."""
    if isinstance(value, Mapping | list | tuple):
        if depth > 256:
            return TRUNCATED
        if id(value) in active:
            return "[CYCLE]"
        active.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {str(key): _plain(item, depth + 1, active) for key, item in value.items()}
            return [_plain(item, depth + 1, active) for item in value]
        finally:
            active.discard(id(value))
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_marker)


def digest(value: Any) -> str:
    """``"sha256:<hex>"`` over the canonical JSON of the original ``value``.

    For JSON data this is exactly ``sha256(json.dumps(value, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False).encode())``, so anyone holding the original
    arguments can recompute it. It never raises, because it runs on the audit path of a
    denial too: NaN and infinities are written as the ``NaN``/``Infinity`` tokens, a value
    with no JSON form as its type marker, and non-string keys, cycles and nesting deeper than
    256 levels are normalised first, and a lone surrogate (``"\\ud800"`` on the wire) is
    encoded as UTF-8 encodes any other code point (``surrogatepass``).
    """
    if type(value) is str:  # a clipped argument string: orjson writes exactly json.dumps' text, ~100x faster
        try:
            return "sha256:" + hashlib.sha256(orjson.dumps(value)).hexdigest()
        except TypeError:  # a lone surrogate, which orjson refuses: the reference path below
            pass
    try:
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = _dumps(_plain(value, 0, set()))
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
