"""Argument validation against a tool's declared ``inputSchema``.

Validators are built once per distinct schema and kept in an LRU cache keyed by the schema's
canonical digest; an identity-keyed front cache skips even the digest when the caller passes
the same schema object again (the usual case: the catalog holds one dict per tool, and a
schema object must not be mutated after it has been used). Each entry holds the
``jsonschema`` validator and, when the schema is simple enough, a fast pre-check (see
:mod:`policy.schema_fast`) that settles the common valid case without ``jsonschema``.

An invalid schema is the upstream's fault, not the caller's: it is reported in the check
(``schema_error``) and arguments are not validated, but nothing raises.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .canonical import digest
from .detect.secrets import mask_secrets
from .risk import RiskFactor
from .schema_fast import FastCheck, compile_fast

__all__ = ["SchemaCheck", "check_arguments", "clear_cache", "warm_up"]

CACHE_SIZE = 256
MAX_MESSAGES = 3
_MESSAGE_CHARS = 160


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    """Outcome: ``valid``, ``invalid`` (with messages), ``absent`` or ``schema_error``."""

    status: str
    messages: tuple[str, ...] = ()

    @property
    def violated(self) -> bool:
        return self.status == "invalid"

    def sentence(self) -> str:
        if self.status == "valid":
            return "No schema violation."
        if self.status == "absent":
            return "The tool declares no input schema, so arguments were not validated."
        if self.status == "schema_error":
            return (
                f"The tool's input schema is invalid ({self.messages[0]}), so arguments were not validated."
            )
        return "Arguments violate the tool's input schema: " + "; ".join(self.messages) + "."

    def factors(self) -> tuple[RiskFactor, ...]:
        if self.status == "invalid":
            return (RiskFactor("schema_violation", 0.2, self.messages[0]),)
        if self.status == "schema_error":
            return (RiskFactor("invalid_schema", 0.1, self.messages[0]),)
        return ()


@dataclass(frozen=True, slots=True)
class _Compiled:
    validator: Any  # a jsonschema Validator, None when the schema is invalid
    fast: FastCheck | None
    error: str | None


_VALID = SchemaCheck("valid")
_ABSENT = SchemaCheck("absent")
_lock = threading.Lock()
_by_digest: OrderedDict[str, _Compiled] = OrderedDict()
_by_identity: dict[int, tuple[Any, _Compiled]] = {}


def warm_up() -> None:
    """Import the validator library now (it is otherwise imported by the first check)."""
    _validator_library()


_import_lock = threading.Lock()


def _validator_library() -> tuple[Any, Any, Any]:
    """``jsonschema``'s Draft 2020-12 validator, ``SchemaError`` and ``validator_for``, imported
    on first use (or by :func:`warm_up`): ~40 ms a gateway's start-up need not wait for.

    The import is serialised: ``jsonschema`` and ``referencing`` import each other, and two
    threads importing them at once (the gateway's warm-up worker and a first check on the event
    loop) make CPython hand one of them a partially initialised module (``ImportError: cannot
    import name ... from partially initialized module``, or ``_DeadlockError``), which would
    turn that call into a ``gateway_error`` deny.
    """
    with _import_lock:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for
    return Draft202012Validator, SchemaError, validator_for


def clear_cache() -> None:
    with _lock:
        _by_digest.clear()
        _by_identity.clear()


def _one_line(text: str) -> str:
    text = " ".join(mask_secrets(text)[0].split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def _build(schema: Any) -> _Compiled:
    Draft202012Validator, SchemaError, validator_for = _validator_library()

    if not isinstance(schema, Mapping | bool):
        return _Compiled(None, None, f"expected an object, got {type(schema).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls = validator_for(schema, default=Draft202012Validator)
        cls.check_schema(schema)
        validator = cls(schema)
    except SchemaError as exc:
        return _Compiled(None, None, _one_line(exc.message))
    except Exception as exc:  # a hostile schema must not break evaluation
        return _Compiled(None, None, _one_line(f"{type(exc).__name__}: {exc}"))
    return _Compiled(validator, compile_fast(schema), None)


def _compiled(schema: Any) -> _Compiled:
    hit = _by_identity.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    try:
        key = digest(schema)
    except (TypeError, ValueError) as exc:
        return _Compiled(None, None, _one_line(f"schema is not JSON: {exc}"))
    with _lock:
        compiled = _by_digest.get(key)
        if compiled is not None:
            _by_digest.move_to_end(key)
    if compiled is None:
        compiled = _build(schema)
        with _lock:
            _by_digest[key] = compiled
            while len(_by_digest) > CACHE_SIZE:
                _by_digest.popitem(last=False)
    with _lock:
        if len(_by_identity) >= CACHE_SIZE:
            _by_identity.clear()
        _by_identity[id(schema)] = (schema, compiled)
    return compiled


def _where(error: Any) -> str:
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    return "arguments" + path


def check_arguments(schema: Mapping[str, Any] | None, arguments: Mapping[str, Any]) -> SchemaCheck:
    """Validate ``arguments`` against ``schema``; never raises."""
    if schema is None:
        return _ABSENT
    compiled = _compiled(schema)
    if compiled.error is not None:
        return SchemaCheck("schema_error", (compiled.error,))
    instance = arguments if type(arguments) is dict else dict(arguments)
    try:
        if compiled.fast is not None and compiled.fast(instance):
            return _VALID
        errors = sorted(
            compiled.validator.iter_errors(instance), key=lambda error: list(map(str, error.absolute_path))
        )
    except Exception as exc:  # unresolvable $ref, recursion on hostile input, ...
        return SchemaCheck("schema_error", (_one_line(f"validation failed: {type(exc).__name__}: {exc}"),))
    if not errors:
        return _VALID
    return SchemaCheck(
        "invalid", tuple(_one_line(f"at {_where(e)}: {e.message}") for e in errors[:MAX_MESSAGES])
    )
