"""The console's Approvals page: calls held by ``ask_tools`` rules, and the operator's yes or no.

A thin view over :class:`proxy.approval.ApprovalDesk`, the same desk the JSON API
(``/api/approvals``) and ``securegateway approvals`` answer through, so an answer here wakes
the waiting call (or readies the pending handle) exactly as theirs does. Everything a model
sent (arguments, already redacted when the approval opened, tool names, reasons) goes
through the ``show`` filter: markup escaped, bidi and invisible characters shown as escapes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from negotiation.approvals import Approval, ApprovalError, ApprovalStatus
from proxy.approval import ApprovalDesk
from proxy.console.auth import ConsoleSession

__all__ = ["approval_routes"]

Handler = Callable[[Request, ConsoleSession], Awaitable[Response]]
Page = Callable[[Handler], Callable[[Request], Awaitable[Response]]]
Render = Callable[..., Response]
_MAX_REVIEWER = 200
_MAX_COMMENT = 2000
_HISTORY = 200


def approval_routes(
    desk: ApprovalDesk, page: Page, render: Render, headers: dict[str, str], *, clock: Callable[[], float] = time.time
) -> list[Route]:
    def row(approval: Approval) -> dict[str, Any]:
        now = clock()
        return {
            "a": approval,
            "age_s": max(0, round(now - approval.created_at)),
            "expires_in_s": round(approval.expires_at - now) if approval.live else None,
            "operator_may_answer": approval.status is ApprovalStatus.PENDING and approval.approver != "user",
        }

    async def listing(request: Request, session: ConsoleSession) -> Response:
        status = request.query_params.get("status") or ""
        model = request.query_params.get("model") or ""
        tool = request.query_params.get("tool") or ""
        statuses = [s.value for s in ApprovalStatus]
        if status and status not in statuses:
            return render("refused.html", 400, message=f"unknown status `{status[:40]}`", session=None)
        everything = await desk.list()
        chosen = [a for a in everything if (not model or a.binding.model == model)
                  and (not tool or tool in f"{a.binding.upstream}.{a.binding.tool}")]
        pending = [row(a) for a in chosen if a.status is ApprovalStatus.PENDING]
        history = sorted((a for a in chosen if a.status is not ApprovalStatus.PENDING
                          and (not status or a.status.value == status)),
                         key=lambda a: a.answered_at or a.created_at, reverse=True)
        return render("approvals.html", session=session, pending=pending, history=[row(a) for a in history[:_HISTORY]],
                      statuses=statuses, status=status, model=model, tool=tool)

    async def detail(request: Request, session: ConsoleSession, *, error: str | None = None,
                     status_code: int = 200) -> Response:
        try:
            approval = await desk.get(request.path_params["approval_id"])
        except ApprovalError as exc:
            return render("refused.html", 404, message=exc.message, session=None)
        done = request.query_params.get("done", "")
        # Only an answer that really happened is announced: a crafted link cannot claim one.
        answered = {"approved": ("approved", "consumed"), "denied": ("denied",)}.get(done, ())
        shown_done = done if approval.status.value in answered else None
        return render("approval.html", status_code, session=session, r=row(approval), error=error, done=shown_done)

    def answer(approve: bool) -> Handler:
        async def action(request: Request, session: ConsoleSession) -> Response:
            form: dict[str, str] = request.state.form
            reviewer, comment = form.get("reviewer", "").strip(), form.get("comment", "")
            if not reviewer or len(reviewer) > _MAX_REVIEWER:
                why = f"bad_request: a reviewer name of 1 to {_MAX_REVIEWER} characters is required"
                return await detail(request, session, status_code=400, error=why)
            if len(comment) > _MAX_COMMENT:
                return await detail(request, session, status_code=400,
                                    error=f"bad_request: a comment of at most {_MAX_COMMENT} characters")
            approval_id = request.path_params["approval_id"]
            try:
                await desk.operator_answer(approval_id, approve=approve, by=reviewer, how="console", comment=comment)
            except ApprovalError as exc:
                status = 404 if exc.code == "not_found" else 409
                return await detail(request, session, status_code=status, error=f"{exc.code}: {exc.message}")
            done = "approved" if approve else "denied"
            return RedirectResponse(f"/console/approvals/{quote(approval_id)}?done={done}", status_code=303,
                                    headers=headers)

        return action

    return [
        Route("/approvals", page(listing), methods=["GET"]),
        Route("/approvals/{approval_id}", page(detail), methods=["GET"]),
        Route("/approvals/{approval_id}/approve", page(answer(True)), methods=["POST"]),
        Route("/approvals/{approval_id}/deny", page(answer(False)), methods=["POST"]),
    ]
