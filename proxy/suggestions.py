"""Interceptor: a denial's suggested rule, vetted by the guardrails before the model sees it.

The policy engine suggests a rule that keeps the operator's conditions but does not know the
negotiation envelope. This addon (outside the enforcer) completes the suggestion the way an
auto-approvable proposal must look and says whether proposing it is approved at once or
needs a reviewer (``counterfactual.review``). It only ever edits a denial, after it was
decided and audited; any failure leaves the denial exactly as the enforcer made it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog
import yaml

from negotiation import NegotiationService
from proxy.intercept import CallNext, ToolCall, ToolResult

log = structlog.get_logger("securegateway.suggestions")


def _rule_yaml(rule: Mapping[str, Any]) -> str:
    return yaml.safe_dump({"rules": [dict(rule)]}, sort_keys=False).rstrip()


class SuggestionVetting:
    """``(call, call_next)``: annotate denials that suggest a rule with the guardrails' view."""

    def __init__(self, service: NegotiationService) -> None:
        self._service = service

    async def __call__(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        result = await call_next(call)
        if not result.get("isError"):
            return result
        try:
            return self._annotated(call, result)
        except Exception:  # a hint must never break a denial
            log.exception("vetting a suggested rule failed", tool=call.qualified)
            return result

    def _annotated(self, call: ToolCall, result: ToolResult) -> ToolResult:
        structured = result.get("structuredContent")
        counterfactual = structured.get("counterfactual") if isinstance(structured, Mapping) else None
        rule = counterfactual.get("suggested_rule") if isinstance(counterfactual, Mapping) else None
        model_id = getattr(call.session.identity, "model_id", None)
        if not isinstance(rule, Mapping) or not isinstance(model_id, str):
            return result
        assert isinstance(structured, Mapping) and isinstance(counterfactual, Mapping)
        risk = call.session.risk.score(time.time()) if hasattr(call.session.risk, "score") else 0.0
        review = self._service.vet_suggestion(model_id, rule, session_risk=risk)
        if review is None:
            return result
        content = []
        for item in result.get("content") or []:
            if isinstance(item, Mapping) and item.get("type") == "text":
                text = str(item.get("text", "")).replace(_rule_yaml(rule), _rule_yaml(review.rule))
                text = text.replace("\nDecision id:", f"\n{review.sentence()}\nDecision id:", 1)
                item = {**item, "text": text}
            content.append(item)
        vetted = {**dict(counterfactual), "suggested_rule": dict(review.rule), "review": review.to_dict()}
        return {**result, "content": content, "structuredContent": {**dict(structured), "counterfactual": vetted}}
