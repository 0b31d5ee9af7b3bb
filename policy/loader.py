"""``policies.yaml`` -> :class:`Policy`, with every problem located at ``file:line:col``.

The file is parsed by :mod:`policy.yaml_safe` (size, depth and alias limits, no arbitrary
tags), then checked against the policy language; *all* problems are collected before one
:class:`PolicyLoadError` is raised. Unknown keys are errors everywhere, because a misspelt
``deny_tool`` that is silently ignored is a hole in the policy.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import PolicyError
from .match import ConditionError, compile_regex
from .model import APPROVERS, CONDITION_OPS, RULED_KINDS, Condition, Policy, PolicySettings, Rule
from .yaml_safe import DEFAULT_MAX_BYTES, Issues, Node, key_path, parse_yaml, plain, read_capped

__all__ = ["dump_policy_yaml", "load_policy", "load_policy_text", "parse_duration", "parse_expires"]

RULE_KEYS = (
    "id",
    "description",
    "model",
    "allow_tools",
    "deny_tools",
    "allow_prompts",
    "deny_prompts",
    "allow_resources",
    "deny_resources",
    "when",
    "reason",
    "expires",
    "max_risk",
    "ask_tools",
    "approver",
    "approval_ttl",
)
TOP_KEYS = ("rules", "settings")
SETTINGS_KEYS = ("deny_risk_above", "require_rules_for", "tolerate_findings")
TARGET_LISTS = {
    "allow_tools": "tool globs",
    "deny_tools": "tool globs",
    "allow_prompts": "prompt globs",
    "deny_prompts": "prompt globs",
    "allow_resources": "resource URI globs",
    "deny_resources": "resource URI globs",
    "ask_tools": "tool globs",
}
RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, dt.datetime):
        return "timestamp"
    if isinstance(value, dt.date):
        return "date"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool) or (_is_number(value) and math.isfinite(value))


def check_keys(issues: Issues, node: Node, allowed: tuple[str, ...], path: tuple[str | int, ...]) -> None:
    for key, child in node.value.items():
        if key not in allowed:
            issues.add(child, key_path(*path, key), f"unknown key; expected one of: {', '.join(allowed)}")


def string_list(issues: Issues, node: Node, path: tuple[str | int, ...], what: str) -> tuple[str, ...]:
    """A non-empty list of non-empty strings without whitespace, or an issue."""
    if not isinstance(node.value, list):
        issues.add(node, key_path(*path), f"expected a list of strings, got {type_name(node.value)}")
        return ()
    if not node.value:
        issues.add(node, key_path(*path), f"expected a non-empty list of {what}")
        return ()
    out: list[str] = []
    for index, item in enumerate(node.value):
        if not isinstance(item.value, str) or not item.value or any(c.isspace() for c in item.value):
            issues.add(
                item,
                key_path(*path, index),
                f"expected a non-empty string without spaces, got `{plain(item)}`",
            )
        else:
            out.append(item.value)
    return tuple(out)


def _text(issues: Issues, node: Node, path: tuple[str | int, ...]) -> str | None:
    if not isinstance(node.value, str):
        issues.add(node, key_path(*path), f"expected a string, got {type_name(node.value)}")
        return None
    return node.value


def _fraction(issues: Issues, node: Node, path: tuple[str | int, ...]) -> float | None:
    value = node.value
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        issues.add(node, key_path(*path), f"expected a number between 0 and 1, got `{plain(node)}`")
        return None
    return float(value)


def parse_expires(value: Any) -> dt.datetime:
    """An ISO-8601 timestamp with a timezone as tz-aware UTC; ValueError otherwise."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected an ISO-8601 timestamp, got `{value}`") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp needs a timezone, e.g. `2030-01-31T00:00:00Z`")
        return value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        raise ValueError(f"expected a full timestamp such as `{value.isoformat()}T00:00:00Z`, got a date")
    raise ValueError(f"expected an ISO-8601 timestamp, got {type_name(value)}")


