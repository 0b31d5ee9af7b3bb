"""Impact replay: what a proposal would have done to real, recently audited traffic.

Before anyone approves a proposal, the last ``limit`` audited ``tools/call`` decisions (at
most ``window`` old; by default 10,000 calls or 7 days, whichever is fewer) are evaluated
twice: under the live policy and under the live policy merged with the proposal. Both runs
use the same inputs and the same clock, so every difference is the proposal's doing:
"would newly allow K calls (by model and tool), newly deny J", with examples.

The audit log keeps *redacted* arguments, so the replay sees ``[REDACTED]`` where a
secret-shaped value was. A replayed call is marked ``uncertain`` when its arguments were
masked and its outcome under either policy depended on argument values (a rule with
``when`` conditions was considered, or the call carried an input schema); such calls are
counted apart and never silently folded into the certain totals. Session risk is not
replayed (a fresh session's view), which the result also says.

``replay`` is pure; ``recent_decisions`` reads the log's files newest first and stops as soon
as it has enough, so a large log costs only its tail.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from negotiation.errors import MergeConflictError
from negotiation.guardrails import SNIPPET_SOURCE
from negotiation.merge import merge
from negotiation.proposal import Proposal
from policy import CallRequest, Decision, KeyRing, Policy, PolicyError, evaluate, load_policy_text
from policy.audit.head import log_files

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_WINDOW",
    "Impact",
    "ReplayedCall",
    "merged_policy",
    "proposal_impact",
    "recent_decisions",
    "replay",
]

DEFAULT_LIMIT = 10_000
DEFAULT_WINDOW = timedelta(days=7)
MAX_EXAMPLES = 10


@dataclass(frozen=True)
class ReplayedCall:
    """One audited call whose outcome the proposal changes."""

    decision_id: str
    ts: str
    model: str
    tool: str
    before: str  # reason code under the live policy
    after: str  # reason code under the merged policy
    uncertain: bool
    masked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id, "ts": self.ts, "model": self.model, "tool": self.tool,
            "before": self.before, "after": self.after, "uncertain": self.uncertain, "masked": list(self.masked),
        }


@dataclass(frozen=True)
class Impact:
    """The replay's answer. ``*_by`` count changed calls per ``(model, tool)``."""

    considered: int
    since: str | None
    until: str | None
    newly_allowed: int
    newly_denied: int
    uncertain: int
    allowed_by: tuple[tuple[str, str, int], ...]
    denied_by: tuple[tuple[str, str, int], ...]
    examples_allowed: tuple[ReplayedCall, ...]
    examples_denied: tuple[ReplayedCall, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        text = (
            f"replayed {self.considered} audited call(s): would newly allow {self.newly_allowed}, "
            f"newly deny {self.newly_denied}"
        )
        if self.uncertain:
            text += f" ({self.uncertain} uncertain: redacted arguments)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "considered": self.considered,
            "since": self.since,
            "until": self.until,
            "newly_allowed": self.newly_allowed,
            "newly_denied": self.newly_denied,
            "uncertain": self.uncertain,
            "allowed_by": [{"model": m, "tool": t, "calls": n} for m, t, n in self.allowed_by],
            "denied_by": [{"model": m, "tool": t, "calls": n} for m, t, n in self.denied_by],
            "examples": {
                "newly_allowed": [c.to_dict() for c in self.examples_allowed],
                "newly_denied": [c.to_dict() for c in self.examples_denied],
            },
            "notes": list(self.notes),
        }


def recent_decisions(
    path: str | Path,
    *,
    now: datetime,
    limit: int = DEFAULT_LIMIT,
    window: timedelta = DEFAULT_WINDOW,
) -> list[dict[str, Any]]:
    """The newest ``limit`` decision events of the log at ``path`` not older than ``window``,
    oldest first. Lines that do not parse are skipped (``audit verify`` judges the log)."""
    if limit <= 0:
        return []
    cutoff = _ts(now - window)
    found: list[dict[str, Any]] = []
    for file in reversed(log_files(path)):
        for event in _decisions_newest_first(file):
            if str(event.get("ts", "")) < cutoff:
                return found[::-1]
            found.append(event)
            if len(found) >= limit:
                return found[::-1]
    return found[::-1]


