"""The console's pages and actions, each a thin view over the negotiation service and the
operator view (the same data the JSON API serves).

Every response carries a strict Content Security Policy (no script at all, styles only from
this listener), ``X-Frame-Options: DENY`` and ``Cache-Control: no-store``. Forms post
``application/x-www-form-urlencoded`` bodies, capped at ``_MAX_FORM`` bytes.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio.to_thread
import jinja2
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from negotiation import NegotiationError, NegotiationService, Proposal, ProposalStatus
from negotiation.impact import recent_decisions
from policy import CallRequest, PolicyError, dump_policy_yaml, evaluate, scan_value
from policy.audit.verify import find_events, verify_log
from proxy.approval import ApprovalDesk
from proxy.console.approvals import approval_routes
from proxy.console.auth import CSRF_FIELD, PRE_COOKIE, SESSION_COOKIE, ConsoleSession, Sessions, host_problem, same
from proxy.console.text import show, show_json
from proxy.operator import OperatorView
from proxy.tools.guard import GuardError, ToolGuard

__all__ = ["CSP", "build_console"]

log = structlog.get_logger("securegateway.console")

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_MAX_FORM = 64 * 1024
_PAGE = 200  # decisions shown per search
_MAX_REVIEWER = 200
_TEMPLATES = Path(__file__).parent / "templates"

Handler = Callable[[Request, ConsoleSession], Awaitable[Response]]


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def build_console(
    service: NegotiationService,
    admin_key: str,
    operator: OperatorView,
    *,
    sessions: Sessions | None = None,
    guard: ToolGuard | None = None,
    approvals: ApprovalDesk | None = None,
) -> Starlette:
    """The console app; ``guard`` (None when tool scanning and pinning are off) feeds the
    Tools page's statuses and its Release action; ``approvals`` the Approvals page."""
    expected = admin_key.encode("utf-8")
    store = sessions or Sessions()
    # An audit line missing a field renders empty rather than failing the page.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, undefined=jinja2.ChainableUndefined,
    )
    env.filters["show"] = show
    env.filters["json"] = show_json
    env.filters["when"] = _when

    def render(template: str, code: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=code, headers=_HEADERS)

    def refused(status: int, message: str) -> HTMLResponse:
        return render("refused.html", status, message=message, session=None)

    async def call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            problem = host_problem(request)
            if problem is not None:
                return refused(403, problem)
            session = store.get(request.cookies.get(SESSION_COOKIE))
            if session is None:
                if request.method != "GET":
                    return refused(403, "sign in first")
                return RedirectResponse("/console/signin", status_code=303, headers=_HEADERS)
            try:
                if request.method == "POST":
                    form = await _form(request)
                    if not same(form.get(CSRF_FIELD), session.csrf):
                        return refused(403, "missing or wrong CSRF token: reload the page and try again")
                    request.state.form = form
                return await handler(request, session)
            except _Refused as exc:
                return refused(exc.status, exc.message)
            except Exception:  # page boundary: a broken page is a logged 500 with the same headers
                log.exception("console page failed", path=request.url.path)
                return refused(500, "the console could not render this page; see the gateway log")

        return endpoint

    # ---- sign-in -------------------------------------------------------------------------------

    async def signin(request: Request) -> Response:
        problem = host_problem(request)
        if problem is not None:
            return refused(403, problem)
        if request.method == "GET":
            token = _token()
            response = render("signin.html", session=None, csrf=token, error=None)
            response.set_cookie(PRE_COOKIE, token, max_age=600, path="/console/signin", httponly=True,
                                samesite="strict", secure=request.url.scheme == "https")
            return response
        try:
            form = await _form(request)
        except _Refused as exc:
            return refused(exc.status, exc.message)
        if not same(form.get(CSRF_FIELD), request.cookies.get(PRE_COOKIE)):
            return refused(403, "missing or wrong CSRF token: reload the sign-in page")
        if not same(form.get("admin_key"), expected.decode("utf-8")):
            token = _token()
            response = render("signin.html", 401, session=None, csrf=token, error="wrong admin key")
            response.set_cookie(PRE_COOKIE, token, max_age=600, path="/console/signin", httponly=True,
                                samesite="strict", secure=request.url.scheme == "https")
            return response
        session = store.create()
        redirect = RedirectResponse("/console/proposals", status_code=303, headers=_HEADERS)
        redirect.set_cookie(SESSION_COOKIE, session.token, path="/console", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        redirect.delete_cookie(PRE_COOKIE, path="/console/signin")
        return redirect

    async def signout(request: Request, session: ConsoleSession) -> Response:
        store.end(session.token)
        response = RedirectResponse("/console/signin", status_code=303, headers=_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/console")
        return response

    async def home(request: Request, session: ConsoleSession) -> Response:
        return RedirectResponse("/console/proposals", status_code=303, headers=_HEADERS)

    # ---- proposals -----------------------------------------------------------------------------

    async def proposals(request: Request, session: ConsoleSession) -> Response:
        status = request.query_params.get("status") or None
        model = request.query_params.get("model") or None
        if status is not None and status not in {s.value for s in ProposalStatus}:
            raise _Refused(400, f"unknown status `{status}`")
        await call(service.expire_pending)
        listed: tuple[Proposal, ...] = await call(service.list, status)
        if model:
            listed = tuple(p for p in listed if p.model_id == model)
        pending = [p for p in listed if p.status is ProposalStatus.PENDING]
        history = sorted((p for p in listed if p.status is not ProposalStatus.PENDING),
                         key=lambda p: p.created_at, reverse=True)
        return render("proposals.html", session=session, pending=pending, history=history,
                      statuses=[s.value for s in ProposalStatus], status=status or "", model=model or "")

    async def proposal(request: Request, session: ConsoleSession, *, error: str | None = None,
                       status_code: int = 200) -> Response:
        proposal_id = request.path_params["proposal_id"]
        try:
            found: Proposal = await call(service.get, proposal_id)
        except NegotiationError as exc:
            raise _Refused(404, exc.message) from None
        diff = [d.to_dict() for d in found.diff]
        diff_error = impact = impact_error = None
        if found.status is ProposalStatus.PENDING:
            try:
                diff = [d.to_dict() for d in await call(service.current_diff, found.id)]
            except NegotiationError as exc:
                diff_error = exc.message
            try:
                impact = (await call(operator.impact, found)).to_dict()
            except NegotiationError as exc:
                impact_error = exc.message
        findings = [f.to_dict() for f in scan_value(found.justification, "justification")]
        return render("proposal.html", status_code, session=session, p=found, diff=diff, diff_error=diff_error,
                      impact=impact, impact_error=impact_error, findings=findings, error=error,
                      done=request.query_params.get("done"))

    def decide(method_name: str) -> Handler:
        async def action(request: Request, session: ConsoleSession) -> Response:
            form: dict[str, str] = request.state.form
            proposal_id = request.path_params["proposal_id"]
            method = getattr(service, method_name)
            try:
                await call(method, proposal_id, reviewer=form.get("reviewer", ""), comment=form.get("comment", ""))
            except NegotiationError as exc:
                status = 404 if exc.code == "not_found" else 409 if exc.code != "bad_request" else 400
                return await proposal(request, session, error=f"{exc.code}: {exc.message}", status_code=status)
            done = "approved" if method_name == "approve" else "rejected"
            return RedirectResponse(f"/console/proposals/{proposal_id}?done={done}", status_code=303,
                                    headers=_HEADERS)

        return action

    # ---- decisions -----------------------------------------------------------------------------

    async def decisions(request: Request, session: ConsoleSession) -> Response:
        q = {k: request.query_params.get(k, "").strip() for k in ("model", "tool", "outcome", "reason", "since",
                                                                   "until")}
        since = _moment(q["since"], "since")
        until = _moment(q["until"], "until")
        now = operator.clock()
        window = (now - since) if since is not None else timedelta(days=3650)
        events = await call(recent_decisions, operator.audit_path, now=now, limit=operator.impact_limit,
                            window=window)
        rows = []
        for event in reversed(events):
            decision = event.get("decision") or {}
            tool = f"{event.get('server')}.{event.get('tool')}" if event.get("server") else str(event.get("tool"))
            if q["model"] and event.get("model") != q["model"]:
                continue
            if q["tool"] and q["tool"] not in tool:
                continue
            if q["outcome"] and ("allow" if decision.get("allowed") else "deny") != q["outcome"]:
                continue
            if q["reason"] and decision.get("reason_code") != q["reason"]:
                continue
            if until is not None and str(event.get("ts", "")) > _ts(until):
                continue
            rows.append({"event": event, "decision": decision, "tool": tool})
            if len(rows) >= _PAGE:
                break
        return render("decisions.html", session=session, rows=rows, q=q, limit=_PAGE)

    async def decision(request: Request, session: ConsoleSession) -> Response:
        decision_id = request.path_params["decision_id"]
        found = [e for e in await call(find_events, operator.audit_path, decision_id=decision_id)
                 if e.get("type") == "decision"]
        if not found:
            raise _Refused(404, f"no decision `{decision_id}` in the audit log")
        event = found[0]
        again = None
        if event.get("server"):
            request_info = event.get("request") or {}
            again = evaluate(
                CallRequest(str(event.get("model")), str(event["server"]), str(event.get("tool")),
                            event.get("arguments") or {}, request_info.get("input_schema")),
                operator.live.current.policy, operator.keys(), now=operator.clock(),
            ).to_dict()
        related = [e for e in await call(find_events, operator.audit_path, decision_id=decision_id)
                   if e.get("type") != "decision"]
        return render("decision.html", session=session, event=event, d=event.get("decision") or {}, again=again,
                      related=related, live_version=operator.live.current.version)

    # ---- policy and tools ----------------------------------------------------------------------

    async def policy(request: Request, session: ConsoleSession) -> Response:
        active = operator.live.current
        repo = operator.repo
        contracts = await call(repo.contracts) if repo is not None else []
        chain = await call(repo.verify_chain) if repo is not None else None
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        diff_lines: list[str] | None = None
        if a and b and repo is not None:
            old, new = await call(repo.get_policy, a), await call(repo.get_policy, b)
            if old is None or new is None:
                raise _Refused(404, "no such policy version in the archive")
            diff_lines = list(difflib.unified_diff(
                dump_policy_yaml(old).splitlines(), dump_policy_yaml(new).splitlines(),
                fromfile=a[:19], tofile=b[:19], lineterm="",
            ))
        audit = None
        if request.query_params.get("verify") == "audit":
            audit = (await call(verify_log, operator.audit_path)).message
        tests, tests_error = None, None
        if request.query_params.get("verify") == "tests":
            try:
                tests = await call(operator.test_policy)
            except PolicyError as exc:
                tests_error = str(exc).splitlines()[0]
        return render(
            "policy.html", session=session, active=active, yaml=dump_policy_yaml(active.policy),
            contracts=list(reversed(contracts)), chain=chain, diff_lines=diff_lines, a=a, b=b, audit=audit,
            tests=tests, tests_error=tests_error,
        )

    async def tools(request: Request, session: ConsoleSession, *, error: str | None = None,
                    status_code: int = 200) -> Response:
        listed = operator.tools()
        by_upstream: dict[str, list[dict[str, Any]]] = {name: [] for name in operator.upstreams}
        for tool in listed:
            by_upstream.setdefault(tool["upstream"], []).append(tool)
        # The guard is read on the loop thread: a refresh may announce list_changed to clients,
        # which must start on the gateway's task group from this thread (as the admin API does).
        records = {record.name: record for record in guard.records()} if guard is not None else {}
        suspended = [record for record in records.values() if record.suspended]
        released = request.query_params.get("released", "")
        # Only a release that really happened is announced: a crafted link cannot claim one.
        done = released if released in records and not records[released].suspended else None
        return render("tools.html", status_code, session=session, by_upstream=by_upstream, records=records,
                      suspended=suspended, guarded=guard is not None, done=done, error=error)

    async def release_tool(request: Request, session: ConsoleSession) -> Response:
        form: dict[str, str] = request.state.form
        if guard is None:
            raise _Refused(404, "tool scanning and pinning are off on this gateway")
        name, reviewer = form.get("name", ""), form.get("reviewer", "").strip()
        if not reviewer or len(reviewer) > _MAX_REVIEWER:
            return await tools(request, session, status_code=400,
                               error=f"bad_request: a reviewer name of 1 to {_MAX_REVIEWER} characters is required")
        try:
            guard.release(name, by=f"console: {reviewer}")  # on the loop thread: it announces list_changed
        except GuardError as exc:
            status = 404 if exc.code == "not_found" else 409
            return await tools(request, session, error=f"{exc.code}: {exc.message}", status_code=status)
        log.info("tool released from the console", tool=name, reviewer=reviewer)
        return RedirectResponse(f"/console/tools?{query(released=name)}", status_code=303, headers=_HEADERS)

    async def stylesheet(request: Request) -> Response:
        return Response((_TEMPLATES / "console.css").read_bytes(), media_type="text/css", headers=_HEADERS)

    held = approval_routes(approvals, page, render, _HEADERS) if approvals is not None else []
    return Starlette(routes=[
        *held,
        Route("/", page(home), methods=["GET"]),
        Route("/console.css", stylesheet, methods=["GET"]),
        Route("/signin", signin, methods=["GET", "POST"]),
        Route("/signout", page(signout), methods=["POST"]),
        Route("/proposals", page(proposals), methods=["GET"]),
        Route("/proposals/{proposal_id}", page(proposal), methods=["GET"]),
        Route("/proposals/{proposal_id}/approve", page(decide("approve")), methods=["POST"]),
        Route("/proposals/{proposal_id}/reject", page(decide("reject")), methods=["POST"]),
        Route("/decisions", page(decisions), methods=["GET"]),
        Route("/decisions/{decision_id}", page(decision), methods=["GET"]),
        Route("/policy", page(policy), methods=["GET"]),
        Route("/tools", page(tools), methods=["GET"]),
        Route("/tools/release", page(release_tool), methods=["POST"]),
    ])


def _token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form, refusing anything else or more than ``_MAX_FORM`` bytes."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise _Refused(415, "forms must be application/x-www-form-urlencoded")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_FORM:
            raise _Refused(413, f"form over {_MAX_FORM} bytes")
        chunks.append(chunk)
    try:
        parsed = parse_qs(b"".join(chunks).decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "the form is not valid utf-8") from None
    return {key: values[0] for key, values in parsed.items() if values}


def _moment(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _Refused(400, f"`{name}` must be an ISO date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _when(epoch: Any) -> str:
    """An epoch time as ISO UTC to the second (empty for none)."""
    if not isinstance(epoch, int | float):
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def query(**params: str) -> str:
    return urlencode({k: v for k, v in params.items() if v})