def _condition_value(issues: Issues, op: str, node: Node, path: tuple[str | int, ...]) -> tuple[bool, Any]:
    """Validate one condition operand; returns (ok, value as stored in the model)."""
    value = plain(node)
    where = key_path(*path)
    if op == "equals":
        if not _is_scalar(value):
            issues.add(node, where, f"expected a string, number, boolean or null, got {type_name(value)}")
            return False, None
        return True, value
    if op == "one_of":
        if not isinstance(value, list) or not value or not all(_is_scalar(item) for item in value):
            issues.add(node, where, "expected a non-empty list of strings, numbers, booleans or nulls")
            return False, None
        return True, tuple(value)
    if op in ("min", "max"):
        if not _is_number(value) or not math.isfinite(value):
            issues.add(node, where, f"expected a number, got {type_name(value)}")
            return False, None
        return True, value
    if op == "max_length":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            issues.add(node, where, f"expected a non-negative integer, got `{value}`")
            return False, None
        return True, value
    if op == "under":
        if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
            issues.add(node, where, f"expected an absolute path such as `/srv/docs`, got `{value}`")
            return False, None
        return True, value
    # regex / not_regex: compiled by RE2 here, so a pattern it refuses never loads
    if not isinstance(value, str):
        issues.add(node, where, f"expected a regular expression string, got {type_name(value)}")
        return False, None
    try:
        compile_regex(value)
    except ConditionError as exc:
        issues.add(node, where, f"invalid regex `{value[:200]}`: {str(exc).removeprefix('invalid regex: ')}")
        return False, None
    return True, value


def _conditions(issues: Issues, node: Node, path: tuple[str | int, ...]) -> tuple[Condition, ...]:
    if not isinstance(node.value, dict) or not node.value:
        issues.add(node, key_path(*path), "expected a mapping of argument name to conditions")
        return ()
    out: list[Condition] = []
    for arg, ops_node in node.value.items():
        arg_path = (*path, arg)
        if not arg or any(not segment for segment in arg.split(".")):
            issues.add(
                ops_node, key_path(*arg_path), "expected an argument name or dotted path such as `a.b`"
            )
            continue
        if not isinstance(ops_node.value, dict) or not ops_node.value:
            issues.add(
                ops_node,
                key_path(*arg_path),
                f"expected a mapping of conditions ({', '.join(CONDITION_OPS)}), "
                f"got {type_name(plain(ops_node))}",
            )
            continue
        check_keys(issues, ops_node, CONDITION_OPS, arg_path)
        bounds: dict[str, Any] = {}
        for op, operand in ops_node.value.items():
            if op not in CONDITION_OPS:
                continue
            ok, value = _condition_value(issues, op, operand, (*arg_path, op))
            if ok:
                out.append(Condition(arg=arg, op=op, value=value))
                if op in ("min", "max"):
                    bounds[op] = value
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            issues.add(ops_node, key_path(*arg_path), "`min` is greater than `max`; nothing can match")
    return tuple(out)


