"""The operator's offline commands: dry-run ``explain``, ``policy test``, ``proposals impact``.

Each reads the files a gateway.toml names and changes nothing, so it runs beside a live
gateway. Exit codes: 0 ok, 1 a test failed or the proposal does not merge, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.config import GatewayConfig

LoadConfig = Callable[[argparse.Namespace], GatewayConfig]


def _fail(message: str, code: int = 2) -> int:
    print(f"securegateway: {message}", file=sys.stderr)
    return code


def _keys(config: GatewayConfig) -> Any:
    from policy import load_model_keys

    if config.policy.model_keys is None:
        raise SystemExit(_fail(f"{config.path.name}: policy.model_keys: required"))
    return load_model_keys(config.policy.model_keys)


def _live_policy(config: GatewayConfig, explicit: Path | None) -> Any:
    from policy import load_policy
    from proxy.bootstrap import seed_policy

    if explicit is None:
        seed_policy(config)
    path = explicit or config.policy.file
    if path is None:
        raise SystemExit(_fail(f"{config.path.name}: policy.file: required (or pass --policy)"))
    return load_policy(path)


# ---- explain --model M --tool T --args JSON -------------------------------------------------


def add_dry_run_options(explain: argparse.ArgumentParser) -> None:
    explain.add_argument("--model", default=None, help="dry run: the model id making the call")
    explain.add_argument("--tool", default=None, help="dry run: the dotted tool name (calendar.add)")
    explain.add_argument("--args", default="{}", help="dry run: the call's arguments as a JSON object")
    explain.add_argument("--policy", type=Path, default=None, help="dry run: a policy file (default: the live one)")
    explain.add_argument("--json", action="store_true", help="dry run: print the decision JSON")


def explain_call(args: argparse.Namespace, load: LoadConfig) -> int:
    """Decide a call offline and print the decision with its trace."""
    from policy import PolicyError
    from proxy.dry_run import DryRunRequest, dry_run

    if not args.model or not args.tool:
        return _fail("a dry run needs --model and --tool (or give a DECISION_ID)")
    try:
        arguments = json.loads(args.args)
    except ValueError as exc:
        return _fail(f"--args is not JSON: {exc}")
    if not isinstance(arguments, dict):
        return _fail("--args must be a JSON object")
    config = load(args)
    try:
        policy = _live_policy(config, args.policy)
        keys = _keys(config)
    except PolicyError as exc:
        return _fail(str(exc))
    except FileNotFoundError as exc:
        return _fail(f"{exc.filename}: file not found")
    if "." not in args.tool.strip("."):
        return _fail("--tool must be a dotted `<upstream>.<tool>` name")
    request = DryRunRequest(args.model, args.tool, arguments)
    decision = dry_run(request, policy, keys, upstreams=[u.name for u in config.upstreams])
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print_decision(decision.to_dict(), header=f"dry run: {args.model} → {args.tool} under {policy.digest}")
    return 0


def print_decision(data: dict[str, Any], *, header: str) -> None:
    print(header)
    verdict = "ALLOW" if data["allowed"] else "DENY"
    print(f"{verdict} ({data['reason_code']}) {data['reason']}")
    print(f"risk score: {data['risk_score']}")
    print("rule trace:")
    for entry in data["rule_trace"] or [{"rule_id": "(no rule considered)", "effect": "-", "matched": False}]:
        state = "matched" if entry.get("matched") else f"not matched: {entry.get('failed') or entry.get('note')}"
        print(f"  - {entry.get('rule_id')} [{entry.get('effect')}] {state}")
    print("reasoning:")
    for sentence in data["reasoning"]:
        print(f"  - {sentence}")
    counterfactual = data.get("counterfactual")
    if counterfactual:
        print(f"what would allow it: {counterfactual['text']}")


# ---- policy test [FILE...] ---------------------------------------------------------------------


def add_policy_test(policy_parser: argparse.ArgumentParser, config_arg: Callable[..., None], load: LoadConfig) -> None:
    """Add ``test`` to the ``policy`` command's sub-commands."""
    commands = next(a for a in policy_parser._actions if isinstance(a, argparse._SubParsersAction))
    test = commands.add_parser(
        "test", help="run the policy tests kept beside policies.yaml (*.tests.yaml)",
        description="run YAML policy tests; exit 1 with a readable diff when one fails",
    )
    config_arg(test)
    test.add_argument("files", nargs="*", type=Path, help="test files (default: *.tests.yaml beside the policy)")
    test.add_argument("--policy", type=Path, default=None, help="the policy to test (default: the live one)")
    test.add_argument("--json", action="store_true", help="print the report as JSON")
    test.set_defaults(func=lambda a: policy_test(a, load))


