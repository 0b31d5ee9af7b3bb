"""Guardrails: what a proposed snippet may do on its own, and what needs a human.

``assess`` turns a snippet into an ``Assessment``: a status and the coded verdicts behind
it. It never raises because of snippet content. Three outcomes:

- ``rejected`` — the snippet can never take effect as written (too large, malformed, tries
  to touch model keys or settings, names an unknown model, grants beyond a key's scope).
- ``pending`` — it is well-formed but something in it was not pre-authorised by the
  operator; a reviewer decides.
- ``approved`` — every rule it adds is, on its own, inside the operator's envelope (or
  already granted by a live rule, in which case nothing is merged).

**Soundness by construction** (the contract in docs/negotiation.md, "What auto-approval can
never do"). An auto-approved snippet only *adds* rules (a rule naming a live rule's id is
``replaces_rule``, never auto-approved). A deny rule can only take calls away. So a call
the merged policy allows but the live one does not must be allowed by an added allow rule
— and each such rule is judged *by itself*: for the proposer only, every tool glob
contained in a ``read_only_tools`` glob and disjoint from every ``sensitive_tools`` glob,
expiring by now + ``max_expiry_hours``. Its conditions and ``max_risk`` can only narrow it.
Nothing here depends on what the live policy's deny rules mask, on which tools some client
has listed, or on arguments: the judgement holds for every call, every future removal of
deny rules, and tools that do not exist yet. tests/negotiation/test_soundness.py checks it.

The order is deliberate: size before parsing, the raw mapping before the loader (so an
attempt on the key ring gets its own code rather than "unknown key"), the loader before any
rule is judged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from negotiation.globs import glob_within, globs_overlap, matches_any, within_any
from negotiation.merge import DiffEntry, MergeResult, effects, is_literal, merge
from policy import KeyRing, ModelIdentity, Policy, PolicyError, PolicyLoadError, Rule, load_policy_text
from policy.model import format_timestamp
from policy.yaml_safe import Node, parse_yaml

__all__ = [
    "REJECTING_CODES",
    "RULE_FIELDS",
    "SNIPPET_SOURCE",
    "Assessment",
    "GuardrailConfig",
    "Verdict",
    "assess",
    "covering_rule",
    "glob_within",
    "globs_overlap",
    "in_envelope",
    "linear_regex_engine",
    "unsupported_fields",
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
        "rate_limited",
        "secret_in_snippet",
        "audit_unavailable",
        "too_many_rules",
    }
)

# The rule fields the guardrails know how to judge. A rule carrying anything else (a field
# the policy language gains later: prompts, resources, ask_tools …) goes to a reviewer:
# unknown fields fail safe instead of slipping past a judgement that never looked at them.
RULE_FIELDS: frozenset[str] = frozenset(
    {"id", "description", "model", "allow_tools", "deny_tools", "when", "reason", "expires", "max_risk"}
)
_RULE_ATTRIBUTES = frozenset(
    {"id", "description", "models", "allow_tools", "deny_tools", "when", "reason", "expires", "max_risk"}
)
# Top-level keys of a key-ring file, and the one per-identity flag that lets a model
# propose: none of them belongs in a policy snippet.
_KEY_RING_KEYS = frozenset({"models", "model_keys", "keys", "identities", "keyring", "key_ring"})
_SNIPPET_KEYS = frozenset({"rules"})
_REGEX_OPS = frozenset({"regex", "not_regex"})
_MAX_REGEX_CHARS = 256
_MAX_LISTED = 10
_MAX_PER_CODE = 20
# The file name located errors in a snippet point into.
SNIPPET_SOURCE = "proposal.yaml"


@dataclass(frozen=True)
class GuardrailConfig:
    """What the operator lets a model change without a human looking."""

    auto_approve: bool = True
    read_only_tools: tuple[str, ...] = ()
    # Kept for configuration compatibility: a rule naming another model is never
    # auto-approved, whatever this says.
    envelope_same_model_only: bool = True
    max_expiry_hours: float | None = 24
    sensitive_tools: tuple[str, ...] = ()
    max_session_risk: float = 0.5
    max_snippet_bytes: int = 65536
    pending_ttl_hours: float = 72
    max_pending_per_model: int = 20  # a model cannot flood reviewers (or the store)
    # Judging is linear in rules x live rules; a cap keeps one proposal from holding the
    # service for long.
    max_snippet_rules: int = 100
    # Refused proposals per identity in a sliding window, before any are stored whole.
    max_refused_per_window: int = 20
    refused_window_minutes: float = 60
    # The operator's policy tests (policy.testing.TestSuite); a merge that breaks one that
    # passes now is held for review (``breaks_policy_tests``, negotiation/policy_tests.py).
    policy_tests: tuple[Any, ...] = ()
    # Or where they are kept (negotiation.policy_tests.PolicyTestFiles): read at each check.
    policy_test_files: Any = None

    def __post_init__(self) -> None:
        if self.max_snippet_bytes <= 0:
            raise ValueError("max_snippet_bytes must be positive")
        if self.pending_ttl_hours <= 0:
            raise ValueError("pending_ttl_hours must be positive")
        if self.max_expiry_hours is not None and self.max_expiry_hours <= 0:
            raise ValueError("max_expiry_hours must be positive or None")
        if not 0.0 <= self.max_session_risk <= 1.0:
            raise ValueError("max_session_risk must be within [0, 1]")
        if self.max_snippet_rules < 1:
            raise ValueError("max_snippet_rules must be positive")
        if self.max_refused_per_window < 1 or self.refused_window_minutes <= 0:
            raise ValueError("the refused-proposal rate limit must be positive")


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
    """The guardrails' answer. ``merged`` is set whenever the snippet loaded and merged;
    ``covered`` maps snippet rules already granted by a live rule to that rule's id."""

    status: Status
    verdicts: tuple[Verdict, ...]
    diff: tuple[DiffEntry, ...] = ()
    snippet: Policy | None = None
    merged: MergeResult | None = None
    covered: tuple[tuple[str, str], ...] = ()

    @property
    def reasons(self) -> tuple[str, ...]:
        """The failing verdicts' messages; the passing ones when nothing failed."""
        failing = tuple(v.message for v in self.verdicts if not v.ok)
        return failing or tuple(v.message for v in self.verdicts)

    @property
    def changes_nothing(self) -> bool:
        """Whether merging would leave the policy exactly as it is."""
        return self.merged is not None and not self.merged.added and not self.merged.replaced


