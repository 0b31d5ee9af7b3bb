"""``evaluate``: one call request in, one :class:`Decision` out. Never raises.

The procedure, in order (the first that applies decides the reason code):

1. checks that only describe the call: suspicious patterns in the arguments, the tool's
   ``inputSchema``, the session's risk; together they give the risk score;
2. the model must be in the model keys file (``unknown_model``) and the tool inside its key
   scope (``out_of_scope``) - rules can never grant beyond the key; for a prompt or a
   resource the scope must reach its upstream (some ``<upstream>.<name>`` lies inside it);
3. candidate rules come from the compiled index; a matching deny rule wins over any allow
   (``explicit_deny``); a deny rule that cannot be evaluated denies to be safe
   (``rule_error``);
4. a schema violation denies (``schema_violation``);
5. without a matching allow rule the call is denied by default (``default_deny``); prompts
   and resources are allowed by default unless ``settings.require_rules_for`` names them;
6. the risk score must stay within the allowing rule's ``max_risk`` and the policy's
   ``deny_risk_above`` (``risk_threshold``); otherwise ``allowed``.

Rule order carries no meaning. Any unexpected exception becomes a ``gateway_error`` deny.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from . import memo
from .decision import (
    DENY_KINDS,
    ApprovalRequirement,
    Counterfactual,
    Decision,
    TraceEntry,
    gateway_error_decision,
    new_decision_id,
    one_line,
    with_id,
)
from .detect import Finding, describe_findings, scan_value
from .explain import counterfactual, render_reason, risk_sentence, rules_sentence, session_sentence
from .index import CompiledCondition, CompiledRule
from .keys import KeyRing
from .match import glob_reaches
from .model import TARGET_KINDS, CallRequest, Policy, Rule, format_timestamp
from .risk import RiskFactor, SessionRisk, combine, finding_factors
from .schema import SchemaCheck, check_arguments

__all__ = ["could_allow", "evaluate", "scope_reaches"]

_SESSION_FLOOR = 0.005  # below this the session factor is noise and is left out


def evaluate(
    request: CallRequest,
    policy: Policy,
    keys: KeyRing,
    *,
    now: datetime | None = None,
    session: SessionRisk | None = None,
    decision_id: str | None = None,
) -> Decision:
    """Decide one call. Reads ``session`` but does not update it (see SessionRisk.record_decision)."""
    decision_id = decision_id or new_decision_id()
    try:
        return _evaluate(request, policy, keys, now, session, decision_id)
    except Exception as exc:  # the enforcement boundary: fail closed, visibly
        return gateway_error_decision(
            model=str(getattr(request, "model", "?")),
            tool=_qualified(request),
            error=f"policy evaluation failed: {type(exc).__name__}: {exc}",
            policy_digest=str(getattr(policy, "digest", "unknown")),
            decision_id=decision_id,
        )


def _qualified(request: Any) -> str:
    try:
        return str(request.qualified_tool)
    except Exception:  # only used while reporting another failure
        return "?"


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


class _RuleOutcomes:
    """What the candidate rules said, gathered in one pass."""

    __slots__ = (
        "allow_hits",
        "ask_hits",
        "deny_hits",
        "erroring_deny",
        "errors",
        "matched",
        "near_misses",
        "risk_capped",
        "trace",
    )

    def __init__(self) -> None:
        self.trace: list[TraceEntry] = []
        self.allow_hits: list[Rule] = []
        self.ask_hits: list[Rule] = []
        self.deny_hits: list[Rule] = []
        self.erroring_deny: list[str] = []
        self.risk_capped: list[Rule] = []
        self.near_misses: list[tuple[Rule, str]] = []
        self.errors: list[str] = []
        self.matched: list[str] = []  # ids of rules with a matching trace entry, in trace order


def _conditions(
    candidate: CompiledRule, arguments: Mapping[str, Any]
) -> tuple[CompiledCondition | None, str | None]:
    """(the condition that failed or errored, error message or None).

    A condition that is False anywhere settles the rule, even when another one errored.
    """
    errored: tuple[CompiledCondition, str] | None = None
    for condition in candidate.conditions:
        try:
            holds = condition.check(arguments)
        except Exception as exc:  # a rule that errors is recorded and skipped, never raised
            if errored is None:
                errored = (condition, str(exc))
            continue
        if not holds:
            return condition, None
    return (None, None) if errored is None else errored


def _consider(
    candidate: CompiledRule,
    tool: str,
    arguments: Mapping[str, Any],
    now: datetime,
    risk: float,
    out: _RuleOutcomes,
    kind: str = "tool",
) -> None:
    rule = candidate.rule
    allow, deny, mismatch = candidate.patterns(kind)
    allows = allow is not None and allow.fullmatch(tool) is not None
    denies = deny is not None and deny.fullmatch(tool) is not None
    asks = kind == "tool" and candidate.ask is not None and candidate.ask.fullmatch(tool) is not None
    trace = out.trace
    if not (allows or denies or asks):
        trace.append(mismatch)
        return
    if rule.expires is not None and now >= rule.expires:
        if asks:
            trace.append(TraceEntry(rule.id, "ask", False, None, "expired"))
        if denies:
            trace.append(candidate.deny_expired)
        if allows:
            trace.append(candidate.allow_expired)
            out.near_misses.append((rule, f"it expired at {format_timestamp(rule.expires)}"))
        return
    failed, error = _conditions(candidate, arguments) if candidate.conditions else (None, None)
    if failed is not None and error is not None:
        out.errors.append(f"rule `{rule.id}`: condition `{failed.text}`: {error}")
        if denies:
            out.erroring_deny.append(rule.id)
            trace.append(TraceEntry(rule.id, "deny", False, failed.text, f"error: {error}"))
        if asks:  # fail closed: an ask rule that cannot be evaluated still asks
            trace.append(TraceEntry(rule.id, "ask", True, failed.text, f"error: {error}"))
            out.ask_hits.append(rule)
        if allows:
            trace.append(TraceEntry(rule.id, "allow", False, failed.text, f"error: {error}"))
        return
    hit = False
    if asks:
        if failed is None:
            trace.append(TraceEntry(rule.id, "ask", True))
            out.ask_hits.append(rule)
            hit = True
        else:
            trace.append(TraceEntry(rule.id, "ask", False, failed.text))
    if denies:
        if failed is None:
            trace.append(candidate.denied)
            out.deny_hits.append(rule)
            hit = True
        else:
            trace.append(failed.deny_failed)
    if allows:
        if failed is not None:
            trace.append(failed.allow_failed)
            out.near_misses.append((rule, f"its condition `{failed.text}` does not hold"))
        elif rule.max_risk is not None and risk > rule.max_risk:
            failure = f"risk {risk:.2f} > max_risk {rule.max_risk:g}"
            trace.append(TraceEntry(rule.id, "allow", False, failure, "risk above max_risk"))
            out.risk_capped.append(rule)
        else:
            trace.append(candidate.allowed)
            out.allow_hits.append(rule)
            hit = True
    if hit:
        out.matched.append(rule.id)


def _evaluate(
    request: CallRequest,
    policy: Policy,
    keys: KeyRing,
    now_in: datetime | None,
    session: SessionRisk | None,
    decision_id: str,
) -> Decision:
    """The decision, from the memo (:mod:`policy.memo`) when an earlier call settled the same question."""
    now = _utc(now_in)
    arguments = request.arguments
    findings, schema, session_score = _checks(request, now, session)
    if findings or session_score >= _SESSION_FLOOR or schema.status not in memo.PLAIN_SCHEMA:
        return _decide(request, policy, keys, now, findings, schema, session_score, decision_id)
    table = memo.table_of(policy, keys)
    where = (request.model, request.server, request.tool, request.kind)
    shape = table.shapes.get(where)
    if shape is None or not shape.since <= now < shape.until:
        shape = memo.shape_of(request, policy, now)
        if len(table.shapes) >= memo.SHAPES_LIMIT:
            table.empty()
        table.shapes[where] = shape
    if shape.conditional is None:
        return _decide(request, policy, keys, now, findings, schema, session_score, decision_id)
    key = (schema.status, session_sentence(session_score), *(_outcome(c, arguments) for c in shape.conditional))
    known = shape.decisions.get(key)
    if known is not None:
        return with_id(known, decision_id)  # the known decision under this call's id
    decision = _decide(request, policy, keys, now, findings, schema, session_score, decision_id)
    suggested = decision.counterfactual.suggested_rule if decision.counterfactual is not None else None
    if suggested is None and len(shape.decisions) < memo.DECISIONS_PER_SHAPE:  # a suggested rule is a dict: not shared
        table.stored += 1
        if table.stored > memo.DECISIONS_PER_TABLE:  # bounded whatever the targets (resource URIs are the caller's)
            table.empty()
        shape.decisions[key] = decision
    return decision




def _outcome(candidate: CompiledRule, arguments: Mapping[str, Any]) -> tuple[int, str | None]:
    """What ``candidate``'s conditions say of ``arguments``: the failing one's index (-1: none) and error."""
    failed, error = _conditions(candidate, arguments)
    if failed is None:
        return -1, error
    return next(i for i, c in enumerate(candidate.conditions) if c is failed), error


def _evaluate_uncached(
    request: CallRequest,
    policy: Policy,
    keys: KeyRing,
    now_in: datetime | None,
    session: SessionRisk | None,
    decision_id: str,
) -> Decision:
    """:func:`_evaluate` without the memo: the reference it is tested against."""
    now = _utc(now_in)
    return _decide(request, policy, keys, now, *_checks(request, now, session), decision_id)


def _checks(
    request: CallRequest, now: datetime, session: SessionRisk | None
) -> tuple[tuple[Finding, ...], SchemaCheck, float]:
    """1. The checks that describe the call: argument findings, the schema check, the session's risk."""
    findings = scan_value(request.arguments, "arguments") + request.findings
    schema = check_arguments(request.input_schema, request.arguments)
    session_score = session.score(now.timestamp()) if session is not None else 0.0
    return findings, schema, session_score


