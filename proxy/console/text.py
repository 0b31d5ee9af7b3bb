"""Showing untrusted text: proposals, justifications and arguments come from models.

Autoescaping stops markup; it does not stop a right-to-left override (U+202E) from making a
snippet read differently from what it does, or a zero-width character from hiding in a tool
name. ``show`` escapes HTML and then writes every control, format (bidi, zero-width, tag),
private-use, surrogate and line/paragraph-separator character as a visible ``\\u{XXXX}``
escape, so a reviewer sees exactly the code points that were sent.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from markupsafe import Markup, escape

__all__ = ["is_hidden", "show", "show_json"]

_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp", "Cn"})
_KEPT = frozenset("\n\t")


def is_hidden(char: str) -> bool:
    return char not in _KEPT and unicodedata.category(char) in _HIDDEN_CATEGORIES


def show(value: Any) -> Markup:
    """``value`` as safe HTML with hidden characters made visible."""
    text = value if isinstance(value, str) else str(value)
    if not any(is_hidden(c) for c in text):
        return escape(text)
    parts: list[str] = []
    for char in text:
        if is_hidden(char):
            parts.append(f'<span class="esc" title="hidden character">\\u{{{ord(char):04X}}}</span>')
        else:
            parts.append(str(escape(char)))
    return Markup("".join(parts))


def show_json(value: Any) -> Markup:
    """Pretty JSON of ``value`` (non-ASCII kept so hidden characters reach ``show``)."""
    return show(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str))