def status_of(verdicts: Iterable[Verdict]) -> Status:
    failing = {v.code for v in verdicts if not v.ok}
    if failing & REJECTING_CODES:
        return "rejected"
    return "pending" if failing else "approved"


def in_envelope(config: GuardrailConfig, proposer: str, model: str, tool: str, at: datetime, now: datetime) -> bool:
    """The envelope grant, as a predicate on one call: what auto-approval may add."""
    if model != proposer or not matches_any(config.read_only_tools, tool):
        return False
    if matches_any(config.sensitive_tools, tool):
        return False
    return config.max_expiry_hours is None or at < now + timedelta(hours=config.max_expiry_hours)


def _listed(items: Iterable[str]) -> str:
    unique = sorted(set(items))
    shown = ", ".join(f"`{item}`" for item in unique[:_MAX_LISTED])
    more = len(unique) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


# -- the judgement -----------------------------------------------------------------------------


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
    top_keys, key_paths, rule_keys = _raw_keys(yaml_text, config.max_snippet_bytes)
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
    if len(snippet.rules) > config.max_snippet_rules:
        return _rejected(
            Verdict(
                "too_many_rules",
                False,
                f"the snippet has {len(snippet.rules)} rules; the limit is {config.max_snippet_rules}",
            )
        )

    known = frozenset(known_tools)
    live_by_id = {rule.id: rule for rule in live.rules}
    limited = _limited_rules(live, proposer.model_id, now)
    verdicts = [Verdict("valid", True, f"snippet parsed: {len(snippet.rules)} rule(s)")]
    to_merge: list[Rule] = []
    covered: list[tuple[str, str]] = []
    for index, rule in enumerate(snippet.rules):
        raw = rule_keys[index] if index < len(rule_keys) else frozenset()
        same = live_by_id.get(rule.id)
        if same is not None and same == rule:
            verdicts.append(Verdict("already_present", True, f"rule `{rule.id}` is already live, word for word"))
            continue
        if same is None and rule.expires is not None and rule.expires <= now and not raw - RULE_FIELDS:
            verdicts.append(Verdict("already_expired", True, f"rule `{rule.id}` has expired already; it is not merged"))
            continue
        found = _rule_verdicts(rule, raw, proposer, keys, known, config, now, replaces=same is not None)
        found.extend(_live_limit_verdicts(rule, limited))
        cover = None if same is not None or any(not v.ok for v in found if v.code in _FIELD_CODES) else (
            covering_rule(rule, live, proposer.model_id, now)
        )
        if cover is not None:
            covered.append((rule.id, cover.id))
            verdicts.append(Verdict("already_allowed", True, f"rule `{rule.id}` is already allowed by rule {cover.id}"))
            continue
        verdicts.extend(found)
        to_merge.append(rule)
    try:
        merged = merge(live, to_merge)
    except PolicyError as exc:
        verdicts.append(Verdict("invalid_policy", False, f"the snippet does not merge: {exc}"))
        return Assessment(status_of(verdicts), tuple(verdicts), snippet=snippet)
    diff = effects(live, to_merge)
    if to_merge and session_risk >= config.max_session_risk:
        verdicts.append(
            Verdict(
                "session_risk_high",
                False,
                f"risk of `{proposer.model_id}` {session_risk:.2f} is at or above {config.max_session_risk:.2f}",
            )
        )
    if not config.auto_approve and to_merge:
        verdicts.append(Verdict("auto_approve_disabled", False, "every proposal needs a reviewer"))
    verdicts = _capped(verdicts)
    if status_of(verdicts) == "approved":
        if to_merge:
            message = "every rule it adds stays inside the operator's envelope"
        else:
            holders = ", ".join(dict.fromkeys(cover for _, cover in covered)) or "the live policy"
            message = f"already allowed by rule {holders}; nothing is merged"
        verdicts.append(Verdict("auto_approved", True, message))
    assessment = Assessment(status_of(verdicts), tuple(verdicts), diff, snippet, merged, tuple(covered))
    if config.policy_tests or config.policy_test_files is not None:
        from negotiation.policy_tests import check_policy_tests  # it builds on this module

        assessment = check_policy_tests(assessment, live, keys, config.policy_tests, now=now,
                                        files=config.policy_test_files)
    return assessment


