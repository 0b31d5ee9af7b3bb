"""The versioned policy repository: the live policy file plus its signed history.

On disk::

    <policy_path>                       the live policy file (policies.yaml); operators may edit it
    <state_dir>/contracts.jsonl         one Contract per line, version 1, 2, 3, ... in order
    <state_dir>/policies/v<N>-<hex12>.yaml   the policy text of each version, never rewritten
    <state_dir>/pending.json            the contract being committed; exists only mid-commit
    <state_dir>/policy.lock             fcntl lock: one writer at a time, across processes

Every operation that writes, and ``load()``, runs under the exclusive lock, so the gateway
and a reviewer's CLI can commit against one state directory.

**Commit order.** A commit writes, fsyncing each before the next:

1. the archive file (temp file, fsync, rename, fsync dir);
2. ``pending.json``, the same way: **the commit point**. From here the commit completes;
3. the contract line appended to ``contracts.jsonl``;
4. the live file (same atomic replace), unless it already holds the text (an operator edit);
5. ``pending.json`` removed.

**Recovery rule.** Before anything else under the lock, if ``pending.json`` exists the
commit it names is rolled forward: a torn last log line is cut off, the contract is
appended unless the log already ends with it, and the live file is written from the
archive if it still holds the parent version (or is missing). A live file holding
anything else was edited after the crash and is left for the operator-edit rule. Then
``pending.json`` is removed. Without ``pending.json`` a crash happened before step 2:
archive files newer than the log's head are orphans and are deleted. So every crash ends
either with the commit fully applied or with no trace of it; none is lost or doubled.

**Operator edits.** A live file whose digest is not the head's is an edit made outside the
gateway; ``load()`` records it as a new version (approver ``operator``, signed when a
signer is configured), keeping the operator's text in the archive. With
``require_signature`` such an edit is refused (``policy_unsigned``) and nothing is
recorded: it has to be signed on purpose (``securegateway policy sign``), or a process
holding the key would vouch for any text someone drops in place.

**No rollback.** The newest version accepted is also remembered outside the history, in a
signed high-water mark (:mod:`negotiation.high_water`), raised after every commit and load.
With ``require_signature`` a history whose head is older than the mark (or the same version
with another digest), or a mark that is unsigned or forged, is refused
(``policy_rollback`` / ``policy_state_invalid``) by ``load()`` and reported by
``verify_chain()``; ``accept_rollback()`` is the operator's explicit way past it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from negotiation.contracts import Contract, utc_now
from negotiation.errors import (
    ContractError,
    NegotiationError,
    PolicyTamperedError,
    RepositoryError,
    SigningError,
)
from negotiation.high_water import FileHighWaterStore, HighWater, HighWaterStore
from negotiation.signing import Signer, Verifier
from policy import Policy, PolicyError, dump_policy_yaml, load_policy_text
from policy.canonical import canonical_bytes
from policy.yaml_safe import DEFAULT_MAX_BYTES, read_capped

__all__ = ["ActivePolicy", "ChainReport", "PolicyRepository"]

_ARCHIVE_NAME = re.compile(r"v(\d+)-([0-9a-f]{12})\.yaml")


@dataclass(frozen=True)
class ActivePolicy:
    """A policy together with the version and contract that made it live."""

    policy: Policy
    version: int
    contract: Contract | None

    @property
    def digest(self) -> str:
        return self.policy.digest


@dataclass(frozen=True)
class ChainReport:
    """The outcome of checking the whole history; ``problems`` is empty when ``ok``."""

    ok: bool
    versions: int
    problems: tuple[str, ...]
    signatures_checked: bool = False


class PolicyRepository:
    """The live policy file, its version history, and the only code that writes either."""

    def __init__(
        self,
        policy_path: Path,
        state_dir: Path,
        *,
        signer: Signer | None,
        verifier: Verifier | None,
        require_signature: bool = False,
        high_water: HighWaterStore | None = None,
    ) -> None:
        if require_signature and verifier is None:
            raise SigningError(
                "require_signature needs a verification key (public key or hmac secret)",
                code="verifier_required",
            )
        self.policy_path = Path(policy_path)
        self.state_dir = Path(state_dir)
        self.require_signature = require_signature
        self._signer = signer
        self._verifier = verifier
        self._log = self.state_dir / "contracts.jsonl"
        self._pending = self.state_dir / "pending.json"
        self._archive_dir = self.state_dir / "policies"
        self._high_water = high_water or FileHighWaterStore(self.state_dir / "policy-high-water.json")
        # Policies already checked against their archive and contract, keyed by the whole
        # contract so that an edited log record misses the cache and is checked afresh.
        self._verified: dict[Contract, Policy] = {}

    # -- reading ---------------------------------------------------------------------------

    def contracts(self) -> list[Contract]:
        """Every committed contract, oldest first (a record being appended right now is skipped)."""
        return self._read_log()[0]

    def head(self) -> Contract | None:
        contracts = self.contracts()
        return contracts[-1] if contracts else None

    def get_policy(self, digest: str) -> Policy | None:
        """The archived policy with ``digest``, checked against its contract; None if never live."""
        contract = next((c for c in reversed(self.contracts()) if c.digest == digest), None)
        if contract is None:
            return None
        return self._archived(contract)

    def verify_chain(self) -> ChainReport:
        """Check every version: links, consecutive numbers, archive digests and signatures."""
        try:
            contracts, torn = self._read_log()
        except RepositoryError as exc:
            return ChainReport(False, 0, (str(exc),), self._verifier is not None)
        problems = _link_problems(contracts)
        if torn:
            problems.append("`contracts.jsonl` ends in a partial record (interrupted commit)")
        if self._pending.exists():
            problems.append("an interrupted commit is waiting in `pending.json`; the next load completes it")
        for contract in contracts:
            try:
                policy = self._read_archive(contract)
            except NegotiationError as exc:
                problems.append(f"v{contract.version}: {exc}")
                continue
            problem = self._signature_problem(contract, policy)
            if problem is not None:
                problems.append(f"v{contract.version}: {problem}")
        try:
            self._check_rollback(contracts)
        except PolicyTamperedError as exc:
            problems.append(str(exc))
        return ChainReport(not problems, len(contracts), tuple(problems), self._verifier is not None)

    def high_water(self) -> HighWater | None:
        """The highest version recorded as accepted (``PolicyTamperedError`` if unreadable)."""
        return self._high_water.read()

    # -- the locked operations ---------------------------------------------------------------

    def load(self) -> ActivePolicy:
        """The policy to serve now: the head version, or the live file recorded as a new one.

        Raises ``PolicyLoadError`` for a live file that does not load, ``PolicyTamperedError``
        for a history or edit that fails the signature rules, ``RepositoryError`` for a
        state directory that cannot be made sense of.
        """
        with self._locked():
            contracts = self._recover()
            self._check_rollback(contracts)
            text, policy = self._read_live()
            head = contracts[-1] if contracts else None
            if head is not None and policy.digest == head.digest:
                self._check_head(contracts)
                self._raise_high_water(head)
                return ActivePolicy(policy, head.version, head)
            if self.require_signature:
                what = "has no recorded version yet" if head is None else "differs from the signed head"
                raise PolicyTamperedError(
                    f"`{self.policy_path}` {what} and require_signature is on; "
                    "sign it with `securegateway policy sign` or restore the signed file",
                    code="policy_unsigned",
                )
            return self._record(
                contracts,
                policy,
                text,
                approver="bootstrap" if head is None else "operator",
                proposal_id=None,
                justification=None,
                write_live=False,
            )

    def commit(
        self,
        new_policy: Policy,
        *,
        proposal_id: str | None,
        justification: str | None,
        approver: str,
        base_digest: str | None = None,
    ) -> ActivePolicy:
        """Make ``new_policy`` the next version and write it to the live file.

        ``base_digest``, when given, is the head the change was computed against; a head
        that has moved since raises ``RepositoryError("policy_conflict")``. So does a live
        file holding an edit not yet recorded, which this commit would otherwise erase.
        """
        with self._locked():
            contracts = self._recover()
            head = contracts[-1] if contracts else None
            if base_digest is not None and (head is None or head.digest != base_digest):
                raise RepositoryError(
                    f"the policy moved from `{base_digest}` to "
                    f"`{head.digest if head else None}` since this change was computed",
                    code="policy_conflict",
                )
            self._refuse_unrecorded_edit(head, new_policy)
            return self._record(
                contracts,
                new_policy,
                dump_policy_yaml(new_policy),
                approver=approver,
                proposal_id=proposal_id,
                justification=justification,
                write_live=True,
            )

    def sign_current(self, *, justification: str | None = None) -> ActivePolicy:
        """Record the live file as it stands as a new version signed by approver ``operator``.

        Used by ``securegateway policy sign``. If the file already is the head and the head's
        signature verifies with the configured key, nothing is written.
        """
        if self._signer is None:
            raise SigningError("signing needs a private key or hmac secret", code="signer_required")
        with self._locked():
            contracts = self._recover()
            text, policy = self._read_live()
            head = contracts[-1] if contracts else None
            if (
                head is not None
                and head.digest == policy.digest
                and self._verifier is not None
                and head.verify(self._verifier, policy.canonical())
            ):
                return ActivePolicy(policy, head.version, head)
            return self._record(
                contracts,
                policy,
                text,
                approver="operator",
                proposal_id=None,
                justification=justification,
                write_live=False,
            )

    def accept_rollback(self) -> tuple[HighWater | None, Contract]:
        """Accept the history's head as the newest version, lowering the high-water mark to it.

        The operator's override for a deliberate rollback (``policy verify --accept-rollback``).
        The head's links, archive and signature are still checked. Returns the previous mark
        and the head now accepted.
        """
        if self._signer is None:
            raise SigningError(
                "accepting a rollback signs the new mark: configure the signing key", code="signer_required"
            )
        with self._locked():
            contracts = self._recover()
            if not contracts:
                raise RepositoryError("there is no recorded policy version to accept")
            self._check_head(contracts)
            try:
                previous = self._high_water.read()
            except PolicyTamperedError:
                previous = None  # a mark that does not parse is replaced too: that is the point
            head = contracts[-1]
            self._high_water.write(HighWater(head.version, head.digest).sign(self._signer))
            return previous, head

    # -- internals ------------------------------------------------------------------------------

    def _check_rollback(self, contracts: list[Contract]) -> None:
        """With require_signature: refuse a history that ends before the version last accepted."""
        if not self.require_signature:
            return
        mark = self._high_water.read()
        if mark is None:
            return  # first start, or an upgrade: the mark is set by this load (trust on first use)
        assert self._verifier is not None  # require_signature guarantees one
        if not mark.verifies(self._verifier):
            raise PolicyTamperedError(
                f"the policy high-water mark (v{mark.version}) is unsigned or its signature does not verify; "
                "restore it, or accept the current history with `securegateway policy verify --accept-rollback`",
                code="policy_state_invalid",
            )
        head = contracts[-1] if contracts else None
        version = head.version if head else 0
        if version > mark.version or (head is not None and (head.version, head.digest) == (mark.version, mark.digest)):
            return
        what = f"ends at v{version} ({head.digest})" if head else "is empty"
        raise PolicyTamperedError(
            f"policy rollback refused: the history {what} but v{mark.version} ({mark.digest}) was accepted "
            "before; restore the newer contracts.jsonl and policy file, or accept this version on purpose "
            "with `securegateway policy verify --accept-rollback`",
            code="policy_rollback",
        )

    def _raise_high_water(self, contract: Contract) -> None:
        """Record ``contract`` as the newest accepted version if it is newer than the mark."""
        if self._signer is None:
            return
        try:
            mark = self._high_water.read()
        except PolicyTamperedError:
            if self.require_signature:
                raise
            mark = None
        if mark is not None and mark.version >= contract.version:
            return
        self._high_water.write(HighWater(contract.version, contract.digest).sign(self._signer))

    def _reached(self, step: str) -> None:
        """A named point between two durable writes; tests make it crash to check recovery."""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._archive_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "policy.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # flock belongs to the open file description, so this also serialises threads
            # of one process that each opened the lock file.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _record(
        self,
        contracts: list[Contract],
        policy: Policy,
        text: str,
        *,
        approver: str,
        proposal_id: str | None,
        justification: str | None,
        write_live: bool,
    ) -> ActivePolicy:
        if self.require_signature and self._signer is None:
            raise SigningError("require_signature is on but no signing key is configured", code="signer_required")
        head = contracts[-1] if contracts else None
        contract = Contract(
            version=head.version + 1 if head else 1,
            digest=policy.digest,
            parent_digest=head.digest if head else None,
            proposal_id=proposal_id,
            justification=justification,
            approver=approver,
            created_at=utc_now(),
        )
        if self._signer is not None:
            contract = contract.sign(self._signer, policy.canonical())
        line = _contract_line(contract)
        _atomic_write(self._archive_path(contract), text.encode("utf-8"))
        self._reached("archived")
        _atomic_write(self._pending, line)
        self._reached("pending")
        _append(self._log, line)
        self._reached("appended")
        if write_live:
            _atomic_write(self.policy_path, text.encode("utf-8"))
            self._reached("live")
        _remove(self._pending)
        self._verified[contract] = policy
        self._raise_high_water(contract)
        return ActivePolicy(policy, contract.version, contract)

    def _recover(self) -> list[Contract]:
        """Finish or erase an interrupted commit (see the module docstring); the log after."""
        contracts, torn = self._read_log()
        pending = self._read_pending()
        if pending is None:
            if torn:
                raise RepositoryError(f"`{self._log}` ends in a partial record and no commit is pending")
            self._remove_orphan_archives(contracts[-1].version if contracts else 0)
            return contracts
        if torn:
            _truncate_partial_line(self._log)
        head = contracts[-1] if contracts else None
        if head != pending:
            expected = (head.version + 1 if head else 1, head.digest if head else None)
            if (pending.version, pending.parent_digest) != expected:
                raise RepositoryError(
                    f"pending commit v{pending.version} does not follow the log's head v{head.version if head else 0}"
                )
            _append(self._log, _contract_line(pending))
            contracts.append(pending)
        archive = self._archive_path(pending)
        try:
            text = archive.read_bytes()
        except FileNotFoundError as exc:
            raise RepositoryError(f"pending commit v{pending.version} has no archive `{archive}`") from exc
        if self._live_digest() in (pending.parent_digest, None):
            _atomic_write(self.policy_path, text)
        _remove(self._pending)
        return contracts

    def _live_digest(self) -> str | None:
        """The live file's digest; None if it is missing, a marker string if it does not load."""
        if not self.policy_path.exists():
            return None
        try:
            return self._read_live()[1].digest
        except PolicyError:
            # A file that does not load is someone's edit in progress, never ours.
            return "unloadable"

    def _read_live(self) -> tuple[str, Policy]:
        """The live file's text and policy; ``PolicyLoadError`` if it is missing or invalid."""
        source = str(self.policy_path)
        text = read_capped(source, DEFAULT_MAX_BYTES)
        return text, load_policy_text(text, source)

    def _refuse_unrecorded_edit(self, head: Contract | None, new_policy: Policy) -> None:
        live = self._live_digest()
        if live is None or live == new_policy.digest or (head is not None and live == head.digest):
            return
        raise RepositoryError(
            f"`{self.policy_path}` holds an edit that is not recorded yet; load or sign it before committing over it",
            code="policy_conflict",
        )

    def _check_head(self, contracts: list[Contract]) -> None:
        """Refuse a broken chain of links, or a head whose archive or signature fails."""
        problems = _link_problems(contracts)
        if problems:
            raise PolicyTamperedError(f"the policy history is broken: {problems[0]}", code="chain_broken")
        self._archived(contracts[-1])

    def _archived(self, contract: Contract) -> Policy:
        """The archived policy of ``contract``, its digest and signature checked, or raise."""
        cached = self._verified.get(contract)
        if cached is not None:
            return cached
        policy = self._read_archive(contract)
        problem = self._signature_problem(contract, policy)
        if problem is not None:
            code = "policy_unsigned" if contract.signature is None else "signature_invalid"
            raise PolicyTamperedError(f"v{contract.version}: {problem}", code=code)
        self._verified[contract] = policy
        return policy

    def _read_archive(self, contract: Contract) -> Policy:
        path = self._archive_path(contract)
        if not path.exists():
            raise RepositoryError(f"archive `{path.name}` is missing")
        try:
            policy = load_policy_text(read_capped(path, DEFAULT_MAX_BYTES), str(path))
        except PolicyError as exc:  # we wrote it loadable; failing now means it was altered
            raise PolicyTamperedError(f"archive `{path.name}` no longer loads: {str(exc).splitlines()[0]}") from exc
        if policy.digest != contract.digest:
            raise PolicyTamperedError(f"archive `{path.name}` hashes to `{policy.digest}`, not its contract's")
        return policy

    def _signature_problem(self, contract: Contract, policy: Policy) -> str | None:
        if contract.signature is None:
            return "unsigned, and require_signature is on" if self.require_signature else None
        if self._verifier is None:
            return None  # nothing to check with; require_signature guarantees a verifier
        if not contract.verify(self._verifier, policy.canonical()):
            return f"signature does not verify (key `{contract.key_id}`, {contract.algorithm})"
        return None

    def _archive_path(self, contract: Contract) -> Path:
        hex12 = contract.digest.removeprefix("sha256:")[:12]
        return self._archive_dir / f"v{contract.version}-{hex12}.yaml"

    def _read_log(self) -> tuple[list[Contract], bool]:
        """The parsed log and whether its last line is torn (a crash mid-append)."""
        try:
            data = self._log.read_bytes()
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
                raise RepositoryError(f"`{self._log}:{lineno}`: {exc}") from exc
        return contracts, torn

    def _read_pending(self) -> Contract | None:
        try:
            data = self._pending.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Contract.from_dict(json.loads(data))
        except (ValueError, ContractError) as exc:
            raise RepositoryError(f"`{self._pending}`: {exc}") from exc

    def _remove_orphan_archives(self, head_version: int) -> None:
        for path in self._archive_dir.iterdir():
            match = _ARCHIVE_NAME.fullmatch(path.name)
            if match and int(match.group(1)) > head_version:
                path.unlink()


def _link_problems(contracts: list[Contract]) -> list[str]:
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


def _contract_line(contract: Contract) -> bytes:
    return canonical_bytes(contract.to_dict()) + b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader or a crash sees the old or the new bytes, whole."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; keep the file readable as it was
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _append(path: Path, line: bytes) -> None:
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def _truncate_partial_line(path: Path) -> None:
    data = path.read_bytes()
    with open(path, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    path.unlink()
    _fsync_dir(path.parent)
