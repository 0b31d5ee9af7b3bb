"""policy.audit.event: the envelope, the builders, the pinned hash form."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.audit.decision import decision_event
from policy.audit.event import (
    DECISION_FIELDS,
    GENESIS_HASH,
    SCHEMA,
    AuditError,
    canonical_bytes,
    canonical_event,
    envelope_problem,
    event,
    event_hash,
    format_ts,
    jsonable,
    plain_body,
    redacted_payload,
    sealed_line,
)
from policy.decision import Counterfactual, Decision, TraceEntry
from policy.detect import Finding
from policy.redact import digest
from policy.risk import RiskFactor

AWS = "AKIAIOSFODNN7EXAMPLE"


def make_decision(**overrides: Any) -> dict[str, Any]:
    decision = {
        "decision_id": "dec-1",
        "model": "claude",
        "effect": "deny",
        "reason_code": "rule_deny",
        "reasoning": [f"argument `key` was `{AWS}`, which looks like a credential"],
        "policy_digest": "sha256:" + "ab" * 32,
    }
    return decision | overrides


def test_event_carries_schema_type_and_a_fresh_id() -> None:
    first = event("gateway.started", version="0.1.0")
    second = event("gateway.started", version="0.1.0")
    assert first["schema"] == SCHEMA == "securegateway.audit/1"
    assert first["type"] == "gateway.started"
    assert first["version"] == "0.1.0"
    assert first["event_id"] != second["event_id"]


def test_event_refuses_unknown_types_and_envelope_fields() -> None:
    with pytest.raises(AuditError) as unknown:
        event("decison")
    assert unknown.value.code == "unknown_event_type"
    with pytest.raises(AuditError) as reserved:
        event("gateway.started", seq=4)
    assert reserved.value.code == "reserved_field"
    assert str(reserved.value) == "payload field `seq` is part of the envelope"


def test_decision_event_has_every_documented_field() -> None:
    built = decision_event(
        decision=make_decision(),
        session_id="sess-1",
        server="fs",
        tool="read_file",
        arguments={"path": "/etc/hosts"},
        latency_ms=0.42,
        policy_version=7,
    )
    assert set(DECISION_FIELDS) <= set(built)
    assert built["type"] == "decision"
    assert built["decision_id"] == "dec-1"
    assert built["model"] == "claude"
    assert built["session"] == "sess-1"
    assert (built["server"], built["tool"]) == ("fs", "read_file")
    assert built["policy_digest"] == "sha256:" + "ab" * 32
    assert built["policy_version"] == 7
    assert built["latency_ms"] == 0.42
    assert built["decision"]["effect"] == "deny"


def test_decision_event_stores_redacted_arguments_and_the_digest_of_the_original() -> None:
    arguments = {"api_key": "plain-value", "headers": {"Authorization": "Basic eA=="}, "note": f"id {AWS}"}
    built = decision_event(
        decision=make_decision(),
        session_id=None,
        server="http",
        tool="fetch",
        arguments=arguments,
        latency_ms=1.0,
        policy_version=None,
    )
    assert built["arguments"] == {
        "api_key": "[REDACTED]",
        "headers": {"Authorization": "[REDACTED]"},
        "note": "id [REDACTED:aws_access_key]",
    }
    assert built["arguments_digest"] == digest(arguments)
    assert "arguments.api_key" in built["masked"]
    assert "arguments.headers.Authorization" in built["masked"]
    assert "arguments.note" in built["masked"]
    assert arguments["api_key"] == "plain-value"  # the caller's arguments are untouched


def test_decision_reasoning_quoting_a_secret_is_masked_too() -> None:
    built = decision_event(
        decision=make_decision(),
        session_id="s",
        server="fs",
        tool="t",
        arguments={},
        latency_ms=1.0,
        policy_version=1,
    )
    assert AWS not in json.dumps(built)
    assert built["decision"]["reasoning"] == [
        "argument `key` was `[REDACTED:aws_access_key]`, which looks like a credential"
    ]
    assert "decision.reasoning[0]" in built["masked"]


def test_request_fills_missing_decision_fields_and_is_recorded_without_arguments() -> None:
    built = decision_event(
        decision={"effect": "allow"},
        session_id="s",
        server="fs",
        tool="t",
        arguments={"a": 1},
        latency_ms=1.0,
        policy_version=1,
        request={"model": "gpt", "policy_digest": "sha256:p", "arguments": {"a": 1}, "token": "t0k3n"},
    )
    assert built["model"] == "gpt"
    assert built["policy_digest"] == "sha256:p"
    assert built["decision_id"]  # generated when neither side has one
    assert built["request"] == {"model": "gpt", "policy_digest": "sha256:p", "token": "[REDACTED]"}
    assert "request.token" in built["masked"]


def test_redacted_payload_adds_the_masked_paths() -> None:
    payload = redacted_payload({"justification": f"needs {AWS}", "id": "p-1"})
    assert payload == {
        "justification": "needs [REDACTED:aws_access_key]",
        "id": "p-1",
        "masked": ["justification"],
    }
    assert event("proposal.proposed", **payload)["masked"] == ["justification"]


def test_event_hash_covers_everything_but_hash_and_ignores_key_order() -> None:
    body = {"b": 1, "a": {"y": [1, 2], "x": "é"}, "prev_hash": GENESIS_HASH}
    expected = hashlib.sha256(b'{"a":{"x":"\\u00e9","y":[1,2]},"b":1,"prev_hash":"' + GENESIS_HASH.encode() + b'"}')
    assert event_hash(body) == "sha256:" + expected.hexdigest()
    assert event_hash({**body, "hash": "anything"}) == event_hash(body)
    assert event_hash(dict(reversed(list(body.items())))) == event_hash(body)
    assert event_hash({**body, "b": 2}) != event_hash(body)


def test_canonical_form_is_ascii_even_for_lone_surrogates() -> None:
    text = canonical_event({"s": "naïve \ud800 ✓"})
    assert text == '{"s":"na\\u00efve \\ud800 \\u2713"}'
    text.encode("ascii")


def test_jsonable_normalises_tuples_keys_and_non_finite_floats() -> None:
    assert jsonable({"t": (1, 2), 3: float("inf"), "n": float("nan")}) == {"t": [1, 2], "3": "inf", "n": "nan"}


def test_jsonable_names_the_field_that_has_no_json_form() -> None:
    with pytest.raises(AuditError) as error:
        event("gateway.started", info={"when": [datetime.now(UTC)]})
    assert error.value.code == "unserializable"
    assert "`$.info.when[0]`" in str(error.value)


def test_timestamps_are_rfc3339_utc_with_microseconds() -> None:
    moment = datetime(2025, 1, 31, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert format_ts(moment) == "2025-01-31T12:00:00.000005Z"
    assert format_ts(datetime(2025, 1, 31, 12, 0)) == "2025-01-31T12:00:00.000000Z"


def well_formed() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "seq": 1,
        "event_id": "e",
        "type": "gateway.started",
        "ts": "2025-01-31T12:00:00.000000Z",
        "prev_hash": GENESIS_HASH,
        "hash": GENESIS_HASH,
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"schema": "securegateway.audit/2"}, "unsupported schema `securegateway.audit/2`"),
        ({"seq": 0}, "`seq` is not a positive integer"),
        ({"seq": True}, "`seq` is not a positive integer"),
        ({"type": "decison"}, "unknown event type `decison`"),
        ({"ts": "2025-01-31 12:00:00"}, "`ts` is not rfc 3339 utc with microseconds"),
        ({"hash": "md5:00"}, "`hash` is not sha256:<64 hex>"),
        ({"type": "decision"}, "`decision` event lacks `decision_id`"),
    ],
)
def test_envelope_problems_are_named(change: dict[str, Any], problem: str) -> None:
    assert envelope_problem(well_formed()) is None
    assert (envelope_problem({**well_formed(), **change}) or "").startswith(problem)


def test_a_missing_envelope_field_is_named() -> None:
    broken = well_formed()
    del broken["prev_hash"]
    assert envelope_problem(broken) == "missing envelope field `prev_hash`"
    assert envelope_problem([1]) == "line is not a json object"


# ---- one encoding per event: sealed_line, plain_body ----------------------------------------------

_keys = st.sampled_from(["a", "hash_", "has", "hasg", "hasi", "h", "z", "seq", "ts", "prev_hash", "arguments", "\u00e9",
                         "decision", "type", "0", "H", "hash\u0000"]) | st.text(max_size=6)
_plain_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(body=st.dictionaries(_keys.filter(lambda k: k != "hash"), _plain_values, max_size=8))
def test_sealed_line_is_the_canonical_line_and_hash_of_the_event(body: dict[str, Any]) -> None:
    hashed, line = sealed_line(body)
    assert hashed == event_hash(body)
    assert line == canonical_event({**body, "hash": hashed}).encode("ascii") + b"\n"
    assert canonical_event(json.loads(line)) == line[:-1].decode("ascii")  # what a verifier recomputes


def test_sealed_line_hashes_exactly_the_bytes_of_the_line_without_its_hash_member() -> None:
    hashed, line = sealed_line({"arguments": {"t": "\u00e9\ud800"}, "seq": 1, "type": "decision"})
    member = f',"hash":"{hashed}"'.encode()
    assert member in line
    assert hashed == "sha256:" + hashlib.sha256(line[:-1].replace(member, b"")).hexdigest()


@given(value=st.dictionaries(st.text(max_size=5), _plain_values | st.tuples(st.integers(), st.text(max_size=3)),
                             max_size=6))
def test_plain_body_is_jsonable_and_collects_every_payload_string(value: dict[str, Any]) -> None:
    from policy.redact import collect_strings

    event_ = {"schema": SCHEMA, "type": "decision", **value}
    body, strings = plain_body(event_)
    assert body == jsonable(event_)
    expected: list[str] = []
    for key, item in body.items():
        if key not in ("schema", "type", "seq", "event_id", "ts", "prev_hash", "hash"):
            collect_strings(item, expected)
    assert sorted(strings) == sorted(expected)


def test_plain_body_names_the_field_that_has_no_json_form() -> None:
    with pytest.raises(AuditError, match=r"`\$\.arguments\.blob`") as caught:
        plain_body({"type": "decision", "arguments": {"blob": b"raw"}})
    assert caught.value.code == "unserializable"


# ---- canonical_bytes: orjson where it is provably the canonical form ---------------------------------

_odd_chars = st.sampled_from(["\x7f", "\x00", '"', "\\", "\u2028", "\ud800"])
_odd_text = st.text(alphabet=st.characters(codec="utf-8") | _odd_chars, max_size=12)
_wide_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([1e-05, 1e-07, 1e16, 1e22, -0.0, 0.0001, 123456.789, 5e-324]), _odd_text,
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_odd_text, children, max_size=3),
    max_leaves=12,
)


@given(value=_wide_values)
def test_canonical_bytes_are_the_reference_canonical_form(value: Any) -> None:
    assert canonical_bytes(value) == canonical_event(value).encode("ascii")


@given(value=_plain_values)
def test_canonical_bytes_of_a_tame_value_are_the_reference_form(value: Any) -> None:
    def tame(item: Any) -> bool:
        if isinstance(item, float):
            return item == 0.0 or 1e-4 <= abs(item) < 1e16
        if isinstance(item, dict):
            return all(tame(v) for v in item.values())
        if isinstance(item, list):
            return all(tame(v) for v in item)
        return True

    if tame(value):
        assert canonical_bytes(value, tame=True) == canonical_event(value).encode("ascii")


def test_canonical_bytes_refuse_what_has_no_canonical_form() -> None:
    with pytest.raises(TypeError):  # orjson would write it; the reference refuses it, and so does this
        canonical_bytes({"when": datetime.now(UTC)})
    assert canonical_bytes({"s": "\ud800", "n": 2**80}) == b'{"n":1208925819614629174706176,"s":"\\ud800"}'


# ---- decision_event: the fast path builds what the full redaction builds -----------------------------

_arg_keys = st.sampled_from(["q", "text", "path", "password", "api_key", "Authorization", "items", "é", "n"]) | st.text(
    max_size=6)
# The secrets (or the secret part of them) that _arg_text draws: none may reach an audit file.
_ALL_SECRETS = (AWS, "sk-ant-api03-" + "A" * 40, "abcdefghijklmnopqrstuvwxyz0123", "hunter22x",
                "AKIA%49OSFODNN7EXAMPLE")
_arg_text = st.one_of(
    st.text(max_size=24),
    st.sampled_from([AWS, "sk-ant-api03-" + "A" * 40, "Bearer abcdefghijklmnopqrstuvwxyz0123", "password=hunter22x",
                     "AKIA%49OSFODNN7EXAMPLE", "plain words", "x" * 40, "\u00e9t\u00e9"]),
)
_arg_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), _arg_text),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_arg_keys, children, max_size=3)
    | st.tuples(children),
    max_leaves=10,
)


def _comparable(built: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in built.items() if key != "event_id"}


@given(arguments=st.dictionaries(_arg_keys, _arg_values, max_size=4), reasoning=_arg_text,
       schema_keys=st.lists(_arg_keys, max_size=3), latency=st.sampled_from([0.0, 0.125, 3.0, 1e-05]))
def test_decision_event_equals_the_full_redaction_of_every_part(
    arguments: dict[str, Any], reasoning: str, schema_keys: list[str], latency: float
) -> None:
    from policy.audit.decision import redacted_decision_event
    from policy.audit.event import PlainEvent

    kwargs: dict[str, Any] = {
        "decision": make_decision(reasoning=[reasoning], risk_score=0.25),
        "session_id": "s-1", "server": "search", "tool": "web", "arguments": arguments, "latency_ms": latency,
        "policy_version": 2,
        "request": {"input_schema": {"type": "object", "properties": {key: {"type": "string"} for key in schema_keys}}},
        "max_string_bytes": 30,
    }
    fast = decision_event(**kwargs)
    reference = redacted_decision_event(**kwargs)
    assert _comparable(fast) == _comparable(reference)
    # Every PlainEvent is one a secret scan of each of its strings passed: it is written unscrubbed.
    if isinstance(fast, PlainEvent):
        from policy.redact import collect_strings, contains_secret

        assert not any(contains_secret(text) for text in collect_strings(dict(fast), []))


def test_a_clean_decision_event_is_plain_and_a_secret_takes_the_full_path() -> None:
    from policy.audit.event import PlainEvent

    common: dict[str, Any] = {"session_id": "s", "server": "search", "tool": "web", "latency_ms": 0.5,
                              "policy_version": 1}
    clean = decision_event(decision=make_decision(reasoning=["fine"]), arguments={"q": "weather"}, **common)
    assert isinstance(clean, PlainEvent) and clean["arguments"] == {"q": "weather"} and clean["masked"] == []
    secret = decision_event(decision=make_decision(reasoning=["fine"]), arguments={"q": AWS}, **common)
    assert not isinstance(secret, PlainEvent) and AWS not in json.dumps(secret)
    by_key = decision_event(decision=make_decision(reasoning=["fine"]), arguments={"password": "p4ss"}, **common)
    assert not isinstance(by_key, PlainEvent) and by_key["arguments"] == {"password": "[REDACTED]"}
    in_tool_name = decision_event(decision=make_decision(reasoning=["fine"]), arguments={}, **{**common, "tool": AWS})
    assert not isinstance(in_tool_name, PlainEvent)  # the log's own scrub masks it


@given(arguments=st.dictionaries(_arg_keys, _arg_values | _odd_text | _wide_values, max_size=4))
def test_the_digest_of_arguments_walked_clean_is_the_redact_digest(arguments: dict[str, Any]) -> None:
    from policy.audit.decision import _clean, _NotClean, _plain_digest

    try:
        _clean(arguments, [], None, True)
    except _NotClean:
        return
    assert _plain_digest(arguments) == digest(arguments)


def test_event_ids_are_uuid4_strings() -> None:
    import uuid

    from policy.audit.event import new_event_id

    ids = {new_event_id() for _ in range(200)}
    assert len(ids) == 200
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@given(st.datetimes(timezones=st.one_of(st.none(), st.timezones())))
def test_format_ts_is_the_rfc3339_utc_strftime_text_for_every_moment(moment: datetime) -> None:
    utc = (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).astimezone(UTC)
    assert format_ts(moment) == utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_FIRST_US = int((datetime(1, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds()) * 10**6
_LAST_US = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds()) * 10**6 + 999_999


@given(st.integers(min_value=_FIRST_US, max_value=_LAST_US), st.integers(min_value=-3, max_value=3))
def test_ts_of_is_format_ts_of_the_moment_whatever_second_was_cached(microseconds: int, step: int) -> None:
    from policy.audit.event import ts_of

    nearby = min(max(microseconds + step * 1_000_000, _FIRST_US), _LAST_US)
    ts_of(nearby)  # another second (or this one) cached first
    assert ts_of(microseconds) == format_ts(_EPOCH + timedelta(microseconds=microseconds))
    assert ts_of(nearby) == format_ts(_EPOCH + timedelta(microseconds=nearby))


def test_now_ts_is_the_current_moment_as_format_ts_writes_it() -> None:
    import re

    from policy.audit.event import now_ts

    before = datetime.now(UTC)
    stamp = now_ts()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", stamp)
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(microseconds=1) <= moment <= after and format_ts(moment) == stamp


_slot_keys = st.sampled_from(["a", "hash_", "has", "hasg", "hasi", "h", "z", "seq", "ts", "prev_hash", "\u00e9", "H",
                              "hash\u0000", "\x00", "\x7f"]) | _odd_text


@given(body=st.dictionaries(_slot_keys.filter(lambda k: k != "hash"), _wide_values, max_size=8))
def test_the_one_slot_encoding_is_the_reference_line_and_hash(body: dict[str, Any]) -> None:
    """Whatever the keys (before and after ``hash``, none before it, escapes) and values (non-ASCII, DEL, NUL,
    quotes, exotic floats, integers past 64 bits, lone surrogates): the reference's line and hash."""
    from policy.audit.event import HASH_SLOT, seal

    reference = "sha256:" + hashlib.sha256(canonical_event(body).encode("ascii")).hexdigest()
    assert sealed_line(body) == (reference, canonical_event({**body, "hash": reference}).encode("ascii") + b"\n")
    sealed = seal({**body, "hash": HASH_SLOT})
    if sealed is not None:
        hashed, out, slot = sealed
        assert hashed == reference and out[:slot] + f'"{hashed}"'.encode() + out[slot + 1 :] + b"\n" == sealed_line(
            body)[1]


