"""Hostile-input-safe YAML reading that keeps every value's ``line:col``.

Files are composed (``yaml.compose`` machinery on ``SafeLoader``) into a node tree instead of
being constructed into Python objects, so each value keeps its position for error messages
and no arbitrary tag can ever build an object. Before and during composition we refuse:

* files larger than ``max_bytes`` (checked before parsing);
* nesting deeper than ``max_depth`` (checked while composing, so the recursive composer can
  never blow the stack);
* alias bombs: walking the tree counts every node visit, and aliases may add at most
  ``max_alias_nodes`` visits beyond the nodes actually written (recursive aliases too).

The result is a tree of :class:`Node` whose values are plain ``dict[str, Node]``,
``list[Node]`` or JSON-ish scalars (plus ``datetime``/``date`` for YAML timestamps). A node
that is a mapping entry carries the position of its *key*, which is where an operator looks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .errors import LoadIssue, PolicyLoadError

__all__ = [
    "DEFAULT_MAX_ALIAS_NODES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "Issues",
    "Node",
    "key_path",
    "parse_yaml",
    "plain",
    "read_capped",
]

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_ALIAS_NODES = 10_000

_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp")
)
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


@dataclass(frozen=True, slots=True)
class Node:
    """A located YAML value; ``line``/``col`` are 1-based."""

    value: Any
    line: int
    col: int


def key_path(*parts: str | int) -> str:
    """``("rules", 0, "allow_tools")`` -> ``rules[0].allow_tools``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<root>"


class Issues:
    """Collects every problem in a file so the operator sees them all at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[LoadIssue] = []

    def add(self, at: Node | tuple[int, int], key: str, message: str) -> None:
        line, col = (at.line, at.col) if isinstance(at, Node) else at
        self.items.append(LoadIssue(self.source, line, col, key, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise PolicyLoadError(sorted(self.items, key=lambda issue: (issue.line, issue.col)))


class _LimitExceeded(Exception):
    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting beyond ``max_depth``."""

    def __init__(self, text: str, max_depth: int) -> None:
        super().__init__(text)
        self.max_depth = max_depth
        self.depth = 0
        self.composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        self.composed += 1
        try:
            if self.depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise _LimitExceeded(mark, f"nesting is deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _position(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def read_capped(path: str | Path, max_bytes: int) -> str:
    """Read a UTF-8 file, refusing (with a located error) one larger than ``max_bytes``."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise PolicyLoadError(
            [LoadIssue(source, 1, 1, "<file>", f"cannot read file: {exc.strerror}")]
        ) from None
    if len(data) > max_bytes:
        raise PolicyLoadError([LoadIssue(source, 1, 1, "<file>", f"file is larger than {max_bytes} bytes")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyLoadError(
            [LoadIssue(source, 1, 1, "<file>", f"file is not utf-8: {exc.reason}")]
        ) from None


class _Walker:
    """Turns composed nodes into :class:`Node` trees, enforcing the expansion budget."""

    def __init__(self, loader: _DepthLimitedLoader, issues: Issues, max_depth: int, budget: int) -> None:
        self.loader = loader
        self.issues = issues
        self.max_depth = max_depth
        self.budget = budget
        self.visits = 0

    def walk(self, node: Any, path: tuple[str | int, ...], at: tuple[int, int] | None = None) -> Node:
        self.visits += 1
        if self.visits > self.budget:
            raise _LimitExceeded(
                node.start_mark, "aliases expand the document beyond the node limit (alias bomb?)"
            )
        if len(path) > self.max_depth:
            raise _LimitExceeded(node.start_mark, f"nesting is deeper than {self.max_depth} levels")
        line, col = at if at is not None else _position(node.start_mark)
        if isinstance(node, MappingNode):
            return Node(self._mapping(node, path), line, col)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self.issues.add((line, col), key_path(*path), f"unsupported YAML tag `{node.tag}`")
            items = [self.walk(item, (*path, index)) for index, item in enumerate(node.value)]
            return Node(items, line, col)
        return Node(self._scalar(node, path, (line, col)), line, col)

    def _mapping(self, node: MappingNode, path: tuple[str | int, ...]) -> dict[str, Node]:
        if node.tag != _MAP_TAG:
            self.issues.add(_position(node.start_mark), key_path(*path), f"unsupported YAML tag `{node.tag}`")
        entries: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key_at = _position(key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.issues.add(key_at, key_path(*path), "merge keys (`<<`) are not supported")
                continue
            key = self._scalar(key_node, path, key_at) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                shown = key_node.value if isinstance(key_node, ScalarNode) else "a collection"
                self.issues.add(key_at, key_path(*path), f"keys must be strings, got `{shown}`")
                continue
            if key in entries:
                self.issues.add(key_at, key_path(*path, key), "duplicate key")
                continue
            entries[key] = self.walk(value_node, (*path, key), key_at)
        return entries

    def _scalar(self, node: Any, path: tuple[str | int, ...], at: tuple[int, int]) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.issues.add(at, key_path(*path), f"unsupported YAML tag `{node.tag}`")
            return None
        try:
            return self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            self.issues.add(at, key_path(*path), f"invalid scalar `{node.value}`: {exc}")
            return None


def parse_yaml(
    text: str,
    source: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_alias_nodes: int = DEFAULT_MAX_ALIAS_NODES,
) -> Node | None:
    """Parse one YAML document into located nodes; None for an empty document.

    Raises PolicyLoadError for syntax errors, limits, and structural issues (non-string or
    duplicate keys, unsupported tags), all located.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise PolicyLoadError(
            [LoadIssue(source, 1, 1, "<file>", f"file is {size} bytes, over the {max_bytes}-byte limit")]
        )
    loader = _DepthLimitedLoader(text, max_depth)
    issues = Issues(source)
    try:
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            walker = _Walker(loader, issues, max_depth, loader.composed + max_alias_nodes)
            tree = walker.walk(root, ())
        finally:
            loader.dispose()
    except _LimitExceeded as exc:
        line, col = _position(exc.mark)
        raise PolicyLoadError([LoadIssue(source, line, col, "<file>", exc.message)]) from None
    except yaml.MarkedYAMLError as exc:
        line, col = _position(exc.problem_mark or exc.context_mark)
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        raise PolicyLoadError([LoadIssue(source, line, col, "<yaml>", f"syntax error: {message}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyLoadError([LoadIssue(source, 1, 1, "<yaml>", f"syntax error: {exc}")]) from None
    issues.raise_if_any()
    return tree


def plain(node: Node) -> Any:
    """The node's value as plain Python (timestamps become ISO strings)."""
    value = node.value
    if isinstance(value, dict):
        return {key: plain(child) for key, child in value.items()}
    if isinstance(value, list):
        return [plain(child) for child in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
