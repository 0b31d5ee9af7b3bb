"""The audit log's public surface, in one import.

The pieces live in six modules, one concept each: ``event`` (the versioned envelope,
the builders, the hash), ``decision`` (the decision event of one call), ``log`` (the
``AuditSink`` seam and the embedded JSONL writer), ``head`` (the log's files, the head sidecar
and the tail scan), ``checkpoint`` (signed checkpoints and their sinks) and ``verify``
(verification and lookup). docs/audit.md is the format reference.
"""

from __future__ import annotations

from policy.audit.checkpoint import Checkpoint, CheckpointFile, CheckpointSink, read_checkpoint_file
from policy.audit.decision import decision_event
from policy.audit.event import (
    DECISION_FIELDS,
    EVENT_TYPES,
    GENESIS_HASH,
    SCHEMA,
    AuditError,
    event,
    redacted_payload,
)
from policy.audit.log import AuditSink, Head, JsonlAuditLog, log_files
from policy.audit.verify import PROBLEMS, BadEvent, VerifyReport, find_events, verify_log

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