def _rejected(*verdicts: Verdict) -> Assessment:
    return Assessment("rejected", verdicts)


def _raw_keys(text: str, max_bytes: int) -> tuple[frozenset[str], frozenset[str], tuple[frozenset[str], ...]]:
    """The snippet's top-level keys, the paths of ``can_propose`` keys anywhere in it, and
    each rule's own keys as written.

    Uses the policy package's hardened YAML reader (depth, alias and size limits); text it
    refuses is left to the loader, which reports the same problem with its location.
    """
    try:
        root = parse_yaml(text, SNIPPET_SOURCE, max_bytes=max_bytes)
    except PolicyLoadError:
        return frozenset(), frozenset(), ()
    if root is None or not isinstance(root.value, dict):
        return frozenset(), frozenset(), ()
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
    rules: tuple[frozenset[str], ...] = ()
    for name, child in root.value.items():
        if name == "rules" and isinstance(child.value, list):
            rules = tuple(
                frozenset(str(key) for key in item.value) if isinstance(item.value, dict) else frozenset()
                for item in child.value
            )
    return frozenset(str(key) for key in root.value), frozenset(found), rules


_FIELD_CODES = frozenset({"unsupported_field"})


def unsupported_fields(rule: Rule, raw: frozenset[str]) -> list[str]:
    """Fields of ``rule`` the guardrails do not judge, from the YAML, the rule's own form and
    its attributes (so a field added to ``Rule`` later is caught even if it never prints)."""
    names = set(raw - RULE_FIELDS) | set(rule.to_dict()) - RULE_FIELDS
    for spec in dataclasses.fields(rule):
        if spec.name in _RULE_ATTRIBUTES:
            continue
        value = getattr(rule, spec.name)
        default = spec.default if spec.default is not dataclasses.MISSING else None
        if spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        if value != default and value not in ((), None, False, ""):
            names.add(spec.name)
    return sorted(names)


