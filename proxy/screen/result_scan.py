"""Scanning what upstreams send towards the client, in the configured ``result_scan`` mode.

Every upstream -> client payload goes through :func:`scan_payload`: tool results, prompt
messages, resource contents, completion values, and the ``sampling/createMessage`` /
``elicitation/create`` requests an upstream sends to the client. The whole payload is
scanned - every string at any depth, ``_meta`` and fields the protocol does not define
included - through the public :func:`policy.scan_value` detectors, and findings are reported
at their JSON path (``content[0].text``, ``_meta.note``, ``messages[1].content.text``).

Modes (``[gateway] result_scan``):

* ``off``    - nothing is scanned;
* ``flag``   - findings are audited (``result.flagged``); the payload passes, except that
  hidden-Unicode payloads (tag characters, variation-selector runs, bidi overrides ...) are
  removed from the strings that carry them (legitimate ZWJ/ZWNJ/LRM uses are kept);
* ``redact`` - every string with a finding is replaced by :data:`WITHHELD`, the rest passes;
* ``block``  - a payload with any finding does not reach the client at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from policy import Finding, scan_value, strip_hidden

__all__ = ["MODES", "WITHHELD", "ScanOutcome", "finding_summary", "scan_payload"]

MODES = ("off", "flag", "redact", "block")
WITHHELD = "[securegateway: withheld: suspicious content]"
_MAX_DEPTH = 256


@dataclass(frozen=True)
class ScanOutcome:
    """What the scan found and what may be sent on: ``payload`` is None when blocked."""

    payload: Any
    findings: tuple[Finding, ...]

    @property
    def blocked(self) -> bool:
        return self.payload is None


def scan_payload(payload: Any, mode: str, root: str = "", extra: tuple[Finding, ...] = ()) -> ScanOutcome:
    """Scan ``payload`` in ``mode``; the input is never mutated.

    ``extra`` are findings of detectors outside :func:`policy.scan_value` (the classifier),
    acted on like its own.
    """
    if mode == "off":
        return ScanOutcome(payload, ())
    findings = scan_value(payload, root) + extra
    if not findings:
        return ScanOutcome(payload, ())
    if mode == "block":
        return ScanOutcome(None, findings)
    if mode == "redact":
        flagged = frozenset(finding.path for finding in findings)
        return ScanOutcome(_withhold(payload, root, flagged, 0), findings)
    hidden = frozenset(finding.path for finding in findings if finding.code == "hidden_unicode")
    if hidden:  # detect helper: smuggled characters never reach the model by default
        return ScanOutcome(_withhold(payload, root, hidden, 0, strip_hidden), findings)
    return ScanOutcome(payload, findings)


def finding_summary(findings: tuple[Finding, ...]) -> list[dict[str, str]]:
    """Findings without excerpts: what the client's ``_meta`` and the audit event carry."""
    return [{"code": f.code, "kind": f.kind, "path": f.path} for f in findings]


def _withhold(
    value: Any, path: str, flagged: frozenset[str], depth: int, replace: Callable[[str], str] | None = None
) -> Any:
    """A copy of ``value`` with every flagged string (by its scan path) replaced (by
    :data:`WITHHELD`, or by ``replace(string)``)."""
    if isinstance(value, str):
        if path not in flagged:
            return value
        return WITHHELD if replace is None else replace(value)
    if depth > _MAX_DEPTH:
        return WITHHELD  # deeper than is worth walking: withhold the subtree (fail closed)
    if isinstance(value, Mapping):
        prefix = f"{path}." if path else ""
        return {key: _withhold(item, f"{prefix}{key}", flagged, depth + 1, replace) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_withhold(item, f"{path}[{index}]", flagged, depth + 1, replace) for index, item in enumerate(value)]
    return value
