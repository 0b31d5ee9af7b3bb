"""Guardrails: what a proposed snippet may do on its own, and what needs a human.

``assess`` turns a snippet into an ``Assessment``: a status and the coded verdicts behind
it. It never raises because of snippet content. Three outcomes:

- ``rejected`` — the snippet can never take effect as written (too large, malformed, tries
  to touch model keys or settings, names an unknown model, grants beyond a key's scope).
- ``pending`` — it is well-formed but widens access in a way the operator did not
  pre-authorise; a reviewer decides.
- ``approved`` — nothing gets wider, or every widening stays inside the operator's
  envelope (``GuardrailConfig.read_only_tools``) for the proposer's own model, with a short
  expiry, from a low-risk session, and with no other check failing.

The order is deliberate: size before parsing, the raw mapping before the loader (so an
attempt on the key ring gets its own code rather than "unknown key"), the loader before any
semantic check, and the semantic diff last.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from negotiation.merge import DiffEntry, MergeResult, is_literal, merge, semantic_diff
from policy import KeyRing, ModelIdentity, Policy, PolicyError, PolicyLoadError, Rule, load_policy_text, tool_matches
from policy.yaml_safe import Node, parse_yaml

__all__ = [
    "REJECTING_CODES",
    "SNIPPET_SOURCE",
    "Assessment",
    "GuardrailConfig",
    "Verdict",
    "assess",
    "glob_within",
]

Status = Literal["approved", "pending", "rejected"]

# A failing verdict with one of these codes rejects the proposal outright; any other
# failing verdict sends it to a reviewer.
REJECTING_CODES: frozenset[str] = frozenset(
    {
        "bad_arguments",
        "model_not_authorized",
        "snippet_too_large",
        "model_keys_change",
        "settings_change",
        "invalid_policy",
        "empty_snippet",
        "unknown_model",
        "beyond_key_scope",
        "too_many_pending",
    }
)

# Top-level keys of a key-ring file, and the one per-identity flag that lets a model
# propose: none of them belongs in a policy snippet.
_KEY_RING_KEYS = frozenset({"models", "model_keys", "keys", "identities", "keyring", "key_ring"})
_SNIPPET_KEYS = frozenset({"rules"})
_MAX_LISTED = 10
_MAX_PER_CODE = 20
# The file name located errors in a snippet point into.
SNIPPET_SOURCE = "proposal.yaml"


@dataclass(frozen=True)
class GuardrailConfig:
    """What the operator lets a model change without a human looking."""

    auto_approve: bool = True
    read_only_tools: tuple[str, ...] = ()
    envelope_same_model_only: bool = True
    max_expiry_hours: float | None = 24
    sensitive_tools: tuple[str, ...] = ()
    max_session_risk: float = 0.5
    max_snippet_bytes: int = 65536
    pending_ttl_hours: float = 72
    max_pending_per_model: int = 20  # a model cannot flood reviewers (or the store)

    def __post_init__(self) -> None:
        if self.max_snippet_bytes <= 0:
            raise ValueError("max_snippet_bytes must be positive")
        if self.pending_ttl_hours <= 0:
            raise ValueError("pending_ttl_hours must be positive")
        if self.max_expiry_hours is not None and self.max_expiry_hours <= 0:
            raise ValueError("max_expiry_hours must be positive or None")
        if not 0.0 <= self.max_session_risk <= 1.0:
            raise ValueError("max_session_risk must be within [0, 1]")


@dataclass(frozen=True)
class Verdict:
    """One guardrail finding, shown to the proposer and the reviewer alike."""

    code: str
    ok: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "ok": self.ok, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(str(data["code"]), bool(data["ok"]), str(data["message"]))


@dataclass(frozen=True)
class Assessment:
    """The guardrails' answer. ``merged`` is set whenever the snippet loaded and merged."""

    status: Status
    verdicts: tuple[Verdict, ...]
    diff: tuple[DiffEntry, ...] = ()
    snippet: Policy | None = None
    merged: MergeResult | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        """The failing verdicts' messages; the passing ones when nothing failed."""
        failing = tuple(v.message for v in self.verdicts if not v.ok)
        return failing or tuple(v.message for v in self.verdicts)


def status_of(verdicts: Iterable[Verdict]) -> Status:
    failing = {v.code for v in verdicts if not v.ok}
    if failing & REJECTING_CODES:
        return "rejected"
    return "pending" if failing else "approved"


def glob_within(pattern: str, envelope: str) -> bool:
    """Whether every tool ``pattern`` can match is matched by ``envelope`` (sound, and exact
    for the ``*``/``?`` globs the policy uses).

    ``pattern``'s wildcards become marker characters; ``envelope``'s ``*`` may cover any of
    them, its ``?`` any single character or a ``?`` marker, never a ``*`` marker.
    """
    symbolic = pattern.replace("*", "\x00").replace("?", "\x01")
    parts: list[str] = []
    for char in envelope:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append("[^\x00]")
        else:
            parts.append(re.escape(char))
    return re.fullmatch("".join(parts), symbolic, flags=re.DOTALL) is not None


