"""The HTTP admin API: propose on a model's behalf, review proposals, read the live policy.

Every route needs ``X-Admin-Key`` (compared in constant time). Bodies are JSON, capped in
size before they are read whole. The negotiation service is synchronous and takes a lock,
so each call runs in a worker thread. Errors are JSON with a stable ``code``::

    401 unauthorized    400 bad_request / invalid_yaml    404 not_found
    409 invalid_state / merge_conflict / policy_conflict    413 too_large
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from negotiation import (
    LivePolicy,
    NegotiationError,
    NegotiationService,
    Proposal,
    ProposalStatus,
)
from policy import dump_policy_yaml
from proxy.tool_guard import GuardError, ToolGuard
from proxy.tool_store import STATUSES, ToolRecord

__all__ = ["ADMIN_KEY_HEADER", "build_admin_app"]

ADMIN_KEY_HEADER = "X-Admin-Key"

_STATUS_FOR_CODE = {
    "bad_request": 400,
    "not_found": 404,
    "invalid_state": 409,
    "merge_conflict": 409,
    "policy_conflict": 409,
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
    guard: ToolGuard | None = None,
) -> Starlette:
    """The admin API as a Starlette app. ``max_body_bytes`` defaults to four times the
    guardrails' snippet cap (JSON escaping can double a snippet) plus 16 KiB."""
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
        raw = request.query_params.get("status")
        try:
            status = ProposalStatus(raw) if raw else None
        except ValueError:
            statuses = ", ".join(s.value for s in ProposalStatus)
            raise _HttpError(400, "bad_request", f"unknown status `{raw}`; one of: {statuses}") from None
        await call(service.expire_pending)
        proposals = await call(service.list, status)
        return JSONResponse({"proposals": [p.to_dict() for p in proposals]})

    async def show_proposal(request: Request) -> JSONResponse:
        proposal_id = request.path_params["proposal_id"]
        await call(service.expire_pending)
        proposal: Proposal = await call(service.get, proposal_id)
        detail = _detail(proposal)
        if proposal.status is ProposalStatus.PENDING:
            try:
                current = await call(service.current_diff, proposal_id)
                detail["current_diff"] = [d.to_dict() for d in current]
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

    # ---- tools: quarantine, pins, releases (proxy/tool_guard.py) ----------------------------------

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

    return Starlette(
        routes=[
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


def _tool_summary(record: ToolRecord) -> dict[str, Any]:
    summary = record.to_dict()
    del summary["definition"]
    return summary


def _detail(proposal: Proposal) -> dict[str, Any]:
    """A proposal as reviewers read it; ``snippet`` and ``proposer`` name what the YAML and
    the model id are."""
    return {**proposal.to_dict(), "snippet": proposal.yaml, "proposer": proposal.model_id}


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
