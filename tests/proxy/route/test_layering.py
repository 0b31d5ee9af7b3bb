"""proxy/route/ sits below the relay: its modules never import the relay, a front or the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

import proxy.route
from tests.policy.test_purity import imported_modules

PACKAGE = Path(proxy.route.__file__).resolve().parent
ABOVE = ("proxy.relay", "proxy.gateway", "proxy.front", "proxy.downstream", "proxy.wire.lane", "proxy.wire.front")
MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_route_modules_import_nothing_from_the_layers_that_compose_them(path: Path) -> None:
    problems = [
        f"{path.name}:{line}: imports `{module}`"
        for line, module in imported_modules(path)
        if any(module == above or module.startswith(above + ".") for above in ABOVE)
    ]
    assert problems == []


def test_the_scan_covers_every_route_module() -> None:
    assert {p.stem for p in MODULES} >= {"seams", "ids", "era", "forward", "access", "methods"}


def test_the_relay_composes_them() -> None:
    relay = (PACKAGE.parent / "relay.py").read_text()
    assert all(f"proxy.route.{name}" in relay for name in ("access", "era", "forward", "ids", "methods", "seams"))