def _decide(
    request: CallRequest,
    policy: Policy,
    keys: KeyRing,
    now: datetime,
    findings: tuple[Finding, ...],
    schema: SchemaCheck,
    session_score: float,
    decision_id: str,
) -> Decision:
    model = request.model
    tool = request.qualified_tool
    arguments = request.arguments
    factors: tuple[RiskFactor, ...] = (finding_factors(findings) if findings else ()) + schema.factors()
    if session_score >= _SESSION_FLOOR:
        factors += (RiskFactor("session", session_score, f"session risk {session_score:.2f}"),)
    risk = combine([factor.weight for factor in factors]) if factors else 0.0

    # 2-3. Identity, scope and rules.
    kind = request.kind
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown request kind `{kind}`")
    identity = keys.get(model)
    if identity is None:
        in_scope = False
    elif kind == "tool":
        in_scope = keys.in_scope(model, tool)
    else:
        in_scope = scope_reaches(identity.tools, request.server)
    out = _RuleOutcomes()
    for candidate in policy.compiled.candidates(model, tool, kind):
        _consider(candidate, tool, arguments, now, risk, out, kind)

    # 4-6. The first applicable reason decides.
    limit = policy.settings.deny_risk_above
    risk_limit: float | None = None
    denying: list[Finding] = []
    if identity is None:
        code = "unknown_model"
    elif not in_scope:
        code = "out_of_scope"
    elif out.deny_hits:
        code = "explicit_deny"
    elif out.erroring_deny:
        code = "rule_error"
    elif schema.violated:
        code = "schema_violation"
    elif not out.allow_hits and not out.risk_capped:
        if policy.settings.requires_rules(kind):
            code = "default_deny"
        elif limit is not None and risk > limit:
            code = "risk_threshold"
            risk_limit = limit
        else:
            code = "allowed"  # a prompt or resource of an upstream the key scope reaches
    elif not out.allow_hits:
        code = "risk_threshold"
        risk_limit = out.risk_capped[0].max_risk
    elif limit is not None and risk > limit:
        code = "risk_threshold"
        risk_limit = limit
    elif (denying := _denying_findings(findings, policy.settings.tolerate_findings)):
        # detect helper: a high-severity injection or private key denies unless tolerated
        code = "suspicious_arguments"
    else:
        code = "allowed"
    # deny > ask > allow: an ask only holds a call that would otherwise be allowed
    approval = _requirement(out.ask_hits) if code == "allowed" and out.ask_hits else None
    if approval is not None:
        code = "approval_required"

    reason = _reason(code, model, tool, arguments, out, schema.messages, risk, risk_limit, kind)
    if code == "suspicious_arguments":
        reason = one_line("arguments contain " + "; ".join(
            f"{'a private key' if f.code == 'secret' else 'an injection pattern'} ({f.kind}) at {f.path}"
            for f in denying[:3]
        ))  # fmt: skip
    reasoning = [
        _ask_sentence(approval, model, tool) if approval is not None else
        _target_sentence(code, model, tool, kind, request.server, out) if kind != "tool" else rules_sentence(
            code=code,
            model=model,
            tool=tool,
            scope=None if identity is None else identity.tools,
            allow_hits=out.allow_hits,
            deny_hits=out.deny_hits,
            erroring_deny=out.erroring_deny,
            near_misses=out.near_misses,
        ),
        schema.sentence(),
        describe_findings(findings),
        session_sentence(session_score),
    ]
    if risk_limit is not None or limit is not None:
        reasoning.append(risk_sentence(risk, risk_limit if risk_limit is not None else limit or 0.0, factors))
    errors = out.errors
    if schema.status == "schema_error":
        errors = [*errors, f"input schema of `{tool}` is invalid: {schema.messages[0]}"]

    return Decision(
        decision_id=decision_id,
        allowed=code == "allowed",
        reason=reason,
        reason_code=code,
        deny_kind=DENY_KINDS[code],
        model=model,
        tool=tool,
        matched_rules=tuple(out.matched),
        rule_trace=tuple(out.trace),
        risk_score=risk,
        risk_factors=factors,
        reasoning=tuple(reasoning),
        errors=tuple(errors),
        policy_digest=policy.digest,
        counterfactual=_APPROVAL_COUNTERFACTUAL if approval is not None else _target_counterfactual(
            counterfactual(
                code=code,
                model=model,
                tool=tool,
                risk=risk,
                risk_limit=risk_limit,
                allow_hits=out.allow_hits,
                deny_hits=out.deny_hits,
                erroring_deny=out.erroring_deny,
                near_misses=out.near_misses,
            ),
            kind,
            code,
            model,
            tool,
            request.server,
        ),
        findings=findings,
        kind=kind,
        approval=approval,
    )


