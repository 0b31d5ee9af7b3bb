"""Find and mask credentials inside free text.

Each secret kind is one regular expression, compiled once at import, that *starts with a
literal* (``AKIA``, ``-----BEGIN``, ``eyJ``, ``token`` ...). CPython's ``re`` finds a literal
prefix with a fast substring search, so a pass costs well under a millisecond per MB; one
big alternation of all kinds would defeat that optimisation and runs ~50x slower. Left
word boundaries are checked by a fixed-width look-behind placed *after* the literal (a
look-behind in front would also defeat it), and every quantifier is bounded or possessive,
so a scan is linear in the size of the text and catastrophic backtracking is impossible.

A pass searches from the *rarest* character of its literal (``J`` of ``eyJ``, ``k`` of
``token``), the rest of the literal checked by a look-behind: CPython's prefix search slows
down with every false start on a common first letter, so ``eyJ`` costs ~4x more than
``J(?<=eyJ)`` on English text. Match offsets are shifted back by the skipped length, and
the next search starts that far past the previous match, so the hits are exactly those of
``finditer`` over the plain pattern. A pass whose literal has a character that the text
lacks (capitals, digits, ``<``) is skipped after one ``in`` test (a ``memchr``).

Case-insensitive kinds (``bearer``, the credential names of ``generic_api_key``) are run
over ``text.lower()``, which keeps every offset (the one code point whose lower case is two
code points, U+0130, is mapped to its first).

For context-anchored kinds (``bearer_token``, ``generic_api_key``) only the *value* is the
secret: ``password = "hunter22"`` masks to ``password = "[REDACTED:generic_api_key]"`` so a
reader still sees which field was hidden. When a specific kind and a context kind cover the
same value (``"api_key": "sk-ant-..."``), the specific kind wins.

Nothing in this module raises for any input text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import ahocorasick_rs

from .literal import LiteralSearch

__all__ = ["ANCHORS", "SECRET_KINDS", "SecretHit", "find_secrets", "mask_hits", "mask_secrets", "scanner_starts",
           "secret_anchor_seen"]


@dataclass(frozen=True)
class SecretHit:
    """One secret found in a text: its kind and the half-open span ``[start, end)``."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class _Scanner:
    # One kind, or several told apart by which group of that name matched.
    kinds: tuple[str, ...]
    search: LiteralSearch
    # Case-insensitive scanners run over the lower-cased text.
    lowered: bool
    # The groups holding the secret when the match also spans its context (``Bearer ``).
    value_groups: tuple[str, ...]
    # Lower-cased literals one of which starts every match (the automaton's patterns).
    anchors: tuple[str, ...]


def _boundary(literal: str, before: str) -> str:
    """``literal`` not preceded by a character of class ``before``, prefix kept literal."""
    return f"{literal}(?<![{before}]{literal})"


def _scanner(
    kinds: str | tuple[str, ...],
    pattern: str,
    *,
    lowered: bool = False,
    literal: str | None = None,
    anchors: tuple[str, ...] = (),
) -> _Scanner:
    """``pattern`` starts with a literal; or, with ``literal``, ``pattern`` is what follows it.

    ``anchors`` lengthen a literal too short to search for on its own (``A`` of ``AKIA``);
    each must start with it.
    """
    search = LiteralSearch.build(pattern) if literal is None else LiteralSearch.of(literal, pattern)
    value_groups = tuple(name for name in search.pattern.groupindex if name.startswith("v"))
    prefix = search.literal.lower()
    anchors = anchors or (prefix,)
    assert all(anchor.startswith(prefix) for anchor in anchors), anchors
    return _Scanner((kinds,) if isinstance(kinds, str) else kinds, search, lowered, value_groups, anchors)


_B64URL = r"A-Za-z0-9_\-"
_PEM_LABEL = r"[ A-Z0-9]{0,40} PRIVATE KEY(?: BLOCK)?-----"

