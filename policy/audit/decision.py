"""The ``decision`` event of one tools/call: arguments clipped and redacted, the decision masked.

The usual event holds no secret, so :func:`decision_event` builds it in one walk and hands the log a
:class:`~policy.audit.event.PlainEvent`; anything else takes :func:`redacted_decision_event`, the
full redaction of each part (and the reference the fast path is tested against). The envelope, the
byte form and the hash are :mod:`policy.audit.event`'s.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import fields
from operator import attrgetter
from typing import Any

import orjson

from policy.audit.event import _ORJSON_OPTIONS, SCHEMA, PlainEvent, new_event_id
from policy.decision import ApprovalRequirement, Counterfactual, Decision, TraceEntry
from policy.detect import Finding
from policy.detect.secrets import ANCHORS
from policy.redact import (
    MAX_DEPTH,
    collect_strings,
    digest,
    is_sensitive_key,
    redact,
    scrub_all,
    strings_contain_secret,
    strings_contain_secret_memo,
)
from policy.risk import RiskFactor

__all__ = ["MAX_STRING_BYTES", "clip_strings", "decision_event", "redacted_decision_event"]


MAX_STRING_BYTES = 16384
"""Longer argument strings are stored as a length and digest only (``arguments_digest`` still
covers the original): an audit line should not copy a multi-megabyte payload."""


def clip_strings(value: Any, limit: int, depth: int = 0) -> Any:
    """``value`` with every string longer than ``limit`` characters replaced by a marker."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"[clipped: {len(value)} chars, {digest(value)}]"
    if depth > 64:
        return value
    if isinstance(value, Mapping):
        return {k: clip_strings(v, limit, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clip_strings(v, limit, depth + 1) for v in value]
    return value



class _NotClean(Exception):
    """Raised by :func:`_clean` where the fast path of :func:`decision_event` does not apply."""


def _tame(number: float) -> bool:
    """Whether ``repr(number)`` has no exponent (and orjson spells it the same): see canonical_bytes."""
    return number == 0.0 or 1e-4 <= abs(number) < 1e16


def _clean(value: Any, strings: list[str], limit: int | None, redacting: bool, depth: int = 0) -> Any:
    """``value`` as plain data, clipped like :func:`clip_strings`, every string and key appended to
    ``strings``; raises :class:`_NotClean` wherever :func:`policy.redact.redact` could replace
    something for a reason other than a secret in a string (a sensitive key name when
    ``redacting``, a non-finite float, too deep a nesting, a key or value with no JSON form),
    and for a float outside :func:`_tame`. What it returns is then equal to what ``redact`` would
    return whenever none of ``strings`` holds a secret.

    Copy on write: a plain ``dict`` or ``list`` in which nothing was clipped or converted is
    returned as it is, not copied (the usual event: its decision, request and arguments). The
    event shares them with its caller, which hands it to the log at once; the log encodes it
    and keeps no reference."""
    kind = type(value)
    if kind is str:
        if limit is not None and len(value) > limit:
            value = f"[clipped: {len(value)} chars, {digest(value)}]"
        strings.append(value)
        return value
    if value is None or kind is bool or kind is int:
        return value
    if kind is dict or kind is list:  # the usual containers, without an ABC check per node
        if depth >= MAX_DEPTH:
            raise _NotClean
        if kind is list:
            items: list[Any] | None = None
            for index, item in enumerate(value):
                if type(item) is str and (limit is None or len(item) <= limit):
                    strings.append(item)
                    continue
                cleaned = _clean(item, strings, limit, redacting, depth + 1)
                if cleaned is not item:
                    if items is None:
                        items = list(value)
                    items[index] = cleaned
            return value if items is None else items
        out: dict[str, Any] | None = None
        for key, item in value.items():
            if type(key) is not str or (redacting and is_sensitive_key(key)):
                raise _NotClean
            strings.append(key)
            item_kind = type(item)
            if item_kind is str and (limit is None or len(item) <= limit):
                strings.append(item)
            elif item is None or item_kind is bool or item_kind is int:
                pass
            else:
                cleaned = _clean(item, strings, limit, redacting, depth + 1)
                if cleaned is not item:
                    if out is None:
                        out = dict(value)  # same order; later keys are overwritten in place
                    out[key] = cleaned
        return value if out is None else out
    if isinstance(value, str):
        if limit is not None and len(value) > limit:
            value = f"[clipped: {len(value)} chars, {digest(value)}]"
        strings.append(value)
        return value
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if _tame(value):
            return value
        raise _NotClean
    if isinstance(value, Mapping):
        return _clean(dict(value), strings, limit, redacting, depth)
    if isinstance(value, tuple | list):
        return _clean(list(value), strings, limit, redacting, depth)
    raise _NotClean


# Input schemas the event builder found plain (nothing clipped, no sensitive key, no odd value) and
# free of secrets, by identity (the object is held, so its id stays its own). A tool's schema is the
# catalog's object, the same on every call (policy.schema caches its validator the same way), and
# needs no walk and no scan again. Bounded; emptied when full.
_PLAIN_SCHEMAS: dict[int, tuple[Any, int]] = {}
_PLAIN_SCHEMAS_MAX = 1024


def _clean_request(extra: dict[str, Any], strings: list[str], limit: int) -> Any:
    """``_clean(extra, strings, limit, True)``, except that an input schema seen plain and secret-free
    before is not walked again and adds no string (``strings`` only feed the secret scan, which its
    strings pass)."""
    schema = extra.get("input_schema")
    if type(schema) is not dict:
        return _clean(extra, strings, limit, True)
    known = _PLAIN_SCHEMAS.get(id(schema))
    if known is None or known[0] is not schema or known[1] != limit:
        cleaned = _clean(extra, strings, limit, True)
        own: list[str] = []
        if cleaned is extra and _clean(schema, own, limit, True, 1) is schema and not strings_contain_secret_memo(own):
            if len(_PLAIN_SCHEMAS) >= _PLAIN_SCHEMAS_MAX:
                _PLAIN_SCHEMAS.clear()
            _PLAIN_SCHEMAS[id(schema)] = (schema, limit)
        return cleaned
    out: dict[str, Any] | None = None
    for key, item in extra.items():  # _clean's loop over a dict at depth 0, the schema stepped over
        if type(key) is not str or is_sensitive_key(key):
            raise _NotClean
        strings.append(key)
        if item is schema:
            continue
        kind = type(item)
        if kind is str and len(item) <= limit:
            strings.append(item)
        elif not (item is None or kind is bool or kind is int):
            cleaned = _clean(item, strings, limit, True, 1)
            if cleaned is not item:
                if out is None:
                    out = dict(extra)
                out[key] = cleaned
    return extra if out is None else out


# Decisions whose data the event builder found plain and secret-free: every field but the id (held, so
# the ids stay theirs), under the identity of their ``reasoning``. The engine's memoised decisions
# (policy.engine) share all of them, so the usual call's decision is walked once; the fields are compared
# as a tuple (identity first, as tuples compare, then equality: equal fields give an equal ``to_dict()``,
# so the same verdict).
_PLAIN_DECISIONS: dict[int, tuple[Any, ...]] = {}
_PLAIN_DECISIONS_MAX = 1024
_ALL_BUT_ID = attrgetter(*(f.name for f in fields(Decision)[1:]))
assert fields(Decision)[0].name == "decision_id"
_SCALARS = frozenset({str, bool, int, float, type(None)})


# A decision id as policy.decision.new_decision_id makes it (32 lower-case hex digits) holds no secret, so it
# needs no scan: every match of a secret scanner starts at one of its ANCHORS (policy.detect.secrets), and a
# string of hex digits can hold only an anchor made of hex digits alone; it has no ``\\``, ``%`` or ``+``,
# so no decoded view either. Decided at import from the anchors themselves (tests/policy/audit/test_event.py).
_IDS_CLEAN = not any(set(anchor) <= set("0123456789abcdef") for anchor in ANCHORS)
_HEX_ID = re.compile("[0-9a-f]{32}").fullmatch


def _clean_decision(decision: Any, source: Decision | None, strings: list[str]) -> Any:
    """``_clean(decision, strings, None, False)`` for ``decision = source.to_dict()``; when every field of
    ``source`` but its id is one of a decision seen plain and secret-free before, ``decision`` is that
    data with another id: only the id is added to ``strings`` (which only feed the secret scan), and not
    even the id when it is one the gateway made (:data:`_IDS_CLEAN`)."""
    if source is None or type(source) is not Decision:
        return _clean(decision, strings, None, False)
    decision_id = decision.get("decision_id") if type(decision) is dict else None
    rest = _ALL_BUT_ID(source)
    known = _PLAIN_DECISIONS.get(id(source.reasoning))
    if known is not None and type(decision_id) is str and known == rest:
        if not (_IDS_CLEAN and _HEX_ID(decision_id)):
            strings.append(decision_id)
        return decision
    cleaned = _clean(decision, strings, None, False)
    own: list[str] = []
    if (cleaned is decision and type(decision_id) is str and _frozen(source)
            and _clean(decision, own, None, False) is decision and not strings_contain_secret_memo(own)):
        if len(_PLAIN_DECISIONS) >= _PLAIN_DECISIONS_MAX:
            _PLAIN_DECISIONS.clear()
        _PLAIN_DECISIONS[id(source.reasoning)] = rest
    return cleaned


def _frozen(source: Decision) -> bool:
    """Whether ``source.to_dict()`` can never change: every field a scalar, a tuple of strings, or a tuple
    of frozen entries holding scalars (a suggested rule is a dict, and disqualifies)."""
    if any(type(getattr(source, name)) not in _SCALARS for name in _SCALAR_FIELDS):
        return False
    if not all(_strings_tuple(seq) for seq in (source.matched_rules, source.reasoning, source.errors)):
        return False
    for seq, kind in ((source.rule_trace, TraceEntry), (source.risk_factors, RiskFactor), (source.findings, Finding)):
        if type(seq) is not tuple or not all(type(item) is kind and _scalar_slots(item) for item in seq):
            return False
    counterfactual, approval = source.counterfactual, source.approval
    if counterfactual is not None and not (
        type(counterfactual) is Counterfactual and counterfactual.suggested_rule is None
        and type(counterfactual.text) is str and _strings_tuple(counterfactual.remove_rules)
    ):
        return False
    return approval is None or (
        type(approval) is ApprovalRequirement and _strings_tuple(approval.rules)
        and type(approval.approver) is str and type(approval.ttl) in _SCALARS
    )


_SCALAR_FIELDS = ("allowed", "reason", "reason_code", "deny_kind", "model", "tool", "risk_score", "policy_digest",
                  "kind")


def _strings_tuple(value: Any) -> bool:
    return type(value) is tuple and all(type(item) is str for item in value)


def _scalar_slots(item: Any) -> bool:
    return all(type(getattr(item, name)) in _SCALARS for name in type(item).__slots__)


def decision_event(
    *,
    decision: Mapping[str, Any],
    session_id: str | None,
    server: str,
    tool: str,
    arguments: Any,
    latency_ms: float,
    policy_version: int | None,
    request: Mapping[str, Any] | None = None,
    max_string_bytes: int = MAX_STRING_BYTES,
    source: Decision | None = None,
) -> dict[str, Any]:
    """The ``decision`` event for one tools/call, allowed or denied.

    ``arguments`` are stored redacted, with the digest of the original; the decision (a
    ``Decision.to_dict()``, reasoning and trace included) has secret-shaped text masked too,
    because reasons may quote argument values. ``request``, when given, is recorded redacted
    (without a second copy of the arguments) and may supply ``model``, ``decision_id`` and
    ``policy_digest`` when the decision lacks them.

    The usual event holds no secret: one walk copies and clips the arguments and the request
    and collects every string of the event, one scan of them all finds nothing, and the event
    is a :class:`PlainEvent`, equal to what the full redaction below would build (tested).
    Anything else (a secret, a sensitive key, an odd value) takes the full path. ``source``, when
    given, is the :class:`~policy.decision.Decision` whose ``to_dict()`` ``decision`` is: see
    :func:`_clean_decision`.
    """
    extra = dict(request) if request else {}
    if "arguments" in extra:
        del extra["arguments"]
    strings: list[str] = []
    try:
        arguments_value = _clean(arguments, strings, max_string_bytes, True)
        request_value = _clean_request(extra, strings, max_string_bytes) if extra else None
        decision_value = _clean_decision(decision, source, strings)
        decision_id = decision.get("decision_id") or extra.get("decision_id") or new_event_id()
        model = decision.get("model") or extra.get("model")
        policy_digest = decision.get("policy_digest") or extra.get("policy_digest")
        # The payload's strings; the decision's id is in ``strings`` already when it is the payload's (the usual case).
        own_id = decision_value.get("decision_id") if type(decision_value) is dict else None
        if (decision_id is own_id and type(decision_id) is str and type(model) is str and type(session_id) is str
                and type(server) is str and type(tool) is str and type(policy_digest) is str):  # the usual payload
            strings += (model, session_id, server, tool, policy_digest)
        else:
            for item in (decision_id, model, session_id, server, tool, policy_digest):
                if isinstance(item, str):
                    if item is not own_id:  # the decision's own id was walked (or is a gateway-made one) already
                        strings.append(item)
                elif item is not None:
                    raise _NotClean
        if not (policy_version is None or type(policy_version) is int):
            raise _NotClean
        if not (type(latency_ms) is float and _tame(latency_ms)) and (
                not isinstance(latency_ms, int | float) or (isinstance(latency_ms, float) and not _tame(latency_ms))):
            raise _NotClean
        if not strings_contain_secret_memo(strings):
            built = PlainEvent({
                "schema": SCHEMA, "event_id": new_event_id(), "type": "decision", "decision_id": decision_id,
                "model": model, "session": session_id, "server": server, "tool": tool, "arguments": arguments_value,
                "arguments_digest": _plain_digest(arguments), "masked": [], "decision": decision_value,
                "policy_digest": policy_digest, "policy_version": policy_version, "latency_ms": latency_ms,
            })
            if extra:
                built["request"] = request_value
            return built
    except _NotClean:
        pass
    return redacted_decision_event(
        decision=decision, session_id=session_id, server=server, tool=tool, arguments=arguments,
        latency_ms=latency_ms, policy_version=policy_version, request=request, max_string_bytes=max_string_bytes,
    )


def _plain_digest(arguments: Any) -> str:
    """:func:`policy.redact.digest` of ``arguments`` that :func:`_clean` accepted (plain, string keys,
    tame floats), where orjson's sorted UTF-8 is the very text ``digest`` hashes (property-tested);
    a lone surrogate, which orjson refuses, goes to ``digest`` itself."""
    try:
        return "sha256:" + hashlib.sha256(orjson.dumps(arguments, option=_ORJSON_OPTIONS)).hexdigest()
    except TypeError:
        return digest(arguments)


def redacted_decision_event(
    *,
    decision: Mapping[str, Any],
    session_id: str | None,
    server: str,
    tool: str,
    arguments: Any,
    latency_ms: float,
    policy_version: int | None,
    request: Mapping[str, Any] | None = None,
    max_string_bytes: int = MAX_STRING_BYTES,
) -> dict[str, Any]:
    """:func:`decision_event` by the full redaction of each part: what it builds when the event
    may hold a secret (and the reference its fast path is tested against)."""
    extra = dict(request or {})
    extra.pop("arguments", None)
    arguments_view = redact(clip_strings(arguments, max_string_bytes), root="arguments")
    request_view = redact(clip_strings(extra, max_string_bytes), root="request") if extra else None
    masked = list(arguments_view.masked_paths)
    hidden = arguments_view.hidden + (request_view.hidden if request_view else ())
    arguments_value: Any = arguments_view.value
    decision_value: Any = dict(decision)
    if masked or strings_contain_secret(collect_strings(decision_value, [])):
        # One scan of the whole decision is cheap; walking it string by string is not, so
        # that is done only when something in it (or in the arguments) needs masking.
        decision_view = redact(decision_value, root="decision", sensitive_keys=frozenset())
        decision_value = decision_view.value
        masked.extend(decision_view.masked_paths)
    request_value: Any = request_view.value if request_view is not None else None
    if hidden:
        # A value masked by key name (an Authorization header) is quoted again by a schema
        # violation message, a reason template or a risk factor: hide it there too. The
        # decision goes first: it is small, and the most likely to quote.
        parts = {"decision": decision_value, "arguments": arguments_value}
        if request_view is not None:
            parts["request"] = request_value
        scrubbed = scrub_all(parts, hidden)
        decision_value, arguments_value = scrubbed["decision"].value, scrubbed["arguments"].value
        masked.extend(scrubbed["decision"].masked_paths + scrubbed["arguments"].masked_paths)
        if "request" in scrubbed:
            request_value = scrubbed["request"].value
            masked.extend(scrubbed["request"].masked_paths)
    payload: dict[str, Any] = {
        "decision_id": decision.get("decision_id") or extra.get("decision_id") or new_event_id(),
        "model": decision.get("model") or extra.get("model"),
        "session": session_id,
        "server": server,
        "tool": tool,
        "arguments": arguments_value,
        "arguments_digest": digest(arguments),
        "masked": masked,
        "decision": decision_value,
        "policy_digest": decision.get("policy_digest") or extra.get("policy_digest"),
        "policy_version": policy_version,
        "latency_ms": latency_ms,
    }
    if request_view is not None:
        payload["request"] = request_value
        masked.extend(request_view.masked_paths)
    payload["masked"] = list(dict.fromkeys(masked))
    # The pieces are plain already (redact's output, the decision's dict); the log normalises
    # whatever it is given anyway, so no second jsonable walk here.
    return {"schema": SCHEMA, "event_id": new_event_id(), "type": "decision", **payload}

