"""Operator and reviewer sub-commands: audit, explain, proposals, policy, keys.

These work on the files a gateway.toml names (audit log, policy repository,
proposal store), so they run with or without a gateway running. The audit log
has one writer at a time: while a gateway runs, review proposals through its
admin API (or stop it first); the CLI says so instead of corrupting the chain.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.config import GatewayConfig

ConfigArg = Callable[[argparse.ArgumentParser], None]
LoadConfig = Callable[[argparse.Namespace], GatewayConfig]


def register(sub: Any, config_arg: ConfigArg, load: LoadConfig) -> None:
    from negotiation import cli_policy, cli_proposals
    from proxy.cli import operator as cli_operator

    audit = sub.add_parser("audit", help="verify or read the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain; exit 1 and name the first bad event")
    config_arg(verify)
    verify.add_argument("file", nargs="?", type=Path, help="audit log (default: from gateway.toml)")
    verify.add_argument("--json", action="store_true")
    verify.add_argument(
        "--checkpoints", type=Path, default=None,
        help="checkpoint file carried off the log (default: [audit] checkpoint_file)",
    )
    verify.set_defaults(func=lambda a: _audit_verify(a, load))
    show = audit_sub.add_parser("show", help="print the audit events of one decision")
    config_arg(show)
    show.add_argument("decision_id")
    show.add_argument("--file", type=Path, default=None)
    show.set_defaults(func=lambda a: _audit_show(a, load))

    explain = sub.add_parser(
        "explain",
        help="re-evaluate a logged decision under the policy version it was made with, "
        "or dry-run a call: --model M --tool T --args JSON [--policy FILE]",
    )
    config_arg(explain)
    explain.add_argument("decision_id", nargs="?", default=None)
    explain.add_argument("--file", type=Path, default=None)
    cli_operator.add_dry_run_options(explain)
    explain.set_defaults(func=lambda a: _explain(a, load) if a.decision_id else cli_operator.explain_call(a, load))

    cli_proposals.register(
        sub, add_common=config_arg, wrap=lambda h: lambda a: _with_service(a, load, h),
        impact=(cli_operator.add_impact_options, lambda a, service: cli_operator.proposals_impact(a, service, load)),
    )

    def resolve(args: argparse.Namespace) -> Any:
        from proxy.bootstrap import storage_config

        return storage_config(load(args))

    cli_policy.register(sub, add_common=config_arg, resolve=resolve)
    cli_operator.add_policy_test(sub.choices["policy"], config_arg, load)
    cli_operator.add_init(sub)

    from proxy.cli import tools as cli_tools

    cli_tools.register(sub, config_arg, load)


def _audit_path(args: argparse.Namespace, load: LoadConfig, explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    config = load(args)
    assert config.policy.state_dir is not None
    return config.audit.file or config.policy.state_dir / "audit.jsonl"


def _audit_verify(args: argparse.Namespace, load: LoadConfig) -> int:
    from policy.audit.checkpoint import read_checkpoint_file
    from policy.audit.verify import verify_log
    from proxy.audit.writer import audit_keys

    verifier = None
    anchor_file = args.checkpoints
    if args.file is None or Path(args.config).is_file():  # the keys live in gateway.toml
        config = load(args)
        verifier = audit_keys(config)[1]
        anchor_file = anchor_file or config.audit.checkpoint_file
    checkpoints = None
    if anchor_file is not None:
        checkpoints, problems = read_checkpoint_file(anchor_file)
        if problems:
            print(f"securegateway: {problems[0]}", file=sys.stderr)
            return 1
    report = verify_log(_audit_path(args, load, args.file), verifier=verifier, checkpoints=checkpoints)
    if args.json:
        print(json.dumps(report.to_dict(), default=str, indent=2))
    else:
        print(report.message)
    return 0 if report.ok else 1


def _audit_show(args: argparse.Namespace, load: LoadConfig) -> int:
    from policy.audit.verify import find_events

    events = find_events(_audit_path(args, load, args.file), decision_id=args.decision_id)
    if not events:
        print(f"securegateway: no audit event for decision `{args.decision_id}`", file=sys.stderr)
        return 1
    for ev in events:
        print(json.dumps(ev, indent=2, ensure_ascii=False))
    return 0


def _explain(args: argparse.Namespace, load: LoadConfig) -> int:
    from negotiation.cli_policy import open_repository
    from policy import CallRequest, evaluate, load_model_keys
    from policy.audit.verify import find_events
    from proxy.bootstrap import storage_config

    config = load(args)
    events = [
        e for e in find_events(_audit_path(args, load, args.file), decision_id=args.decision_id)
        if e.get("type") == "decision"
    ]
    if not events:
        print(f"securegateway: no decision `{args.decision_id}` in the audit log", file=sys.stderr)
        return 1
    logged = events[0]
    repo = open_repository(storage_config(config))
    digest = logged.get("policy_digest")
    policy = repo.get_policy(digest) if isinstance(digest, str) else None
    if policy is None:
        print(f"securegateway: policy version `{digest}` is not in the archive", file=sys.stderr)
        return 1
    assert config.policy.model_keys is not None
    keys = load_model_keys(config.policy.model_keys)
    request = logged.get("request") or {}
    when = datetime.fromisoformat(str(logged["ts"]).replace("Z", "+00:00"))
    decision = evaluate(
        CallRequest(
            model=str(logged.get("model")),
            server=str(logged.get("server")),
            tool=str(logged.get("tool")),
            arguments=logged.get("arguments") or {},
            input_schema=request.get("input_schema"),
            kind=str(request.get("kind") or "tool"),
        ),
        policy, keys, now=when, decision_id=args.decision_id,
    )
    before = logged.get("decision") or {}
    print(f"decision {args.decision_id} at {logged['ts']} under policy v{logged.get('policy_version')} {digest}")
    print(f"logged:      {'ALLOW' if before.get('allowed') else 'DENY'} ({before.get('reason_code')}) "
          f"{before.get('reason')}")
    print(f"re-evaluated: {'ALLOW' if decision.allowed else 'DENY'} ({decision.reason_code}) {decision.reason}")
    print("rule trace:")
    for entry in decision.to_dict()["rule_trace"]:
        state = "matched" if entry.get("matched") else f"not matched: {entry.get('failed') or entry.get('note')}"
        print(f"  - {entry.get('rule_id')} [{entry.get('effect')}] {state}")
    print("reasoning:")
    for sentence in decision.reasoning:
        print(f"  - {sentence}")
    same = bool(before.get("allowed")) == decision.allowed and before.get("reason_code") == decision.reason_code
    if not same:
        print("note: the outcome differs (session risk and masked argument values are not replayed)")
    return 0


def _with_service(args: argparse.Namespace, load: LoadConfig, handler: Callable[..., int]) -> int:
    from proxy.bootstrap import open_runtime

    runtime = open_runtime(load(args))
    try:
        return handler(args, runtime.service)
    finally:
        runtime.audit.close()