# The value of a `name = value` assignment: at least six characters, not starting like a
# reference or placeholder (${VAR}, <your-key>, [REDACTED:...], %(x)s, {...}). A quoted value
# may contain spaces (passphrases do); an unquoted one ends at the first space.
_VALUE = (
    r"(?:\"(?P<v1>[^\s\"\\$<{\[%][^\r\n\"\\]{5,511}+)\""
    r"|'(?P<v2>[^\s'\\$<{\[%][^\r\n'\\]{5,511}+)'"
    r"|(?P<v3>[^\s\"'`,;(){}\[\]<>$%][^\s\"'`,;(){}\[\]<>]{5,511}+))"
)
_ASSIGN = r"[\"']?[ \t]{0,16}+(?::=|=>|[:=])[ \t]{0,16}+"
# What can follow a credential name that _ASSIGN accepts: its first character. As anchors
# (`key=`, `token:` ...) they leave out the prose and identifiers (`keyboard`, `the key
# point`, `tokens`) that the bare name anchored, ~3-5 k hits per MB of documentation.
_ASSIGN_FIRST = ('"', "'", " ", "\t", ":", "=")


def _assigned(name: str) -> tuple[str, ...]:
    return tuple(name + char for char in _ASSIGN_FIRST)


_KEY_OWNERS = ("api", "secret", "access", "private", "signing", "auth", "master", "encryption")
# The cheap assignment look-ahead runs before the owner look-behinds: prose "key" fails fast.
_OWNED_KEY = (
    "key(?="
    + _ASSIGN
    + ")(?:"
    + "|".join(f"(?<={owner}{sep}key)" for owner in _KEY_OWNERS for sep in ("", "_", "-"))
    + ")"
)