def _rule(issues: Issues, node: Node, index: int) -> Rule | None:
    path: tuple[str | int, ...] = ("rules", index)
    if not isinstance(node.value, dict):
        issues.add(node, key_path(*path), f"expected a mapping (a rule), got {type_name(plain(node))}")
        return None
    before = len(issues.items)
    entries: dict[str, Node] = node.value
    check_keys(issues, node, RULE_KEYS, path)

    rule_id = None
    if "id" in entries:
        rule_id = _text(issues, entries["id"], (*path, "id"))
        if rule_id is not None and not RULE_ID.fullmatch(rule_id):
            issues.add(
                entries["id"],
                key_path(*path, "id"),
                f"expected letters, digits, `_.:-` (max 64), got `{rule_id}`",
            )
    description = (
        _text(issues, entries["description"], (*path, "description")) if "description" in entries else None
    )
    reason = _text(issues, entries["reason"], (*path, "reason")) if "reason" in entries else None

    models: tuple[str, ...] = ()
    if "model" not in entries:
        issues.add(node, key_path(*path), "missing required key `model` (a model id, a list of them, or `*`)")
    else:
        model_node = entries["model"]
        if isinstance(model_node.value, str) and model_node.value:
            models = (model_node.value,)
        elif isinstance(model_node.value, list):
            models = string_list(issues, model_node, (*path, "model"), "model ids")
        else:
            issues.add(
                model_node,
                key_path(*path, "model"),
                f"expected a model id or a list of them, got {type_name(plain(model_node))}",
            )

    targets = {
        key: string_list(issues, entries[key], (*path, key), what) if key in entries else ()
        for key, what in TARGET_LISTS.items()
    }
    if not any(key in entries for key in TARGET_LISTS):
        issues.add(
            node,
            key_path(*path),
            "a rule needs `allow_tools` or `deny_tools` (or `ask_tools`, `allow_prompts`, `deny_prompts`, "
            "`allow_resources`, `deny_resources`)",
        )

    when = _conditions(issues, entries["when"], (*path, "when")) if "when" in entries else ()

    expires = None
    if "expires" in entries:
        try:
            expires = parse_expires(entries["expires"].value)
        except ValueError as exc:
            issues.add(entries["expires"], key_path(*path, "expires"), str(exc))

    max_risk = None
    if "max_risk" in entries:
        max_risk = _fraction(issues, entries["max_risk"], (*path, "max_risk"))
        if not any(key.startswith("allow_") and key in entries for key in TARGET_LISTS):
            issues.add(
                entries["max_risk"],
                key_path(*path, "max_risk"),
                "`max_risk` only applies to rules with `allow_tools` (or `allow_prompts`, `allow_resources`)",
            )

    approver, approval_ttl = _approval(issues, entries, path)

    if len(issues.items) > before:
        return None
    return Rule.build(
        id=rule_id,
        description=description,
        models=models,
        allow_tools=targets["allow_tools"],
        deny_tools=targets["deny_tools"],
        allow_prompts=targets["allow_prompts"],
        deny_prompts=targets["deny_prompts"],
        allow_resources=targets["allow_resources"],
        deny_resources=targets["deny_resources"],
        when=when,
        reason=reason,
        expires=expires,
        max_risk=max_risk,
        ask_tools=targets["ask_tools"],
        approver=approver,
        approval_ttl=approval_ttl,
    )


