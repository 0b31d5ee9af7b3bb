"""The audit log's public surface, in one import.

The pieces live in four modules, one concept each: ``audit_event`` (the versioned
envelope, the builders, the hash), ``audit_log`` (the ``AuditSink`` seam and the embedded
JSONL writer), ``audit_checkpoint`` (signed checkpoints and their sinks) and
``audit_verify`` (verification and lookup). docs/audit.md is the format reference.
"""

from __future__ import annotations

from policy.audit_checkpoint import Checkpoint, CheckpointFile, CheckpointSink, read_checkpoint_file
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
    "Checkpoint",
    "CheckpointFile",
    "CheckpointSink",
    "Head",
    "JsonlAuditLog",
    "VerifyReport",
    "decision_event",
    "event",
    "find_events",
    "log_files",
    "read_checkpoint_file",
    "redacted_payload",
    "verify_log",
]
