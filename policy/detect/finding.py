"""What a detector reports: :class:`Finding`, and one plain sentence about a set of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CODE_TEXT", "Finding", "describe_findings"]


@dataclass(frozen=True, slots=True)
class Finding:
    """Something suspicious at ``path``.

    ``code`` is prompt_injection, hidden_unicode, secret or tool_poisoning; ``kind`` says
    which pattern; ``severity`` ("high" or "medium") decides whether it denies by default
    (docs/detection.md). ``excerpt`` never contains a secret.
    """

    code: str
    kind: str
    path: str
    excerpt: str
    severity: str = "medium"

    def to_dict(self) -> dict[str, str]:
        return {
            "code": self.code, "kind": self.kind, "path": self.path, "excerpt": self.excerpt,
            "severity": self.severity,
        }  # fmt: skip


CODE_TEXT = {
    "prompt_injection": "an injection pattern",
    "hidden_unicode": "hidden Unicode",
    "secret": "a secret",
    "tool_poisoning": "a tool-poisoning pattern",
}


def describe_findings(findings: Sequence[Finding], subject: str = "Arguments") -> str:
    """One plain sentence: "Arguments contain an injection pattern (...) at arguments.body"."""
    if not findings:
        return f"{subject} contain no suspicious patterns."
    parts = [
        f"{CODE_TEXT.get(f.code, f.code)} ({f.kind}, {f.severity}) at {f.path or 'the top level'}"
        for f in findings[:5]
    ]
    more = f" and {len(findings) - 5} more" if len(findings) > 5 else ""
    return f"{subject} contain suspicious patterns: {'; '.join(parts)}{more}."
