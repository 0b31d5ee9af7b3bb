"""How much of a decision the model may see: ``[gateway] trace_visibility``.

The audit log always keeps the whole decision; what goes back to the model (the denial text,
``structuredContent``, the decision in ``_meta``, a JSON-RPC error's ``data``) is this view:

* ``full``    - everything;
* ``summary`` - only rules that *matched* are named: the trace keeps matched entries, and no
  rule that did not match (a near miss, a rule that errored) nor any of its condition
  operands appears in the reason, the reasoning, the counterfactual or the errors;
* ``none``    - no rule id and no condition operand appears anywhere.

Hidden text is removed, not masked in place: a sentence or clause that names a hidden rule or
operand is dropped (or replaced by a generic one for the reason code), a suggested rule that
carries conditions or ids is withheld, and a last pass replaces any hidden token still left
in a free-text field (an operator's ``reason`` message may quote one). Operands shorter than
three characters cannot be told apart from ordinary text and are not searched for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from policy import Policy

__all__ = ["VISIBILITIES", "decision_view"]

VISIBILITIES = ("full", "summary", "none")
WITHHELD = "[withheld]"
_MIN_OPERAND = 3
# fields that name the call itself, never policy content: left as they are
_IDENTITY_FIELDS = frozenset({"schema", "decision_id", "allowed", "reason_code", "deny_kind", "model", "tool",
                              "kind", "policy_digest", "risk_score"})
_SUGGESTABLE = frozenset({"model", "allow_tools", "allow_prompts", "allow_resources", "expires"})
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")

_GENERIC_REASON = {
    "allowed": "allowed by policy",
    "explicit_deny": "denied by policy",
    "rule_error": "denied because a deny rule could not be evaluated",
}
_GENERIC_FIRST_SENTENCE = {
    "allowed": "A rule allows this call.",
    "explicit_deny": "A deny rule applies to this call.",
    "rule_error": "A deny rule could not be evaluated, so the call is denied to be safe.",
    "default_deny": "No rule allows this call.",
    "risk_threshold": "The risk score is above the limit that applies.",
}
_GENERIC_COUNTERFACTUAL = {
    "explicit_deny": "allowed if the deny rule that applies were lifted by an operator",
    "rule_error": "allowed if the deny rule that could not be evaluated were fixed by an operator and did not apply",
    "default_deny": "allowed if a rule granted it",
    "risk_threshold": "allowed if the risk score were within the limit",
}


def decision_view(data: Mapping[str, Any], visibility: str, *, policy: Policy | None = None) -> dict[str, Any]:
    """The decision (its ``to_dict()``) as the model may see it; ``data`` is left intact."""
    if visibility == "full":
        return dict(data)
    summary = visibility == "summary"
    matched = set(data.get("matched_rules") or ()) if summary else set()
    trace = [dict(t) for t in data.get("rule_trace") or () if isinstance(t, Mapping)]
    ids = {str(t.get("rule_id")) for t in trace} | set(data.get("matched_rules") or ())
    counterfactual = data.get("counterfactual") if isinstance(data.get("counterfactual"), Mapping) else None
    if counterfactual is not None:
        ids |= set(counterfactual.get("remove_rules") or ())
    for error in data.get("errors") or ():
        ids |= set(re.findall(r"rule `([^`]+)`", str(error)))
    hidden_ids = {rule_id for rule_id in ids if rule_id and rule_id not in matched}
    hidden_operands = _operands(policy, hidden_ids) | _failed_operands(trace, matched)
    hidden = _Hidden(hidden_ids, hidden_operands)
    code = str(data.get("reason_code"))

    view = dict(data)
    view["rule_trace"] = [t for t in trace if t.get("matched") and t.get("rule_id") in matched] if summary else []
    view["matched_rules"] = [r for r in data.get("matched_rules") or () if r in matched]
    reason = str(data.get("reason", ""))
    if hidden.found(reason):
        generic = _GENERIC_REASON.get(code)
        message = reason.partition(": ")[2] if generic else ""
        reason = f"{generic}: {message}" if generic and message and not hidden.found(message) else (generic or reason)
    view["reason"] = reason
    view["reasoning"] = _sentences(data.get("reasoning") or (), hidden, code)
    errors = [str(e) for e in data.get("errors") or ()]
    if any(hidden.found(e) for e in errors):
        errors = [f"{len(errors)} problem(s) while evaluating rules; an operator can read them in the audit log"]
    view["errors"] = errors
    if counterfactual is not None:
        view["counterfactual"] = _counterfactual(counterfactual, hidden, code, matched)
    return _final_pass(view, hidden)


class _Hidden:
    """Tokens the model may not see: rule ids (as whole words) and condition operands."""

    def __init__(self, ids: Iterable[str], operands: Iterable[str]) -> None:
        words = sorted({i for i in ids if i}, key=len, reverse=True)
        texts = sorted({o for o in operands if len(o) >= _MIN_OPERAND}, key=len, reverse=True)
        parts = [rf"(?<![\w.:-]){re.escape(w)}(?![\w-]|[.:][\w/])" for w in words] + [re.escape(t) for t in texts]
        self.pattern = re.compile("|".join(parts)) if parts else None

    def found(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text) is not None

    def scrub(self, text: str) -> str:
        return text if self.pattern is None else self.pattern.sub(WITHHELD, text)


def _render(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [text for item in value for text in _render(item)]
    if isinstance(value, str):
        return [value]
    return [json.dumps(value)]


def _operands(policy: Policy | None, rule_ids: set[str]) -> set[str]:
    if policy is None or not rule_ids:
        return set()
    out: set[str] = set()
    for rule in policy.rules:
        if rule.id in rule_ids:
            for condition in rule.when:
                out.update(_render(condition.value))
                out.add(condition.to_text())
    return out


def _failed_operands(trace: list[dict[str, Any]], matched: set[str]) -> set[str]:
    """Condition texts from the trace itself (``path under /srv/docs``): the operand is their tail."""
    out: set[str] = set()
    for entry in trace:
        failed = entry.get("failed")
        if isinstance(failed, str) and entry.get("rule_id") not in matched:
            out.add(failed)
            words = failed.split(" ")
            for size in (2, 3):  # `arg op value`, `arg not regex value`: drop the arg and the verb
                if len(words) > size:
                    out.add(" ".join(words[size:]))
    return out


def _sentences(reasoning: Iterable[Any], hidden: _Hidden, code: str) -> list[str]:
    out: list[str] = []
    for index, sentence in enumerate(reasoning):
        text = str(sentence)
        if not hidden.found(text):
            out.append(text)
            continue
        kept = [part for part in _SENTENCE.split(text) if not hidden.found(part)]
        if kept:
            out.append(" ".join(kept))
        elif index == 0:
            out.append(_GENERIC_FIRST_SENTENCE.get(code, "The policy decided this call."))
    return out


def _counterfactual(
    counterfactual: Mapping[str, Any], hidden: _Hidden, code: str, matched: set[str]
) -> dict[str, Any]:
    text = str(counterfactual.get("text", ""))
    if hidden.found(text):
        text = _GENERIC_COUNTERFACTUAL.get(code, "an operator must change the policy to allow this")
    suggested = counterfactual.get("suggested_rule")
    if isinstance(suggested, Mapping) and (
        not set(suggested) <= _SUGGESTABLE or hidden.found(json.dumps(suggested, default=str))
    ):
        suggested = None  # it would carry an operator's conditions or rule ids
    return {
        "text": text,
        "suggested_rule": dict(suggested) if isinstance(suggested, Mapping) else None,
        "remove_rules": [r for r in counterfactual.get("remove_rules") or () if r in matched],
    }


def _final_pass(view: dict[str, Any], hidden: _Hidden) -> dict[str, Any]:
    if hidden.pattern is None:
        return view
    return {key: value if key in _IDENTITY_FIELDS else _scrub(value, hidden) for key, value in view.items()}


def _scrub(value: Any, hidden: _Hidden) -> Any:
    if isinstance(value, str):
        return hidden.scrub(value)
    if isinstance(value, Mapping):
        return {key: _scrub(item, hidden) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, hidden) for item in value]
    return value