_APPROVAL_COUNTERFACTUAL = Counterfactual(
    "no policy change is needed: the call runs once the approver says yes to it"
)
_APPROVER_STRENGTH = {"any": 0, "user": 1, "operator": 2}


def _requirement(asking: list[Rule]) -> ApprovalRequirement:
    """Several asking rules: the strictest approver (operator > user > any) and the shortest wait."""
    approver = max((rule.effective_approver for rule in asking), key=_APPROVER_STRENGTH.__getitem__)
    return ApprovalRequirement(
        rules=tuple(rule.id for rule in asking),
        approver=approver,
        ttl=min(rule.effective_ttl for rule in asking),
    )


def _ask_sentence(approval: ApprovalRequirement, model: str, tool: str) -> str:
    rules = ", ".join(approval.rules)
    who = {"user": "the user at the client", "operator": "an operator", "any": "the user or an operator"}
    return (
        f"Model {model} may call {tool}, but rule {rules} requires approval by {who[approval.approver]} "
        f"for each call (approver: {approval.approver}, waits up to {approval.ttl:g}s)."
    )


_DENYING_CODES = frozenset({"prompt_injection", "secret"})


def _denying_findings(findings: tuple[Finding, ...], tolerated: tuple[str, ...]) -> list[Finding]:
    """High-severity injection and private-key findings the policy does not tolerate."""
    return [
        f for f in findings
        if f.severity == "high" and f.code in _DENYING_CODES
        and f.code not in tolerated and f"{f.code}:{f.kind}" not in tolerated
    ]  # fmt: skip


