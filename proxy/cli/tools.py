"""``securegateway tools list|show|release``: the operator's view of quarantined and changed tools.

Works on the tool store a gateway.toml names (``[detectors] store``, default
``<state_dir>/tools.db``), with or without a gateway running: a running gateway notices a
release at its next check, audits it and tells its clients ``list_changed``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from proxy.config import GatewayConfig
from proxy.tools.guard import GuardError, ToolGuard
from proxy.tools.store import STATUSES

LoadConfig = Callable[[argparse.Namespace], GatewayConfig]


def register(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None], load: LoadConfig) -> None:
    tools = sub.add_parser("tools", help="list, inspect and release quarantined or changed tools")
    tools_sub = tools.add_subparsers(dest="tools_command", required=True)
    listing = tools_sub.add_parser("list", help="every tool, prompt and template the gateway has reviewed")
    config_arg(listing)
    listing.add_argument("--status", choices=STATUSES, default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=lambda a: _list(a, load))
    show = tools_sub.add_parser("show", help="one record: findings, diff, definition")
    config_arg(show)
    show.add_argument("name")
    show.set_defaults(func=lambda a: _show(a, load))
    release = tools_sub.add_parser("release", help="trust the definition now listed (pin it, accept its findings)")
    config_arg(release)
    release.add_argument("name")
    release.add_argument("--by", default="operator", help="who releases it (recorded in the audit log)")
    release.set_defaults(func=lambda a: _release(a, load))


def _guard(args: argparse.Namespace, load: LoadConfig) -> ToolGuard:
    from proxy.bootstrap import open_guard

    return open_guard(load(args))


def _list(args: argparse.Namespace, load: LoadConfig) -> int:
    records = [r for r in _guard(args, load).records() if args.status is None or r.status == args.status]
    if args.json:
        print(json.dumps([{k: v for k, v in r.to_dict().items() if k != "definition"} for r in records], indent=2))
        return 0
    if not records:
        print("no tools reviewed yet")
    for r in records:
        kinds = ", ".join(sorted({f.get("kind", "?") for f in r.findings})) or "-"
        print(f"{r.status:<12} {r.name:<40} {r.kind:<18} findings: {kinds}")
    return 0


def _show(args: argparse.Namespace, load: LoadConfig) -> int:
    try:
        print(json.dumps(_guard(args, load).get(args.name).to_dict(), indent=2, ensure_ascii=False))
    except GuardError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _release(args: argparse.Namespace, load: LoadConfig) -> int:
    try:
        record = _guard(args, load).release(args.name, by=f"cli: {args.by}")
    except GuardError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"released `{record.name}` (pinned {record.digest})")
    return 0
