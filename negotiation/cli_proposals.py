"""``securegateway proposals …``: the reviewers' command line.

``register(subparsers)`` adds the commands to the gateway's CLI; each sets
``func=handler`` where ``handler(args, service) -> int`` is an exit code (0 done, 1 refused
with a coded error on stderr). The CLI opens the same proposal store and policy repository
files as the running gateway; the gateway's file watcher hot-reloads what it commits.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from negotiation.errors import NegotiationError
from negotiation.proposal import Proposal, ProposalStatus
from negotiation.review import NegotiationService
from negotiation.text_safety import escape_invisible, reviewer_view

__all__ = ["register"]

Handler = Callable[[argparse.Namespace, "NegotiationService"], int]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    add_common: Callable[[argparse.ArgumentParser], None] | None = None,
    wrap: Callable[[Handler], Callable[[argparse.Namespace], int]] | None = None,
    impact: tuple[Callable[[argparse.ArgumentParser], None], Handler] | None = None,
) -> argparse.ArgumentParser:
    """Add ``proposals list|show|approve|reject`` to a CLI's sub-commands.

    Each leaf's ``func`` is ``handler(args, service) -> int``; a caller that builds the
    service itself passes ``wrap`` (handler -> ``func(args)``), and ``add_common`` to add
    its own options (such as ``--config``) to every leaf. ``impact`` is ``(add_options,
    handler)`` for ``proposals impact ID``, which needs the audit log the caller knows.
    """
    parser = subparsers.add_parser("proposals", help="review policy proposals made by models")
    commands = parser.add_subparsers(dest="proposals_command", metavar="COMMAND", required=True)

    def leaf(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_text)
        if add_common is not None:
            add_common(p)
        p.set_defaults(func=wrap(handler) if wrap is not None else handler)
        return p

    listing = leaf("list", "list proposals, oldest first", _list)
    listing.add_argument("--status", choices=[s.value for s in ProposalStatus], help="only this status")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = leaf("show", "show one proposal: snippet, verdicts, diff against the live policy", _show)
    show.add_argument("id")

    for name, func in (("approve", _approve), ("reject", _reject)):
        decide = leaf(name, f"{name} a pending proposal", func)
        decide.add_argument("id")
        decide.add_argument("--reviewer", required=True, help="who is deciding (recorded and signed)")
        decide.add_argument("--comment", default="", help="why, for the proposer and the audit log")
    if impact is not None:
        add_options, handler = impact
        add_options(leaf("impact", "replay recent audited calls under the policy the proposal would make", handler))
    return parser


def _list(args: argparse.Namespace, service: NegotiationService) -> int:
    service.expire_pending()
    proposals = service.list(args.status)
    if args.json:
        print(json.dumps([reviewer_view(p.to_dict()) for p in proposals], indent=2))
        return 0
    if not proposals:
        print("no proposals")
        return 0
    for p in proposals:
        failing = ",".join(v.code for v in p.verdicts if not v.ok) or "-"
        line = f"{p.id}  {p.status.value:<8}  {p.model_id}  {p.created_at.isoformat(timespec='seconds')}  {failing}"
        print(escape_invisible(line))
    return 0


def _show(args: argparse.Namespace, service: NegotiationService) -> int:
    return _guarded(lambda: _print_detail(service, service.get(args.id)))


def _approve(args: argparse.Namespace, service: NegotiationService) -> int:
    def run() -> None:
        proposal = service.approve(args.id, reviewer=args.reviewer, comment=args.comment)
        version = proposal.contract.get("version") if proposal.contract else None
        print(f"{proposal.id} merged as policy version {version}")

    return _guarded(run)


def _reject(args: argparse.Namespace, service: NegotiationService) -> int:
    def run() -> None:
        proposal = service.reject(args.id, reviewer=args.reviewer, comment=args.comment)
        print(f"{proposal.id} rejected")

    return _guarded(run)


def _print_detail(service: NegotiationService, proposal: Proposal) -> None:
    detail: dict[str, Any] = proposal.to_dict()
    if proposal.status is ProposalStatus.PENDING:
        try:
            detail["current_diff"] = [d.to_dict() for d in service.current_diff(proposal.id)]
        except NegotiationError as exc:
            detail["current_diff_error"] = {"code": exc.code, "error": exc.message}
    # Every string escaped: bidi overrides and invisible characters show as <U+XXXX>.
    print(json.dumps(reviewer_view(detail), indent=2))


def _guarded(run: Callable[[], None]) -> int:
    try:
        run()
    except NegotiationError as exc:
        sys.stderr.write(f"error [{exc.code}]: {exc.message}\n")
        return 1
    return 0
