"""``securegateway approvals list|approve|deny``: answer held calls through the running gateway.

Answers go through the running gateway, which holds the waiting calls, so these commands talk
to its admin API (``[admin] listen``, key from ``[admin] key_env``) instead of writing the
approval store (``<state_dir>/approvals.db``) themselves.
Exit codes: 0 ok, 1 the gateway refused (unknown id, already answered), 2 bad usage or no
admin API to talk to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from proxy.config import GatewayConfig
from proxy.errors import ConfigError

__all__ = ["register"]

ConfigArg = Callable[[argparse.ArgumentParser], None]
LoadConfig = Callable[[argparse.Namespace], GatewayConfig]
_TIMEOUT = 30.0


def register(sub: Any, config_arg: ConfigArg, load: LoadConfig) -> None:
    approvals = sub.add_parser("approvals", help="list and answer calls held for approval (ask_tools)")
    verbs = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = verbs.add_parser("list", help="calls waiting for a yes (and recent answers)")
    config_arg(listing)
    listing.add_argument(
        "--status", default="pending", help="pending (default), approved, denied, expired, consumed, abandoned, all"
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=lambda a: _list(a, load))
    for verb in ("approve", "deny"):
        answer = verbs.add_parser(verb, help=f"{verb} one held call")
        config_arg(answer)
        answer.add_argument("approval_id")
        answer.add_argument("--reviewer", required=True, help="who answers (recorded in the audit log)")
        answer.add_argument("--comment", default="")
        answer.set_defaults(func=lambda a, verb=verb: _answer(a, load, verb))


def _list(args: argparse.Namespace, load: LoadConfig) -> int:
    query = "" if args.status == "all" else f"?status={args.status}"
    status, body = _request(load(args), "GET", f"/api/approvals{query}")
    if status != 200:
        return _refused(body)
    items = body.get("approvals", [])
    if args.json:
        print(json.dumps(items, indent=2, sort_keys=True))
        return 0
    if not items:
        print("no approvals")
    for item in items:
        print(f"{item['id']}  {item['status']:<9}  {item['model']} -> {item['tool']}  approver={item['approver']}"
              f"  mode={item.get('mode', 'wait')}")
        print(f"    arguments: {json.dumps(item['arguments'], sort_keys=True)[:300]}")
        print(f"    reason: {item['reason']}")
    return 0


def _answer(args: argparse.Namespace, load: LoadConfig, verb: str) -> int:
    payload = {"reviewer": args.reviewer, "comment": args.comment}
    status, body = _request(load(args), "POST", f"/api/approvals/{args.approval_id}/{verb}", payload)
    if status != 200:
        return _refused(body)
    print(f"{body['id']}: {body['status']} by {body['answered_by']}")
    return 0


def _request(config: GatewayConfig, method: str, path: str, payload: Any = None) -> tuple[int, dict[str, Any]]:
    listen = config.admin.listen
    if listen is None:
        raise ConfigError(f"{config.path.name}: admin.listen: approvals are answered through the admin API; set it")
    key = os.environ.get(config.admin.key_env, "")
    if not key:
        raise ConfigError(f"set the admin key in environment variable `{config.admin.key_env}`")
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(
        listen.url.rstrip("/") + path, data=data, method=method,
        headers={"X-Admin-Key": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # the configured admin URL
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": f"HTTP {exc.code}", "code": "http_error"}
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(f"cannot reach the admin API at `{listen.url}`: {getattr(exc, 'reason', exc)}") from None


def _refused(body: dict[str, Any]) -> int:
    print(f"securegateway: {body.get('error', 'refused')} ({body.get('code', '?')})", file=sys.stderr)
    return 1
