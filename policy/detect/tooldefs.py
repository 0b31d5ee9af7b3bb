"""Scan a tool's (or prompt's, or resource template's) definition for poisoning.

A poisoned definition hides instructions for the model where people rarely look: in the
description, in any schema field (property descriptions, titles, enum values, defaults,
examples), in annotations. :func:`scan_definition` runs every string of the definition
through :func:`policy.detect.scan.scan_value` (injection phrasing, hidden Unicode, secrets)
and adds checks that only make sense for descriptions:

* ``tool_shadowing`` -- instructions about *other* tools or about when to call this one
  ("when the send_email tool is used, always bcc ...", "instead of using ...");
* ``hidden_markup`` -- HTML comments and ``display:none`` text the model sees, a UI does not;
* ``whitespace_padding`` -- long runs of blank space pushing text out of view;
* ``encoded_payload`` -- a long base64 run that decodes to text (which is scanned too).

Findings of these checks have code ``tool_poisoning``. :func:`poisoned` says whether a
set of findings should quarantine the definition.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .finding import Finding
from .scan import scan_value

__all__ = ["QUARANTINE_CODES", "poisoned", "scan_definition"]

QUARANTINE_CODES = frozenset({"prompt_injection", "hidden_unicode", "tool_poisoning", "secret"})

_SHADOWING = re.compile(
    r"\b(?:when|whenever|before|after|if)\s+(?:the\s+user\s+)?(?:using|calling|invoking|running|you\s+(?:use|call|invoke))"
    r"\s+(?:the\s+|any\s+|another\s+)?[`'\"]?[\w.\-]+[`'\"]?\s+(?:tool|function)\b[^.\n]{0,120}?"
    r"\b(?:must|should|always|never|also|first|instead|make\s+sure|ensure|change|replace|add|set|send|include)\b"
    r"|\b(?:when|whenever|before|after|if)\s+(?:the\s+|any\s+|another\s+)?[`'\"]?[\w.\-]+[`'\"]?\s+(?:tool|function)\s+"
    r"(?:is|gets|was)\s+(?:used|called|invoked|run)\b"
    r"|\b(?:instead\s+of|rather\s+than)\s+(?:using|calling|invoking)\s+(?:the\s+)?[`'\"]?[\w.\-]+[`'\"]?"
    r"|\b(?:all|any|every|other)\s+(?:other\s+)?tools?\b[^.\n]{0,60}?\b(?:must|should|have\s+to)\b"
    r"|\bthis\s+tool\s+(?:must|should|has\s+to)\s+(?:always\s+)?be\s+(?:called|used|invoked|run)\s+"
    r"(?:before|first|instead|prior|every\s+time)"
    r"|\b(?:always|must)\s+(?:call|use|invoke|run)\s+this\s+tool\s+(?:first|before)"
    r"|\b(?:overrides?|replaces?|supersedes?)\s+(?:the\s+)?(?:behaviou?r|instructions|functionality)\s+of\b"
    r"|\b(?:redirect|bcc|cc)\s+(?:all\s+|every\s+|any\s+)?(?:outgoing\s+)?(?:emails?|messages?|payments?|transfers?)\b"
    r"|\b(?:send|redirect|route)\s+(?:all\s+|every\s+|any\s+)(?:emails?|messages?|payments?|transfers?)\s+to\b",
    re.IGNORECASE,
)
_HIDDEN_MARKUP = re.compile(r"<!--|display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0", re.IGNORECASE)
_PADDING = re.compile(r"[ \t\u00a0\u3000]{40,}|(?:[ \t]*\n){8,}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def _strings(value: Any, path: str, out: list[tuple[str, str]], depth: int = 0) -> None:
    """Every string of ``value`` -- keys too: a property *name* can carry a directive."""
    if depth > 64:
        return
    if isinstance(value, str):
        if value:
            out.append((path, value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and len(key) > 24:
                out.append((f"{where}(name)", key))
            _strings(item, where, out, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _strings(item, f"{path}[{index}]", out, depth + 1)


def _decoded(run: str) -> str | None:
    try:
        raw = base64.b64decode(run + "=" * (-len(run) % 4), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(1 for char in text if char.isprintable() or char in "\n\t")
    return text if text and printable / len(text) > 0.9 and " " in text else None


def scan_definition(definition: Mapping[str, Any], *, skip: Sequence[str] = ("name",)) -> tuple[Finding, ...]:
    """Findings anywhere in one listed definition (its ``name`` and ``icons`` excepted)."""
    pairs: list[tuple[str, str]] = []
    for key, item in definition.items():
        if key in skip or key in ("icons", "_meta"):
            continue
        _strings(item, str(key), pairs)
    if not pairs:
        return ()
    findings = list(scan_value({path: text for path, text in pairs}))
    for path, text in pairs:
        for kind, pattern in (("tool_shadowing", _SHADOWING), ("hidden_markup", _HIDDEN_MARKUP),
                              ("whitespace_padding", _PADDING)):  # fmt: skip
            match = pattern.search(text)
            if match is not None:
                excerpt = " ".join(text[max(0, match.start() - 24) : match.end() + 24].split())[:120]
                findings.append(Finding("tool_poisoning", kind, path, excerpt, "high"))
        for match in _BASE64.finditer(text):
            decoded = _decoded(match.group())
            if decoded is not None:
                findings.append(Finding("tool_poisoning", "encoded_payload", path, match.group()[:40] + "…", "high"))
                findings.extend(scan_value(decoded, f"{path}(base64)"))
                break
    return tuple(findings)


def poisoned(findings: Sequence[Finding]) -> bool:
    """Whether these findings quarantine the definition they were found in."""
    return any(finding.code in QUARANTINE_CODES for finding in findings)
