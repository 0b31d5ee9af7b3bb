"""Merging a proposed snippet into a policy, and what the merge changes in effect.

Both functions are pure: same inputs, same answer, nothing read from the outside world but
the ``now`` passed in. ``merge`` is textual (rule ids); ``semantic_diff`` is behavioural:
for every model in the key ring (and ``*``) and every probe tool it asks the policy engine
whether the tool *could* be allowed before and after, and reports the pairs that moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from policy import KeyRing, Policy, Rule, could_allow
from policy.match import compile_globs, literal_prefix

__all__ = ["DiffEntry", "MergeResult", "literal_tools", "merge", "semantic_diff"]

Change = Literal["tighter", "equal", "wider"]


@dataclass(frozen=True)
class MergeResult:
    """The merged policy, and which snippet rule ids were new or replaced a live rule."""

    policy: Policy
    added: tuple[str, ...]
    replaced: tuple[str, ...]


@dataclass(frozen=True)
class DiffEntry:
    """How one (model, tool) pair changes: ``tighter``, ``equal`` or ``wider``."""

    model: str
    tool: str
    change: Change
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "tool": self.tool, "change": self.change, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiffEntry:
        change = str(data["change"])
        if change not in ("tighter", "equal", "wider"):
            raise ValueError(f"unknown diff change `{change}`")
        return cls(str(data["model"]), str(data["tool"]), change, str(data["detail"]))  # type: ignore[arg-type]


def merge(live: Policy, snippet: Policy) -> MergeResult:
    """Add the snippet's rules to ``live``; a snippet rule with a live rule's id replaces it
    in place (so its position among the live rules is kept). Settings stay the live ones."""
    incoming = {rule.id: rule for rule in snippet.rules}
    live_ids = {rule.id for rule in live.rules}
    rules = [incoming.get(rule.id, rule) for rule in live.rules]
    added = tuple(rule.id for rule in snippet.rules if rule.id not in live_ids)
    replaced = tuple(rule.id for rule in snippet.rules if rule.id in live_ids)
    rules.extend(incoming[rule_id] for rule_id in added)
    merged = Policy.from_rules(tuple(rules), settings=live.settings, source=live.source)
    return MergeResult(policy=merged, added=added, replaced=replaced)


def is_literal(pattern: str) -> bool:
    """Whether a tool glob names exactly one tool."""
    return literal_prefix(pattern) == pattern


def literal_tools(policy: Policy) -> frozenset[str]:
    """Every tool a rule names without a wildcard."""
    return frozenset(
        pattern for rule in policy.rules for pattern in (*rule.allow_tools, *rule.deny_tools) if is_literal(pattern)
    )


def semantic_diff(
    old: Policy,
    new: Policy,
    keys: KeyRing,
    known_tools: Iterable[str],
    *,
    now: datetime | None = None,
) -> tuple[DiffEntry, ...]:
    """The (model, tool) pairs whose access changes from ``old`` to ``new``; equal pairs are
    left out.

    The probe set is ``known_tools`` together with every literal tool either policy names;
    the models are the key ring's plus ``*``. A replaced rule that keeps the same tools but
    loosens its conditions, risk ceiling or expiry is *wider* for the pairs it allows, even
    though "could it be allowed" does not change.
    """
    tools = sorted(frozenset(known_tools) | literal_tools(old) | literal_tools(new))
    models = [*sorted(keys.identities), "*"]
    loosened = _loosened_pairs(old, new, models, tools)
    entries: list[DiffEntry] = []
    for model in models:
        for tool in tools:
            before = could_allow(old, keys, model, tool, now=now)
            after = could_allow(new, keys, model, tool, now=now)
            if after and not before:
                entries.append(DiffEntry(model, tool, "wider", "newly allowed"))
            elif before and not after:
                entries.append(DiffEntry(model, tool, "tighter", "no longer allowed"))
            elif (model, tool) in loosened and (after or loosened[(model, tool)][1]):
                entries.append(DiffEntry(model, tool, "wider", loosened[(model, tool)][0]))
    return tuple(entries)


def _applies_to(rule: Rule, model: str) -> bool:
    return "*" in rule.models or model in rule.models


def _matching(patterns: tuple[str, ...], tools: list[str]) -> frozenset[str]:
    """The probe tools any of ``patterns`` matches."""
    combined = compile_globs(patterns)
    return frozenset(t for t in tools if combined.fullmatch(t)) if combined is not None else frozenset()


def _loosened_pairs(
    old: Policy, new: Policy, models: list[str], tools: list[str]
) -> dict[tuple[str, str], tuple[str, bool]]:
    """Pairs touched by a replaced rule whose limits got weaker: the reason, and whether it
    counts even while the pair is denied now (a deny that lapses sooner widens access
    later, though nothing changes today)."""
    before = {rule.id: rule for rule in old.rules}
    pairs: dict[tuple[str, str], tuple[str, bool]] = {}
    for rule in new.rules:
        previous = before.get(rule.id)
        if previous is None or previous == rule:
            continue
        allow_reason = _allow_loosened(previous, rule)
        deny_reason = _deny_loosened(previous, rule)
        if not (allow_reason or deny_reason):
            continue
        allowed = _matching(rule.allow_tools, tools)
        denied = _matching(previous.deny_tools, tools)
        for model in models:
            for tool in allowed | denied:
                if allow_reason and _applies_to(rule, model) and tool in allowed:
                    pairs.setdefault((model, tool), (f"rule `{rule.id}`: {allow_reason}", False))
                if deny_reason and _applies_to(previous, model) and tool in denied:
                    # Wins over an allow reason: it counts whatever the pair's access today.
                    pairs[(model, tool)] = (f"rule `{rule.id}`: {deny_reason}", True)
    return pairs


def _allow_loosened(old: Rule, new: Rule) -> str | None:
    """Why ``new`` grants in more situations than ``old`` did, if it does."""
    if not set(old.when) <= set(new.when):
        return "argument conditions loosened"
    if old.expires is not None and (new.expires is None or new.expires > old.expires):
        return "expiry extended" if new.expires else "expiry removed"
    if old.max_risk is not None and (new.max_risk is None or new.max_risk > old.max_risk):
        return "risk ceiling raised"
    return None


def _deny_loosened(old: Rule, new: Rule) -> str | None:
    """Why ``new`` forbids in fewer situations than ``old`` did, if it does."""
    if not old.deny_tools:
        return None
    if not set(new.when) <= set(old.when):
        return "deny narrowed by added conditions"
    if new.expires is not None and (old.expires is None or new.expires < old.expires):
        return "deny expires sooner"
    return None