@given(body=st.dictionaries(_slot_keys.filter(lambda k: k != "hash"), _plain_values, max_size=8))
def test_the_one_slot_encoding_of_a_tame_event_is_the_reference_line(body: dict[str, Any]) -> None:
    from policy.audit.decision import _tame

    def tame(item: Any) -> bool:
        if isinstance(item, float):
            return _tame(item)
        if isinstance(item, dict):
            return all(tame(v) for v in item.values())
        if isinstance(item, list):
            return all(tame(v) for v in item)
        return True

    if tame(body):
        reference = event_hash(body)
        line = canonical_event({**body, "hash": reference}).encode("ascii") + b"\n"
        assert sealed_line(body, tame=True) == (reference, line)


def test_the_slot_is_found_only_where_the_placeholder_is_the_hash_member() -> None:
    import orjson

    from policy.audit.event import HASH_SLOT, seal

    assert seal({"a": orjson.Fragment(b"\x00"), "hash": HASH_SLOT}) is None  # a stray fragment: not the slot
    with pytest.raises(TypeError):  # which has no canonical form: the reference refuses it
        sealed_line({"a": orjson.Fragment(b"\x00")})
    assert seal({"hash": HASH_SLOT}) == ("sha256:" + hashlib.sha256(b"{}").hexdigest(), b'{"hash":\x00}', 8)