def _within_any(pattern: str, globs: Iterable[str]) -> bool:
    return any(glob_within(pattern, glob) for glob in globs)


def _matches_any(globs: Iterable[str], tool: str) -> bool:
    return any(tool_matches(glob, tool) for glob in globs)


def _listed(items: Iterable[str]) -> str:
    unique = sorted(set(items))
    shown = ", ".join(f"`{item}`" for item in unique[:_MAX_LISTED])
    more = len(unique) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def assess(
    yaml_text: str,
    *,
    proposer: ModelIdentity,
    live: Policy,
    keys: KeyRing,
    known_tools: Iterable[str],
    config: GuardrailConfig,
    session_risk: float,
    now: datetime,
) -> Assessment:
    """Judge ``yaml_text`` as a proposal from ``proposer`` against the ``live`` policy."""
    size = len(yaml_text.encode("utf-8", "surrogatepass"))
    if size > config.max_snippet_bytes:
        return _rejected(
            Verdict(
                "snippet_too_large",
                False,
                f"snippet is {size} bytes; the limit is {config.max_snippet_bytes}",
            )
        )
    top_keys, key_paths = _raw_keys(yaml_text, config.max_snippet_bytes)
    escalation = sorted((top_keys & _KEY_RING_KEYS) | key_paths)
    if escalation:
        return _rejected(
            Verdict(
                "model_keys_change",
                False,
                f"snippets cannot change model keys or who may propose (found {_listed(escalation)})",
            )
        )
    try:
        snippet = load_policy_text(yaml_text, SNIPPET_SOURCE, max_bytes=config.max_snippet_bytes)
    except PolicyLoadError as exc:
        return _rejected(*(Verdict("invalid_policy", False, str(issue)) for issue in exc.errors))
    extra = sorted(top_keys - _SNIPPET_KEYS)
    if extra:
        return _rejected(
            Verdict("settings_change", False, f"a snippet may only carry `rules:` (found {_listed(extra)})")
        )
    if not snippet.rules:
        return _rejected(Verdict("empty_snippet", False, "the snippet has no rules"))

    known = frozenset(known_tools)
    verdicts = [Verdict("valid", True, f"snippet parsed: {len(snippet.rules)} rule(s)")]
    for rule in snippet.rules:
        verdicts.extend(_rule_verdicts(rule, proposer, keys, known, config))
    try:
        merged = merge(live, snippet)
    except PolicyError as exc:
        verdicts.append(Verdict("invalid_policy", False, f"the snippet does not merge: {exc}"))
        return Assessment(status_of(verdicts), tuple(verdicts), snippet=snippet)
    diff = semantic_diff(live, merged.policy, keys, known, now=now)
    verdicts.extend(_diff_verdicts(diff, snippet, proposer, config, now))
    if session_risk >= config.max_session_risk:
        verdicts.append(
            Verdict(
                "session_risk_high",
                False,
                f"session risk {session_risk:.2f} is at or above {config.max_session_risk:.2f}",
            )
        )
    if not config.auto_approve:
        verdicts.append(Verdict("auto_approve_disabled", False, "every proposal needs a reviewer"))
    verdicts = _capped(verdicts)
    if status_of(verdicts) == "approved":
        wider = any(entry.change == "wider" for entry in diff)
        verdicts.append(
            Verdict(
                "auto_approved",
                True,
                "every widening stays inside the operator's envelope" if wider else "nothing gets wider",
            )
        )
    return Assessment(status_of(verdicts), tuple(verdicts), diff, snippet, merged)


def _rejected(*verdicts: Verdict) -> Assessment:
    return Assessment("rejected", verdicts)


