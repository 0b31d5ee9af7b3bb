"""Merging a proposed snippet into a policy, and what each merged rule does.

Both functions are pure: same inputs, same answer, nothing read from the outside world.

``merge`` adds the snippet's rules to the live ones. A snippet rule whose id names a live
rule replaces it in place — the guardrails never auto-approve that (``replaces_rule``), so
only a reviewer can make it happen. Every rule that is *added* gets an id the gateway
assigns from the rule's own content (``generated_rule_id``), so a model cannot pick a name
that collides with a rule an operator writes later, or that reads like an operator's.

``effects`` describes the change rule by rule (what each added rule grants or forbids,
which live rule a snippet rule would replace) for proposers and reviewers. It is a
description, not the judgement: the guardrails judge each rule on its own
(``negotiation.guardrails``), never by comparing effective access before and after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from policy import Policy, Rule
from policy.match import literal_prefix
from policy.model import format_timestamp, generated_rule_id

__all__ = ["DiffEntry", "MergeResult", "assign_id", "effects", "is_literal", "merge"]

Change = Literal["tighter", "equal", "wider", "replaced"]
_CHANGES = ("tighter", "equal", "wider", "replaced")


@dataclass(frozen=True)
class MergeResult:
    """The merged policy, the ids of the rules added (as assigned) and of live rules replaced."""

    policy: Policy
    added: tuple[str, ...]
    replaced: tuple[str, ...]


@dataclass(frozen=True)
class DiffEntry:
    """What one merged rule does for one (model, tool glob): ``wider`` (a grant), ``tighter``
    (a deny), ``replaced`` (a live rule swapped for the snippet's)."""

    model: str
    tool: str
    change: Change
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "tool": self.tool, "change": self.change, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiffEntry:
        change = str(data["change"])
        if change not in _CHANGES:
            raise ValueError(f"unknown diff change `{change}`")
        return cls(str(data["model"]), str(data["tool"]), change, str(data["detail"]))  # type: ignore[arg-type]


def assign_id(rule: Rule) -> Rule:
    """``rule`` under the id the gateway gives an added rule: a hash of its content."""
    body = {key: value for key, value in rule.to_dict().items() if key != "id"}
    return replace(rule, id=generated_rule_id(body))


def merge(live: Policy, snippet: Policy | Iterable[Rule]) -> MergeResult:
    """Add the snippet's rules to ``live`` under gateway-assigned ids; a snippet rule with a
    live rule's id replaces it in place. An added rule identical to a live one is not added
    twice. Settings stay the live ones."""
    rules_in = snippet.rules if isinstance(snippet, Policy) else tuple(snippet)
    live_by_id = {rule.id: rule for rule in live.rules}
    replacing = {rule.id: rule for rule in rules_in if rule.id in live_by_id}
    rules = [replacing.get(rule.id, rule) for rule in live.rules]
    present = {rule.id for rule in rules}
    added: list[str] = []
    for rule in rules_in:
        if rule.id in replacing:
            continue
        new = assign_id(rule)
        if new.id in present:
            continue  # the same rule, word for word, is already there
        present.add(new.id)
        rules.append(new)
        added.append(new.id)
    merged = Policy.from_rules(tuple(rules), settings=live.settings, source=live.source)
    return MergeResult(policy=merged, added=tuple(added), replaced=tuple(replacing))


def is_literal(pattern: str) -> bool:
    """Whether a tool glob names exactly one tool."""
    return literal_prefix(pattern) == pattern


def describe_limits(rule: Rule) -> str:
    """The limits a rule carries, in words: conditions, risk ceiling, expiry."""
    parts = []
    if rule.when:
        parts.append("when " + " and ".join(condition.to_text() for condition in rule.when))
    if rule.max_risk is not None:
        parts.append(f"at risk ≤ {rule.max_risk:g}")
    parts.append(f"until {format_timestamp(rule.expires)}" if rule.expires is not None else "with no expiry")
    return ", ".join(parts)


def effects(live: Policy, snippet: Iterable[Rule]) -> tuple[DiffEntry, ...]:
    """What each snippet rule would do if merged into ``live``, rule by rule."""
    live_ids = {rule.id for rule in live.rules}
    out: list[DiffEntry] = []
    for rule in snippet:
        limits = describe_limits(rule)
        if rule.id in live_ids:
            for model in rule.models:
                out.append(DiffEntry(model, ",".join(rule.allow_tools + rule.deny_tools) or "-", "replaced",
                                     f"replaces live rule `{rule.id}`"))
            continue
        for model in rule.models:
            out.extend(DiffEntry(model, glob, "wider", f"granted {limits}") for glob in rule.allow_tools)
            out.extend(DiffEntry(model, glob, "tighter", f"denied {limits}") for glob in rule.deny_tools)
            out.extend(
                DiffEntry(model, glob, "tighter", f"held for a yes from the {rule.effective_approver} {limits}")
                for glob in rule.ask_tools
            )
    return tuple(out)