def policy_test(args: argparse.Namespace, load: LoadConfig) -> int:
    from policy import PolicyError
    from policy.testing import find_test_files, run_policy_tests, suites_from

    config = load(args)
    policy_path = args.policy or config.policy.file
    try:
        policy = _live_policy(config, args.policy)
        keys = _keys(config)
        files = list(args.files) or (find_test_files(policy_path) if policy_path else [])
        if not files and args.policy is None and config.policy.seed is not None:
            files = find_test_files(config.policy.seed)  # kept beside the shipped policy
        if not files:
            return _fail(f"no policy tests: put *.tests.yaml beside {policy_path}")
        suites = suites_from(files)
    except PolicyError as exc:
        return _fail(str(exc))
    except FileNotFoundError as exc:
        return _fail(f"{exc.filename}: file not found")
    report = run_policy_tests(suites, policy, keys, now=datetime.now(UTC))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.render())
    return 0 if report.ok else 1


# ---- proposals impact ID -------------------------------------------------------------------------


def add_impact_options(impact: argparse.ArgumentParser) -> None:
    impact.add_argument("id")
    impact.add_argument("--limit", type=int, default=10_000, help="replay at most this many calls (default 10000)")
    impact.add_argument("--days", type=float, default=7.0, help="replay calls at most this old (default 7)")
    impact.add_argument("--json", action="store_true")


def proposals_impact(args: argparse.Namespace, service: Any, load: LoadConfig) -> int:
    from negotiation.errors import NegotiationError
    from negotiation.impact import proposal_impact

    config = load(args)
    assert config.policy.state_dir is not None
    audit_path = config.audit.file or config.policy.state_dir / "audit.jsonl"
    if args.limit <= 0 or args.days <= 0:
        return _fail("--limit and --days must be positive")
    try:
        proposal = service.get(args.id)
        impact = proposal_impact(
            proposal, service.live.current.policy, _keys(config), audit_path,
            now=datetime.now(UTC), limit=args.limit, window=timedelta(days=args.days),
        )
    except NegotiationError as exc:
        sys.stderr.write(f"error [{exc.code}]: {exc.message}\n")
        return 1
    if args.json:
        print(json.dumps(impact.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(f"{proposal.id} ({proposal.status.value}): {impact.summary}")
    for title, rows in (("newly allowed", impact.allowed_by), ("newly denied", impact.denied_by)):
        for model, tool, count in rows:
            print(f"  {title}: {count:>6}  {model} → {tool}")
    for call in (*impact.examples_allowed, *impact.examples_denied):
        mark = " (uncertain: redacted arguments)" if call.uncertain else ""
        print(f"  example {call.decision_id} {call.ts} {call.model} → {call.tool}: {call.before} → {call.after}{mark}")
    for note in impact.notes:
        print(f"  note: {note}")
    return 0


# ---- init [--from PATH] ------------------------------------------------------------------------------


def add_init(sub: Any) -> None:
    init = sub.add_parser(
        "init", help="put the gateway in front of the MCP servers of Claude Desktop, Cursor or VS Code",
        description="read a client configuration and write gateway.toml, policies.yaml and model_keys.yaml",
    )
    init.add_argument("--from", dest="source", type=Path, default=None,
                      help="the client configuration (default: the first found at the usual places)")
    init.add_argument("--dir", type=Path, default=Path("."), help="where to write the files (default: .)")
    init.add_argument("--model", default="assistant", help="the model id for the generated key (default: assistant)")
    init.add_argument("--rewrite", action="store_true",
                      help="point the client configuration at the gateway (a backup is kept)")
    init.add_argument("--force", action="store_true", help="overwrite existing gateway files")
    init.add_argument("--no-probe", action="store_true", help="do not start the servers to list their tools")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    import anyio

    from proxy import onboard

    client = onboard.read_client_config(args.source) if args.source else onboard.detect()
    tools: dict[str, Any] = {}
    if not args.no_probe:
        tools = anyio.run(onboard.probe_tools, client.servers)
    plan = onboard.plan_init(client, tools, model_id=args.model, gateway_command=onboard.gateway_command(),
                             out_dir=args.dir)
    written = onboard.write_plan(plan, args.dir, force=args.force)
    names = ", ".join(s.name for s in client.servers)
    print(f"imported {len(client.servers)} server(s) from {client.path} ({client.kind}): {names}")
    print("wrote " + ", ".join(str(p) for p in written))
    print(f"model `{plan.model_id}` has key {plan.model_key} (in model_keys.yaml and the client entry)")
    if plan.secrets:
        print("secrets kept out of the gateway's files (they stay in the client's configuration):")
        for server, variable in plan.secrets:
            print(f"  - {server}: {variable}")
    for note in plan.notes:
        print(f"note: {note}")
    snippet = json.dumps(onboard.client_snippet(client, plan), indent=2, ensure_ascii=False)
    if args.rewrite:
        backup = onboard.apply_rewrite(client, plan)
        print(f"rewrote {client.path} to start the gateway (backup: {backup})")
    else:
        print(f"put this entry in {client.path} in place of the imported servers (or rerun with --rewrite):")
        print(snippet)
    print(f"check the starter policy: securegateway policy test --config {args.dir / 'gateway.toml'}")
    return 0
