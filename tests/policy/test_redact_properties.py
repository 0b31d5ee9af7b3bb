"""The audit log keeps no secret: every detected kind, in every encoding, anywhere in an event.

Invariant: for a generated secret of any kind the scanners know, embedded in tool arguments,
in a tool-result event, in proposal text, or as a value under a sensitive key that a schema
violation message quotes back, and written plain, JSON-escaped (once or twice, ``\\r\\n``
line ends), URL-encoded (``%20`` or ``+``), no line of the audit file contains the secret
or any 12-character fragment of its secret part.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.audit.decision import decision_event
from policy.audit.event import event
from policy.audit.log import JsonlAuditLog
from policy.detect.secrets import SECRET_KINDS
from policy.redact import mask_text, redact_text
from policy.schema import check_arguments

FRAGMENT = 12
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
B64 = ALNUM + "+/"
B64URL = ALNUM + "_-"


def _chars(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    # Two distinct characters at least: one repeated character is a placeholder, not a secret.
    return st.text(alphabet, min_size=low, max_size=high).filter(lambda s: len(set(s)) > 2)


def _pem() -> st.SearchStrategy[tuple[str, str, str]]:
    def build(label: str, body: str) -> tuple[str, str, str]:
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        return "private_key", f"-----BEGIN {label}PRIVATE KEY-----\n{lines}\n-----END {label}PRIVATE KEY-----\n", body

    return st.builds(build, st.sampled_from(["", "RSA ", "EC ", "OPENSSH "]), _chars(B64, 64, 300))


def _plain(kind: str, prefix: str, alphabet: str, low: int, high: int) -> st.SearchStrategy[tuple[str, str, str]]:
    return _chars(alphabet, low, high).map(lambda body: (kind, prefix + body, body))


_KINDS: dict[str, st.SearchStrategy[tuple[str, str, str]]] = {
    "private_key": _pem(),
    "aws_access_key": _plain("aws_access_key", "AKIA", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 16, 16),
    "google_api_key": _plain("google_api_key", "AIza", B64URL, 35, 35),
    "github_token": st.one_of(
        _plain("github_token", "ghp_", ALNUM, 36, 60), _plain("github_token", "github_pat_", ALNUM + "_", 22, 60)
    ),
    "anthropic_key": _plain("anthropic_key", "sk-ant-", B64URL, 20, 80),
    "openai_key": st.one_of(
        _plain("openai_key", "sk-proj-", B64URL, 20, 80), _plain("openai_key", "sk-", ALNUM, 20, 60)
    ),
    "slack_token": _plain("slack_token", "xoxb-", ALNUM + "-", 10, 60),
    "jwt": st.builds(
        lambda a, b, c: ("jwt", f"eyJ{a}.{b}.{c}", f"{a}.{b}.{c}"),
        _chars(B64URL, 12, 40), _chars(B64URL, 12, 60), _chars(B64URL, 12, 40),
    ),
    "bearer_token": _chars(ALNUM + "-._~+/", 12, 60).map(lambda t: "7" + t).map(
        lambda token: ("bearer_token", f"Authorization: Bearer {token}", token)
    ),
    "generic_api_key": st.builds(
        lambda form, value: ("generic_api_key", form.format(value), value),
        st.sampled_from(['password = "{}"', "api_key: {}", '"client_secret": "{}"', "DB_PASSWORD={}", "token={}"]),
        _chars(ALNUM, 12, 40),
    ),
    "azure_storage_key": _chars(B64, 60, 88).map(
        lambda key: ("azure_storage_key", f"AccountName=prod;AccountKey={key}==;EndpointSuffix=core.windows.net", key)
    ),
    "url_credentials": _chars(ALNUM, 12, 30).map(
        lambda pw: ("url_credentials", f"postgres://app:{pw}@db.example.com:5432/app", pw)
    ),
    "slack_webhook": _chars(ALNUM, 24, 24).map(
        lambda tail: ("slack_webhook", f"https://hooks.slack.com/services/T0A1B2C3D/B0A1B2C3D/{tail}", tail)
    ),
    "discord_webhook": _chars(B64URL, 60, 68).map(
        lambda token: ("discord_webhook", f"https://discord.com/api/webhooks/123456789012345678/{token}", token)
    ),
    "putty_private_key": _chars(B64, 40, 100).map(
        lambda body: ("putty_private_key", "PuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nComment: k\n"
                      f"Public-Lines: 1\nAAAAB3NzaC1yc2E\nPrivate-Lines: 1\n{body}\nPrivate-MAC: 0a1b2c3d\n", body)
    ),
}
assert set(_KINDS) == set(SECRET_KINDS), "a new secret kind needs a generator here"

ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda s: s,
    "json": lambda s: json.dumps(s)[1:-1],
    "json_twice": lambda s: json.dumps(json.dumps(s))[1:-1],
    "crlf_json": lambda s: json.dumps(s.replace("\n", "\r\n"))[1:-1],
    "json_document": lambda s: json.dumps({"type": "service_account", "blob": s}),
    "url": lambda s: quote(s, safe=""),
    "url_form": lambda s: quote_plus(s, safe=""),
    "url_of_json": lambda s: quote(json.dumps(s)[1:-1], safe=""),
    "json_unicode": lambda s: s.replace("-", "\\u002d").replace("\n", "\\n"),
}

secrets_ = st.sampled_from(sorted(_KINDS)).flatmap(lambda kind: _KINDS[kind])
encodings = st.sampled_from(sorted(ENCODINGS))
# Words too short to be mistaken for a 12-character fragment of a secret.
_WORDS = ["the", "call", "quoted", "note:", "(see", "below)", "\n", "\u00e9t\u00e9", "x=1;"]
context = st.lists(st.sampled_from(_WORDS), max_size=6).map(" ".join)


def _fragments(part: str) -> list[str]:
    return [part[i : i + FRAGMENT] for i in range(0, max(1, len(part) - FRAGMENT + 1))]


# Hex digests and ids, which a short run of digits can match by chance (genesis is all zeros).
_OPAQUE = ("hash", "prev_hash", "event_id", "arguments_digest", "policy_digest")


def _assert_absent(lines: list[str], secret: str, part: str) -> None:
    for line in lines:
        parsed = {k: v for k, v in json.loads(line).items() if k not in _OPAQUE}
        for text in (json.dumps(parsed), json.dumps(parsed, ensure_ascii=False)):
            assert secret not in text
            leaked = [fragment for fragment in _fragments(part) if fragment in text]
            assert not leaked, f"fragment {leaked[0]!r} of the secret survived in {text[:300]}"


def _write(events: list[dict[str, Any]]) -> list[str]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "audit.jsonl"
        with JsonlAuditLog(path, fsync=False) as log:
            for item in events:
                log.append(item)
        return path.read_text("ascii").splitlines()


def _decision(reason: str, reasoning: list[str]) -> dict[str, Any]:
    return {
        "allowed": False,
        "effect": "deny",
        "reason_code": "schema_violation",
        "reason": reason,
        "reasoning": reasoning,
        "risk_factors": [reason],
        "rule_trace": [],
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=secrets_, encoding=encodings, before=context, after=context)
def test_no_audit_line_holds_a_secret_in_any_encoding_anywhere_in_an_event(
    secret: tuple[str, str, str], encoding: str, before: str, after: str
) -> None:
    kind, text, part = secret
    embedded = f"{before} {ENCODINGS[encoding](text)} {after}"
    lines = _write(
        [
            decision_event(
                decision=_decision(f"the call quoted `{embedded}`", [embedded]),
                session_id="s1",
                server="files",
                tool="write",
                arguments={"content": embedded, "nested": [{"note": embedded}]},
                latency_ms=1.0,
                policy_version=1,
                request={"model": "m", "input_schema": {"description": embedded}},
            ),
            event("result.flagged", decision_id="d1", findings=[{"excerpt": embedded}], action="flag"),
            event("proposal.proposed", id="p1", yaml=f"# {embedded}\nrules: []\n", justification=embedded),
        ]
    )
    assert kind in SECRET_KINDS
    _assert_absent(lines, text, part)


@settings(max_examples=60, deadline=None)
@given(secret=secrets_, encoding=encodings, before=context, after=context)
def test_redact_text_masks_every_kind_in_every_encoding(
    secret: tuple[str, str, str], encoding: str, before: str, after: str
) -> None:
    _, text, part = secret
    out = redact_text(f"{before} {ENCODINGS[encoding](text)} {after}")
    assert not [fragment for fragment in _fragments(part) if fragment in out]
    assert "[REDACTED:" in out


sensitive_values = st.text(alphabet=ALNUM + " :/=+-_.'\"", min_size=12, max_size=300).filter(
    # Shaped like a credential (a digit and a capital), so it cannot equal a field name.
    lambda s: len(set(s)) > 3 and s.strip() == s and any(c.isdigit() for c in s) and any(c.isupper() for c in s)
)


@settings(max_examples=100, deadline=None)
@given(
    key=st.sampled_from(["authorization", "Cookie", "session_id", "credential", "X-Api-Key"]),
    value=sensitive_values,
)
def test_a_value_masked_by_key_never_reappears_in_the_same_event(key: str, value: str) -> None:
    schema = {"type": "object", "properties": {key: {"type": "string", "pattern": "^nomatch$", "maxLength": 4}}}
    check = check_arguments(schema, {key: value})
    assert check.violated
    messages = list(check.messages)
    lines = _write(
        [
            decision_event(
                decision=_decision(messages[0], messages),
                session_id=None,
                server="s",
                tool="t",
                arguments={key: value, "copy_in_url": f"https://x.test/?v={quote(value, safe='')}"},
                latency_ms=0.5,
                policy_version=None,
            )
        ]
    )
    stored = json.loads(lines[0])
    assert stored["arguments"][key] == "[REDACTED]"
    assert f"arguments.{key}" in stored["masked"] or f'arguments["{key}"]' in stored["masked"]
    _assert_absent(lines, value, value)


def test_a_service_account_json_private_key_is_masked_entire() -> None:
    pem = (
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
        "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n-----END PRIVATE KEY-----\n"
    )
    document = json.dumps({"type": "service_account", "project_id": "p", "private_key": pem})
    masked, kinds = mask_text(document)
    assert kinds == ("private_key",)
    assert "MIIEvQIBADANBgkq" not in masked and "END PRIVATE" not in masked
    assert json.loads(masked)["private_key"].startswith("[REDACTED:private_key]")
    assert json.loads(masked)["project_id"] == "p"  # the rest of the document is kept


def test_many_large_key_masked_values_are_still_hidden_when_quoted() -> None:
    # Past the 12-character-run index budget, whole and cut-short quotes are still found.
    values = {f"k{i}_cookie": f"V{i:04d}" + "x9Y" * 5000 for i in range(60)}
    last = values["k59_cookie"]
    reason = f"at arguments.k59_cookie: '{last[:200]}…' is too long"
    built = decision_event(
        decision=_decision(reason, [reason]), session_id=None, server="s", tool="t",
        arguments=values, latency_ms=0.1, policy_version=None,
    )
    assert last[:40] not in json.dumps(built)
    assert "'[REDACTED]' is too long" in built["decision"]["reason"]


# ---- the joined secret scan (policy.redact.strings_contain_secret) --------------------------------
# Invariant: scanning the strings of a value together finds a secret exactly when scanning
# them one by one does, whatever the strings hold: whole secrets in any encoding, secrets cut
# in two across neighbouring strings, bare literals and contexts, line ends and escapes at the
# edges. A miss would let a secret into the log; a false alarm only costs the slow path, but
# the property is equality.

_PIECES = [
    "AKIA", "AIza", "ghp_", "github_pat_", "sk-", "sk-ant-", "xoxb-", "eyJ", "Bearer ", "bearer\t",
    "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "PuTTY-User-Key-File-2: ssh-rsa",
    "Encryption: none", "password=", 'password = "', "api_key: ", "token=", "secret:", "credentials=",
    "AccountKey=", "postgres://app:", "@db.example.com", "hooks.slack.com/services/",
    "discord.com/api/webhooks/1234567/",
    "\n", "\r\n", "\\", "\\n", "%", "%0A", "+", "\"", "'", "(", " ", "\t", "=", ":", ".", "-", "_", "7",
    "abcdef", "QWERTY123456", "x" * 30, "Zm9vYmFy" * 5, "Version: 1",
]
_piece = st.one_of(
    st.sampled_from(_PIECES),
    st.text(ALNUM + "+/=_-.:@ \n\\%", max_size=40),
    st.tuples(secrets_, encodings).map(lambda pair: ENCODINGS[pair[1]](pair[0][1])),
)
_string = st.lists(_piece, max_size=5).map("".join)


def _split_secret(secret: str, cut: int) -> list[str]:
    at = cut % (len(secret) + 1)
    return [secret[:at], secret[at:]]


@settings(max_examples=400)
@given(strings=st.lists(_string, max_size=6))
def test_a_joined_scan_finds_a_secret_iff_one_of_the_strings_has_one(strings: list[str]) -> None:
    from policy.redact import contains_secret, strings_contain_secret

    assert strings_contain_secret(strings) == any(contains_secret(text) for text in strings)


@settings(max_examples=200)
@given(secret=secrets_, encoding=encodings, cut=st.integers(min_value=0), before=_string, after=_string)
def test_a_secret_cut_across_two_strings_is_judged_as_the_strings_are(
    secret: tuple[str, str, str], encoding: str, cut: int, before: str, after: str
) -> None:
    from policy.redact import contains_secret, strings_contain_secret

    head, tail = _split_secret(ENCODINGS[encoding](secret[1]), cut)
    strings = [before + head, tail + after]
    assert strings_contain_secret(strings) == any(contains_secret(text) for text in strings)


def _value_contains_secret_one_by_one(value: Any, depth: int = 0) -> bool:
    """The per-string walk that strings_contain_secret replaced, kept as the reference."""
    from policy.redact import MAX_DEPTH, contains_secret

    if isinstance(value, str):
        return contains_secret(value)
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return any((isinstance(k, str) and contains_secret(k)) or _value_contains_secret_one_by_one(v, depth + 1)
                   for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_value_contains_secret_one_by_one(item, depth + 1) for item in value)
    return False


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _string),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_string, children, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300)
@given(value=_json_values)
def test_value_contains_secret_agrees_with_the_string_by_string_walk(value: Any) -> None:
    from policy.redact import value_contains_secret

    assert value_contains_secret(value) == _value_contains_secret_one_by_one(value)


def test_no_secret_is_made_across_the_join() -> None:
    from policy.redact import contains_secret, strings_contain_secret

    halves = [
        ["PuTTY-User-Key-File-2: ssh-rsa", "AAAAB3NzaC1yc2E"],  # a header line, then what looks like key lines
        ["password=abcde", "f"],  # a value that only the next string lengthens to six characters
        ["AKIA", "ABCDEFGHIJKLMNOP"],
        ["-----BEGIN RSA PRIVATE", " KEY-----"],
        ["postgres://app:hunter22", "@db.example.com"],
        ["Bearer", "abc123def456ghi789"],
        ["sk-ant-", "A" * 10 + "b" * 20],
    ]
    for strings in halves:
        assert not any(contains_secret(text) for text in strings), strings
        assert not strings_contain_secret(strings), strings
        # ... though a weaker separator (none, a line feed, a space) would have made one
        assert any(contains_secret(sep.join(strings)) for sep in ("", "\n", " ")), strings
