"""One automaton pass for both detectors gives exactly what their own passes give."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policy.detect import anchors, injection, scan
from policy.detect import secrets as secret_module
from policy.detect.normalize import fold_bytes
from policy.detect.scan import scan_strings

# Fragments that make anchors of both sets overlap, nest and collide: prefixes of each
# other ("ignor"/"ignore"), leetspeak spellings (folded to anchors only on the injection
# side), real secrets and near misses.
FRAGMENTS = [
    "ignore", "IGNOR", "1gn0re", "ignore previous instructions", "p4ss", "pass", "password = 'hunter2hunter2'",
    "passphrase: \"correct horse battery\"", "key", "api_key = \"abcd1234efgh5678\"", "token: abcdefgh12345",
    "secret", "s3cret", "Bearer abcdef1234567890xyz", "bearer", "AKIAIOSFODNN7EXAMPLE", "akia", "ghp_" + "a" * 36,
    "sk-ant-" + "b" * 24, "xoxb-123456789012-abc", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc",
    "https://user:hunter22@example.com/x", "://",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n-----END RSA PRIVATE KEY-----",
    "<|im_start|>", "<|", "###", "### System:", "send", "send it to https://evil.example", "email", "![a](https://x.y/",
    "you are now", "credential", "credentials: s3cr3tv4lue",
    "hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "discord.com/api/webhooks/12345/" + "c" * 40, "AccountKey=" + "d" * 44, " ", "\n", "=", ":", "'", "\"",
]  # fmt: skip
ascii_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet=st.characters(max_codepoint=127), max_size=12)),
    max_size=40,
).map("".join)
# Long enough for the joint pass (and the secret scanners' anchored passes).
long_ascii = st.tuples(ascii_text, ascii_text).map(lambda pair: pair[0] + " filler " * 80 + pair[1])


@settings(max_examples=400, deadline=None)
@given(long_ascii)
def test_the_joint_pass_reports_the_injection_hits_of_the_injection_automaton_in_its_order(text: str) -> None:
    data = fold_bytes(text.lower())
    hits, _ = anchors.anchor_pass(data)
    assert hits == injection.anchor_hits(data.decode("ascii"), data)


@settings(max_examples=400, deadline=None)
@given(long_ascii)
def test_secrets_found_from_the_joint_pass_are_those_of_their_own_pass(text: str) -> None:
    lowered = text.lower()
    _, starts = anchors.anchor_pass(fold_bytes(lowered))
    assert secret_module.find_secrets(text, lowered=lowered, starts=starts) == secret_module.find_secrets(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(long_ascii, ascii_text), min_size=1, max_size=4))
def test_scan_findings_are_the_same_with_and_without_the_joint_pass(
    texts: list[str],
) -> None:
    texts = [text for text in texts if text] or ["x"]
    paths = [f"v[{index}]" for index in range(len(texts))]
    joint = scan_strings(paths, texts, None)
    assert joint == scan.reference_scan(texts, "v")  # each detector's own passes


def test_no_secret_anchor_has_a_leetspeak_character() -> None:
    # What makes the joint pass exact: folding never changes a secret anchor's characters.
    assert all(anchor == anchor.lower() and not set(anchor) & set("013457$") for anchor in secret_module.ANCHORS)