def _with_message(prefix: str, rule: Rule, model: str, tool: str, arguments: Mapping[str, Any]) -> str:
    if rule.reason is None:
        return prefix
    return f"{prefix}: {render_reason(rule.reason, model=model, tool=tool, arguments=arguments)}"


def _reason(
    code: str,
    model: str,
    tool: str,
    arguments: Mapping[str, Any],
    out: _RuleOutcomes,
    schema_messages: tuple[str, ...],
    risk: float,
    risk_limit: float | None,
    kind: str = "tool",
) -> str:
    if code == "approval_required":
        rule = out.ask_hits[0]
        return _with_message(f"approval required by rule {rule.id} (approver: {rule.effective_approver})",
                             rule, model, tool, arguments)
    if code == "allowed":
        if not out.allow_hits:
            return one_line(
                f"allowed: the {kind} `{tool}` belongs to an upstream inside model `{model}`'s key scope "
                f"and settings.require_rules_for does not list {kind}s"
            )
        rule = out.allow_hits[0]
        return _with_message(f"allowed by rule {rule.id}", rule, model, tool, arguments)
    if code == "unknown_model":
        return one_line(f"model `{model}` is not in the model keys file")
    if code == "out_of_scope":
        if kind != "tool":
            return one_line(f"the {kind} `{tool}` belongs to an upstream outside model `{model}`'s key scope")
        return one_line(f"`{tool}` is outside model `{model}`'s key scope")
    if code == "explicit_deny":
        rule = out.deny_hits[0]
        return _with_message(f"denied by rule {rule.id}", rule, model, tool, arguments)
    if code == "rule_error":
        return f"denied because deny rule {out.erroring_deny[0]} could not be evaluated"
    if code == "schema_violation":
        return one_line(f"arguments violate the input schema of `{tool}`: {schema_messages[0]}")
    if code == "risk_threshold":
        return f"risk score {risk:.2f} is above the limit {risk_limit if risk_limit is not None else 0.0:g}"
    if kind != "tool":
        return one_line(f"no rule allows model `{model}` to read the {kind} `{tool}`")
    return one_line(f"no rule allows model `{model}` to call `{tool}`")


