"""``securegateway`` command line.

    securegateway run [--config gateway.toml] [--model-key KEY] [--stdio]
    securegateway init [--from CLIENT_CONFIG] [--rewrite]
    securegateway audit verify [FILE] | audit show DECISION_ID
    securegateway explain DECISION_ID | explain --model M --tool T [--args JSON] [--policy FILE]
    securegateway proposals list|show|approve|reject|impact ...
    securegateway policy verify|sign|test ;  securegateway keys generate
    securegateway approvals list|approve|deny ...

Exit codes: 0 ok, 1 a check failed (e.g. audit verify), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import gc
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.abc

from proxy.config import GatewayConfig, ListenSpec, load_config
from proxy.errors import ConfigError, GatewayError

MODEL_KEY_ENV = "SECUREGATEWAY_MODEL_KEY"
EVENT_LOOP_ENV = "SECUREGATEWAY_EVENT_LOOP"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(full=_command(argv) != "run")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.func is not _run:  # a run configures its logging once its upstreams are started
        configure_logs(args.log_level)
    try:
        return int(args.func(args))
    except GatewayError as exc:
        print(f"securegateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def configure_logs(level: str | None) -> None:
    """structlog, configured (proxy/logs.py). Imported here, not at the top: importing it
    costs ~40 ms, which ``run`` spends after starting its upstreams. Nothing may log
    before this (structlog unconfigured would print to stdout, the stdio client's wire)."""
    from proxy import logs

    logs.configure(level)


def console() -> NoReturn:
    """The ``securegateway`` program: :func:`main`, then, after ``run``, a quick exit.

    A gateway's clients wait for its process to end when they close stdin (the SDK's
    stdio client does, for up to two seconds), and tearing down an interpreter that
    imported the SDK and pydantic costs ~0.15-0.2 s of CPU. Everything ``run`` opened is
    closed by then (the audit log synced and closed, the upstreams reaped), so after the
    exit handlers and a flush the process ends at once; a thread still running (none is,
    normally) gets the ordinary exit, which waits for it.

    Start-up allocates ~160k objects that live as long as the process (modules, the SDK's
    pydantic models, the compiled policy); the cyclic collector's passes over them while
    they are made cost ~13% of the start-up CPU, so it is off until the gateway is built
    (``_serving_heap``)."""
    argv = sys.argv[1:]
    running = _command(argv) == "run"
    if running:
        gc.disable()  # until the gateway is built: see _serving_heap
    else:
        gc.enable()
    code = main(argv)
    if running and not any(
        t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
    ):
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more to say
                stream.flush()
        os._exit(code)
    sys.exit(code)


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _parser(*, full: bool = True) -> argparse.ArgumentParser:
    """The command line; ``full=False`` only knows ``run``: the other commands' modules import
    the policy and negotiation stacks, which ``run`` would otherwise load before it starts
    its upstreams (see _start_and_serve)."""
    parser = argparse.ArgumentParser(prog="securegateway", description="A transparent MCP security gateway.")
    parser.add_argument("--log-level", default=None, help="debug, info (default), warning, error")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the gateway in the foreground")
    _config_arg(run)
    run.add_argument("--model-key", default=None,
                     help=f"the stdio client's model key (default: ${MODEL_KEY_ENV})")
    run.add_argument("--stdio", action="store_true",
                     help="serve the client on stdin/stdout whatever [gateway] listen says (for clients that "
                     "start the gateway: Claude Desktop, Cursor, VS Code, the MCP Inspector)")
    run.set_defaults(func=_run)
    if not full:
        return parser

    from proxy.cli import ops as cli_ops

    cli_ops.register(sub, _config_arg, load_config_arg)
    from proxy.cli import approvals as cli_approvals

    cli_approvals.register(sub, _config_arg, load_config_arg)
    return parser


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="gateway.toml", help="path to gateway.toml (default: ./gateway.toml)")


def load_config_arg(args: argparse.Namespace) -> GatewayConfig:
    return load_config(Path(args.config))


def _run(args: argparse.Namespace) -> int:
    config = load_config_arg(args)
    if args.stdio:
        config = dataclasses.replace(config, listen=ListenSpec("stdio"))
    model_key = args.model_key or os.environ.get(MODEL_KEY_ENV)
    try:
        loop = event_loop_options(config.event_loop, config.path.name)
    except ConfigError:
        from proxy.bootstrap import build

        configure_logs(args.log_level)
        build(config, model_key=model_key)  # its errors are reported first, as they always were
        raise
    anyio.run(partial(_start_and_serve, config, model_key, args.log_level), backend_options=loop)
    return 0


async def _start_and_serve(config: GatewayConfig, model_key: str | None, log_level: str | None = None) -> None:
    """Start the stdio upstreams first, then import and build the gateway while they start.

    The upstreams' own start-up (hundreds of ms for a Python or Node server) overlaps the
    gateway's imports and set-up instead of following them (proxy/upstream/prespawn.py).
    Any failure before serving kills the processes started here (no orphans), and so does
    a SIGINT/SIGTERM during start-up: the signal handlers are in place before the spawn.
    Logging is configured right after the spawn (nothing before it logs)."""
    from proxy.upstream.prespawn import prespawned

    early = config.upstreams if config.listen.kind == "stdio" else ()
    failed: Exception | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(_cancel_on_signal, tg.cancel_scope)
        async with prespawned(early) as spawned:
            try:
                configure_logs(log_level)
                from proxy.bootstrap import build  # the heavy imports (mcp, policy, negotiation)

                app = build(config, model_key=model_key, prespawned=spawned)
            except Exception as exc:  # raised below, as itself (not in a task group's exception group)
                failed = exc
            else:
                _serving_heap()
                await app.run()
        tg.cancel_scope.cancel()
    if failed is not None:
        raise failed


def _serving_heap() -> None:
    """Once built: what start-up made is frozen (never scanned by a collection again, so a
    full one does not pause a call to walk it), and the collector is back on, if
    ``console`` turned it off. The start-up garbage it keeps is small (~2k objects)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def event_loop_options(choice: str = "auto", source: str = "gateway.toml") -> dict[str, Any]:
    """The loop ``[gateway] event_loop`` asks for; ``SECUREGATEWAY_EVENT_LOOP`` overrides it.

    ``auto`` (the default) is uvloop when installed (measured: ~0.1 ms less gateway CPU per
    stdio call, ~13% less per HTTP call), else the standard loop; ``uvloop`` insists on it."""
    override = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    choice = override or choice
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "asyncio":
        return {}
    if choice == "uvloop" and not installed:
        raise ConfigError(
            f"{source}: gateway.event_loop: `uvloop` is not installed (pip install 'securegateway[uvloop]')"
        )
    if choice not in ("auto", "uvloop"):
        raise ConfigError(f"{EVENT_LOOP_ENV}: must be one of auto, asyncio, uvloop; got `{override[:40]}`")
    return {"use_uvloop": installed}


async def _cancel_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return
