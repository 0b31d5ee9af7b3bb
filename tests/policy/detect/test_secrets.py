"""policy.detect.secrets: every kind is found, near-misses are not, masking keeps the context."""

from __future__ import annotations

import re
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import policy.detect.secrets as secrets_module
from policy.detect.literal import LiteralSearch
from policy.detect.secrets import SECRET_KINDS, SecretHit, find_secrets, mask_secrets

# Fake credentials with the right shape; none of them is live.
AWS = "AKIAIOSFODNN7EXAMPLE"
AWS_STS = "ASIAY34FZKBOKMUTVV7A"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEF"
OPENAI = "sk-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v2W3x4"
OPENAI_PROJ = "sk-proj-" + "Ab12_cd34-EF56gh78IJ90kl12MN34op56"
ANTHROPIC = "sk-ant-api03-" + "Zx9_Yw8-Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)


def kinds(text: str) -> list[str]:
    return [hit.kind for hit in find_secrets(text)]


@pytest.mark.parametrize(
    ("secret", "kind"),
    [
        (AWS, "aws_access_key"),
        (AWS_STS, "aws_access_key"),
        (GITHUB, "github_token"),
        ("gho_" + GITHUB[4:], "github_token"),
        ("ghs_" + GITHUB[4:], "github_token"),
        (GITHUB_PAT, "github_token"),
        (OPENAI, "openai_key"),
        (OPENAI_PROJ, "openai_key"),
        (ANTHROPIC, "anthropic_key"),
        (SLACK, "slack_token"),
        ("xoxp-" + SLACK[5:], "slack_token"),
        (GOOGLE, "google_api_key"),
        (JWT, "jwt"),
        (PEM, "private_key"),
        (PEM.replace("RSA ", ""), "private_key"),
        (PEM.replace("RSA", "OPENSSH"), "private_key"),
    ],
)
def test_each_specific_kind_is_found_with_its_exact_span(secret: str, kind: str) -> None:
    text = f"before ({secret}) after"
    start = text.index(secret)
    assert find_secrets(text) == [SecretHit(kind, start, start + len(secret))]


def test_every_documented_kind_exists() -> None:
    assert set(SECRET_KINDS) >= {
        "aws_access_key", "private_key", "github_token", "openai_key", "anthropic_key",
        "slack_token", "google_api_key", "jwt", "bearer_token", "generic_api_key",
    }  # fmt: skip


def test_bearer_masks_only_the_token_and_keeps_the_scheme() -> None:
    masked, found = mask_secrets("Authorization: Bearer abc123def456ghi789jkl")
    assert masked == "Authorization: Bearer [REDACTED:bearer_token]"
    assert found == ("bearer_token",)


def test_bearer_is_case_insensitive() -> None:
    assert kinds("authorization: BEARER Zm9vYmFyYmF6cXV4MTIz==") == ["bearer_token"]


def test_bearer_carrying_a_jwt_is_named_jwt() -> None:
    masked, found = mask_secrets(f"Authorization: Bearer {JWT}")
    assert masked == "Authorization: Bearer [REDACTED:jwt]"
    assert found == ("jwt",)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ('password = "hunter2hunter2"', 'password = "[REDACTED:generic_api_key]"'),
        ("DB_PASSWORD=s3cr3t-Value!", "DB_PASSWORD=[REDACTED:generic_api_key]"),
        ('{"api_key": "abcd1234efgh"}', '{"api_key": "[REDACTED:generic_api_key]"}'),
        ("clientSecret: 'Zq8!xx_42ab'", "clientSecret: '[REDACTED:generic_api_key]'"),
        ("X-Api-Key: 0123456789abcdef", "X-Api-Key: [REDACTED:generic_api_key]"),
        ("auth_token => tok_live_991", "auth_token => [REDACTED:generic_api_key]"),
        ("passphrase:=correcthorse", "passphrase:=[REDACTED:generic_api_key]"),
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "aws_secret_access_key=[REDACTED:generic_api_key]"),
    ],
)
def test_generic_assignments_mask_only_the_value(text: str, masked: str) -> None:
    assert mask_secrets(text) == (masked, ("generic_api_key",))


def test_a_specific_secret_in_an_assignment_keeps_its_specific_kind() -> None:
    masked, found = mask_secrets(f'{{"api_key": "{ANTHROPIC}", "token": "{GITHUB}"}}')
    assert masked == '{"api_key": "[REDACTED:anthropic_key]", "token": "[REDACTED:github_token]"}'
    assert found == ("anthropic_key", "github_token")