def scope_reaches(scope: tuple[str, ...], server: str) -> bool:
    """Whether a key scope (tool globs) reaches the upstream ``server``: some tool of it is inside."""
    return any(glob_reaches(pattern, f"{server}.") for pattern in scope)


_GRANT_KEY = {"prompt": "allow_prompts", "resource": "allow_resources"}


def _target_sentence(code: str, model: str, target: str, kind: str, server: str, out: _RuleOutcomes) -> str:
    """The rules sentence for a prompt or resource."""
    if code == "unknown_model":
        return f"Model {model} has no entry in the model keys file, so it may read nothing."
    if code == "out_of_scope":
        return f"Upstream {server} is outside model {model}'s key scope, so none of its {kind}s may be read."
    if out.deny_hits:
        return f"Rule {out.deny_hits[0].id} denies model {model} the {kind} {target}."
    if out.erroring_deny:
        return f"Deny rule {out.erroring_deny[0]} could not be evaluated, so the request is denied to be safe."
    if out.allow_hits:
        return f"Model {model} may read the {kind} {target} by rule {out.allow_hits[0].id}."
    if code == "default_deny":
        sentence = f"No rule allows model {model} the {kind} {target}, and settings.require_rules_for lists {kind}s."
        if out.near_misses:
            rule, why = out.near_misses[0]
            sentence += f" Rule {rule.id} would, but {why}."
        return sentence
    return f"No rule names the {kind} {target}; {kind}s of upstreams inside the key scope are readable by default."


def _target_counterfactual(
    base: Counterfactual | None, kind: str, code: str, model: str, target: str, server: str
) -> Counterfactual | None:
    """The tool-worded counterfactual, re-worded for a prompt or resource (its grant uses the right list)."""
    if base is None or kind == "tool":
        return base
    if code == "out_of_scope":
        return Counterfactual(
            f"no policy change can allow this: the operator must widen model `{model}`'s key scope "
            f"to reach upstream `{server}`"
        )
    grant = None
    if base.suggested_rule is not None:
        key = _GRANT_KEY.get(kind)
        grant = {"model": model, key: [target]} if key is not None else None
    text = base.text.replace(f"granted {model} `{target}`", f"granted {model} the {kind} `{target}`")
    return Counterfactual(text, grant, base.remove_rules)


def could_allow(
    policy: Policy, keys: KeyRing, model_id: str, qualified_tool: str, *, now: datetime | None = None
) -> bool:
    """Whether some live rule could allow this model this tool, ignoring argument conditions.

    False when the tool is outside the key scope or an unconditional, live deny rule matches.
    Used to filter ``tools/list``; on any internal error it answers False (fail closed).
    """
    try:
        if keys.get(model_id) is None or not keys.in_scope(model_id, qualified_tool):
            return False
        moment = _utc(now)
        possible = False
        for candidate in policy.compiled.candidates(model_id, qualified_tool):
            rule = candidate.rule
            if rule.expires is not None and moment >= rule.expires:
                continue
            if candidate.deny is not None and not rule.when and candidate.deny.fullmatch(qualified_tool):
                return False
            if candidate.allow is not None and candidate.allow.fullmatch(qualified_tool):
                possible = True
        return possible
    except Exception:  # a filter must fail closed, not break tools/list
        return False
