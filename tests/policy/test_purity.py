"""policy/ stays synchronous, offline and at the bottom of the import graph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import policy

PACKAGE = Path(policy.__file__).resolve().parent
FORBIDDEN = {
    "anyio": "policy is synchronous",
    "asyncio": "policy is synchronous",
    "trio": "policy is synchronous",
    "mcp": "policy knows nothing of the MCP wire",
    "proxy": "imports point proxy -> policy, never back",
    "negotiation": "imports point negotiation -> policy, never back",
    "socket": "policy does no network I/O",
    "ssl": "policy does no network I/O",
    "http": "policy does no network I/O",
    "urllib": "policy does no network I/O",
    "httpx": "policy does no network I/O",
    "requests": "policy does no network I/O",
    "aiohttp": "policy does no network I/O",
    "subprocess": "policy runs no processes",
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module))
            elif node.level >= 2:  # from ..proxy import x climbs out of the package
                found.append((node.lineno, (node.module or "").split(".")[0] or "<parent>"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.append((node.lineno, "<dynamic __import__>"))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_policy_modules_import_nothing_async_networked_or_from_higher_layers(path: Path) -> None:
    problems = []
    for line, module in imported_modules(path):
        root = module.split(".")[0]
        if root in FORBIDDEN or root in ("<parent>", "<dynamic __import__>"):
            problems.append(f"{path.name}:{line}: imports `{module}` ({FORBIDDEN.get(root, 'not allowed')})")
    assert problems == []


def test_the_scan_covers_the_engine_modules() -> None:
    names = {path.name for path in MODULES}
    assert {
        "engine.py", "loader.py", "keys.py", "scan.py", "injection.py", "tooldefs.py", "schema.py", "risk.py",
        "decision.py",
    } <= names  # fmt: skip


def test_the_scanner_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import anyio\nfrom ..proxy import gateway\nfrom mcp.types import Tool\n")
    assert [module for _, module in imported_modules(sample)] == ["anyio", "proxy", "mcp.types"]


def test_the_public_api_is_exactly_the_contract() -> None:
    assert set(policy.__all__) >= {
        "load_policy",
        "load_policy_text",
        "dump_policy_yaml",
        "load_model_keys",
        "load_model_keys_text",
        "PolicyError",
        "PolicyLoadError",
        "LoadIssue",
        "Policy",
        "PolicySettings",
        "Rule",
        "Condition",
        "KeyRing",
        "ModelIdentity",
        "CallRequest",
        "evaluate",
        "Decision",
        "gateway_error_decision",
        "SessionRisk",
        "Finding",
        "scan_value",
        "could_allow",
        "tool_matches",
    }
    assert all(hasattr(policy, name) for name in policy.__all__)