def _raw_keys(text: str, max_bytes: int) -> tuple[frozenset[str], frozenset[str]]:
    """The snippet's top-level keys, and the paths of ``can_propose`` keys anywhere in it.

    Uses the policy package's hardened YAML reader (depth, alias and size limits); text it
    refuses is left to the loader, which reports the same problem with its location.
    """
    try:
        root = parse_yaml(text, SNIPPET_SOURCE, max_bytes=max_bytes)
    except PolicyLoadError:
        return frozenset(), frozenset()
    if root is None or not isinstance(root.value, dict):
        return frozenset(), frozenset()
    found: set[str] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node.value, dict):
            for name, child in node.value.items():
                child_path = f"{path}.{name}" if path else str(name)
                if name == "can_propose":
                    found.add(child_path)
                stack.append((child, child_path))
        elif isinstance(node.value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return frozenset(str(key) for key in root.value), frozenset(found)


def _rule_verdicts(
    rule: Rule,
    proposer: ModelIdentity,
    keys: KeyRing,
    known: frozenset[str],
    config: GuardrailConfig,
) -> list[Verdict]:
    """What one snippet rule says on its face, before looking at its effect."""
    out: list[Verdict] = []
    where = f"rule `{rule.id}`"
    for model in rule.models:
        if model == "*":
            out.append(Verdict("wildcard_model", False, f"{where} applies to every model (`*`)"))
        elif model != proposer.model_id:
            if keys.get(model) is None:
                out.append(Verdict("unknown_model", False, f"{where} names unknown model `{model}`"))
            else:
                out.append(Verdict("other_model", False, f"{where} names another model, `{model}`"))
    for pattern in rule.allow_tools:
        if _touches(pattern, config.sensitive_tools, known):
            out.append(Verdict("sensitive_tool", False, f"{where} allows sensitive tool(s) via `{pattern}`"))
        if not is_literal(pattern) and not _within_any(pattern, config.read_only_tools):
            out.append(
                Verdict(
                    "wildcard_beyond_envelope",
                    False,
                    f"{where}: wildcard `{pattern}` reaches beyond the pre-approved tools",
                )
            )
        for model in rule.models:
            identity = keys.get(model) if model != "*" else None
            if identity is not None and _beyond_scope(pattern, identity, known):
                out.append(
                    Verdict(
                        "beyond_key_scope",
                        False,
                        f"{where}: `{pattern}` is outside the tools `{model}`'s key allows; "
                        "it could never take effect (model keys are changed by the operator)",
                    )
                )
    return out


def _touches(pattern: str, sensitive: Iterable[str], known: frozenset[str]) -> bool:
    """Whether ``pattern`` can match a tool some ``sensitive`` glob covers."""
    for glob in sensitive:
        if is_literal(glob) and tool_matches(pattern, glob):
            return True
        if is_literal(pattern) and tool_matches(glob, pattern):
            return True
        if glob_within(glob, pattern) or glob_within(pattern, glob):
            return True
        if any(tool_matches(pattern, tool) and tool_matches(glob, tool) for tool in known):
            return True
    return False


def _beyond_scope(pattern: str, identity: ModelIdentity, known: frozenset[str]) -> bool:
    """Whether nothing ``pattern`` allows lies inside ``identity``'s key scope."""
    scope = identity.tools
    if _within_any(pattern, scope):
        return False
    if is_literal(pattern):
        return not _matches_any(scope, pattern)
    if any(glob_within(glob, pattern) for glob in scope):
        return False
    return not any(tool_matches(pattern, t) and _matches_any(scope, t) for t in known)


def _diff_verdicts(
    diff: tuple[DiffEntry, ...],
    snippet: Policy,
    proposer: ModelIdentity,
    config: GuardrailConfig,
    now: datetime,
) -> list[Verdict]:
    """What the merge would change in effect, judged against the operator's envelope."""
    out: list[Verdict] = []
    others = [e for e in diff if e.model != proposer.model_id]
    if others:
        out.append(
            Verdict(
                "other_model",
                False,
                f"changes access for other models: {_listed(f'{e.model}: {e.tool}' for e in others)}",
            )
        )
    wider = [e for e in diff if e.change == "wider"]
    sensitive = [e.tool for e in wider if _matches_any(config.sensitive_tools, e.tool)]
    if sensitive:
        out.append(Verdict("sensitive_tool", False, f"widens sensitive tool(s) {_listed(sensitive)}"))
    outside = [
        f"{e.model}: {e.tool}"
        for e in wider
        if not _matches_any(config.read_only_tools, e.tool)
        or (config.envelope_same_model_only and e.model != proposer.model_id)
    ]
    if outside:
        out.append(Verdict("outside_envelope", False, f"widens access outside the envelope: {_listed(outside)}"))
    if config.max_expiry_hours is not None and wider:
        out.extend(_expiry_verdicts(wider, snippet, now + timedelta(hours=config.max_expiry_hours)))
    return out


def _expiry_verdicts(wider: list[DiffEntry], snippet: Policy, latest: datetime) -> list[Verdict]:
    """Each widening must come from a snippet rule that expires by ``latest``."""
    out: list[Verdict] = []
    for entry in wider:
        granting = [
            candidate.rule
            for candidate in snippet.compiled.candidates(entry.model, entry.tool)
            if candidate.allow is not None and candidate.allow.fullmatch(entry.tool)
        ]
        if not granting:
            out.append(
                Verdict(
                    "expiry_too_long",
                    False,
                    f"`{entry.tool}` widens for `{entry.model}` with no expiring grant ({entry.detail})",
                )
            )
        for rule in granting:
            if rule.expires is None or rule.expires > latest:
                out.append(
                    Verdict(
                        "expiry_too_long",
                        False,
                        f"rule `{rule.id}` widens access and must expire by {latest.isoformat()} "
                        f"(it {'never expires' if rule.expires is None else 'expires ' + rule.expires.isoformat()})",
                    )
                )
    return out


def _capped(verdicts: list[Verdict]) -> list[Verdict]:
    """At most ``_MAX_PER_CODE`` verdicts of one code, then one saying how many more."""
    out: list[Verdict] = []
    seen: dict[tuple[str, bool], int] = {}
    for verdict in dict.fromkeys(verdicts):  # one copy of each finding, first-seen order
        key = (verdict.code, verdict.ok)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= _MAX_PER_CODE:
            out.append(verdict)
    for (code, ok), count in seen.items():
        if count > _MAX_PER_CODE:
            out.append(Verdict(code, ok, f"… and {count - _MAX_PER_CODE} more `{code}` findings"))
    return out
