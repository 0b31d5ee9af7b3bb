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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from .errors import LoadIssue, PolicyLoadError

_CParser: Any
try:  # libyaml's C parser, when PyYAML was built with it
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - depends on the PyYAML build
    _CParser = None

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
# Text the C path may see: printable characters with "\n" as the only line break and no tab
# (no "\r", NEL, U+2028/9, BOM, lone surrogates or tabs: there libyaml and PyYAML disagree
# on lines or on what is valid, e.g. a value of only a tab).
_FAST_TEXT = re.compile("[\n\x20-\x7e\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]*")
# Spellings where libyaml accepts what PyYAML refuses (found by tests/policy/test_yaml_safe.py):
# a comment glued to a block scalar header (`|#`).
_DIVERGENT = re.compile(r"[|>][-+0-9]*#")
_FALLBACK = object()
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


class _DepthLimit:
    """Composer mix-in that refuses nesting beyond ``max_depth``."""

    max_depth: int
    depth: int
    composed: int

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        self.composed += 1
        try:
            if self.depth > self.max_depth:
                mark = self.peek_event().start_mark  # type: ignore[attr-defined]
                raise _LimitExceeded(mark, f"nesting is deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self.depth -= 1


class _DepthLimitedLoader(_DepthLimit, yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting beyond ``max_depth``: the reference path."""

    def __init__(self, text: str, max_depth: int) -> None:
        super().__init__(text)
        self.max_depth = max_depth
        self.depth = 0
        self.composed = 0


if _CParser is not None:

    class _CEventLoader(_DepthLimit, Composer, _CParser, SafeConstructor, Resolver):
        """libyaml's C event parser under the same Python composer, constructor and resolver.

        Only the tokenising and parsing move to C (about 8x faster on a 120-rule policy);
        composing, depth limits, tags and scalar construction are the very code the
        reference path runs. ``_parse_fast`` uses its result only when it is clean.
        """

        def __init__(self, text: str, max_depth: int) -> None:
            _CParser.__init__(self, text)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self.max_depth = max_depth
            self.depth = 0
            self.composed = 0

        def compose_scalar_node(self, anchor: Any) -> Any:
            event = self.peek_event()
            if not event.style and not event.value:
                # An empty plain scalar (`key:` with no value) is placed where the next token
                # starts by libyaml but where the previous one ended by PyYAML: hand it over.
                raise _Unusual
            return super().compose_scalar_node(anchor)


class _Unusual(Exception):
    """The C path met something whose tree could differ: the reference path answers."""


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

    def __init__(self, loader: SafeConstructor, issues: Issues, max_depth: int, budget: int) -> None:
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
        except (LookupError, AttributeError, TypeError):  # `!!int ""`, `!!bool maybe`, `!!timestamp x`
            kind = str(node.tag).rsplit(":", 1)[-1]
            self.issues.add(at, key_path(*path), f"invalid scalar `{node.value}`: not a valid {kind}")
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
    if _CParser is not None:
        fast = _parse_fast(text, source, max_depth, max_alias_nodes)
        if fast is not _FALLBACK:
            return fast  # type: ignore[return-value]
    return _parse_reference(text, source, max_depth, max_alias_nodes)


def _parse_fast(text: str, source: str, max_depth: int, max_alias_nodes: int) -> object:
    """The C-event parse, or ``_FALLBACK`` unless it came out clean.

    Anything unusual (a syntax error, a limit, a duplicate key, an unsupported tag, any
    exception at all) sends the text to the reference path, so every refusal keeps the
    reference path's exact message and position; a clean result is the same tree.
    """
    if not _FAST_TEXT.fullmatch(text) or _DIVERGENT.search(text):
        return _FALLBACK
    issues = Issues(source)
    try:
        loader = _CEventLoader(text, max_depth)
    except Exception:  # e.g. text libyaml cannot take: the reference path answers
        return _FALLBACK
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        tree = _Walker(loader, issues, max_depth, loader.composed + max_alias_nodes).walk(root, ())
    except Exception:  # never an answer here: the reference path gives it
        return _FALLBACK
    finally:
        loader.dispose()
    return _FALLBACK if issues.items else tree


def _parse_reference(text: str, source: str, max_depth: int, max_alias_nodes: int) -> Node | None:
    issues = Issues(source)
    try:
        loader = _DepthLimitedLoader(text, max_depth)  # the reader refuses control characters here
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - text.rfind("\n", 0, exc.position)
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        message = f"syntax error: unacceptable character #x{ord(character):04x}: {exc.reason}"
        raise PolicyLoadError([LoadIssue(source, line, col, "<yaml>", message)]) from None
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