def test_decision_event_clips_a_nested_string_without_touching_the_caller_arguments() -> None:
    from policy.audit.decision import redacted_decision_event

    long = "x" * 40
    arguments = {"outer": {"keep": "short", "items": ["a", long, {"deep": long}]}, "n": 1}
    before = copy.deepcopy(arguments)
    decision = {"decision_id": "d1", "allowed": True, "reason": "ok", "rule_trace": [{"rule_id": "r", "note": None}]}
    event = decision_event(decision=decision, session_id="s", server="up", tool="t", arguments=arguments,
                  latency_ms=0.5, policy_version=1, max_string_bytes=16)
    assert arguments == before  # clipped in a copy, never in place
    clipped = event["arguments"]["outer"]["items"]
    assert clipped[0] == "a" and clipped[1].startswith("[clipped: 40 chars") and clipped[2]["deep"] == clipped[1]
    assert event["arguments"]["n"] == 1 and event["decision"] == decision
    reference = redacted_decision_event(decision=decision, session_id="s", server="up", tool="t",
                                        arguments=arguments, latency_ms=0.5, policy_version=1, max_string_bytes=16)
    assert {k: v for k, v in event.items() if k != "event_id"} == {
        k: v for k, v in reference.items() if k != "event_id"}


@settings(max_examples=300)
@given(schema=st.dictionaries(_arg_keys, _arg_values, max_size=4) | st.just({"description": "a long sentence " * 3}),
       calls=st.lists(st.tuples(st.dictionaries(_arg_keys, _arg_values, max_size=3), _arg_text,
                                st.dictionaries(st.sampled_from(["method", "kind", "asked_by", "token"]),
                                                _arg_values, max_size=2), st.sampled_from([30, 16384])),
                       min_size=1, max_size=4))