_DURATION = re.compile(r"(\d+)\s*(s|m|h)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
MAX_APPROVAL_TTL = 86400


def parse_duration(value: Any) -> float:
    """Seconds from a positive number or a string such as ``90s``, ``5m``, ``2h``; ValueError otherwise."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected seconds or a duration such as `5m`, `90s`, `2h`, got `{value[:80]}`")
        seconds: float = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    elif _is_number(value) and math.isfinite(value):
        seconds = float(value)
    else:
        raise ValueError(f"expected seconds or a duration such as `5m`, got {type_name(value)}")
    if not 1 <= seconds <= MAX_APPROVAL_TTL:
        raise ValueError(f"expected between 1 second and 24h, got `{value}`")
    return seconds


def _approval(
    issues: Issues, entries: dict[str, Node], path: tuple[str | int, ...]
) -> tuple[str | None, float | None]:
    """``approver`` and ``approval_ttl``: only meaningful next to ``ask_tools``."""
    approver: str | None = None
    ttl: float | None = None
    if "approver" in entries:
        node = entries["approver"]
        if node.value not in APPROVERS:
            choices = ", ".join(APPROVERS)
            issues.add(node, key_path(*path, "approver"), f"expected one of: {choices}, got `{plain(node)}`")
        else:
            approver = node.value
    if "approval_ttl" in entries:
        try:
            ttl = parse_duration(entries["approval_ttl"].value)
        except ValueError as exc:
            issues.add(entries["approval_ttl"], key_path(*path, "approval_ttl"), str(exc))
    for key in ("approver", "approval_ttl"):
        if key in entries and "ask_tools" not in entries:
            issues.add(entries[key], key_path(*path, key), f"`{key}` only applies to rules with `ask_tools`")
    return approver, ttl


def _settings(issues: Issues, node: Node) -> PolicySettings:
    if not isinstance(node.value, dict):
        issues.add(node, "settings", f"expected a mapping, got {type_name(plain(node))}")
        return PolicySettings()
    check_keys(issues, node, SETTINGS_KEYS, ("settings",))
    threshold = None
    if "deny_risk_above" in node.value:
        threshold = _fraction(issues, node.value["deny_risk_above"], ("settings", "deny_risk_above"))
    required: tuple[str, ...] = ()
    if "require_rules_for" in node.value:
        listed = string_list(issues, node.value["require_rules_for"], ("settings", "require_rules_for"), "kinds")
        for index, name in enumerate(listed):
            if name not in RULED_KINDS:
                issues.add(
                    node.value["require_rules_for"].value[index],
                    key_path("settings", "require_rules_for", index),
                    f"expected `prompts` or `resources`, got `{name}`",
                )
        required = tuple(sorted({name for name in listed if name in RULED_KINDS}))
    tolerate: tuple[str, ...] = ()
    if "tolerate_findings" in node.value:
        item = node.value["tolerate_findings"]
        value = plain(item)
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            issues.add(item, key_path("settings", "tolerate_findings"),
                       "expected a list of finding codes such as `secret` or `prompt_injection:role_override`")
        else:
            tolerate = tuple(value)
    return PolicySettings(deny_risk_above=threshold, require_rules_for=required, tolerate_findings=tolerate)


def load_policy_text(text: str, source: str = "<string>", *, max_bytes: int = DEFAULT_MAX_BYTES) -> Policy:
    """Parse and validate policy YAML; raises PolicyLoadError listing every problem."""
    root = parse_yaml(text, source, max_bytes=max_bytes)
    issues = Issues(source)
    if root is None:
        issues.add((1, 1), "<root>", "the policy is empty; expected a mapping with `rules`")
        issues.raise_if_any()
    assert root is not None
    if not isinstance(root.value, dict):
        issues.add(root, "<root>", f"expected a mapping with `rules`, got {type_name(plain(root))}")
        issues.raise_if_any()
    check_keys(issues, root, TOP_KEYS, ())
    settings = _settings(issues, root.value["settings"]) if "settings" in root.value else PolicySettings()

    rules: list[Rule] = []
    if "rules" not in root.value:
        issues.add(root, "<root>", "missing required key `rules` (use `rules: []` to deny everything)")
    else:
        rules_node = root.value["rules"]
        if not isinstance(rules_node.value, list):
            issues.add(rules_node, "rules", f"expected a list of rules, got {type_name(plain(rules_node))}")
        else:
            first_seen: dict[str, int] = {}
            for index, rule_node in enumerate(rules_node.value):
                rule = _rule(issues, rule_node, index)
                if rule is None:
                    continue
                if rule.id in first_seen:
                    other = key_path("rules", first_seen[rule.id])
                    message = (
                        f"duplicate rule id `{rule.id}` (also {other})"
                        if "id" in rule_node.value
                        else f"rule is identical to {other}"
                    )
                    issues.add(rule_node, key_path("rules", index), message)
                    continue
                first_seen[rule.id] = index
                rules.append(rule)
    issues.raise_if_any()
    try:
        return Policy.from_rules(rules, settings, source=source)
    except PolicyError as exc:  # pragma: no cover - validation above rules this out
        issues.add((1, 1), "rules", str(exc))
        issues.raise_if_any()
        raise


def load_policy(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Policy:
    """Load ``policies.yaml`` from disk (refusing files over ``max_bytes`` before reading them)."""
    return load_policy_text(read_capped(path, max_bytes), str(path), max_bytes=max_bytes)


def dump_policy_yaml(policy: Policy) -> str:
    """The policy as YAML in canonical rule order; loading it gives back the same digest.

    Non-ASCII text is written as-is when that round-trips; PyYAML mangles a few characters
    (NEL, line and paragraph separators) in plain and single-quoted scalars, so when the
    readable form would not load back identically the dump escapes all non-ASCII instead.
    """
    canonical = policy.canonical()
    document: dict[str, Any] = {"rules": canonical["rules"]}
    if canonical["settings"]:
        document["settings"] = canonical["settings"]
    for readable in (True, False):
        text = yaml.safe_dump(
            document, sort_keys=False, allow_unicode=readable, default_flow_style=False, width=1 << 16
        )
        try:
            if load_policy_text(text, max_bytes=max(DEFAULT_MAX_BYTES, 4 * len(text))).digest == policy.digest:
                return text
        except PolicyError:
            continue
    raise PolicyError("the policy cannot be written as YAML that loads back identically")
