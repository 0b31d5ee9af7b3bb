"""Tool-definition scanning, quarantine and pinning: what an upstream lists must earn trust.

Every tool, prompt and resource template an upstream lists is reviewed when a catalog
reads a fresh list (at session start and after every ``list_changed``):

1. the definition is scanned (:func:`policy.scan_definition`); with
   ``[detectors] tool_scan = "quarantine"`` (the default) a flagged definition is
   **quarantined** -- not listed, calls denied with ``tool_quarantined`` -- unless an
   operator released exactly this definition (by digest);
2. the digest of its canonical form (sorted-key JSON without ``_meta``) is compared with
   its **pin**: the first trusted definition is pinned (``tool_pinning = "tofu"``) or waits
   for an operator (``"approve"``: status ``unapproved``); a different digest later
   suspends it as ``changed``, with a diff of old and new, until an operator releases it.

Transitions are audited (``tool.quarantined``, ``tool.pinned``, ``tool.changed``,
``tool.unapproved``, ``tool.flagged``, ``tool.released``) and announced to listeners (the
gateway tells its clients ``list_changed``). State lives in a :class:`ToolStore`, so pins,
quarantines and releases survive restarts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from policy import scan_definition
from policy.detect import poisoned
from proxy.config import DetectorsConfig
from proxy.tools.store import ToolRecord, ToolStore

__all__ = ["GuardError", "ToolGuard", "canonical_digest", "guard_key"]

log = structlog.get_logger("securegateway.tool_guard")

AuditSync = Callable[[str, Mapping[str, Any]], None]
_MAX_DIFF = 4000


class GuardError(Exception):
    """An operator request the guard cannot honour; ``code`` is stable (not_found, not_suspended)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def guard_key(kind: str, upstream: str, name: str) -> str:
    """The store key: ``files.read``, ``prompt:files.summarise``, ``template:files:file:///{p}``."""
    if kind == "tool":
        return f"{upstream}.{name}"
    if kind == "prompt":
        return f"prompt:{upstream}.{name}"
    return f"template:{upstream}:{name}"


def _canonical(definition: Mapping[str, Any]) -> str:
    body = {key: value for key, value in definition.items() if key != "_meta"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_digest(definition: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(definition).encode("utf-8")).hexdigest()


def _diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    def lines(value: Mapping[str, Any] | None) -> list[str]:
        if value is None:
            return []
        body = {key: item for key, item in value.items() if key != "_meta"}
        return json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False, default=str).splitlines()

    text = "\n".join(difflib.unified_diff(lines(old), lines(new), "pinned", "listed", lineterm=""))
    return text if len(text) <= _MAX_DIFF else text[:_MAX_DIFF] + "\n… (diff truncated)"