def test_a_schema_remembered_plain_builds_the_event_the_full_redaction_builds(
    schema: dict[str, Any], calls: list[tuple[dict[str, Any], str, dict[str, Any], int]]
) -> None:
    """The same input schema object on every call (as the catalog hands it): from the second call on it is
    not walked again when it was plain and secret-free; each event still equals the full redaction's."""
    from policy.audit import decision as builder

    builder._PLAIN_SCHEMAS.clear()
    for arguments, reasoning, extra, limit in calls:
        kwargs: dict[str, Any] = {
            "decision": make_decision(reasoning=[reasoning]), "session_id": "s", "server": "search", "tool": "web",
            "arguments": arguments, "latency_ms": 0.5, "policy_version": 1,
            "request": {**extra, "input_schema": schema}, "max_string_bytes": limit,
        }
        assert _comparable(decision_event(**kwargs)) == _comparable(builder.redacted_decision_event(**kwargs))


def test_a_schema_is_remembered_only_when_plain_and_secret_free() -> None:
    from policy.audit import decision as builder

    builder._PLAIN_SCHEMAS.clear()
    common: dict[str, Any] = {"decision": make_decision(reasoning=["fine"]), "session_id": "s", "server": "search",
                              "tool": "web", "arguments": {"q": "x"}, "latency_ms": 0.5, "policy_version": 1}
    plain = {"type": "object", "properties": {"q": {"type": "string"}}}
    secret = {"type": "object", "description": AWS}
    for schema in (plain, secret, {"password": {"type": "string"}}):
        decision_event(**common, request={"input_schema": schema})
        decision_event(**common, request={"input_schema": schema})
    assert [entry[0] for entry in builder._PLAIN_SCHEMAS.values()] == [plain]
    again = decision_event(**common, request={"input_schema": secret})
    assert AWS not in json.dumps(again)
    long = {"description": "a long sentence " * 3}
    for limit in (16384, 30):
        event = decision_event(**common, request={"input_schema": long}, max_string_bytes=limit)
        assert event["request"]["input_schema"]["description"].startswith("[clipped" if limit == 30 else "a long")


