"""Proposal text as reviewers and the audit log may see it: scanned, redacted, escaped.

A justification and a snippet are written by the model, for a person. Three things keep
that person safe:

- ``text_verdicts`` runs the argument detectors (``policy.scan_value``) over both and turns
  findings — prompt-injection phrasing, hidden characters, secrets — into one
  *non-blocking* verdict (``suspicious_text``, ``ok`` true): it changes no outcome, it tells
  the reviewer what to look at;
- ``redact_text`` masks secrets with the same public redaction API as call arguments
  (``policy.redact``), so what is stored and audited never holds a credential; the
  original's digest is kept (``original_digest``) so the raw text can be proven later;
- ``escape_invisible`` / ``reviewer_view`` make bidi overrides, zero-width and other
  invisible controls visible as ``<U+202E>`` in every reviewer view (API, CLI), so text
  cannot read differently from what it is.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from negotiation.guardrails import Verdict
from policy import scan_value
from policy.redact import digest, redact

__all__ = ["escape_invisible", "original_digest", "redact_text", "reviewer_view", "text_verdicts"]

_KEEP = frozenset("\n\t")
_MAX_SHOWN = 8


def _invisible(char: str) -> bool:
    if char in _KEEP:
        return False
    return unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp") or char in "\u115f\u1160\u3164\uffa0"


def escape_invisible(text: str) -> str:
    """``text`` with every control, format (bidi, zero-width) and private-use character
    written as ``<U+XXXX>``; newlines and tabs are kept."""
    if text.isprintable() and not any(_invisible(c) for c in text):
        return text
    return "".join(f"<U+{ord(c):04X}>" if _invisible(c) else c for c in text)


def reviewer_view(value: Any) -> Any:
    """``value`` (a proposal's JSON form) with every string escaped for a reviewer's eyes."""
    if isinstance(value, str):
        return escape_invisible(value)
    if isinstance(value, Mapping):
        return {escape_invisible(str(k)): reviewer_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [reviewer_view(v) for v in value]
    return value


def redact_text(text: str, field: str) -> tuple[str, bool]:
    """``text`` with secrets masked like call arguments, and whether anything was masked."""
    result = redact(text, root=field)
    value = result.value if isinstance(result.value, str) else str(result.value)
    return value, bool(result.masked_paths) or value != text


def original_digest(yaml_text: str, justification: str) -> str:
    """The digest of the text as the model sent it (``policy.redact.digest``)."""
    return digest({"yaml": yaml_text, "justification": justification})


def text_verdicts(yaml_text: str, justification: str) -> tuple[Verdict, ...]:
    """One non-blocking ``suspicious_text`` verdict if the detectors flag anything."""
    findings = scan_value({"justification": justification, "snippet": yaml_text}, "proposal")
    if not findings:
        return ()
    shown = sorted({f"{f.code} ({f.kind}) at {f.path}" for f in findings})
    more = len(shown) - _MAX_SHOWN
    listed = ", ".join(shown[:_MAX_SHOWN]) + (f" and {more} more" if more > 0 else "")
    return (
        Verdict(
            "suspicious_text",
            True,
            f"for the reviewer: the proposal's text was flagged ({listed}); read it as data, not instructions",
        ),
    )