class ToolGuard:
    """Reviews listed definitions and answers whether a tool is suspended; shared by all sessions."""

    def __init__(
        self,
        store: ToolStore,
        config: DetectorsConfig,
        *,
        audit: AuditSync | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.config = config
        self._audit = audit or (lambda _type, _payload: None)
        self._clock = clock
        self._records: dict[str, ToolRecord] = {record.name: record for record in store.all()}
        self._listeners: list[Callable[[ToolRecord], None]] = []

    def subscribe(self, listener: Callable[[ToolRecord], None]) -> None:
        """Call ``listener`` after every change of a record's status (quarantine, release ...)."""
        self._listeners.append(listener)

    # ---- catalog side ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.config.tool_scan != "off" or self.config.tool_pinning != "off"

    def review(self, kind: str, key: str, definition: Mapping[str, Any]) -> ToolRecord:
        """Scan and pin-check one listed definition; return its (possibly new) record."""
        self._refresh()
        digest = canonical_digest(definition)
        previous = self._records.get(key)
        if previous is not None and previous.digest == digest:
            return previous  # seen exactly this definition: nothing new to decide
        findings = scan_definition(definition) if self.config.tool_scan != "off" else ()
        found = tuple(finding.to_dict() for finding in findings)
        flagged = poisoned(findings)
        released = previous is not None and previous.released_digest == digest
        pinned = previous.pinned_digest if previous is not None else None
        base = ToolRecord(
            name=key, kind=kind, status="trusted", digest=digest, definition=dict(definition),
            pinned_digest=pinned, pinned_definition=previous.pinned_definition if previous else None,
            released_digest=previous.released_digest if previous else None, findings=found,
            updated_at=self._clock(),
        )  # fmt: skip
        event: str | None = None
        rug_pull = self.config.tool_pinning != "off" and pinned is not None and pinned != digest
        if rug_pull and not released:  # changed after it was trusted; findings ride along
            diff = _diff(previous.pinned_definition if previous else None, definition)
            record, event = base.with_(status="changed", diff=diff), "tool.changed"
        elif flagged and self.config.tool_scan == "quarantine" and not released:
            record, event = base.with_(status="quarantined"), "tool.quarantined"
        elif self.config.tool_pinning == "off":
            record = base
            event = "tool.flagged" if flagged and not released else None
        elif pinned is None:
            if self.config.tool_pinning == "approve" and not released:
                record, event = base.with_(status="unapproved", diff=_diff(None, definition)), "tool.unapproved"
            else:
                record, event = base.with_(pinned_digest=digest, pinned_definition=dict(definition)), "tool.pinned"
        else:
            record = base
            if flagged and not released:
                event = "tool.flagged"
        self._save(record, event, previous)
        if flagged and not released and event != "tool.flagged" and not record.suspended:
            self._audit("tool.flagged", {  # tool_scan = "flag": listed, but on the record
                "tool": key, "kind": kind, "status": record.status, "digest": digest,
                "findings": [{k: f[k] for k in ("code", "kind", "path", "severity")} for f in found],
            })  # fmt: skip
        return record

    def suspended(self, key: str) -> ToolRecord | None:
        """The record of ``key`` when it is suspended (quarantined, changed, unapproved), else None."""
        self._refresh()
        record = self._records.get(key)
        return record if record is not None and record.suspended else None

    # ---- operator side ---------------------------------------------------------------------------

    def records(self) -> list[ToolRecord]:
        self._refresh()
        return sorted(self._records.values(), key=lambda record: record.name)

    def get(self, key: str) -> ToolRecord:
        self._refresh()
        record = self._records.get(key)
        if record is None:
            raise GuardError("not_found", f"no listed tool, prompt or template `{key}`")
        return record

    def release(self, key: str, *, by: str = "operator") -> ToolRecord:
        """Trust the definition now listed: pin it and accept its findings (by digest)."""
        record = self.get(key)
        if not record.suspended:
            raise GuardError("not_suspended", f"`{key}` is not quarantined, changed or awaiting approval")
        released = record.with_(
            status="trusted", pinned_digest=record.digest, pinned_definition=record.definition,
            released_digest=record.digest, diff="", updated_at=self._clock(),
        )  # fmt: skip
        self._save(released, "tool.released", record, by=by)
        return released

    # ---- internals -------------------------------------------------------------------------------

    def _refresh(self) -> None:
        if not self._store.changed():
            return
        # Another process (the `securegateway tools` CLI) wrote: reload, and audit and
        # announce what it changed, since only this process may write the audit log.
        old, self._records = self._records, {record.name: record for record in self._store.all()}
        for name, record in self._records.items():
            before = old.get(name)
            if before is not None and before.status != record.status:
                self._audit("tool.released" if not record.suspended else f"tool.{record.status}", {
                    "tool": name, "kind": record.kind, "status": record.status, "digest": record.digest,
                    "by": "securegateway tools (another process)",
                })  # fmt: skip
                for listener in self._listeners:
                    listener(record)

    def _save(
        self, record: ToolRecord, event: str | None, previous: ToolRecord | None, *, by: str | None = None
    ) -> None:
        self._store.put(record)
        self._records[record.name] = record
        if event is None:
            return
        payload: dict[str, Any] = {
            "tool": record.name, "kind": record.kind, "status": record.status, "digest": record.digest,
            "pinned_digest": record.pinned_digest,
            "findings": [{k: f[k] for k in ("code", "kind", "path", "severity") if k in f} for f in record.findings],
        }  # fmt: skip
        if record.diff:
            payload["diff"] = record.diff
        if by is not None:
            payload["by"] = by
        (log.warning if record.suspended else log.info)(event, tool=record.name, status=record.status)
        self._audit(event, payload)
        # Listeners re-announce tool lists: only a change in what is listed counts (a tool
        # pinned on first use was listed already, so pinning alone says nothing).
        was_suspended = previous is not None and previous.suspended
        if was_suspended != record.suspended:
            for listener in self._listeners:
                listener(record)
