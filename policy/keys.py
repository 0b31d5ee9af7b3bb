"""``model_keys.yaml`` -> :class:`KeyRing`: which model a presented key belongs to, and its scope.

Only sha256 digests of keys are kept in memory. :meth:`KeyRing.authenticate` hashes the
presented key and compares it with *every* entry using ``hmac.compare_digest``, without
stopping at the first match, so timing reveals neither which entry matched nor where. Two
models sharing one key would make identity ambiguous, so that is a load error.

A model's ``tools`` globs are its outer scope: no policy rule can grant beyond them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .errors import PolicyError
from .loader import check_keys, string_list, type_name
from .match import compile_globs
from .yaml_safe import DEFAULT_MAX_BYTES, Issues, Node, key_path, parse_yaml, plain, read_capped

__all__ = ["KeyRing", "ModelIdentity", "hash_key", "load_model_keys", "load_model_keys_text"]

MODEL_KEYS = ("key", "key_sha256", "tools", "can_propose")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class ModelIdentity:
    """A model known to the gateway; ``tools`` are globs bounding what any rule may grant it."""

    model_id: str
    tools: tuple[str, ...]
    can_propose: bool = False


def hash_key(key: str) -> bytes:
    """The sha256 digest under which a model key is stored and compared."""
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """Model identities with their key digests and compiled scopes. Immutable once built."""

    def __init__(self, entries: Iterable[tuple[ModelIdentity, bytes]] = ()) -> None:
        identities: dict[str, ModelIdentity] = {}
        digests: list[tuple[bytes, str]] = []
        for identity, key_digest in entries:
            if identity.model_id in identities:
                raise PolicyError(f"duplicate model `{identity.model_id}`")
            if len(key_digest) != 32:
                raise PolicyError(f"model `{identity.model_id}`: key digest must be 32 bytes of sha256")
            if any(hmac.compare_digest(key_digest, other) for other, _ in digests):
                raise PolicyError(f"model `{identity.model_id}` reuses another model's key")
            identities[identity.model_id] = identity
            digests.append((key_digest, identity.model_id))
        self.identities: Mapping[str, ModelIdentity] = MappingProxyType(identities)
        self._digests = tuple(digests)
        self._scopes = {model_id: compile_globs(identity.tools) for model_id, identity in identities.items()}

    def authenticate(self, presented_key: str) -> ModelIdentity | None:
        """The identity whose key this is, in time independent of which entry (if any) matches."""
        presented = hash_key(presented_key)
        found: str | None = None
        for key_digest, model_id in self._digests:
            matched = hmac.compare_digest(presented, key_digest)
            found = model_id if matched else found
        return None if found is None else self.identities[found]

    def get(self, model_id: str) -> ModelIdentity | None:
        return self.identities.get(model_id)

    def in_scope(self, model_id: str, qualified_tool: str) -> bool:
        """Whether ``qualified_tool`` lies inside the model's key scope (False for unknown models)."""
        scope = self._scopes.get(model_id)
        return scope is not None and scope.fullmatch(qualified_tool) is not None

    def __repr__(self) -> str:
        return f"KeyRing(models={sorted(self.identities)})"


def _model(issues: Issues, model_id: str, node: Node) -> tuple[ModelIdentity, bytes] | None:
    path: tuple[str | int, ...] = ("models", model_id)
    if not isinstance(node.value, dict):
        issues.add(
            node, key_path(*path), f"expected a mapping with `key` and `tools`, got {type_name(plain(node))}"
        )
        return None
    before = len(issues.items)
    entries: dict[str, Node] = node.value
    check_keys(issues, node, MODEL_KEYS, path)
    key_digest = b""
    if ("key" in entries) == ("key_sha256" in entries):
        issues.add(node, key_path(*path), "expected exactly one of `key` or `key_sha256`")
    elif "key" in entries:
        key = entries["key"].value
        if not isinstance(key, str) or not key:
            issues.add(
                entries["key"], key_path(*path, "key"), f"expected a non-empty string, got {type_name(key)}"
            )
        else:
            key_digest = hash_key(key)
    else:
        hexdigest = entries["key_sha256"].value
        if not isinstance(hexdigest, str) or not _HEX64.fullmatch(hexdigest):
            issues.add(
                entries["key_sha256"],
                key_path(*path, "key_sha256"),
                "expected 64 hex digits (a sha256 digest)",
            )
        else:
            key_digest = bytes.fromhex(hexdigest)
    tools: tuple[str, ...] = ()
    if "tools" not in entries:
        issues.add(node, key_path(*path), "missing required key `tools` (use `tools: []` for no tools)")
    elif entries["tools"].value != []:
        tools = string_list(issues, entries["tools"], (*path, "tools"), "tool globs")
    can_propose = False
    if "can_propose" in entries:
        value = entries["can_propose"].value
        if not isinstance(value, bool):
            issues.add(
                entries["can_propose"],
                key_path(*path, "can_propose"),
                f"expected true or false, got `{value}`",
            )
        else:
            can_propose = value
    if len(issues.items) > before:
        return None
    return ModelIdentity(model_id=model_id, tools=tools, can_propose=can_propose), key_digest


def load_model_keys_text(
    text: str, source: str = "<string>", *, max_bytes: int = DEFAULT_MAX_BYTES
) -> KeyRing:
    """Parse and validate model-keys YAML; raises PolicyLoadError listing every problem."""
    root = parse_yaml(text, source, max_bytes=max_bytes)
    issues = Issues(source)
    if root is None or not isinstance(root.value, dict):
        issues.add(root or (1, 1), "<root>", "expected a mapping with `models`")
        issues.raise_if_any()
    assert root is not None
    check_keys(issues, root, ("models",), ())
    entries: list[tuple[ModelIdentity, bytes]] = []
    if "models" not in root.value:
        issues.add(root, "<root>", "missing required key `models`")
    elif not isinstance(root.value["models"].value, dict):
        issues.add(root.value["models"], "models", "expected a mapping of model id to its key and tools")
    else:
        owners: list[tuple[bytes, str]] = []
        for model_id, node in root.value["models"].value.items():
            entry = _model(issues, model_id, node)
            if entry is None:
                continue
            owner = next((name for digest, name in owners if hmac.compare_digest(digest, entry[1])), None)
            if owner is not None:
                issues.add(node, key_path("models", model_id), f"uses the same key as model `{owner}`")
                continue
            owners.append((entry[1], model_id))
            entries.append(entry)
    issues.raise_if_any()
    return KeyRing(entries)


def load_model_keys(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> KeyRing:
    """Load ``model_keys.yaml`` from disk."""
    return load_model_keys_text(read_capped(path, max_bytes), str(path), max_bytes=max_bytes)
