"""The plain-English side of a decision: reasons, reasoning sentences, counterfactuals.

Kept apart from the engine so the engine reads as the decision procedure and this module as
its narration. Everything here is total: it formats, it never raises on odd input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from .canonical import canonical_json
from .decision import Counterfactual, one_line
from .detect.secrets import mask_secrets
from .match import MISSING, lookup, tool_matches
from .model import Rule
from .risk import RiskFactor, risk_label

__all__ = [
    "counterfactual",
    "render_reason",
    "risk_sentence",
    "rules_sentence",
    "session_sentence",
]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")
_VALUE_CHARS = 80


def _show(value: Any) -> str:
    if not isinstance(value, str):
        try:
            value = canonical_json(value)
        except (TypeError, ValueError):
            value = repr(value)
    value = " ".join(mask_secrets(value)[0].split())
    return value if len(value) <= _VALUE_CHARS else value[: _VALUE_CHARS - 1] + "…"


def render_reason(template: str, *, model: str, tool: str, arguments: Mapping[str, Any]) -> str:
    """Fill ``{model}``, ``{tool}`` and ``{args.<path>}``; unknown or missing ones become ``<missing>``.

    Values are masked for secrets and shortened; there is no format-string evaluation.
    """

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "model":
            return _show(model)
        if name == "tool":
            return _show(tool)
        if name.startswith("args."):
            value = lookup(arguments, tuple(name[5:].split(".")))
            if value is not MISSING:
                return _show(value)
        return "<missing>"

    return one_line(_PLACEHOLDER.sub(fill, template))


def _pattern_for(rule: Rule, tool: str, allow: bool) -> str:
    return _first_match(rule.allow_tools if allow else rule.deny_tools, tool)


@lru_cache(maxsize=4096)
def _first_match(patterns: tuple[str, ...], tool: str) -> str:
    return next((pattern for pattern in patterns if tool_matches(pattern, tool)), tool)


def rules_sentence(
    *,
    code: str,
    model: str,
    tool: str,
    scope: Sequence[str] | None,
    allow_hits: Sequence[Rule],
    deny_hits: Sequence[Rule],
    erroring_deny: Sequence[str],
    near_misses: Sequence[tuple[Rule, str]],
) -> str:
    """One sentence on what the model's key scope and the rules say about this tool."""
    if scope is None:
        return f"Model {model} has no entry in the model keys file, so it may use no tools."
    if code == "out_of_scope":
        shown = ", ".join(scope) if scope else "no tools"
        return f"Tool {tool} is outside model {model}'s key scope ({shown}), which no rule can widen."
    if deny_hits:
        rule = deny_hits[0]
        return f"Rule {rule.id} denies model {model} the use of {_pattern_for(rule, tool, False)}."
    if erroring_deny:
        return f"Deny rule {erroring_deny[0]} could not be evaluated, so the call is denied to be safe."
    if allow_hits:
        rule = allow_hits[0]
        return f"Model {model} is allowed to use {_pattern_for(rule, tool, True)} by rule {rule.id}."
    sentence = f"No rule allows model {model} to use {tool}."
    if near_misses:
        rule, why = near_misses[0]
        sentence += f" Rule {rule.id} would, but {why}."
    return sentence


def session_sentence(score: float) -> str:
    label = risk_label(score)
    return "Session risk: low." if label == "low" else f"Session risk: {label} ({score:.2f})."


def risk_sentence(risk: float, limit: float, factors: Sequence[RiskFactor]) -> str:
    if risk > limit:
        codes = ", ".join(dict.fromkeys(factor.code for factor in factors))
        return f"Risk score {risk:.2f} is above the limit {limit:g} (from: {codes})."
    return f"Risk score {risk:.2f} is within the limit {limit:g}."


def counterfactual(
    *,
    code: str,
    model: str,
    tool: str,
    risk: float,
    risk_limit: float | None,
    allow_hits: Sequence[Rule],
    deny_hits: Sequence[Rule],
    erroring_deny: Sequence[str],
    near_misses: Sequence[tuple[Rule, str]],
) -> Counterfactual | None:
    """The smallest change that would allow a denied call; None for an allowed one."""
    grant = {"model": model, "allow_tools": [tool]}
    if code == "allowed":
        return None
    if code == "unknown_model":
        return Counterfactual(
            f"no policy change can allow this: the operator must add model `{model}` to the model keys file"
        )
    if code == "out_of_scope":
        return Counterfactual(
            "no policy change can allow this: the operator must widen "
            f"model `{model}`'s key scope to include `{tool}`"
        )
    if code == "explicit_deny":
        ids = tuple(rule.id for rule in deny_hits)
        names = ", ".join(f"`{rule_id}`" for rule_id in ids)
        text = f"allowed if deny rule{'s' if len(ids) > 1 else ''} {names} did not apply"
        if allow_hits:
            return Counterfactual(text, None, ids)
        return Counterfactual(f"{text} and a rule granted {model} `{tool}`", grant, ids)
    if code == "rule_error":
        return Counterfactual(
            f"allowed if deny rule `{erroring_deny[0]}` could be evaluated and did not apply (see errors)"
            + ("" if allow_hits else f", and a rule granted {model} `{tool}`"),
            None if allow_hits else grant,
        )
    if code == "schema_violation":
        return Counterfactual(
            "no policy change can allow this: the arguments violate the tool's input schema"
        )
    if code == "risk_threshold":
        limit = risk_limit if risk_limit is not None else 0.0
        return Counterfactual(f"allowed if the risk score ({risk:.2f}) were at most {limit:g}")
    if code == "suspicious_arguments":
        return Counterfactual(
            "allowed without the flagged content in the arguments, or if the policy's "
            "`settings.tolerate_findings` listed it (an operator change; docs/detection.md)"
        )
    # default_deny
    return _near_miss_counterfactual(model, tool, grant, near_misses)


def _kept_limits(rule: Rule, model: str, tool: str) -> dict[str, Any]:
    """A grant of ``tool`` to ``model`` that keeps ``rule``'s conditions and risk ceiling."""
    body = {key: value for key, value in rule.to_dict().items() if key in ("when", "max_risk")}
    return {"model": model, "allow_tools": [tool], **body}


def _near_miss_counterfactual(
    model: str, tool: str, grant: dict[str, Any], near_misses: Sequence[tuple[Rule, str]]
) -> Counterfactual:
    """Default deny. A rule that would have allowed the call but for one of its limits is the
    operator's word on this tool: the suggestion never drops a condition or risk ceiling.

    - a condition failed: no rule is suggested (one keeping the condition would not help, one
      without it would undo the operator); the text names the condition;
    - the rule expired: the suggested grant keeps its conditions and ``max_risk``;
    - no near miss: a plain grant of this one tool.
    """
    if not near_misses:
        return Counterfactual(f"allowed if a rule granted {model} `{tool}`", grant)
    failed = [(rule, why) for rule, why in near_misses if not why.startswith("it expired")]
    if failed:
        rule, why = failed[0]
        return Counterfactual(
            f"rule `{rule.id}` allows `{tool}` only within its limits and {why}; "
            "no proposal is suggested, since one without that condition would undo the operator's limit "
            "(an operator can change the rule)"
        )
    rule, why = near_misses[0]
    kept = _kept_limits(rule, model, tool)
    limits = " with its conditions and risk ceiling kept" if len(kept) > 2 else ""
    return Counterfactual(f"allowed if rule `{rule.id}` applied (now {why}), or if a new grant{limits} did", kept)
