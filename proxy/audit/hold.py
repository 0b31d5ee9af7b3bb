"""Hold each tools/call reply until every audit event written for the call is durable.

The outermost step of the tools/call chain after metrics (``[audit] durability =
"before-response"``, the default). Inside it, :meth:`AuditWriter.record` returns as soon as
an event is *written* (before the call is forwarded: a crash of the gateway process cannot
lose it), and the fsync that makes it durable runs while the upstream works. The reply
(the upstream's result, a denial, or the upstream's JSON-RPC error) leaves only once that
sync has succeeded. If it fails, the reply is withheld and replaced by a JSON-RPC error
(:data:`AUDIT_NOT_DURABLE`): no client ever sees the outcome of a call whose decision is not on
disk, although an allowed call has by then run upstream (its event was written, just not
confirmed durable; the log shows it unless the disk lost it).

In ``before-forward`` mode every ``record`` already waited for its sync, so this step passes
the call straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from proxy.audit.writer import HOLD, AuditWriter, Receipt
from proxy.enforce import DECISION_META_KEY
from proxy.intercept import CallNext, ToolCall, ToolResult
from proxy.protocol import mcp_error

__all__ = ["AUDIT_NOT_DURABLE", "DurableReplies"]

AUDIT_NOT_DURABLE = -32012
"""JSON-RPC error code of a reply withheld because its audit events could not be made durable."""

log = structlog.get_logger("securegateway.audit")


class DurableReplies:
    """Interceptor: no reply before its call's audit events are durable (fail closed)."""

    def __init__(self, writer: AuditWriter, *, on_failure: Callable[[], None] | None = None) -> None:
        self._writer = writer
        self._on_failure = on_failure

    async def __call__(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        if self._writer.durability != "before-response":
            return await call_next(call)
        held: list[Receipt] = []
        token = HOLD.set(held)  # ``holding()``, inline: this runs on every tools/call
        try:
            result = await call_next(call)
        except Exception:  # the upstream's error reply waits for the sync like any reply
            HOLD.reset(token)
            await self._settle(call, held, None)
            raise
        except BaseException:
            HOLD.reset(token)
            raise
        HOLD.reset(token)
        if len(held) == 1 and held[0].poll() and held[0].error is None:
            return result  # the usual case: one group commit, durable by the time the reply is back
        await self._settle(call, held, result)
        return result

    async def _settle(self, call: ToolCall, held: list[Receipt], result: ToolResult | None) -> None:
        for receipt in dict.fromkeys(held):  # one receipt per group commit
            try:
                await receipt.wait()
            except Exception as exc:
                if self._on_failure is not None:
                    self._on_failure()
                decision = _decision_of(result)
                log.error("reply withheld: audit events not durable", tool=call.qualified,
                          decision_id=decision.get("decision_id"), error=str(exc))
                raise mcp_error(
                    AUDIT_NOT_DURABLE,
                    "the gateway could not make the audit record of this call durable, so its reply is withheld"
                    + (" (the call was allowed and has run upstream)" if decision.get("allowed") else ""),
                    data={"reason_code": "audit_not_durable", "decision_id": decision.get("decision_id"),
                          "allowed": decision.get("allowed"), "error": str(exc)[:200]},
                ) from None


def _decision_of(result: ToolResult | None) -> Mapping[str, Any]:
    meta = (result or {}).get("_meta")
    decision = meta.get(DECISION_META_KEY) if isinstance(meta, Mapping) else None
    return decision if isinstance(decision, Mapping) else {}
