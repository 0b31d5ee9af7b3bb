"""The signed history on disk: ``contracts.jsonl``, ``pending.json`` and the archived texts.

::

    <state_dir>/contracts.jsonl              one Contract per line, version 1, 2, 3, ... in order
    <state_dir>/policies/v<N>-<hex12>.yaml   the policy text of each version, never rewritten
    <state_dir>/pending.json                 the contract being committed; exists only mid-commit

This module reads them and says what is wrong with them; writing them in the right order
is the repository's job (negotiation/repository/repository.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from negotiation.contracts import Contract
from negotiation.errors import ContractError, PolicyTamperedError, RepositoryError
from policy import Policy, PolicyError, load_policy_text
from policy.canonical import canonical_bytes
from policy.yaml_safe import DEFAULT_MAX_BYTES, read_capped

__all__ = ["History", "contract_line", "link_problems"]

_ARCHIVE_NAME = re.compile(r"v(\d+)-([0-9a-f]{12})\.yaml")


class History:
    """The contract log, the pending commit and the archive of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.log = state_dir / "contracts.jsonl"
        self.pending = state_dir / "pending.json"
        self.archive_dir = state_dir / "policies"

    def read(self) -> tuple[list[Contract], bool]:
        """The parsed log and whether its last line is torn (a crash mid-append)."""
        try:
            data = self.log.read_bytes()
        except FileNotFoundError:
            return [], False
        torn = bool(data) and not data.endswith(b"\n")
        if torn:
            data = data[: data.rfind(b"\n") + 1]
        contracts: list[Contract] = []
        for lineno, line in enumerate(data.splitlines(), start=1):
            try:
                contracts.append(Contract.from_dict(json.loads(line)))
            except (ValueError, ContractError) as exc:
                raise RepositoryError(f"`{self.log}:{lineno}`: {exc}") from exc
        return contracts, torn

    def read_pending(self) -> Contract | None:
        try:
            data = self.pending.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Contract.from_dict(json.loads(data))
        except (ValueError, ContractError) as exc:
            raise RepositoryError(f"`{self.pending}`: {exc}") from exc

    def archive_path(self, contract: Contract) -> Path:
        hex12 = contract.digest.removeprefix("sha256:")[:12]
        return self.archive_dir / f"v{contract.version}-{hex12}.yaml"

    def read_archive(self, contract: Contract, *, known: tuple[str, Policy] | None = None) -> Policy:
        """The archived policy of ``contract``, its digest checked (not its signature).

        ``known``: a text already loaded (the live file's, usually the same bytes): reused
        instead of parsing the archive a second time at start-up."""
        path = self.archive_path(contract)
        if not path.exists():
            raise RepositoryError(f"archive `{path.name}` is missing")
        try:
            text = read_capped(path, DEFAULT_MAX_BYTES)
            policy = known[1] if known is not None and known[0] == text else load_policy_text(text, str(path))
        except PolicyError as exc:  # we wrote it loadable; failing now means it was altered
            raise PolicyTamperedError(f"archive `{path.name}` no longer loads: {str(exc).splitlines()[0]}") from exc
        if policy.digest != contract.digest:
            raise PolicyTamperedError(f"archive `{path.name}` hashes to `{policy.digest}`, not its contract's")
        return policy

    def remove_orphan_archives(self, head_version: int) -> None:
        """Delete archives newer than the log's head (left by a crash before the commit point)."""
        for path in self.archive_dir.iterdir():
            match = _ARCHIVE_NAME.fullmatch(path.name)
            if match and int(match.group(1)) > head_version:
                path.unlink()


def link_problems(contracts: list[Contract]) -> list[str]:
    """Versions that do not count 1, 2, 3, ... or parents that are not the previous digest."""
    problems: list[str] = []
    previous: Contract | None = None
    for index, contract in enumerate(contracts, start=1):
        if contract.version != index:
            problems.append(f"record {index} has version {contract.version}, expected {index}")
        expected_parent = previous.digest if previous else None
        if contract.parent_digest != expected_parent:
            problems.append(
                f"v{contract.version}: parent `{contract.parent_digest}` is not the previous version's "
                f"`{expected_parent}`"
            )
        previous = contract
    return problems


def contract_line(contract: Contract) -> bytes:
    """One log line: the contract's canonical JSON."""
    return canonical_bytes(contract.to_dict()) + b"\n"
