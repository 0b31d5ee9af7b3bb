"""The HTTP admin API: propose on a model's behalf, review proposals, read the live policy.

Every request must name an allowed ``Host`` (and, when it sends one, an allowed ``Origin``)
before anything else is looked at: a browser page on another site that rebinds its DNS name
to 127.0.0.1 must not reach the API (421 ``invalid_host``, 403 ``invalid_origin``, the same
rule as the MCP listener; proxy/admin/guard.py, which audits refusals as ``admin.refused``).
Every route needs ``X-Admin-Key`` (compared in constant time). Bodies are JSON, capped in
size before they are read whole. The negotiation service is synchronous and takes a lock,
so each call runs in a worker thread. Errors are JSON with a stable ``code``::

    401 unauthorized    400 bad_request / invalid_yaml    404 not_found / unknown_key
    409 invalid_state / merge_conflict / policy_conflict    413 too_large
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from enum import Enum
from typing import Any, TypeVar

import anyio.to_thread
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from negotiation import (
    LivePolicy,
    NegotiationError,
    NegotiationService,
    Proposal,
    ProposalStatus,
)
from negotiation.approvals import ApprovalStatus
from negotiation.text_safety import reviewer_view
from policy import dump_policy_yaml
from proxy.admin.guard import AuditFn, HostOriginGuard
from proxy.approval import ApprovalDesk
from proxy.dry_run import DryRunError
from proxy.operator import OperatorView
from proxy.tools.guard import GuardError, ToolGuard
from proxy.tools.store import STATUSES, ToolRecord

__all__ = ["ADMIN_KEY_HEADER", "LOOPBACK_HOST_PATTERNS", "admin_allowed_hosts", "build_admin_app"]

ADMIN_KEY_HEADER = "X-Admin-Key"
LOOPBACK_HOST_PATTERNS = ("127.0.0.1:*", "localhost:*", "[::1]:*")

log = structlog.get_logger("securegateway.admin")


def admin_allowed_hosts(host: str, port: int, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host values the admin API answers on ``host:port``: itself, loopback names, ``extra``."""
    own = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    return (f"{own}:{port}", *LOOPBACK_HOST_PATTERNS, *extra)


_STATUS_FOR_CODE = {
    "bad_request": 400,
    "not_found": 404,
    "invalid_state": 409,
    "merge_conflict": 409,
    "policy_conflict": 409,
    "expired": 409,
    "too_many_pending": 409,
}

Endpoint = Callable[[Request], Awaitable[JSONResponse]]


class _HttpError(Exception):
    def __init__(self, status: int, code: str, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, "code": code, **extra}


def _error(status: int, code: str, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "code": code, **extra}, status_code=status)