# In priority order: at equal start, an earlier scanner's hit wins. Each pattern starts with
# a literal; see the module docstring for why the scanners are not one alternation.
_SCANNERS: tuple[_Scanner, ...] = (
    _scanner(
        "private_key",
        # The whole PEM block; a body character '-' is allowed unless it starts the END
        # line. An unterminated block (truncated paste) still masks header and body.
        "-----BEGIN" + _PEM_LABEL
        # PGP armour headers ("Version: GnuPG v2 (GNU/Linux)") may hold any printable text.
        + r"(?:[A-Za-z0-9+/=\s:,.]++|(?<=\n)(?:Version|Comment|Hash|Charset): [^\r\n]{0,200}+|-(?!----END))*+"
        r"(?:-----END" + _PEM_LABEL + ")?",
    ),
    _scanner(
        ("aws_access_key", "google_api_key"),
        _boundary("A", _B64URL)
        + r"(?:(?P<aws_access_key>[KS]IA[A-Z0-9]{16}+(?![A-Za-z0-9]))"
        + f"|(?P<google_api_key>Iza[{_B64URL}]{{35}}(?![{_B64URL}])))",
        anchors=("akia", "asia", "aiza"),
    ),
    _scanner(
        "github_token",
        _boundary("gh[pousr]_", "A-Za-z0-9_") + r"[A-Za-z0-9]{36,255}+(?![A-Za-z0-9_])",
        anchors=("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    _scanner("github_token", _boundary("github_pat_", "A-Za-z0-9_") + r"[A-Za-z0-9_]{22,255}+(?![A-Za-z0-9_])"),
    _scanner(
        ("anthropic_key", "openai_key"),
        # OpenAI project / service-account keys contain '-' and '_'; legacy keys are plain
        # alphanumerics. Requiring one of those shapes leaves "sk-learn-style" prose alone.
        _boundary("sk-", _B64URL)
        + f"(?:(?P<anthropic_key>ant-[{_B64URL}]{{20,512}}+)"
        + f"|(?P<openai_key>(?:proj|svcacct|admin)-[{_B64URL}]{{20,512}}+|[A-Za-z0-9]{{20,512}}+))"
        + f"(?![{_B64URL}])",
    ),
    _scanner(
        "slack_token",
        _boundary("xox[abpr]-", "A-Za-z0-9") + r"[A-Za-z0-9\-]{10,255}+(?![A-Za-z0-9\-])",
        anchors=("xoxa-", "xoxb-", "xoxp-", "xoxr-"),
    ),
    _scanner(
        "putty_private_key",
        # The whole .ppk file: header, key lines, MAC; comment lines keep printable ASCII.
        r"PuTTY-User-Key-File-[0-9]++:[^\r\n]{1,200}+(?:\r?+\n(?!PuTTY-User-Key-File)[ -~\t]{1,400}+){1,120}+",
    ),
    _scanner(
        "slack_webhook",
        "hooks" + r"(?<![A-Za-z0-9.\-]hooks)\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{20,200}+",
    ),
    _scanner(
        "discord_webhook",
        "discord" + r"(?:app)?+\.com/api/webhooks/[0-9]{5,30}+/[A-Za-z0-9_\-]{30,120}+",
    ),
    _scanner(
        "azure_storage_key",
        # Connection strings (AccountKey=, SharedAccessKey=): only the key is masked.
        "accountkey" + r"[ \t]{0,4}+=[ \t]{0,4}+(?P<v>[a-z0-9+/]{40,120}+={0,2}+)",
        lowered=True,
    ),
    _scanner(
        "azure_storage_key",
        "sharedaccesskey" + r"[ \t]{0,4}+=[ \t]{0,4}+(?P<v>[a-z0-9+/]{40,120}+={0,2}+)",
        lowered=True,
    ),
    _scanner(
        "url_credentials",
        # scheme://user:password@host -- only the password is masked, so the reader still
        # sees which account and host it was for.
        r"(?<=[a-z0-9]://)[^\s:/@?#\[\]]{0,128}+:(?P<v>[^\s:/@?#$<{\[%][^\s/@?#]{2,255}+)@(?=[a-z0-9\[])",
        lowered=True,
        literal="://",
    ),
    _scanner(
        "jwt",
        _boundary("eyJ", _B64URL)
        + f"[{_B64URL}]{{7,4096}}+\\.[{_B64URL}]{{8,16384}}+\\.[{_B64URL}]{{0,4096}}+(?![{_B64URL}])",
    ),
    _scanner(
        "bearer_token",
        # The token must contain a digit so that prose ("Bearer tokens are ...") is left
        # alone; real opaque tokens essentially always have one.
        _boundary("bearer", "a-z0-9") + r"[ \t]{1,8}+(?P<v>(?=[a-z\-._~+/]{0,1024}+[0-9])[a-z0-9\-._~+/]{12,4096}+=*+)",
        lowered=True,
    ),
    _scanner("generic_api_key", _OWNED_KEY + _ASSIGN + _VALUE, lowered=True, anchors=_assigned("key")),
    _scanner("generic_api_key", "token" + _ASSIGN + _VALUE, lowered=True, anchors=_assigned("token")),
    _scanner("generic_api_key", "secret" + _ASSIGN + _VALUE, lowered=True, anchors=_assigned("secret")),
    _scanner("generic_api_key", "pass(?:w(?:or)?d|phrase)" + _ASSIGN + _VALUE, lowered=True,
             anchors=("passw", "passp")),
    _scanner("generic_api_key", "credential" + "(?:s)?+" + _ASSIGN + _VALUE, lowered=True),
)

# Every scanner's match contains one of these in the lower-cased text. One alternation is
# slower than the literal passes over a large text but much cheaper than twelve calls on
# the short strings that make up most tool arguments, so it screens those.
_SCREEN = re.compile(
    r"-----begin|a[ks]ia|aiza|gh[pousr]_|github_pat_|sk-|xox[abpr]-|eyj|bearer|key|token|secret|pass"
    r"|putty-user|hooks|discord|://|credential"
)
_SCREEN_BELOW = 512  # measured crossover: above it the literal passes are cheaper

SECRET_KINDS: tuple[str, ...] = tuple(dict.fromkeys(kind for scanner in _SCANNERS for kind in scanner.kinds))

# Assignment values that are documentation, not credentials (`token: string`).
_PLACEHOLDERS = frozenset(
    {"string", "required", "optional", "undefined", "changeme", "redacted", "example", "secret", "password"}
)


_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*+(?:\.[A-Za-z_][A-Za-z0-9_]*+)++|[a-z]++(?:_[a-z]++)++")


def _is_placeholder(value: str, quoted: bool = True, after: str = "") -> bool:
    """Documentation, a reference or code rather than a credential.

    An unquoted value that is a dotted name or snake_case words (``config.api_key``,
    ``get_password`` followed by ``(``) is code; quoted values may be passphrases.
    """
    if value.lower() in _PLACEHOLDERS or len(set(value)) == 1:
        return True
    return not quoted and (after == "(" or _DOTTED_NAME.fullmatch(value) is not None)


def _lower_same_offsets(text: str) -> str:
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    # U+0130 (dotted capital I) is the one code point that lower-cases to two.
    lowered = text.replace("\u0130", "i").lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(char.lower()[:1] for char in text)  # pragma: no cover - future Unicode


# Every scanner's anchors in one automaton: one native pass over a large text finds where
# any match can start, and each scanner then tries only its own occurrences, instead of
# nineteen regex passes over the whole text (~0.3 ms per MB each).
_ANCHOR_SCANNERS: dict[str, list[int]] = {}
for _index, _item in enumerate(_SCANNERS):
    for _anchor in _item.anchors:
        _ANCHOR_SCANNERS.setdefault(_anchor, []).append(_index)
_ANCHOR_LIST = tuple(_ANCHOR_SCANNERS)
_ANCHOR_OWNERS = tuple(tuple(_ANCHOR_SCANNERS[anchor]) for anchor in _ANCHOR_LIST)
_AUTOMATON = ahocorasick_rs.BytesAhoCorasick(
    [anchor.encode("ascii") for anchor in _ANCHOR_LIST], implementation=ahocorasick_rs.Implementation.DFA
)


ANCHORS: tuple[str, ...] = _ANCHOR_LIST
"""Every scanner's anchors (lower-case ASCII, none with a leetspeak digit or ``$``): a match
of any scanner starts at an occurrence of one of them in the lower-cased text."""
assert not any(set(anchor) & set("013457$") for anchor in ANCHORS), "anchors must survive leetspeak folding"


def secret_anchor_seen(text: str) -> bool:
    """Whether an anchor of any scanner occurs in ``text`` as :func:`find_secrets` searches it
    (lower-cased, each non-ASCII character a ``?``). False implies ``find_secrets(text) == []``:
    every match of every scanner starts at one of its anchors (:data:`ANCHORS`)."""
    return bool(_AUTOMATON.find_matches_as_indexes(text.encode("ascii", "replace").lower(), overlapping=True))


def scanner_starts(hits: Iterable[tuple[int, int, int]], first: int = 0) -> list[list[int]]:
    """Per scanner, the sorted starts of its anchors among ``hits`` (``(anchor, start, end)``
    with anchor indexes into :data:`ANCHORS` shifted by ``first``): what :func:`find_secrets`
    takes as ``starts``."""
    starts: list[list[int]] = [[] for _ in _SCANNERS]
    owners = _ANCHOR_OWNERS
    for anchor, start, _ in hits:
        for owner in owners[anchor - first]:
            starts[owner].append(start)
    for own in starts:
        own.sort()
    return starts


def _anchored_passes(
    text: str, lowered: str, starts: list[list[int]] | None = None
) -> list[tuple[_Scanner, Iterator[tuple[int, re.Match[str]]]]]:
    """Each scanner with the matches it finds at its anchors' occurrences in ``lowered``.

    The same matches as its pass over the whole text: every match starts at an anchor, and
    a case-sensitive literal occurs in the lower-cased text at the same offset (``lowered``
    is ASCII, so byte offsets are character offsets). ``starts`` (from
    :func:`scanner_starts`) may be a superset of the occurrences, found by the caller's own
    automaton pass over a text where every anchor occurrence of ``lowered`` is kept.
    """
    if starts is None:
        hits = _AUTOMATON.find_matches_as_indexes(lowered.encode("ascii", "replace"), overlapping=True)
        starts = scanner_starts(hits)
    return [
        (scanner, scanner.search.matches_at(lowered if scanner.lowered else text, own))
        for scanner, own in zip(_SCANNERS, starts, strict=True)
    ]


def find_secrets(
    text: str, *, lowered: str | None = None, starts: list[list[int]] | None = None
) -> list[SecretHit]:
    """Every secret in ``text``, ordered by position; overlapping hits are merged into the first.

    ``lowered`` may pass on a ``text.lower()`` the caller already has; it is used only when
    it keeps every offset. ``starts`` (:func:`scanner_starts`, for an ASCII ``text`` of at
    least ``_SCREEN_BELOW`` characters) may pass on where the anchors occur, found in the
    caller's own automaton pass: every occurrence in ``lowered`` must be among them.
    """
    original = text
    if not text.isascii():
        # Every pattern is ASCII. Searching a str with any non-ASCII character costs the
        # regex engine ~4x more, so search a copy with each non-ASCII character replaced by
        # `?` (one for one: offsets are kept; a run of `?` is a placeholder, never a value).
        text = text.encode("ascii", "replace").decode("ascii")
        lowered = None
    if lowered is None or len(lowered) != len(text):
        lowered = _lower_same_offsets(text)
    if starts is not None and text is original and len(text) >= _SCREEN_BELOW:
        passes = _anchored_passes(text, lowered, starts)
    elif len(text) < _SCREEN_BELOW:
        if not _SCREEN.search(lowered):
            return []
        passes = [(scanner, scanner.search.matches(lowered if scanner.lowered else text)) for scanner in _SCANNERS]
    else:
        passes = _anchored_passes(text, lowered)
    found: list[tuple[int, int, int, str]] = []
    for priority, (scanner, matches) in enumerate(passes):
        for start, match in matches:
            end = match.end()
            kind = scanner.kinds[0]
            if len(scanner.kinds) > 1:
                kind = next(name for name in scanner.kinds if match.group(name) is not None)
            if scanner.value_groups:
                group = next(name for name in scanner.value_groups if match.group(name) is not None)
                start, end = match.span(group)
                if kind in ("generic_api_key", "url_credentials") and _is_placeholder(
                    original[start:end], group != "v3", original[end : end + 1]
                ):
                    continue
            found.append((start, priority, end, kind))
    found.sort()
    hits: list[SecretHit] = []
    for start, _, end, kind in found:
        if hits and start < hits[-1].end:
            # Overlap: widen the earlier hit so no fragment of either secret survives.
            if end > hits[-1].end:
                hits[-1] = SecretHit(hits[-1].kind, hits[-1].start, end)
            continue
        hits.append(SecretHit(kind, start, end))
    return hits


def mask_secrets(text: str) -> tuple[str, tuple[str, ...]]:
    """``text`` with each secret replaced by ``[REDACTED:<kind>]``, and the sorted kinds found."""
    return mask_hits(text, find_secrets(text))


def mask_hits(text: str, hits: list[SecretHit]) -> tuple[str, tuple[str, ...]]:
    """``text`` with each of ``hits`` (sorted, non-overlapping) replaced by ``[REDACTED:<kind>]``."""
    if not hits:
        return text, ()
    parts: list[str] = []
    cursor = 0
    for hit in hits:
        parts.append(text[cursor : hit.start])
        parts.append(f"[REDACTED:{hit.kind}]")
        cursor = hit.end
    parts.append(text[cursor:])
    return "".join(parts), tuple(sorted({hit.kind for hit in hits}))