@pytest.mark.parametrize(
    "text",
    [
        "AKIAIOSFODNN7EXAMPL",  # one character short
        "AKIAIOSFODNN7EXAMPLEX",  # one too long
        "XAKIAIOSFODNN7EXAMPLE",  # glued to a word
        "akiaiosfodnn7example",  # lower case
        "ghp_tooShort123",
        "ghx_" + GITHUB[4:],
        "scikit-learn and sk-learn-contrib-imbalanced-learn are libraries",
        "task-abcdefghijklmnopqrstuvwxyz0123",  # `sk-` inside a word
        "xoxz-123456789012-1234567890123",
        "AIzaTooShort",
        "eyJhbGciOiJIUzI1NiJ9 is only a header",
        "Bearer tokens are sent in the Authorization header",
        "bearer of bad news",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIBIjANBgkqhkiG\n-----END CERTIFICATE-----",
        "password = ${DB_PASSWORD}",
        "api_key: <your-api-key>",
        "token: string",
        "password: ********",
        "secret: xxxxxxxx",
        "max_tokens: 4096",
        "token_count = 1234567",
        "the key = value pairs of a map",
        "primary_key = user_id_column",
        "password: [REDACTED:generic_api_key]",
        "pwd=/home/alice/projects",
        "",
    ],
)
def test_near_misses_are_not_secrets(text: str) -> None:
    assert find_secrets(text) == []
    assert mask_secrets(text) == (text, ())


def test_mask_replaces_every_secret_and_reports_sorted_unique_kinds() -> None:
    text = f"k1={AWS} k2={AWS_STS}\n{PEM}\nuse {SLACK}"
    masked, found = mask_secrets(text)
    assert masked == (
        "k1=[REDACTED:aws_access_key] k2=[REDACTED:aws_access_key]\n[REDACTED:private_key]\nuse [REDACTED:slack_token]"
    )
    assert found == ("aws_access_key", "private_key", "slack_token")


def test_an_unterminated_private_key_is_masked_up_to_the_end_of_its_body() -> None:
    truncated = PEM.rsplit("-----END", 1)[0]
    masked, found = mask_secrets(f"{truncated}\n\n(truncated)")
    assert found == ("private_key",)
    assert "MIIEowIBAAKCAQEA" not in masked
    assert masked.endswith("(truncated)")


def test_masking_is_idempotent() -> None:
    text = f"password = 'hunter2hunter2' Bearer abc123def456ghi {JWT} {GOOGLE}"
    once, _ = mask_secrets(text)
    assert mask_secrets(once) == (once, ())


def test_offsets_survive_text_whose_lower_case_is_longer() -> None:
    text = f"\u0130stanbul \u0130 token = abcdef123456 {AWS}"
    hits = find_secrets(text)
    assert [text[hit.start : hit.end] for hit in hits] == ["abcdef123456", AWS]


