"""The policy engine: YAML policy and model keys in, explainable allow/deny decisions out.

Synchronous and deterministic: no I/O during evaluation, no async, no network, and nothing
from ``proxy`` or ``negotiation`` (tests/policy/test_purity.py checks the imports).

Errors (see :mod:`policy.errors`)::

    PolicyError
    └── PolicyLoadError   (.errors: tuple[LoadIssue, ...])
"""

from .decision import Counterfactual, Decision, TraceEntry, gateway_error_decision, unknown_tool_decision
from .detect import Finding, describe_findings, scan_definition, scan_value, strip_hidden
from .engine import could_allow, evaluate
from .errors import LoadIssue, PolicyError, PolicyLoadError
from .keys import KeyRing, ModelIdentity, load_model_keys, load_model_keys_text
from .loader import dump_policy_yaml, load_policy, load_policy_text
from .match import tool_matches
from .model import CallRequest, Condition, Policy, PolicySettings, Rule
from .risk import RiskFactor, SessionRisk

__all__ = [
    "CallRequest",
    "Condition",
    "Counterfactual",
    "Decision",
    "Finding",
    "KeyRing",
    "LoadIssue",
    "ModelIdentity",
    "Policy",
    "PolicyError",
    "PolicyLoadError",
    "PolicySettings",
    "RiskFactor",
    "Rule",
    "SessionRisk",
    "TraceEntry",
    "could_allow",
    "describe_findings",
    "dump_policy_yaml",
    "evaluate",
    "gateway_error_decision",
    "load_model_keys",
    "load_model_keys_text",
    "load_policy",
    "load_policy_text",
    "scan_definition",
    "scan_value",
    "strip_hidden",
    "tool_matches",
    "unknown_tool_decision",
]
