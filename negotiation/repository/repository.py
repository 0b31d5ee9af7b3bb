"""The versioned policy repository: the live policy file plus its signed history.

On disk: ``<policy_path>``, the live policy file (policies.yaml), which operators may edit;
the history under ``<state_dir>`` (negotiation/repository/history.py); and
``<state_dir>/policy.lock``, an fcntl lock: one writer at a time, across processes. Every
operation that writes, and ``load()``, runs under the lock, so the gateway and a reviewer's
CLI can commit against one state directory.

**Commit order.** A commit writes, fsyncing each before the next
(negotiation/repository/files.py):

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

**No rollback**: see negotiation/repository/rollback.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

from negotiation.contracts import Contract, utc_now
from negotiation.errors import NegotiationError, PolicyTamperedError, RepositoryError, SigningError
from negotiation.high_water import FileHighWaterStore, HighWater, HighWaterStore
from negotiation.repository.files import append_line, atomic_write, exclusive_lock, remove, truncate_partial_line
from negotiation.repository.history import History, contract_line, link_problems
from negotiation.repository.rollback import RollbackGuard
from negotiation.signing import Signer, Verifier
from policy import Policy, PolicyError, dump_policy_yaml, load_policy_text
from policy.yaml_safe import DEFAULT_MAX_BYTES, read_capped

__all__ = ["ActivePolicy", "ChainReport", "PolicyRepository"]


@dataclasses.dataclass(frozen=True)
class ActivePolicy:
    """A policy together with the version and contract that made it live."""

    policy: Policy
    version: int
    contract: Contract | None
    # sha256 hex of the live file's bytes this was loaded from (``load()`` only), so the
    # watcher's first poll can tell the file it sees is the one already serving.
    source_sha256: str | None = dataclasses.field(default=None, compare=False)  # provenance, not identity

    @property
    def digest(self) -> str:
        return self.policy.digest


@dataclasses.dataclass(frozen=True)
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
        self._history = History(self.state_dir)
        self._log = self._history.log
        self._pending = self._history.pending
        self._archive_dir = self._history.archive_dir
        self._high_water = high_water or FileHighWaterStore(self.state_dir / "policy-high-water.json")
        self._rollback = RollbackGuard(
            self._high_water, signer=signer, verifier=verifier, require_signature=require_signature
        )
        # Policies already checked against their archive and contract, keyed by the whole
        # contract so that an edited log record misses the cache and is checked afresh.
        self._verified: dict[Contract, Policy] = {}
        self._live_loaded: tuple[str, Policy] | None = None  # the live file's last text and its parse

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
        problems = link_problems(contracts)
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
            source_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()  # read as strict UTF-8
            head = contracts[-1] if contracts else None
            if head is not None and policy.digest == head.digest:
                self._check_head(contracts)
                self._raise_high_water(head)
                return ActivePolicy(policy, head.version, head, source_sha256)
            if self.require_signature:
                what = "has no recorded version yet" if head is None else "differs from the signed head"
                raise PolicyTamperedError(
                    f"`{self.policy_path}` {what} and require_signature is on; "
                    "sign it with `securegateway policy sign` or restore the signed file",
                    code="policy_unsigned",
                )
            recorded = self._record(
                contracts,
                policy,
                text,
                approver="bootstrap" if head is None else "operator",
                proposal_id=None,
                justification=None,
                write_live=False,
            )
            return dataclasses.replace(recorded, source_sha256=source_sha256)

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
            head = contracts[-1]
            return self._rollback.accept(head), head

    # -- internals ------------------------------------------------------------------------------

    def _check_rollback(self, contracts: list[Contract]) -> None:
        self._rollback.check(contracts)

    def _raise_high_water(self, contract: Contract) -> None:
        self._rollback.raise_to(contract)

    def _reached(self, step: str) -> None:
        """A named point between two durable writes; tests make it crash to check recovery."""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._archive_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.state_dir / "policy.lock"):
            yield

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
        line = contract_line(contract)
        atomic_write(self._archive_path(contract), text.encode("utf-8"))
        self._reached("archived")
        atomic_write(self._pending, line)
        self._reached("pending")
        append_line(self._log, line)
        self._reached("appended")
        if write_live:
            atomic_write(self.policy_path, text.encode("utf-8"))
            self._reached("live")
        remove(self._pending)
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
            truncate_partial_line(self._log)
        head = contracts[-1] if contracts else None
        if head != pending:
            expected = (head.version + 1 if head else 1, head.digest if head else None)
            if (pending.version, pending.parent_digest) != expected:
                raise RepositoryError(
                    f"pending commit v{pending.version} does not follow the log's head v{head.version if head else 0}"
                )
            append_line(self._log, contract_line(pending))
            contracts.append(pending)
        archive = self._archive_path(pending)
        try:
            text = archive.read_bytes()
        except FileNotFoundError as exc:
            raise RepositoryError(f"pending commit v{pending.version} has no archive `{archive}`") from exc
        if self._live_digest() in (pending.parent_digest, None):
            atomic_write(self.policy_path, text)
        remove(self._pending)
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
        self._live_loaded = text, load_policy_text(text, source)
        return self._live_loaded

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
        problems = link_problems(contracts)
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
        return self._history.read_archive(contract, known=self._live_loaded)  # parsed once when the bytes match

    def _signature_problem(self, contract: Contract, policy: Policy) -> str | None:
        if contract.signature is None:
            return "unsigned, and require_signature is on" if self.require_signature else None
        if self._verifier is None:
            return None  # nothing to check with; require_signature guarantees a verifier
        if not contract.verify(self._verifier, policy.canonical()):
            return f"signature does not verify (key `{contract.key_id}`, {contract.algorithm})"
        return None

    def _archive_path(self, contract: Contract) -> Path:
        return self._history.archive_path(contract)

    def _read_log(self) -> tuple[list[Contract], bool]:
        return self._history.read()

    def _read_pending(self) -> Contract | None:
        return self._history.read_pending()

    def _remove_orphan_archives(self, head_version: int) -> None:
        self._history.remove_orphan_archives(head_version)
