"""Redaction of tool arguments before they are written anywhere, and the digest of the original.

The audit log stores a *redacted copy* of every argument value plus the digest of the
*original*, so the log never holds a credential while a reviewer holding the original
request can still prove it is the one that was decided on.

Rules, applied while walking nested dicts and lists (the input is never mutated):

* a value under a sensitive key name is replaced entirely by ``"[REDACTED]"``, whatever its
  type; a key is sensitive when its normalised form (lower case, ``-`` ``_`` ``.`` and spaces
  removed) equals or ends with a normalised name of ``sensitive_keys``
  (``DB_PASSWORD`` -> ``dbpassword`` ends with ``password``);
* every other string, and every dict key, goes through :func:`policy.detect.secrets.mask_secrets`;
* a container nested deeper than ``MAX_DEPTH`` is replaced by ``"[TRUNCATED:depth]"``;
* a value with no JSON form becomes a marker (``"[UNSERIALIZABLE:bytes]"``,
  ``"[NONFINITE:nan]"``), so the copy always serialises as strict JSON.

Each replaced value's path is reported in ``masked_paths``: ``root`` then ``.key`` per dict
level and ``[i]`` per list index (``arguments.headers.Authorization``,
``arguments.items[2].token``). A key that is empty or contains ``.`` ``[`` ``]`` ``"`` or ``\\``
is written JSON-quoted in brackets (``arguments["a.b"]``). With an empty ``root`` the
top-level value itself is ``$``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy.detect.secrets import mask_secrets

__all__ = ["DEFAULT_SENSITIVE_KEYS", "MAX_DEPTH", "REDACTED", "Redacted", "digest", "normalise_key", "redact"]

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


def normalise_key(name: str) -> str:
    """The comparison form of a key name: lower case, without ``-`` ``_`` ``.`` or spaces."""
    return _SEPARATORS.sub("", name.lower())


def _is_sensitive(key: str, names: frozenset[str]) -> bool:
    normal = normalise_key(key)
    return any(normal.endswith(name) for name in names)


def _child(path: str, key: str) -> str:
    part = f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{json.dumps(key, ensure_ascii=False)}]"
    if path == "$":
        return part[1:] if part.startswith(".") else part
    return path + part


def _item(path: str, index: int) -> str:
    return f"{'' if path == '$' else path}[{index}]"


class _Walker:
    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.masked: list[str] = []

    def walk(self, value: Any, path: str, depth: int) -> Any:
        if isinstance(value, str):
            masked, kinds = mask_secrets(value)
            if kinds:
                self.masked.append(path)
            return masked
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
            safe_key, kinds = mask_secrets(key)
            if kinds:
                while safe_key in out:  # two keys masked to the same text stay distinct
                    safe_key += "'"
            # The path names the masked key: a secret used as a key must not leak through it.
            child = _child(path, safe_key)
            if kinds:
                self.masked.append(child)
            item = value[raw_key]
            if _is_sensitive(key, self.names):
                self.masked.append(child)
                out[safe_key] = REDACTED
            else:
                out[safe_key] = self.walk(item, child, depth + 1)
        return out


def redact(value: Any, *, root: str = "", sensitive_keys: frozenset[str] = DEFAULT_SENSITIVE_KEYS) -> Redacted:
    """A copy of ``value`` safe to write to a log, and the paths of what was replaced."""
    walker = _Walker(frozenset(normalise_key(name) for name in sensitive_keys))
    copy = walker.walk(value, root or "$", 0)
    return Redacted(value=copy, masked_paths=tuple(dict.fromkeys(walker.masked)))


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
    256 levels are normalised first.
    """
    try:
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = _dumps(_plain(value, 0, set()))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