# ---- decision_event: a decision seen plain before is not walked again ------------------------------------

_entry_text = st.one_of(st.none(), _arg_text)
_trace = st.builds(TraceEntry, _arg_text, st.sampled_from(["allow", "deny", "ask"]), st.booleans(), _entry_text,
                   _entry_text)
_decisions = st.builds(
    Decision,
    decision_id=st.sampled_from(["d-1", AWS]),
    allowed=st.booleans(), reason=_arg_text, reason_code=st.sampled_from(["allowed", "default_deny"]),
    deny_kind=st.one_of(st.none(), st.just("policy")), model=st.sampled_from(["claude", "password=hunter22x"]),
    tool=st.just("search.web"),
    matched_rules=st.lists(_arg_text, max_size=2).map(tuple), rule_trace=st.lists(_trace, max_size=3).map(tuple),
    risk_score=st.sampled_from([0.0, 0.25, 1e-05, 1e20]),
    risk_factors=st.lists(st.builds(RiskFactor, st.just("session"), st.sampled_from([0.1, 1e-06]), _arg_text),
                          max_size=1).map(tuple),
    reasoning=st.lists(_arg_text, min_size=1, max_size=3).map(tuple), errors=st.lists(_arg_text, max_size=1).map(tuple),
    policy_digest=st.just("sha256:" + "ab" * 32),
    counterfactual=st.one_of(st.none(), st.builds(Counterfactual, _arg_text, st.one_of(
        st.none(), st.just({"model": "claude", "allow_tools": ["search.web"]})))),
    findings=st.lists(st.builds(Finding, st.just("secret"), st.just("aws"), st.just("arguments.q"), _arg_text),
                      max_size=1).map(tuple),
)