def _decisions_newest_first(file: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = file.read_bytes().splitlines()
    except OSError:
        return
    for raw in reversed(lines):
        if b'"type":"decision"' not in raw:
            continue
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == "decision":
            yield event


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def replay(
    events: Iterable[Mapping[str, Any]],
    live: Policy,
    merged: Policy,
    keys: KeyRing,
    *,
    now: datetime,
) -> Impact:
    """Evaluate each audited call under ``live`` and ``merged``; report what changed."""
    considered = 0
    uncertain = 0
    first: str | None = None
    last: str | None = None
    allowed_by: Counter[tuple[str, str]] = Counter()
    denied_by: Counter[tuple[str, str]] = Counter()
    examples: dict[bool, list[ReplayedCall]] = {True: [], False: []}
    for event in events:
        request = _request(event)
        if request is None:
            continue
        considered += 1
        ts = str(event.get("ts", ""))
        first = first or ts
        last = ts
        before = evaluate(request, live, keys, now=now, decision_id="replay")
        after = evaluate(request, merged, keys, now=now, decision_id="replay")
        if before.allowed == after.allowed:
            continue
        masked = tuple(
            str(p) for p in event.get("masked") or () if isinstance(p, str) and p.startswith("arguments")
        )
        doubtful = bool(masked) and (_value_dependent(before, live) or _value_dependent(after, merged)
                                     or request.input_schema is not None)
        changed = ReplayedCall(
            decision_id=str(event.get("decision_id", "")), ts=ts, model=request.model,
            tool=request.qualified_tool, before=before.reason_code, after=after.reason_code,
            uncertain=doubtful, masked=masked,
        )
        if doubtful:
            uncertain += 1
        else:
            (allowed_by if after.allowed else denied_by)[(request.model, request.qualified_tool)] += 1
        bucket = examples[after.allowed]
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(changed)
    notes = ["session risk is not replayed: each call is judged as from a fresh session"]
    if uncertain:
        notes.append(
            f"{uncertain} changed call(s) had redacted arguments that the outcome depends on; "
            "they are counted as uncertain, not in the totals"
        )
    return Impact(
        considered=considered,
        since=first,
        until=last,
        newly_allowed=sum(allowed_by.values()),
        newly_denied=sum(denied_by.values()),
        uncertain=uncertain,
        allowed_by=_ranked(allowed_by),
        denied_by=_ranked(denied_by),
        examples_allowed=tuple(examples[True]),
        examples_denied=tuple(examples[False]),
        notes=tuple(notes),
    )


def _ranked(counts: Counter[tuple[str, str]]) -> tuple[tuple[str, str, int], ...]:
    return tuple((m, t, n) for (m, t), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _request(event: Mapping[str, Any]) -> CallRequest | None:
    """The call an audited decision was about; None for gateway-local tools and bad lines."""
    model, server, tool = event.get("model"), event.get("server"), event.get("tool")
    if not (isinstance(model, str) and isinstance(server, str) and server and isinstance(tool, str) and tool):
        return None
    arguments = event.get("arguments")
    request = event.get("request")
    schema = request.get("input_schema") if isinstance(request, Mapping) else None
    return CallRequest(
        model, server, tool,
        arguments if isinstance(arguments, Mapping) else {},
        schema if isinstance(schema, Mapping) else None,
    )


def _value_dependent(decision: Decision, policy: Policy) -> bool:
    """Whether the outcome looked at argument values: a considered rule had conditions, or
    the arguments produced findings."""
    if decision.findings:
        return True
    conditional = {rule.id for rule in policy.rules if rule.when}
    return any(entry.rule_id in conditional for entry in decision.rule_trace)


def merged_policy(proposal: Proposal, live: Policy) -> Policy:
    """The policy approving ``proposal`` would make live now; ``MergeConflictError`` when its
    snippet no longer loads or merges."""
    try:
        return merge(live, load_policy_text(proposal.yaml, SNIPPET_SOURCE)).policy
    except PolicyError as exc:
        raise MergeConflictError(f"proposal `{proposal.id}` does not merge into the live policy: {exc}") from None


def proposal_impact(
    proposal: Proposal,
    live: Policy,
    keys: KeyRing,
    audit_path: str | Path,
    *,
    now: datetime,
    limit: int = DEFAULT_LIMIT,
    window: timedelta = DEFAULT_WINDOW,
) -> Impact:
    """Replay the recent audit log under ``live`` and under ``live`` + ``proposal``."""
    merged = merged_policy(proposal, live)
    events = recent_decisions(audit_path, now=now, limit=limit, window=window)
    return replay(events, live, merged, keys, now=now)
