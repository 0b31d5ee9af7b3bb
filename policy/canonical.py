"""Canonical JSON and its digest: the one byte form of a policy that gets hashed and signed.

Sorted keys, no insignificant whitespace, UTF-8, no NaN/Infinity (they have no JSON form, so
two parties could not agree on their bytes).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_bytes", "canonical_json", "digest"]


def canonical_json(value: Any) -> str:
    """``value`` as sorted-key, compact JSON text; raises ValueError for NaN or infinities."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(value: Any) -> bytes:
    return canonical_json(value).encode("utf-8")


def digest(value: Any) -> str:
    """``"sha256:<hex>"`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_bytes(value)).hexdigest()