@settings(max_examples=300)
@given(decision=_decisions, ids=st.lists(st.sampled_from(["d-2", "d-3", AWS]), min_size=1, max_size=3))
def test_a_decision_remembered_plain_builds_the_event_the_full_redaction_builds(
    decision: Decision, ids: list[str]
) -> None:
    """Decisions sharing every field but the id (as the engine's memoised ones do): each event equals the full
    redaction's, whatever the id (a secret-shaped id is still found)."""
    from policy.audit import decision as builder
    from policy.audit.event import PlainEvent

    builder._PLAIN_DECISIONS.clear()
    for index, decision_id in enumerate([decision.decision_id, *ids]):
        fields_ = builder._ALL_BUT_ID(decision)
        if index % 2:  # equal fields that are not the same objects (a decision rebuilt, not memoised)
            fields_ = copy.deepcopy(fields_)
        same = Decision(decision_id, *fields_)
        kwargs: dict[str, Any] = {"decision": same.to_dict(), "session_id": "s", "server": "search", "tool": "web",
                                  "arguments": {"q": "x"}, "latency_ms": 0.5, "policy_version": 1}
        fast = decision_event(**kwargs, source=same)
        assert _comparable(fast) == _comparable(builder.redacted_decision_event(**kwargs))
        if decision_id == AWS:  # the id's secret was found: not plain, so the log's own scrub masks it
            assert not isinstance(fast, PlainEvent)