def linear_regex_engine() -> bool:
    """Whether policy regexes run on a linear-time engine (RE2), so that a model-written
    pattern cannot stall the gateway. Detected, not assumed: without it, any snippet rule
    with a regex condition goes to a reviewer."""
    import policy.match as match

    return any(getattr(value, "__name__", "") == "re2" for value in vars(match).values())


def _rule_verdicts(
    rule: Rule,
    raw: frozenset[str],
    proposer: ModelIdentity,
    keys: KeyRing,
    known: frozenset[str],
    config: GuardrailConfig,
    now: datetime,
    *,
    replaces: bool,
) -> list[Verdict]:
    """What one snippet rule grants or forbids, judged on its own."""
    out: list[Verdict] = []
    where = f"rule `{rule.id}`"
    unsupported = unsupported_fields(rule, raw)
    if unsupported:
        out.append(
            Verdict(
                "unsupported_field",
                False,
                f"{where} carries {_listed(unsupported)}, which the guardrails do not judge; a reviewer must",
            )
        )
    if replaces:
        out.append(
            Verdict(
                "replaces_rule",
                False,
                f"{where} names a live rule; a proposal may only add rules (the gateway assigns their ids)",
            )
        )
    for model in rule.models:
        if model == "*":
            out.append(Verdict("wildcard_model", False, f"{where} applies to every model (`*`)"))
        elif model != proposer.model_id:
            if keys.get(model) is None:
                out.append(Verdict("unknown_model", False, f"{where} names unknown model `{model}`"))
            else:
                out.append(Verdict("other_model", False, f"{where} names another model, `{model}`"))
    for pattern in rule.allow_tools:
        touched = [glob for glob in config.sensitive_tools if globs_overlap(pattern, glob)]
        if touched:
            out.append(
                Verdict("sensitive_tool", False, f"{where} allows sensitive tool(s) {_listed(touched)} via `{pattern}`")
            )
        if not within_any(pattern, config.read_only_tools):
            code = "outside_envelope" if is_literal(pattern) else "wildcard_beyond_envelope"
            out.append(Verdict(code, False, f"{where}: `{pattern}` is not inside the pre-approved tools"))
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
    if rule.allow_tools and config.max_expiry_hours is not None:
        latest = now + timedelta(hours=config.max_expiry_hours)
        if rule.expires is None or rule.expires > latest:
            out.append(
                Verdict(
                    "expiry_too_long",
                    False,
                    f"{where} grants access and must expire by {latest.isoformat()} "
                    f"(it {'never expires' if rule.expires is None else 'expires ' + rule.expires.isoformat()})",
                )
            )
    for condition in rule.when:
        if condition.op not in _REGEX_OPS:
            continue
        if not linear_regex_engine() or len(str(condition.value)) > _MAX_REGEX_CHARS:
            out.append(
                Verdict(
                    "unsafe_condition",
                    False,
                    f"{where}: condition `{condition.arg} {condition.op}` runs a model-written regular "
                    "expression on every matching call; a reviewer must check it",
                )
            )
    return out