def build_admin_app(
    service: NegotiationService,
    admin_key: str,
    *,
    live: LivePolicy,
    max_body_bytes: int | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_HOST_PATTERNS,
    allowed_origins: Sequence[str] = (),
    approvals: ApprovalDesk | None = None,
    operator: OperatorView | None = None,
    guard: ToolGuard | None = None,
    audit: AuditFn | None = None,
) -> Starlette:
    """The admin API as a Starlette app. ``max_body_bytes`` defaults to four times the
    guardrails' snippet cap (JSON escaping can double a snippet) plus 16 KiB.

    ``allowed_hosts`` are ``Host`` values (``name:port``, ``name:*`` for any port; see
    :func:`admin_allowed_hosts`); an ``Origin`` must be ``http://`` one of them or in
    ``allowed_origins``. ``operator`` enables the dry-run, impact, metrics and console routes.
    ``audit`` records Host/Origin refusals (``admin.refused``, rate-limited)."""
    if not admin_key:
        raise ValueError("the admin API needs a non-empty admin key")
    expected = admin_key.encode("utf-8")
    limit = max_body_bytes if max_body_bytes is not None else 4 * service.config.max_snippet_bytes + 16384

    def guarded(handler: Endpoint) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> JSONResponse:
            given = request.headers.get(ADMIN_KEY_HEADER, "").encode("utf-8")
            if not hmac.compare_digest(given, expected):
                return _error(401, "unauthorized", "unauthorized")
            try:
                return await handler(request)
            except _HttpError as exc:
                return JSONResponse(exc.body, status_code=exc.status)
            except NegotiationError as exc:
                return _error(_STATUS_FOR_CODE.get(exc.code, 500), exc.code, exc.message)

        return endpoint

    async def call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))

    async def propose(request: Request) -> JSONResponse:
        body = await _json_body(request, limit)
        model_id = _string(body, "model_id")
        if await call(service.identity, model_id) is None:
            raise _HttpError(404, "not_found", f"unknown model `{model_id}`")
        if "yaml" not in body or "justification" not in body:
            raise _HttpError(400, "bad_request", "`yaml` and `justification` are required")
        outcome = await call(service.propose, model_id, body["yaml"], body["justification"])
        result = outcome.to_dict()
        located = [v.message for v in outcome.verdicts if v.code == "invalid_policy" and not v.ok]
        if outcome.status == "rejected" and located:
            body = {"error": "Invalid YAML", "code": "invalid_yaml", "details": located, **result}
            return JSONResponse(body, status_code=400)
        if outcome.status == "pending":
            result["review_required"] = True
        elif outcome.status == "rejected":
            result["reason"] = "; ".join(outcome.reasons)
        return JSONResponse(result)

    async def list_proposals(request: Request) -> JSONResponse:
        status = _status_param(request, ProposalStatus)
        await call(service.expire_pending)
        proposals = await call(service.list, status)
        return JSONResponse({"proposals": [reviewer_view(p.to_dict()) for p in proposals]})

    async def show_proposal(request: Request) -> JSONResponse:
        proposal_id = request.path_params["proposal_id"]
        await call(service.expire_pending)
        proposal: Proposal = await call(service.get, proposal_id)
        detail = _detail(proposal)
        if proposal.status is ProposalStatus.PENDING:
            try:
                current = await call(service.current_diff, proposal_id)
                detail["current_diff"] = reviewer_view([d.to_dict() for d in current])
            except NegotiationError as exc:
                detail["current_diff_error"] = {"code": exc.code, "error": exc.message}
        return JSONResponse(detail)

    def decide(method: Callable[..., Proposal]) -> Endpoint:
        async def endpoint(request: Request) -> JSONResponse:
            body = await _json_body(request, limit)
            reviewer = _string(body, "reviewer")
            comment = body.get("comment", "")
            if not isinstance(comment, str):
                raise _HttpError(400, "bad_request", "`comment` must be a string")
            proposal_id = request.path_params["proposal_id"]
            proposal = await call(method, proposal_id, reviewer=reviewer, comment=comment)
            return JSONResponse(_detail(proposal))

        return endpoint

    async def show_policy(request: Request) -> JSONResponse:
        active = live.current
        return JSONResponse(
            {
                "version": active.version,
                "digest": active.policy.digest,
                "policy": active.policy.canonical(),
                "yaml": dump_policy_yaml(active.policy),
                "contract": active.contract.to_dict() if active.contract is not None else None,
            }
        )

    # ---- operator routes: dry-run decisions and impact replay (proxy/operator.py) ----

    def operating() -> OperatorView:
        if operator is None:
            raise _HttpError(404, "not_found", "this admin API has no operator view")
        return operator

    async def evaluate_call(request: Request) -> JSONResponse:
        view = operating()
        body = await _json_body(request, limit)
        try:
            dry = view.request(body)
        except DryRunError as exc:
            raise _HttpError(404 if exc.code == "unknown_key" else 400, exc.code, str(exc)) from None
        return JSONResponse(await call(view.decide, dry))

    async def proposal_impact(request: Request) -> JSONResponse:
        view = operating()
        limit, days = request.query_params.get("limit", "10000"), request.query_params.get("days", "7")
        try:
            calls, window = int(limit), timedelta(days=float(days))
        except (ValueError, OverflowError):
            raise _HttpError(400, "bad_request", "`limit` must be an integer and `days` a number") from None
        if not 0 < calls <= 1_000_000 or not timedelta(0) < window <= timedelta(days=3650):
            raise _HttpError(400, "bad_request", "`limit` must be 1..1000000 and `days` within (0, 3650]")
        proposal: Proposal = await call(service.get, request.path_params["proposal_id"])
        impact = await call(view.impact, proposal, limit=calls, window=window)
        return JSONResponse({"proposal_id": proposal.id, "status": proposal.status.value, **impact.to_dict()})

    async def metrics(request: Request) -> Response:
        # Prometheus sends the key as a bearer token (`authorization: {credentials: ...}`).
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").encode("utf-8")
        given = request.headers.get(ADMIN_KEY_HEADER, "").encode("utf-8")
        if not (hmac.compare_digest(given, expected) or hmac.compare_digest(bearer, expected)):
            return _error(401, "unauthorized", "unauthorized")
        if operator is None or operator.metrics is None:
            return _error(404, "not_found", "metrics are not enabled on this admin API")
        from proxy.metrics import CONTENT_TYPE_LATEST

        body = await call(operator.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    consoles = []
    if operator is not None:
        from proxy.console import build_console

        consoles.append(Mount("/console", app=build_console(service, admin_key, operator, guard=guard,
                                                            approvals=approvals)))
    # ---- tools: quarantine, pins, releases (proxy/tools/guard.py) ----------------------------------

    def tool_guard() -> ToolGuard:
        if guard is None:
            raise _HttpError(404, "not_found", "tool scanning and pinning are off on this gateway")
        return guard

    async def list_tools(request: Request) -> JSONResponse:
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise _HttpError(400, "bad_request", f"unknown status `{status}`; one of: {', '.join(STATUSES)}")
        records = tool_guard().records()
        return JSONResponse({"tools": [_tool_summary(r) for r in records if status is None or r.status == status]})

    async def show_tool(request: Request) -> JSONResponse:
        try:
            return JSONResponse(tool_guard().get(request.path_params["name"]).to_dict())
        except GuardError as exc:
            raise _HttpError(404, exc.code, exc.message) from None

    async def release_tool(request: Request) -> JSONResponse:
        body = await _json_body(request, limit) if request.headers.get("content-length") not in (None, "0") else {}
        by = body.get("by", "operator")
        if not isinstance(by, str) or not by.strip():
            raise _HttpError(400, "bad_request", "`by` must be a non-empty string")
        try:
            record = tool_guard().release(request.path_params["name"], by=f"admin api: {by}")
        except GuardError as exc:
            raise _HttpError(404 if exc.code == "not_found" else 409, exc.code, exc.message) from None
        return JSONResponse(record.to_dict())

    origins = [f"http://{host}" for host in allowed_hosts] + list(allowed_origins)
    approval_routes = _approval_routes(approvals, guarded, limit) if approvals is not None else []
    return Starlette(
        middleware=[Middleware(HostOriginGuard, hosts=tuple(allowed_hosts), origins=tuple(origins), audit=audit)],
        routes=[
            *approval_routes,
            *consoles,
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/evaluate", guarded(evaluate_call), methods=["POST"]),
            Route("/api/proposals/{proposal_id}/impact", guarded(proposal_impact), methods=["GET"]),
            Route("/api/propose_policy", guarded(propose), methods=["POST"]),
            Route("/api/proposals", guarded(list_proposals), methods=["GET"]),
            Route("/api/proposals/{proposal_id}", guarded(show_proposal), methods=["GET"]),
            Route("/api/proposals/{proposal_id}/approve", guarded(decide(service.approve)), methods=["POST"]),
            Route("/api/proposals/{proposal_id}/reject", guarded(decide(service.reject)), methods=["POST"]),
            Route("/api/policy", guarded(show_policy), methods=["GET"]),
            Route("/api/tools", guarded(list_tools), methods=["GET"]),
            Route("/api/tools/{name:path}/release", guarded(release_tool), methods=["POST"]),
            Route("/api/tools/{name:path}", guarded(show_tool), methods=["GET"]),
        ]
    )


_S = TypeVar("_S", bound=Enum)


def _status_param(request: Request, kind: type[_S]) -> _S | None:
    """The ``?status=`` filter as a member of ``kind``; an unknown value is a 400 naming the choices."""
    raw = request.query_params.get("status")
    try:
        return kind(raw) if raw else None
    except ValueError:
        statuses = ", ".join(str(member.value) for member in kind)
        raise _HttpError(400, "bad_request", f"unknown status `{raw}`; one of: {statuses}") from None


def _approval_routes(desk: ApprovalDesk, guarded: Callable[[Endpoint], Endpoint], limit: int) -> list[Route]:
    """``/api/approvals``: calls held by ``ask_tools`` rules, and the operator's yes or no."""

    async def list_approvals(request: Request) -> JSONResponse:
        status = _status_param(request, ApprovalStatus)
        return JSONResponse({"approvals": [reviewer_view(a.to_dict()) for a in await desk.list(status)]})

    async def show_approval(request: Request) -> JSONResponse:
        return JSONResponse(reviewer_view((await desk.get(request.path_params["approval_id"])).to_dict()))

    def answer(approve: bool) -> Endpoint:
        async def endpoint(request: Request) -> JSONResponse:
            body = await _json_body(request, limit)
            reviewer = _string(body, "reviewer")
            comment = body.get("comment", "")
            if not isinstance(comment, str):
                raise _HttpError(400, "bad_request", "`comment` must be a string")
            approval = await desk.operator_answer(
                request.path_params["approval_id"], approve=approve, by=reviewer, how="admin_api", comment=comment
            )
            return JSONResponse(reviewer_view(approval.to_dict()))

        return endpoint

    return [
        Route("/api/approvals", guarded(list_approvals), methods=["GET"]),
        Route("/api/approvals/{approval_id}", guarded(show_approval), methods=["GET"]),
        Route("/api/approvals/{approval_id}/approve", guarded(answer(True)), methods=["POST"]),
        Route("/api/approvals/{approval_id}/deny", guarded(answer(False)), methods=["POST"]),
    ]


def _tool_summary(record: ToolRecord) -> dict[str, Any]:
    summary = record.to_dict()
    del summary["definition"]
    return summary


def _detail(proposal: Proposal) -> dict[str, Any]:
    """A proposal as reviewers read it; ``snippet`` and ``proposer`` name what the YAML and
    the model id are."""
    # Every string escaped: bidi overrides and invisible characters show as <U+XXXX>.
    data = {**proposal.to_dict(), "snippet": proposal.yaml, "proposer": proposal.model_id}
    view: dict[str, Any] = reviewer_view(data)
    return view


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _HttpError(413, "too_large", f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, "too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise _HttpError(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _HttpError(400, "bad_request", "the body must be a JSON object")
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _HttpError(400, "bad_request", f"`{key}` must be a non-empty string")
    return value