def test_a_decision_is_remembered_only_when_it_cannot_change() -> None:
    from policy.audit import decision as builder

    base = Decision("d-1", True, "allowed by rule r", "allowed", None, "claude", "search.web", ("r",),
                    (TraceEntry("r", "allow", True),), 0.0, (), ("Fine.",), (), "sha256:" + "ab" * 32, None)
    common: dict[str, Any] = {"session_id": "s", "server": "search", "tool": "web", "arguments": {"q": "x"},
                              "latency_ms": 0.5, "policy_version": 1}
    suggesting = Decision("d-2", False, "no", "default_deny", "policy", "claude",
                          "search.web", (), (), 0.0, (), ("No rule.",), (), "sha256:" + "ab" * 32,
                          Counterfactual("grant it", {"model": "claude", "allow_tools": ["search.web"]}))
    listed = Decision("d-3", True, "ok", "allowed", None, "claude", "search.web", ("r",), (), 0.0, (),
                      ["Mutable."], (), "sha256:" + "ab" * 32, None)  # type: ignore[arg-type]
    builder._PLAIN_DECISIONS.clear()
    for decision in (base, suggesting, listed):
        decision_event(decision=decision.to_dict(), source=decision, **common)
    assert list(builder._PLAIN_DECISIONS.values()) == [builder._ALL_BUT_ID(base)]