def test_a_megabyte_of_adversarial_prefixes_does_not_backtrack() -> None:
    # Each of these would be quadratic with an unbounded or unanchored pattern; the whole
    # set must still finish (pytest-timeout guards the test run).
    for chunk in ("eyJ", "ghp_", "AKIA", "sk-", "Bearer ", "api_key: ", "-----BEGIN RSA PRIVATE KEY-----!"):
        text = chunk * (1_000_000 // len(chunk))
        mask_secrets(text)


@given(st.text(max_size=300))
def test_hits_are_ordered_disjoint_and_within_the_text(text: str) -> None:
    hits = find_secrets(text)
    previous_end = 0
    for hit in hits:
        assert previous_end <= hit.start < hit.end <= len(text)
        previous_end = hit.end


@given(st.text(alphabet="abcdefXYZ0189 _-=:'\"\n", max_size=200))
def test_text_without_secrets_is_returned_unchanged(text: str) -> None:
    masked, found = mask_secrets(text)
    if not found:
        assert masked == text


@pytest.mark.parametrize(
    "text",
    [AWS, GITHUB, GITHUB_PAT, OPENAI, OPENAI_PROJ, ANTHROPIC, SLACK, GOOGLE, JWT, PEM,
     "Authorization: Bearer abc123def456ghi789", "db_password=hunter2hunter2", "X-Api-Key: 0123456789abcdef",
     "PASSPHRASE: 'correct horse'", "clientSecret: abcdef99"],
)  # fmt: skip
def test_the_short_text_screen_never_hides_a_secret(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    screened = find_secrets(f"see: {text}")
    assert screened
    monkeypatch.setattr(secrets_module, "_SCREEN_BELOW", 0)
    assert find_secrets(f"see: {text}") == screened


@pytest.mark.parametrize(
    "source",
    [
        "eyJ(?<![a-z]eyJ)[a-z.]{3,9}+",
        "token[=:][a-z]{2,8}+",
        "sk-[a-z]{3}+(?![a-z])",
        "ab(?:c|yz)",
        "yab[a-z]",  # a match may end inside the next candidate literal
        "-----BEGIN[A-Z ]{0,5}",
    ],
)
@given(st.text(alphabet="eyJtokn=:sk-abcyz.-BEGIN ", max_size=120))
@example("yabyabc token=abtoken=cd sk-abcsk-abc eyJab.eyJab.")
def test_searching_from_the_rarest_character_finds_what_finditer_finds(source: str, text: str) -> None:
    literal = LiteralSearch.build(source)
    plain = [(match.start(), match.group()) for match in re.finditer(source, text)]
    assert [(start, text[start : match.end()]) for start, match in literal.matches(text)] == plain


@pytest.mark.parametrize(
    ("text", "kind", "kept"),
    [
        ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey="
         "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;",
         "azure_storage_key", "AccountName=acct;AccountKey=[REDACTED:azure_storage_key];"),
        ("postgres://admin:s3cr3tP4ss@db.example.com:5432/app", "url_credentials",
         "postgres://admin:[REDACTED:url_credentials]@db.example.com"),
        ("https://hooks.slack.com/services/T0A1B2C3D/B0A1B2C3D/abcdefghijklmnopqrstuvwx", "slack_webhook",
         "https://[REDACTED:slack_webhook]"),
        ("https://discord.com/api/webhooks/123456789012345678/" + "aB3" * 20, "discord_webhook",
         "https://[REDACTED:discord_webhook]"),
        ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: k\nPublic-Lines: 1\nAAAAC3Nza\n"
         "Private-Lines: 1\nAAAAIBx\nPrivate-MAC: 0a1b2c3d\n", "putty_private_key", "[REDACTED:putty_private_key]"),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2 (GNU/Linux)\n\nlQOYBFabc\n=x1Yz\n"
         "-----END PGP PRIVATE KEY BLOCK-----", "private_key", "[REDACTED:private_key]"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
         "private_key", "[REDACTED:private_key]"),
        ('client_credentials = "Zx81kLq0pWm2"', "generic_api_key", '"[REDACTED:generic_api_key]"'),
    ],
)
def test_new_kinds_are_masked_and_keep_their_context(text: str, kind: str, kept: str) -> None:
    masked, found = mask_secrets(text)
    assert found == (kind,)
    assert kept in masked


@pytest.mark.parametrize(
    "text",
    [
        "password = get_password()",
        "token = self.token",
        "https://user@example.com/path",
        "https://user:${PASSWORD}@host/",
        "see https://api.slack.com/messaging/webhooks for the docs",
    ],
)
def test_code_references_and_docs_are_not_secrets(text: str) -> None:
    assert find_secrets(text) == []


# ---- the credential names' anchors, lengthened by what an assignment can start with ------------------

_NAMES = ["key", "api_key", "API_KEY", "apiKey", "token", "secret", "client_secret", "password", "passwd",
          "passphrase", "pass", "credentials", "keyboard", "tokens", "Passw0rd"]  # fmt: skip
_SEPARATORS = ["=", ":", " = ", "\t=", "\t:\t", '"=', "'=", '": ', "' : ", ":=", "=>", " => ", "  :  ", "", " ", "."]
_VALUES = ['"hunter2hunter2"', "'s3cr3t-v4lue!'", "abcDEF123456", "${DB_PASS}", "get_password()", "x" * 7]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_SEPARATORS), st.sampled_from(_VALUES),
                          st.sampled_from(["\n", " ", "; ", ",", ""])), min_size=1, max_size=12))
def test_credential_assignments_are_found_alike_from_the_anchors_and_by_whole_text_passes(
    parts: list[tuple[str, str, str, str]],
) -> None:
    # Long enough for the anchored path; the same text again through the per-kind passes.
    text = "".join(name + sep + value + end for name, sep, value, end in parts) + "." * 600
    anchored = find_secrets(text)
    with mock.patch.object(secrets_module, "_SCREEN_BELOW", 1 << 60):
        assert find_secrets(text) == anchored
