"""The policy as frozen values: rules, their argument conditions, settings, and a call request.

A :class:`Policy` is built once (by the loader or :meth:`Policy.from_rules`) and compiled into
matchers at construction, so evaluation never parses or compiles anything. Its ``digest`` is
the sha256 of :meth:`Policy.canonical`, the plain-JSON form that gets hashed and signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .canonical import canonical_json, digest
from .errors import PolicyError

if TYPE_CHECKING:
    from .detect.finding import Finding
    from .index import CompiledPolicy

__all__ = [
    "APPROVERS",
    "CONDITION_OPS",
    "DEFAULT_APPROVAL_TTL",
    "DEFAULT_APPROVER",
    "RULED_KINDS",
    "TARGET_KINDS",
    "CallRequest",
    "Condition",
    "Policy",
    "PolicySettings",
    "Rule",
    "format_timestamp",
    "generated_rule_id",
]

# Who may answer a rule's ``ask_tools``: the person at the client (elicitation), an operator
# (admin API / CLI), or whichever the client can reach first.
APPROVERS: tuple[str, ...] = ("user", "operator", "any")
DEFAULT_APPROVER = "operator"
DEFAULT_APPROVAL_TTL = 300.0

# The argument-condition vocabulary, in the order conditions are listed and checked.
CONDITION_OPS: tuple[str, ...] = (
    "equals",
    "one_of",
    "min",
    "max",
    "max_length",
    "under",
    "regex",
    "not_regex",
)


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    return canonical_json(value)


@dataclass(frozen=True)
class Condition:
    """One test on one argument: ``arg`` is a dotted path into the arguments, ``op`` a verb."""

    arg: str
    op: str
    value: Any

    def to_text(self) -> str:
        """Human form used in traces and counterfactuals, e.g. ``path under /srv/docs``."""
        return f"{self.arg} {self.op.replace('_', ' ')} {_render(self.value)}"

    def plain_value(self) -> Any:
        return list(self.value) if isinstance(self.value, tuple) else self.value


# What a request reaches upstream: a tool (tools/call), a prompt (prompts/get, prompt
# completions), a resource (resources/read, resources/subscribe, resource completions), or
# another method the relay passes through to a single upstream (``method``; no rule names
# those: the key scope must reach the upstream).
TARGET_KINDS: tuple[str, ...] = ("tool", "prompt", "resource", "method")
# The kinds ``settings.require_rules_for`` may name (tools always need a rule).
RULED_KINDS: dict[str, str] = {"prompts": "prompt", "resources": "resource"}


@dataclass(frozen=True)
class PolicySettings:
    """Policy-wide settings.

    ``deny_risk_above`` denies any call whose risk score exceeds it. ``require_rules_for``
    lists ``prompts`` and/or ``resources``: those then need an allowing rule, as tools do;
    otherwise a model may read the prompts and resources of any upstream its key scope reaches.
    """

    deny_risk_above: float | None = None
    require_rules_for: tuple[str, ...] = ()
    # Findings that do not deny a call by themselves: a code (`secret`) or `code:kind`
    # (`prompt_injection:chat_template_token`). See docs/detection.md.
    tolerate_findings: tuple[str, ...] = ()

    def requires_rules(self, kind: str) -> bool:
        """Whether a request of ``kind`` is denied unless a rule allows it."""
        return kind == "tool" or any(RULED_KINDS[name] == kind for name in self.require_rules_for)

    def to_dict(self) -> dict[str, Any]:
        # Only what is set, so policies written before a setting existed keep their digests.
        out: dict[str, Any] = {}
        if self.deny_risk_above is not None:
            out["deny_risk_above"] = self.deny_risk_above
        if self.require_rules_for:
            out["require_rules_for"] = sorted(self.require_rules_for)
        if self.tolerate_findings:
            out["tolerate_findings"] = list(self.tolerate_findings)
        return out


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix: the one spelling of a timestamp in canonical form."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _rule_body(
    *,
    description: str | None,
    models: tuple[str, ...],
    allow_tools: tuple[str, ...],
    deny_tools: tuple[str, ...],
    when: tuple[Condition, ...],
    reason: str | None,
    expires: datetime | None,
    max_risk: float | None,
    allow_prompts: tuple[str, ...] = (),
    deny_prompts: tuple[str, ...] = (),
    allow_resources: tuple[str, ...] = (),
    deny_resources: tuple[str, ...] = (),
    ask_tools: tuple[str, ...] = (),
    approver: str | None = None,
    approval_ttl: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if description is not None:
        body["description"] = description
    body["model"] = models[0] if len(models) == 1 else list(models)
    # Each list only when non-empty: rules written before prompts and resources could be
    # named keep their canonical form (and so their generated ids and the policy digest).
    for key, patterns in (
        ("allow_tools", allow_tools),
        ("deny_tools", deny_tools),
        ("allow_prompts", allow_prompts),
        ("deny_prompts", deny_prompts),
        ("allow_resources", allow_resources),
        ("deny_resources", deny_resources),
        ("ask_tools", ask_tools),
    ):
        if patterns:
            body[key] = list(patterns)
    if when:
        conditions: dict[str, dict[str, Any]] = {}
        for condition in when:
            conditions.setdefault(condition.arg, {})[condition.op] = condition.plain_value()
        body["when"] = conditions
    if reason is not None:
        body["reason"] = reason
    if expires is not None:
        body["expires"] = format_timestamp(expires)
    if max_risk is not None:
        body["max_risk"] = max_risk
    # Approval fields only when set: policies without them keep their digests.
    if approver is not None:
        body["approver"] = approver
    if approval_ttl is not None:
        body["approval_ttl"] = int(approval_ttl) if float(approval_ttl).is_integer() else approval_ttl
    return body


def generated_rule_id(body: Mapping[str, Any]) -> str:
    """A stable id for a rule written without one: a short hash of its own canonical content.

    It depends only on the rule itself, so it survives other rules being added or moved.
    """
    return "r-" + hashlib.sha256(canonical_json(dict(body)).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Rule:
    """One policy rule. ``models`` holds model ids or ``"*"``; the target lists hold globs.

    Tool and prompt globs match dotted ``<upstream>.<name>``; resource globs match URIs. A
    rule may carry allow and deny lists together; its ``when`` conditions apply to all of
    them (for a prompt they test its arguments, for a resource the argument ``uri``).
    ``expires`` is tz-aware UTC; ``max_risk`` caps the risk under which it allows.
    ``ask_tools`` never grants: an otherwise allowed tool call it matches waits for a yes
    from ``approver`` (``user``, ``operator`` or ``any``), for at most ``approval_ttl`` seconds.
    """

    id: str
    description: str | None
    models: tuple[str, ...]
    allow_tools: tuple[str, ...]
    deny_tools: tuple[str, ...]
    when: tuple[Condition, ...] = ()
    reason: str | None = None
    expires: datetime | None = None
    max_risk: float | None = None
    allow_prompts: tuple[str, ...] = ()
    deny_prompts: tuple[str, ...] = ()
    allow_resources: tuple[str, ...] = ()
    deny_resources: tuple[str, ...] = ()
    ask_tools: tuple[str, ...] = ()
    approver: str | None = None
    approval_ttl: float | None = None

    @property
    def effective_approver(self) -> str:
        """Who may say yes to a call this rule asks about (``operator`` unless the rule says)."""
        return self.approver or DEFAULT_APPROVER

    @property
    def effective_ttl(self) -> float:
        return self.approval_ttl if self.approval_ttl is not None else DEFAULT_APPROVAL_TTL

    def patterns(self, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The (allow, deny) globs this rule has for targets of ``kind``."""
        if kind == "prompt":
            return self.allow_prompts, self.deny_prompts
        if kind == "resource":
            return self.allow_resources, self.deny_resources
        if kind == "method":
            return (), ()
        return self.allow_tools, self.deny_tools

    @property
    def allows_anything(self) -> bool:
        return bool(self.allow_tools or self.allow_prompts or self.allow_resources)

    @classmethod
    def build(
        cls,
        *,
        models: Iterable[str],
        allow_tools: Iterable[str] = (),
        deny_tools: Iterable[str] = (),
        when: Iterable[Condition] = (),
        id: str | None = None,
        description: str | None = None,
        reason: str | None = None,
        expires: datetime | None = None,
        max_risk: float | None = None,
        allow_prompts: Iterable[str] = (),
        deny_prompts: Iterable[str] = (),
        allow_resources: Iterable[str] = (),
        deny_resources: Iterable[str] = (),
        ask_tools: Iterable[str] = (),
        approver: str | None = None,
        approval_ttl: float | None = None,
    ) -> Rule:
        """Construct a rule, generating its id from its content when ``id`` is None."""
        fields: dict[str, Any] = {
            "description": description,
            "models": tuple(models),
            "allow_tools": tuple(allow_tools),
            "deny_tools": tuple(deny_tools),
            "when": tuple(when),
            "reason": reason,
            "expires": expires,
            "max_risk": max_risk,
            "allow_prompts": tuple(allow_prompts),
            "deny_prompts": tuple(deny_prompts),
            "allow_resources": tuple(allow_resources),
            "deny_resources": tuple(deny_resources),
            "ask_tools": tuple(ask_tools),
            "approver": approver,
            "approval_ttl": approval_ttl,
        }
        rule_id = id if id is not None else generated_rule_id(_rule_body(**fields))
        return cls(id=rule_id, **fields)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of the rule (plain JSON values), with its id always present."""
        body = _rule_body(
            description=self.description,
            models=self.models,
            allow_tools=self.allow_tools,
            deny_tools=self.deny_tools,
            when=self.when,
            reason=self.reason,
            expires=self.expires,
            max_risk=self.max_risk,
            allow_prompts=self.allow_prompts,
            deny_prompts=self.deny_prompts,
            allow_resources=self.allow_resources,
            deny_resources=self.deny_resources,
            ask_tools=self.ask_tools,
            approver=self.approver,
            approval_ttl=self.approval_ttl,
        )
        return {"id": self.id, **body}


@dataclass(frozen=True)
class Policy:
    """A whole policy: rules (order carries no meaning), settings, digest and origin.

    Construction compiles the rules into an index (``compiled``); that is the only place
    globs and regular expressions are compiled.
    """

    rules: tuple[Rule, ...]
    settings: PolicySettings
    digest: str
    source: str | None = None
    compiled: CompiledPolicy = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise PolicyError(f"duplicate rule id `{rule.id}`")
            seen.add(rule.id)
        from .index import compile_policy  # index imports this module's types

        object.__setattr__(self, "compiled", compile_policy(self.rules))

    @classmethod
    def from_rules(
        cls, rules: Iterable[Rule], settings: PolicySettings | None = None, source: str | None = None
    ) -> Policy:
        """Build a policy and compute its digest from its canonical form."""
        rules = tuple(rules)
        settings = settings if settings is not None else PolicySettings()
        return cls(rules=rules, settings=settings, digest=digest(_canonical(rules, settings)), source=source)

    def canonical(self) -> dict[str, Any]:
        """Plain-JSON form, rules sorted by id: exactly what gets hashed and signed."""
        return _canonical(self.rules, self.settings)


def _canonical(rules: tuple[Rule, ...], settings: PolicySettings) -> dict[str, Any]:
    return {
        "rules": [rule.to_dict() for rule in sorted(rules, key=lambda rule: rule.id)],
        "settings": settings.to_dict(),
    }


@dataclass(frozen=True)
class CallRequest:
    """One request bound for an upstream, as the policy sees it.

    ``kind`` is ``tool`` (``tool`` is the upstream's own tool name), ``prompt`` (``tool`` is
    the prompt's name, ``arguments`` its arguments) or ``resource`` (``tool`` is the URI,
    ``arguments`` is ``{"uri": ...}``).
    """

    model: str
    server: str
    tool: str
    arguments: Mapping[str, Any]
    input_schema: Mapping[str, Any] | None = None
    kind: str = "tool"
    # Findings of detectors that ran outside policy (the optional classifier), added to the
    # argument scan's own: risk factors, reasoning and denials like any other.
    findings: tuple[Finding, ...] = ()

    @property
    def qualified_tool(self) -> str:
        """What globs are matched against: ``<server>.<name>``, or the URI of a resource."""
        return self.tool if self.kind == "resource" else f"{self.server}.{self.tool}"
