"""The relay alone: a gateway composed with no policy, no audit, no scanning, no interceptors.

``python bench/relay_only.py CONFIG`` serves ``CONFIG``'s listener and upstreams through
:class:`proxy.gateway.Gateway` exactly as ``securegateway run`` composes it, minus
everything :mod:`proxy.bootstrap` adds (the enforcer and its audit log, result scanning,
detectors, quarantine, taint, negotiation, metrics). ``bench_gateway.py`` runs it beside
the full gateway for the "relay alone (no policy)" mark: the cost of the message path
itself. Not a deployment: nothing is decided or recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from proxy import logs
from proxy.cli import event_loop_options
from proxy.config import load_config
from proxy.gateway import Gateway


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: relay_only.py CONFIG", file=sys.stderr)
        return 2
    logs.configure()
    config = load_config(Path(sys.argv[1]))
    anyio.run(Gateway(config).run, backend_options=event_loop_options(config.event_loop, config.path.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