def _limited_rules(live: Policy, proposer: str, now: datetime) -> list[Rule]:
    """Live allow rules for ``proposer`` that carry limits (conditions, risk ceiling, expiry)."""
    return [
        rule
        for rule in live.rules
        if rule.allow_tools
        and (proposer in rule.models or "*" in rule.models)
        and (rule.expires is None or rule.expires > now)  # a lapsed rule limits nothing any more
        and (rule.when or rule.max_risk is not None or rule.expires is not None)
    ]


def _live_limit_verdicts(rule: Rule, limited: list[Rule]) -> list[Verdict]:
    """An added grant may not loosen the limits the operator put on the same tool for the
    proposer: where a live rule grants an overlapping tool only under conditions, a risk
    ceiling or until an expiry, the new rule must keep at least those (an envelope grant is
    sound either way; this keeps operator conditions from being talked around at all).
    One verdict per rule: the first live rule it would loosen."""
    for live_rule in limited:
        if not any(globs_overlap(p, q) for p in rule.allow_tools for q in live_rule.allow_tools):
            continue
        dropped = [c.to_text() for c in live_rule.when if c not in rule.when]
        if live_rule.max_risk is not None and (rule.max_risk is None or rule.max_risk > live_rule.max_risk):
            dropped.append(f"max_risk {live_rule.max_risk:g}")
        if live_rule.expires is not None and (rule.expires is None or rule.expires > live_rule.expires):
            dropped.append(f"expiry {format_timestamp(live_rule.expires)}")
        if dropped:
            return [
                Verdict(
                    "drops_live_limits",
                    False,
                    f"rule `{rule.id}` would grant what rule {live_rule.id} grants only with "
                    f"{', '.join(f'`{d}`' for d in dropped)}; keep those limits or ask a reviewer",
                )
            ]
    return []


def covering_rule(rule: Rule, live: Policy, proposer: str, now: datetime) -> Rule | None:
    """A live rule that already grants everything allow-only ``rule`` grants, if there is
    one (sound: every call ``rule`` would allow, that live rule allows too).

    The live rule must apply to the proposer, contain each of ``rule``'s globs, ask no
    condition ``rule`` does not, last at least as long and cap risk no lower; and no live
    deny rule may touch those tools, or "already allowed" would not be true.
    """
    if rule.deny_tools or not rule.allow_tools or rule.models != (proposer,):
        return None
    for deny in live.rules:
        if deny.deny_tools and (proposer in deny.models or "*" in deny.models) and (
            deny.expires is None or deny.expires > now
        ) and any(globs_overlap(p, d) for p in rule.allow_tools for d in deny.deny_tools):
            return None
    for candidate in live.rules:
        if not candidate.allow_tools or not (proposer in candidate.models or "*" in candidate.models):
            continue
        if candidate.expires is not None and candidate.expires <= now:
            continue
        if not all(within_any(pattern, candidate.allow_tools) for pattern in rule.allow_tools):
            continue
        if not set(candidate.when) <= set(rule.when):
            continue
        if candidate.expires is not None and (rule.expires is None or rule.expires > candidate.expires):
            continue
        if candidate.max_risk is not None and (rule.max_risk is None or rule.max_risk > candidate.max_risk):
            continue
        if unsupported_fields(candidate, frozenset()):
            continue
        return candidate
    return None


def _beyond_scope(pattern: str, identity: ModelIdentity, known: frozenset[str]) -> bool:
    """Whether nothing ``pattern`` allows lies inside ``identity``'s key scope."""
    scope = identity.tools
    if within_any(pattern, scope):
        return False
    return not any(globs_overlap(pattern, glob) for glob in scope)


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
