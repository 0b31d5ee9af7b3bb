"""Holding a tools/call until someone says yes (rules with ``ask_tools``).

::

    desk.py    ApprovalDesk: open, wait for, answer, expire and consume approvals, each audited
    form.py    the elicitation form an approver sees (tool, redacted arguments, reason)
    gate.py    ApprovalGate: settles an ``approval_required`` decision by user or operator

The binding and sealing logic is in :mod:`negotiation.approvals`; the decision itself
(``approval_required`` and its outcomes) in :mod:`policy`.
"""

from proxy.approval.desk import ApprovalDesk
from proxy.approval.gate import ApprovalGate, DecisionPoint

__all__ = ["ApprovalDesk", "ApprovalGate", "DecisionPoint"]
