"""The audit log's public surface, in one import.

The pieces live in three modules, one concept each: ``audit_event`` (the versioned
envelope, the builders, the hash), ``audit_log`` (the ``AuditSink`` seam and the embedded
JSONL writer) and ``audit_verify`` (verification and lookup). docs/audit.md is the format
reference.
"""

from __future__ import annotations

from policy.audit_event import (
    DECISION_FIELDS,
    EVENT_TYPES,
    GENESIS_HASH,
    SCHEMA,
    AuditError,
    decision_event,
    event,
    redacted_payload,
)
from policy.audit_log import AuditSink, Head, JsonlAuditLog, log_files
from policy.audit_verify import PROBLEMS, BadEvent, VerifyReport, find_events, verify_log

__all__ = [
    "DECISION_FIELDS",
    "EVENT_TYPES",
    "GENESIS_HASH",
    "PROBLEMS",
    "SCHEMA",
    "AuditError",
    "AuditSink",
    "BadEvent",
    "Head",
    "JsonlAuditLog",
    "VerifyReport",
    "decision_event",
    "event",
    "find_events",
    "log_files",
    "redacted_payload",
    "verify_log",
]
