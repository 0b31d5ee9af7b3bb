"""Audit events: the versioned envelope, the typed builders, and the hash that chains them.

An audit record is data, not a log line: one JSON object per event, with a fixed envelope
(``schema``, ``seq``, ``event_id``, ``type``, ``ts``, ``prev_hash``, ``hash``) and a typed
payload. The byte form is pinned here, for schema ``securegateway.audit/1``, rather than
borrowed from another module, so that nothing outside this file can silently change what a
verifier recomputes: an event is serialised as JSON with keys sorted at every level, no
insignificant whitespace, and every non-ASCII character written as a ``\\uXXXX`` escape (a
lone surrogate from the wire can then never make a write fail, and the bytes have one
encoding). ``hash`` is ``"sha256:" + hex(sha256(those bytes of the event without hash))``; the
line written to disk is the same form *with* ``hash``, so a line whose bytes differ from the
canonical form of what it parses to has been edited.

Errors::

    AuditError          anything the audit package refuses or fails to do; ``.code`` is one of
                        unknown_event_type, reserved_field, unserializable (building),
                        closed, locked, write_failed, read_failed (the log)
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Any

import orjson

from policy.audit.checkpoint import CheckpointSigner, sign_checkpoint
from policy.entropy import uuid4_text
from policy.redact import (
    collect_strings,
    mask_text,
    redact,
    scrub,
    strings_contain_secret,
)

__all__ = [
    "DECISION_FIELDS",
    "ENVELOPE_FIELDS",
    "EVENT_TYPES",
    "GENESIS_HASH",
    "HASH_SLOT",
    "SCHEMA",
    "SINK_FIELDS",
    "AuditError",
    "PlainEvent",
    "canonical_bytes",
    "canonical_event",
    "checkpoint_body",
    "envelope_problem",
    "event",
    "event_hash",
    "format_ts",
    "jsonable",
    "new_event_id",
    "now_ts",
    "plain_body",
    "prepare_body",
    "recovered_body",
    "redacted_payload",
    "reference_line",
    "scrub_event",
    "seal",
    "sealed_line",
    "ts_of",
]

SCHEMA = "securegateway.audit/1"
GENESIS_HASH = "sha256:" + "0" * 64

EVENT_TYPES: frozenset[str] = frozenset(
    {
        "decision",
        "result.flagged",
        # tool-definition review (proxy/tools/guard.py, docs/detection.md)
        "tool.quarantined",
        "tool.pinned",
        "tool.changed",
        "tool.unapproved",
        "tool.flagged",
        "tool.released",
        "proposal.proposed",
        "proposal.validated",
        "proposal.auto_reviewed",
        "proposal.approved",
        "proposal.rejected",
        "proposal.expired",
        "proposal.merge_intent",
        "proposal.merged",
        "proposal.merge_failed",
        "policy.activated",
        "policy.reload_failed",
        "gateway.started",
        "gateway.stopped",
        # The admin listener's Host/Origin guard refused a request (rate-limited; proxy/admin/guard.py).
        "admin.refused",
        # Per-call approvals (ask_tools), each naming the decision_id that asked; see docs/policy-language.md.
        "approval.requested",
        "approval.answered",
        "approval.expired",
        "approval.abandoned",
        "approval.consumed",
        # Written by the log itself when it reopens after a crash or finds its head sidecar
        # disagreeing with the file; see docs/audit.md.
        "audit.recovered",
        # A signed (seq, hash) of the event before it; see policy.audit.checkpoint.
        "audit.checkpoint",
    }
)

# In the order they are documented; the sink assigns seq, ts, prev_hash and hash.
ENVELOPE_FIELDS = ("schema", "seq", "event_id", "type", "ts", "prev_hash", "hash")

DECISION_FIELDS = (
    "decision_id",
    "model",
    "session",
    "server",
    "tool",
    "arguments",
    "arguments_digest",
    "masked",
    "decision",
    "policy_digest",
    "policy_version",
    "latency_ms",
)
_REQUIRED_PAYLOAD: dict[str, tuple[str, ...]] = {
    "decision": DECISION_FIELDS,
    "audit.recovered": ("reason", "torn_bytes", "torn_sha256", "sidecar"),
    "audit.checkpoint": ("checkpoint",),
}

_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_MAX_NESTING = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AuditError(Exception):
    """The audit log refused or failed an operation; ``code`` is stable, the message one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def format_ts(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds (``2025-01-31T12:00:00.000000Z``); naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if moment.year < 1000:  # strftime's %Y does not pad to four digits; isoformat would
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat, not strftime: the same text without libc's strftime (and its tzset) per event
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


# The second of the last ``now_ts`` and its text up to the microseconds, swapped as one tuple.
_STAMPED: tuple[int, str] = (-1, "")


def now_ts() -> str:
    """``format_ts(datetime.now(UTC))``, at a third of the cost: the text of the current second is
    kept, and only the microseconds are formatted per call (property-tested: :func:`ts_of`)."""
    return ts_of(time.time_ns() // 1000)


def ts_of(microseconds: int) -> str:
    """``format_ts`` of the moment ``microseconds`` after the Unix epoch (UTC), from the second's cached text."""
    global _STAMPED
    second = microseconds // 1_000_000
    stamped = _STAMPED
    if stamped[0] != second:
        stamped = _STAMPED = (second, format_ts(_EPOCH + timedelta(seconds=second))[:-7])
    # The six digits by slicing 1xxxxxx, not a ``:06d`` format: the same text, cheaper on a cold cache.
    return stamped[1] + str(microseconds - second * 1_000_000 + 1_000_000)[1:] + "Z"


def jsonable(value: Any, path: str = "$", depth: int = 0) -> Any:
    """A plain-JSON copy of ``value`` (tuples -> lists, keys -> str, non-finite floats -> str).

    Raises ``AuditError("unserializable")`` naming the field for anything else, so a
    builder bug fails loudly at the call site instead of writing an unreadable line.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > _MAX_NESTING:
        raise AuditError("unserializable", f"field `{path}` is nested deeper than {_MAX_NESTING} levels")
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, f"{path}.{key}", depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    raise AuditError("unserializable", f"field `{path}` has no json form ({type(value).__name__})")


class _NotPlain(Exception):
    """Raised by :func:`_plain`; :func:`jsonable` then names the offending field."""


def _plain(value: Any, strings: list[str] | None, depth: int) -> Any:
    """:func:`jsonable` without building a path per node, appending every string and key to ``strings``."""
    if isinstance(value, str):
        if strings is not None:
            strings.append(value)
        return value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > _MAX_NESTING:
        raise _NotPlain
    if isinstance(value, list | tuple):
        return [_plain(item, strings, depth + 1) for item in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            if strings is not None:
                strings.append(name)
            out[name] = _plain(item, strings, depth + 1)
        return out
    raise _NotPlain


def plain_body(event: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``event`` as plain JSON data (:func:`jsonable`) and every string and key of its payload.

    One walk serves both the log's normalisation and its secret check (:func:`scrub_event`).
    """
    strings: list[str] = []
    try:
        body = {
            (key if isinstance(key, str) else str(key)): _plain(value, None if key in ENVELOPE_FIELDS else strings, 1)
            for key, value in event.items()
        }
    except _NotPlain:
        jsonable(dict(event))  # raises AuditError naming the field
        raise  # pragma: no cover - jsonable refuses whatever _plain refused
    return body, strings


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
# Where orjson's output can differ from the canonical form, outside string literals: a float
# that ``repr`` writes with an exponent (``1e+16``, ``1e-05``; orjson ``1e16``, ``0.00001``).
_ODD_NUMBER = re.compile(rb"[0-9]e|0\.0000")


def canonical_bytes(value: Any, *, tame: bool = False) -> bytes:
    """``canonical_event(value).encode("ascii")`` for plain data, an order of magnitude faster.

    orjson encodes; its bytes are kept only where they are provably the canonical form:
    all ASCII without DEL (no character needed a ``\\uXXXX`` escape, which orjson never
    writes), no escaped quote (so splitting on ``"`` finds the string literals), and no
    number outside them that ``repr`` would spell differently. Anything else (non-ASCII
    text, exotic floats, integers past 64 bits, a lone surrogate, a non-plain value) is
    encoded by the reference :func:`canonical_event`, which also raises for what has no
    canonical form. ``value`` must be plain data (:func:`jsonable`): the reference refuses
    NaN and infinities, which orjson would write as ``null``. ``tame`` says every float in
    ``value`` is known to have no exponent in ``repr`` (a :class:`PlainEvent`), which skips
    the number check. Equality with the reference is property-tested.
    """
    try:
        out = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        return _dumps(value).encode("ascii")
    if not out.isascii() or b"\x7f" in out:
        return _dumps(value).encode("ascii")
    if tame or (b'\\"' not in out and _ODD_NUMBER.search(b"".join(out.split(b'"')[::2])) is None):
        return out
    return _dumps(value).encode("ascii")


# Stands for the ``hash`` member's value in the one encoding of an event (seal): orjson writes a
# control character only as a ``\\u`` escape, so this raw NUL byte occurs nowhere else in its output.
HASH_SLOT = orjson.Fragment(b"\x00")


def sealed_line(body: Mapping[str, Any], *, tame: bool = False) -> tuple[str, bytes]:
    """The ``hash`` of ``body`` (an event without one) and the line of the event with it.

    One encoding (:func:`seal`): the bytes hashed are exactly the line minus its ``"hash"``
    member. Equal to ``event_hash(body)`` and ``canonical_event({**body, "hash": ...})``
    (property-tested); ``tame`` as for :func:`canonical_bytes`.
    """
    sealed = seal({**body, "hash": HASH_SLOT}, tame=tame)
    if sealed is None:
        return reference_line(body)
    hashed, out, slot = sealed
    return hashed, b"".join((out[:slot], b'"', hashed.encode("ascii"), b'"', out[slot + 1 :], b"\n"))


def seal(slotted: Mapping[str, Any], *, tame: bool = False) -> tuple[str, bytes, int] | None:
    """The hash of an event and its one encoding, with :data:`HASH_SLOT` as the value of its ``hash``.

    orjson writes ``slotted`` once; the sorted keys put the ``hash`` member where it belongs,
    its value a placeholder byte at offset ``slot``. The bytes hashed are those without the
    member: the canonical form of the event without ``hash``, so its line is ``out`` with
    ``"<hash>"`` in the slot. orjson's bytes, DEL and non-ASCII text escaped (:func:`ascii_form`),
    are kept unless a number in them may be spelt otherwise than ``repr`` spells it (checked as
    :func:`canonical_bytes` checks, or known not to be when ``tame``); then, or when orjson refuses
    the value (a lone surrogate, an integer past 64 bits), None: the reference encoder must write
    the event (:func:`sealed_line` does).
    """
    try:
        out = orjson.dumps(slotted, option=_ORJSON_OPTIONS)
    except TypeError:
        return None
    if not out.isascii() or b"\x7f" in out:
        out = ascii_form(out)
    if not tame and (b'\\"' in out or _ODD_NUMBER.search(b"".join(out.split(b'"')[::2])) is not None):
        return None
    slot = out.index(b"\x00")
    start = slot - 7  # len(b'"hash":'): where the member starts, after a comma unless it comes first
    if out[start:slot] != b'"hash":':  # not the slot: a fragment of some other bytes (no plain data has one)
        return None
    view = memoryview(out)
    if out[start - 1] == 0x2C:  # ``,"hash":`` after the members before it
        digest = hashlib.sha256(view[: start - 1])
        digest.update(view[slot + 1 :])
    else:  # ``{"hash":`` then ``,`` and the members after it, or ``}``
        digest = hashlib.sha256(view[:start])
        digest.update(view[slot + 2 :] if out[slot + 1] == 0x2C else view[slot + 1 :])
    return "sha256:" + digest.hexdigest(), out, slot


def _json_escape(error: UnicodeError) -> tuple[str, int]:
    """The codec error handler of :func:`ascii_form`: a run of non-ASCII characters as ``json.dumps`` escapes it."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return encode_basestring_ascii(error.object[error.start : error.end])[1:-1], error.end


_JSON_ESCAPE = "securegateway.audit-json-escape"
codecs.register_error(_JSON_ESCAPE, _json_escape)


def ascii_form(out: bytes) -> bytes:
    """orjson's UTF-8 ``out`` with DEL and every non-ASCII character written as ``json.dumps`` writes them.

    Outside its string literals orjson writes only ASCII; inside them it escapes what ``json.dumps``
    escapes below DEL (``"``, ``\\``, control characters, the same spellings: canonical_bytes' tests), and
    writes the rest raw. Escaping those with the very function ``json.dumps(ensure_ascii=True)`` uses
    (``\\uXXXX``, astral characters as surrogate pairs) gives the canonical form: keys sort alike, since
    UTF-8's byte order is code-point order (property-tested against the reference). The ASCII encoder
    hands each run of other characters to the escaper, so mostly-ASCII text costs little more than ASCII."""
    if b"\x7f" in out:  # orjson writes DEL only inside a string, raw
        out = out.replace(b"\x7f", b"\\u007f")
    if out.isascii():
        return out
    return out.decode("utf-8").encode("ascii", _JSON_ESCAPE)


def reference_line(body: Mapping[str, Any]) -> tuple[str, bytes]:
    """:func:`sealed_line` by the reference encoder: for what :func:`seal` does not write (exotic numbers,
    integers past 64 bits, a lone surrogate); raises ``TypeError`` or ``ValueError`` for what has no
    canonical form."""
    rest = {key: value for key, value in body.items() if key != "hash"}
    hashed = "sha256:" + hashlib.sha256(_dumps(rest).encode("ascii")).hexdigest()
    return hashed, _dumps({**rest, "hash": hashed}).encode("ascii") + b"\n"


def canonical_event(event: Mapping[str, Any]) -> str:
    """The one text form of ``event``: sorted keys at every level, compact, ASCII only."""
    return _dumps(event)


def event_hash(event: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical form of ``event`` without its ``hash`` field."""
    body = {key: value for key, value in event.items() if key != "hash"}
    return "sha256:" + hashlib.sha256(canonical_event(body).encode("ascii")).hexdigest()


def envelope_problem(event: Any) -> str | None:
    """Why ``event`` (parsed from a line) is not a well-formed schema-1 event, or None."""
    if not isinstance(event, dict):
        return "line is not a json object"
    if event.get("schema") != SCHEMA:
        return f"unsupported schema `{event.get('schema')}`"
    missing = [name for name in ENVELOPE_FIELDS if name not in event]
    if missing:
        return "missing envelope field " + ", ".join(f"`{name}`" for name in missing)
    seq = event["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "`seq` is not a positive integer"
    if event["type"] not in EVENT_TYPES:
        return f"unknown event type `{event['type']}`"
    if not isinstance(event["event_id"], str) or not event["event_id"]:
        return "`event_id` is not a non-empty string"
    if not isinstance(event["ts"], str) or not _TS.fullmatch(event["ts"]):
        return "`ts` is not rfc 3339 utc with microseconds"
    for name in ("prev_hash", "hash"):
        if not isinstance(event[name], str) or not _HASH.fullmatch(event[name]):
            return f"`{name}` is not sha256:<64 hex>"
    missing = [name for name in _REQUIRED_PAYLOAD.get(event["type"], ()) if name not in event]
    if missing:
        return f"`{event['type']}` event lacks " + ", ".join(f"`{name}`" for name in missing)
    return None


def new_event_id() -> str:
    """A fresh random event id: ``str(uuid.uuid4())``, made in batches (policy.entropy)."""
    return uuid4_text()


def event(type: str, **payload: Any) -> dict[str, Any]:
    """A schema-1 event of ``type`` with ``payload``; the sink adds seq, ts and the hashes."""
    if type not in EVENT_TYPES:
        raise AuditError("unknown_event_type", f"unknown audit event type `{type}`")
    reserved = sorted(set(payload) & set(ENVELOPE_FIELDS))
    if reserved:
        raise AuditError("reserved_field", f"payload field `{reserved[0]}` is part of the envelope")
    return {"schema": SCHEMA, "event_id": new_event_id(), "type": type, **jsonable(payload)}


def redacted_payload(payload: Mapping[str, Any], *, root: str = "") -> dict[str, Any]:
    """``payload`` redacted (policy.redact rules) plus ``masked``: the paths that were replaced.

    For events whose payload carries model- or user-supplied text (a proposal's
    justification, say): ``event("proposal.proposed", **redacted_payload(proposal))``.
    """
    result = redact(dict(payload), root=root)
    value = result.value
    masked = list(result.masked_paths)
    if result.hidden:  # a value masked by key may be quoted in the free text next to it
        scrubbed = scrub(value, result.hidden, root=root)
        value = scrubbed.value
        masked.extend(path for path in scrubbed.masked_paths if path not in masked)
    return {**value, "masked": masked}


def _mask_strings(value: Any, path: str, masked: list[str], depth: int = 0) -> Any:
    if isinstance(value, str):
        out, kinds = mask_text(value)
        if kinds:
            masked.append(path)
        return out
    if depth > _MAX_NESTING:
        return value
    if isinstance(value, dict):
        out_map: dict[str, Any] = {}
        for key, item in value.items():
            safe_key, kinds = mask_text(key)
            if kinds:
                masked.append(f"{path}.{safe_key}")
            out_map[safe_key] = _mask_strings(item, f"{path}.{safe_key}", masked, depth + 1)
        return out_map
    if isinstance(value, list):
        return [_mask_strings(item, f"{path}[{index}]", masked, depth + 1) for index, item in enumerate(value)]
    return value


def scrub_event(body: dict[str, Any], strings: list[str] | None = None) -> dict[str, Any]:
    """``body`` (plain JSON data) with every secret left in any payload string masked.

    The last line of defence, run by the log on every event whatever built it: one scan of
    its strings together (``strings``, from :func:`plain_body`, or collected here) decides
    whether any needs masking, so a clean event costs one pass. Paths of what it masked are
    added to ``masked``.
    """
    if strings is None:
        strings = []
        for key, value in body.items():
            if key not in ENVELOPE_FIELDS:
                collect_strings(value, strings)
    if not strings_contain_secret(strings):
        return body
    masked: list[str] = []
    out = {
        key: value if key in ENVELOPE_FIELDS else _mask_strings(value, key, masked)
        for key, value in body.items()
    }
    if masked:
        previous = out.get("masked")
        known = list(previous) if isinstance(previous, list) else []
        out["masked"] = known + [path for path in masked if path not in known]
    return out


class PlainEvent(dict[str, Any]):
    """An event whose builder made it plain JSON data, with every number spelt as ``repr``
    spells it without an exponent, and found no secret in any of its strings.

    The log writes it without walking it again (no normalisation, no secret scan, no float
    check). Only the builders of this package make one (policy.audit.decision); nothing may change
    it afterwards.
    """

    __slots__ = ()


SINK_FIELDS = frozenset({"seq", "ts", "prev_hash", "hash"})
"""Fields the log assigns as it chains an event: an event that brings its own is refused."""


def prepare_body(event: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The body a log writes for ``event`` and whether it is a :class:`PlainEvent` (plain, scanned,
    tame numbers); AuditError when the event is not one a log may write."""
    if (isinstance(event, PlainEvent) and "schema" in event and "event_id" in event
            and event.get("type") in EVENT_TYPES and "seq" not in event and "ts" not in event
            and "prev_hash" not in event and "hash" not in event):
        return event, True  # its builder walked and scanned it already: written as it is, uncopied
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise AuditError("unknown_event_type", f"unknown audit event type `{kind}`")
    reserved = sorted(SINK_FIELDS & event.keys())
    if reserved:
        raise AuditError("reserved_field", f"field `{reserved[0]}` is assigned by the audit log")
    plain = isinstance(event, PlainEvent)
    if plain:
        body = dict(event)
    else:
        body, strings = plain_body(event)
    body.setdefault("schema", SCHEMA)
    if "event_id" not in body:
        body["event_id"] = new_event_id()
    if body["schema"] != SCHEMA:
        raise AuditError("reserved_field", f"unsupported schema `{body['schema']}`")
    # Whatever built the event, no secret the scanners know reaches the file.
    return (body, True) if plain else (scrub_event(body, strings), False)


def recovered_body(reason: str, torn: bytes, sidecar: dict[str, Any] | None) -> dict[str, Any]:
    """The ``audit.recovered`` event a log writes when it opens on a tail it cannot continue as
    is: why (``reason``), the torn fragment it set aside (its size and digest, never its bytes),
    and what the head sidecar named."""
    return {
        "schema": SCHEMA,
        "event_id": new_event_id(),
        "type": "audit.recovered",
        "reason": reason,
        "torn_bytes": len(torn),
        "torn_sha256": "sha256:" + hashlib.sha256(torn).hexdigest() if torn else None,
        "sidecar": sidecar,
    }


def checkpoint_body(signer: CheckpointSigner, seq: int, head_hash: str) -> dict[str, Any]:
    """The ``audit.checkpoint`` event: ``signer``'s signature over the head ``(seq, head_hash)``."""
    checkpoint = sign_checkpoint(signer, seq, head_hash)
    return {"schema": SCHEMA, "event_id": new_event_id(), "type": "audit.checkpoint",
            "checkpoint": checkpoint.to_dict()}
