"""The engine's decision memo: a decision already reached, answered again (:func:`policy.engine.evaluate`).

Most calls ask a question already answered: the same model and tool, arguments with no finding that
are valid against their schema (or have none), a calm session. The decision is then a function of
the policy, the key ring, the target, the schema status, the session sentence, the moment (only
through the expiry of the rules whose tool pattern matches) and the arguments only through what the
conditions of those live, matching rules say of them (which failed, with what error).
:class:`Shape` holds, per target, those rules for the window between two expiries, and the
decisions seen, keyed by what the conditions said. A matching rule whose ``reason`` quotes
``{args.*}`` reads the arguments another way: such a target is never memoised.
:func:`policy.engine._evaluate_uncached` is the reference (tests/policy/test_engine_memo.py: equal decisions, ids
aside, for random policies, calls and times).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .decision import Decision
from .explain import _PLACEHOLDER as PLACEHOLDER
from .index import CompiledRule
from .keys import KeyRing
from .model import TARGET_KINDS, CallRequest, Policy

__all__ = ["DECISIONS_PER_SHAPE", "DECISIONS_PER_TABLE", "PLAIN_SCHEMA", "SHAPES_LIMIT", "TABLES", "Shape", "Table",
           "clear_memo", "shape_of", "table_of"]


PLAIN_SCHEMA = frozenset({"valid", "absent"})  # no risk factor, no violation, no error: only its sentence
SHAPES_LIMIT = 1024
DECISIONS_PER_SHAPE = 32
DECISIONS_PER_TABLE = 4096
_NEVER = datetime.min.replace(tzinfo=UTC)
_FOREVER = datetime.max.replace(tzinfo=UTC)


TABLES_LIMIT = 4  # the live policy, and the few a replay compares it with (negotiation.impact)


class Shape:
    """One target's matching rules under one policy and key ring, for the moments in ``[since, until)``."""

    __slots__ = ("conditional", "decisions", "since", "until")

    def __init__(self, since: datetime, until: datetime, conditional: tuple[CompiledRule, ...] | None) -> None:
        self.since = since
        self.until = until
        self.conditional = conditional  # the live matching rules with conditions; None: not memoised
        self.decisions: dict[tuple[Any, ...], Decision] = {}


class Table:
    """The shapes of one (policy, key ring): holding both keeps their ids, the table's key, theirs."""

    __slots__ = ("keys", "policy", "shapes", "stored")

    def __init__(self, policy: Policy, keys: KeyRing) -> None:
        self.policy = policy
        self.keys = keys
        self.shapes: dict[tuple[str, str, str, str], Shape] = {}
        self.stored = 0  # decisions kept in its shapes since it was last emptied

    def empty(self) -> None:
        self.shapes.clear()
        self.stored = 0


TABLES: dict[tuple[int, int], Table] = {}


def table_of(policy: Policy, keys: KeyRing) -> Table:
    table = TABLES.get((id(policy), id(keys)))
    if table is None or table.policy is not policy or table.keys is not keys:
        if len(TABLES) >= TABLES_LIMIT:
            TABLES.clear()  # a reload, or replays: old policies are not kept alive
        table = TABLES[(id(policy), id(keys))] = Table(policy, keys)
    return table


def clear_memo() -> None:
    """Forget every memoised decision (tests; nothing else needs it: the memo is exact)."""
    TABLES.clear()


def shape_of(request: CallRequest, policy: Policy, now: datetime) -> Shape:
    kind = request.kind
    tool = request.qualified_tool
    since, until = _NEVER, _FOREVER
    conditional: list[CompiledRule] | None = [] if kind in TARGET_KINDS else None
    if conditional is None:
        return Shape(since, until, None)
    for candidate in policy.compiled.candidates(request.model, tool, kind):
        allow, deny, _ = candidate.patterns(kind)
        if not (
            (allow is not None and allow.fullmatch(tool) is not None)
            or (deny is not None and deny.fullmatch(tool) is not None)
            or (kind == "tool" and candidate.ask is not None and candidate.ask.fullmatch(tool) is not None)
        ):
            continue  # a tool mismatch says the same whatever the arguments and the moment
        rule = candidate.rule
        if rule.expires is not None:
            if now >= rule.expires:
                since = max(since, rule.expires)
                continue  # expired: its conditions are not consulted
            until = min(until, rule.expires)
        if rule.reason is not None and reads_arguments(rule.reason):
            conditional = None
        elif candidate.conditions and conditional is not None:
            conditional.append(candidate)
    return Shape(since, until, None if conditional is None else tuple(conditional))


def reads_arguments(template: str) -> bool:
    return any(name.startswith("args.") for name in PLACEHOLDER.findall(template))
