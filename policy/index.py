"""Rules compiled into an index, so a call only looks at the rules that could concern it.

Rules are bucketed by target kind (tool, prompt, resource), by model id (plus one bucket for
``"*"``), and inside a bucket by target name:
exact tool names in a dict, globs by their literal prefix (the text before the first
wildcard). A lookup probes the exact dict once and the prefix dict once per distinct prefix
length, so its cost does not grow with the number of rules. The candidate list for a
``(model, tool)`` pair is memoised in a bounded cache; it depends only on the rules, never on
time or arguments, so caching it is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .decision import TraceEntry
from .match import ConditionCheck, compile_condition, compile_globs, literal_prefix
from .model import TARGET_KINDS

if TYPE_CHECKING:
    from .model import Condition, Rule

__all__ = ["CompiledCondition", "CompiledPolicy", "CompiledRule", "compile_policy"]

_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """A condition's predicate, its text, and the trace entries for when it fails."""

    text: str
    check: ConditionCheck
    allow_failed: TraceEntry
    deny_failed: TraceEntry


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its globs and conditions compiled; ``position`` is its rank by id.

    Trace entries are immutable, so the common ones are built here once instead of per call.
    """

    rule: Rule
    position: int
    allow: re.Pattern[str] | None
    deny: re.Pattern[str] | None
    conditions: tuple[CompiledCondition, ...]
    allowed: TraceEntry
    denied: TraceEntry
    allow_expired: TraceEntry
    deny_expired: TraceEntry
    mismatch: TraceEntry
    # prompt and resource globs: kind -> (allow, deny, mismatch entry); tools use the fields above
    others: dict[str, tuple[re.Pattern[str] | None, re.Pattern[str] | None, TraceEntry]]
    ask: re.Pattern[str] | None = None  # ``ask_tools`` (tools only)

    def patterns(self, kind: str) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None, TraceEntry]:
        """(allow, deny, mismatch entry) for targets of ``kind``."""
        if kind == "tool":
            return self.allow, self.deny, self.mismatch
        return self.others.get(kind) or (None, None, self.mismatch)


def _compile_condition(rule_id: str, condition: Condition) -> CompiledCondition:
    text = condition.to_text()
    return CompiledCondition(
        text=text,
        check=compile_condition(condition),
        allow_failed=TraceEntry(rule_id, "allow", False, text),
        deny_failed=TraceEntry(rule_id, "deny", False, text),
    )


def _compile_rule(rule: Rule, position: int) -> CompiledRule:
    allow = compile_globs(rule.allow_tools)
    others = {}
    for kind in ("prompt", "resource"):
        allows, denies = rule.patterns(kind)
        if allows or denies:
            others[kind] = (
                compile_globs(allows),
                compile_globs(denies),
                TraceEntry(rule.id, "allow" if allows else "deny", False, None, f"{kind} mismatch"),
            )
    return CompiledRule(
        rule=rule,
        position=position,
        allow=allow,
        deny=compile_globs(rule.deny_tools),
        conditions=tuple(_compile_condition(rule.id, condition) for condition in rule.when),
        allowed=TraceEntry(rule.id, "allow", True),
        denied=TraceEntry(rule.id, "deny", True),
        allow_expired=TraceEntry(rule.id, "allow", False, None, "expired"),
        deny_expired=TraceEntry(rule.id, "deny", False, None, "expired"),
        mismatch=TraceEntry(
            rule.id, "allow" if allow is not None else "deny" if rule.deny_tools else "ask", False, None,
            "tool mismatch",
        ),
        others=others,
        ask=compile_globs(rule.ask_tools),
    )


class _ToolIndex:
    """Rule positions by exact tool name and by glob literal prefix."""

    def __init__(self) -> None:
        self.exact: dict[str, set[int]] = {}
        self.prefixed: dict[str, set[int]] = {}
        self.lengths: tuple[int, ...] = ()

    def add(self, pattern: str, position: int) -> None:
        prefix = literal_prefix(pattern)
        if prefix == pattern:
            self.exact.setdefault(pattern, set()).add(position)
        else:
            self.prefixed.setdefault(prefix, set()).add(position)

    def seal(self) -> None:
        self.lengths = tuple(sorted({len(prefix) for prefix in self.prefixed}))

    def collect(self, tool: str, into: set[int]) -> None:
        exact = self.exact.get(tool)
        if exact:
            into.update(exact)
        prefixed = self.prefixed
        for length in self.lengths:
            if length > len(tool):
                break
            found = prefixed.get(tool[:length])
            if found:
                into.update(found)


class CompiledPolicy:
    """The evaluation-ready form of a policy's rules."""

    def __init__(self, rules: tuple[CompiledRule, ...]) -> None:
        self.rules = rules
        # kind -> (per-model indexes, the "*" index)
        self._kinds: dict[str, tuple[dict[str, _ToolIndex], _ToolIndex]] = {}
        for compiled in rules:
            rule = compiled.rule
            for kind in TARGET_KINDS:
                allows, denies = rule.patterns(kind)
                asks = rule.ask_tools if kind == "tool" else ()
                if not (allows or denies or asks):
                    continue
                by_model, any_model = self._kinds.setdefault(kind, ({}, _ToolIndex()))
                indexes = [
                    any_model if model == "*" else by_model.setdefault(model, _ToolIndex())
                    for model in dict.fromkeys(rule.models)
                ]
                for pattern in (*allows, *denies, *asks):
                    for index in indexes:
                        index.add(pattern, compiled.position)
        for by_model, any_model in self._kinds.values():
            any_model.seal()
            for index in by_model.values():
                index.seal()
        self._cache: dict[tuple[str, str, str], tuple[CompiledRule, ...]] = {}

    def candidates(self, model: str, tool: str, kind: str = "tool") -> tuple[CompiledRule, ...]:
        """Rules naming ``model`` (or ``*``) with a ``kind`` glob whose literal part fits ``tool``.

        Ordered by rule id. A candidate may still miss on the full glob; the engine checks.
        """
        key = (kind, model, tool)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        positions: set[int] = set()
        indexes = self._kinds.get(kind)
        if indexes is not None:
            by_model, any_model = indexes
            any_model.collect(tool, positions)
            specific = by_model.get(model)
            if specific is not None:
                specific.collect(tool, positions)
        found = tuple(self.rules[position] for position in sorted(positions))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # rare: more distinct (model, tool) pairs than the limit
        self._cache[key] = found
        return found


def compile_policy(rules: tuple[Rule, ...]) -> CompiledPolicy:
    ordered = sorted(rules, key=lambda rule: rule.id)
    return CompiledPolicy(tuple(_compile_rule(rule, position) for position, rule in enumerate(ordered)))