@given(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))
def test_an_id_the_gateway_makes_holds_no_secret_so_the_builder_skips_its_scan(decision_id: str) -> None:
    """The skip is sound: what it assumes (no anchor of hex digits alone) is read from the scanners, and no
    32-hex-digit string is one a scan flags, plain or decoded."""
    from policy.audit.decision import _HEX_ID, _IDS_CLEAN
    from policy.detect.secrets import ANCHORS
    from policy.redact import contains_secret, strings_contain_secret

    hex_anchors = [anchor for anchor in ANCHORS if set(anchor) <= set("0123456789abcdef")]
    assert _IDS_CLEAN is (not hex_anchors)
    assert _HEX_ID(decision_id)
    if _IDS_CLEAN:
        assert not contains_secret(decision_id) and not strings_contain_secret([decision_id])


@settings(max_examples=150)
@given(decision=_decisions, count=st.integers(min_value=1, max_value=3))
def test_a_remembered_decision_with_gateway_made_ids_builds_the_full_redaction_event(
    decision: Decision, count: int
) -> None:
    from policy.audit import decision as builder
    from policy.decision import new_decision_id

    builder._PLAIN_DECISIONS.clear()
    for decision_id in [decision.decision_id] + [new_decision_id() for _ in range(count)]:
        same = Decision(decision_id, *builder._ALL_BUT_ID(decision))
        kwargs: dict[str, Any] = {"decision": same.to_dict(), "session_id": "s", "server": "search", "tool": "web",
                                  "arguments": {"q": "x"}, "latency_ms": 0.5, "policy_version": 1,
                                  "request": {"input_schema": {"type": "object"}}}
        fast = decision_event(**kwargs, source=same)
        assert _comparable(fast) == _comparable(builder.redacted_decision_event(**kwargs))


_any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)  # no lone surrogate


@given(st.dictionaries(_any_text, st.recursive(
    _any_text | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.booleans() | st.none(),  # orjson's ints
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_any_text, children, max_size=3),
    max_leaves=8), max_size=8))
def test_an_event_with_any_unicode_is_written_by_orjson_in_the_reference_ascii_form(body: dict[str, Any]) -> None:
    """Non-ASCII keys and text (accents, CJK, astral characters, U+2028, DEL): orjson's bytes, escaped as
    ``json.dumps`` escapes them, are the reference line; no fall back to the reference encoder."""
    from policy.audit.event import HASH_SLOT, seal

    body.pop("hash", None)
    reference = event_hash(body)
    assert sealed_line(body, tame=True) == (reference, canonical_event({**body, "hash": reference}).encode() + b"\n")
    assert seal({**body, "hash": HASH_SLOT}, tame=True) is not None


@pytest.mark.parametrize("decision_id", [5, 2.5, ["d"], {"id": "d"}, True])
def test_a_payload_id_that_is_not_a_string_takes_the_full_path(decision_id: Any) -> None:
    from policy.audit.decision import redacted_decision_event
    from policy.audit.event import PlainEvent

    kwargs: dict[str, Any] = {"decision": make_decision(decision_id=decision_id, reasoning=["fine"]),
                              "session_id": "s", "server": "search", "tool": "web", "arguments": {"q": "x"},
                              "latency_ms": 0.5, "policy_version": 1}
    built = decision_event(**kwargs)
    assert not isinstance(built, PlainEvent)
    assert _comparable(built) == _comparable(redacted_decision_event(**kwargs))
