"""The negotiation service: propose, review, merge, recover — one lock, every step audited.

``NegotiationService`` is synchronous on purpose: the proxy calls it from a worker thread
(``anyio.to_thread.run_sync``) and the reviewers' CLI calls it directly. Proposals and
reviews are serialised by one lock, so a review always merges into the policy that is live
at that moment.

Durability: a proposal is written to the store *before* anything is merged. An approved
proposal becomes ``merged`` only after ``repo.commit`` (which signs) and ``live.swap``; if
the process dies in between, ``recover()`` on the next start either finishes the merge or,
when the repository already holds a contract for the proposal, just records it. Either way
each proposal is merged exactly once.

Audit events (``audit(type, payload)``), each carrying the full proposal — YAML,
justification, model id, verdicts, diff — and, once merged, the signed contract:
``proposal.proposed``, ``proposal.validated``, ``proposal.auto_reviewed``,
``proposal.approved``, ``proposal.rejected``, ``proposal.expired``, ``proposal.merged``,
``policy.activated``; and ``proposal.merge_failed`` when recovery finds an approved
proposal that no longer merges.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn

from negotiation.errors import InvalidStateError, MergeConflictError, NegotiationError, RepositoryError
from negotiation.guardrails import Assessment, GuardrailConfig, Verdict, assess, status_of
from negotiation.live import LivePolicy
from negotiation.merge import DiffEntry
from negotiation.proposal import Proposal, ProposalStatus, new_proposal_id
from negotiation.repository import ActivePolicy, PolicyRepository
from negotiation.store import ProposalStore
from negotiation.text_safety import original_digest, redact_text, text_verdicts
from policy import KeyRing, ModelIdentity

__all__ = ["GUARDRAIL_REVIEWER", "NegotiationService", "ProposalOutcome"]

AuditSink = Callable[[str, Mapping[str, Any]], None]

# The reviewer recorded on a proposal the guardrails decided, and on TTL expiry.
GUARDRAIL_REVIEWER = "guardrail"
_TTL_REVIEWER = "ttl"
_RESERVED_REVIEWERS = frozenset({GUARDRAIL_REVIEWER, _TTL_REVIEWER})
_MAX_JUSTIFICATION = 4096
_MAX_REVIEWER = 200
# What a refused oversized snippet keeps in the store and the audit log.
_EXCERPT_CHARS = 1024
_COMMIT_ATTEMPTS = 3


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ProposalOutcome:
    """What the proposer is told. ``version`` and ``contract`` are set once merged."""

    status: Literal["approved", "pending", "rejected"]
    proposal_id: str
    reasons: tuple[str, ...]
    verdicts: tuple[Verdict, ...]
    diff: tuple[DiffEntry, ...]
    version: int | None = None
    contract: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "proposal_id": self.proposal_id,
            "reasons": list(self.reasons),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "diff": [d.to_dict() for d in self.diff],
        }
        if self.version is not None:
            out["version"] = self.version
        if self.contract is not None:
            out["contract"] = dict(self.contract)
        return out


class NegotiationService:
    """Runs proposals through the guardrails, reviews, merges and recovery."""

    def __init__(
        self,
        store: ProposalStore,
        repo: PolicyRepository,
        live: LivePolicy,
        keys_provider: Callable[[], KeyRing],
        config: GuardrailConfig,
        *,
        audit: AuditSink,
        known_tools: Callable[[], Iterable[str]],
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.repo = repo
        self.live = live
        self.config = config
        self._keys = keys_provider
        self._audit = audit
        self._known_tools = known_tools
        self._clock = clock
        self._lock = threading.RLock()

    # -- proposing -------------------------------------------------------------------------

    def identity(self, model_id: str) -> ModelIdentity | None:
        """The key-ring identity for ``model_id``, if there is one."""
        return self._keys().get(model_id)

    def propose(
        self,
        model_id: str,
        yaml_text: object,
        justification: object,
        *,
        session_risk: float = 0.0,
    ) -> ProposalOutcome:
        """Record a proposal and judge it; auto-approved proposals are merged before returning.

        ``model_id`` must be the caller's authenticated identity. ``yaml_text`` and
        ``justification`` are taken as received (``object``) because they come straight off
        the wire: a wrong type is a rejected proposal, never an exception.

        Cheap to refuse: a proposer without ``can_propose``, or one over its refusal rate
        limit, is answered before anything it sent is parsed, and only the digest and size
        of what it sent are stored and audited. Everything stored or audited is redacted
        (secrets masked like call arguments; ``original_digest`` keeps the proof).
        """
        with self._lock:
            now = self._clock()
            risk = session_risk if math.isfinite(session_risk) else 1.0  # NaN fails closed
            text, reason, problems = _arguments(yaml_text, justification)
            refusal = self._refusal(model_id, now)
            if refusal is not None:
                return self._refuse_cheaply(model_id, text, reason, refusal, now, risk)
            stored_text, text_masked = redact_text(self._stored_yaml(text), "yaml")
            stored_reason, _ = redact_text(reason[:_MAX_JUSTIFICATION], "justification")
            proposal = Proposal(
                id=new_proposal_id(),
                model_id=model_id,
                yaml=stored_text,
                justification=stored_reason,
                status=ProposalStatus.PENDING,
                created_at=now,
                expires_at=now + timedelta(hours=self.config.pending_ttl_hours),
                session_risk=risk,
                original_digest=original_digest(text, reason),
            )
            self._emit("proposal.proposed", proposal)
            # The stored (redacted) text is what is judged, shown and merged: one text.
            oversized = len(text.encode("utf-8")) > self.config.max_snippet_bytes
            assessment = self._assess(proposal, text if oversized else stored_text, problems, risk, now)
            verdicts = assessment.verdicts + text_verdicts(stored_text if oversized else text, reason)
            if text_masked:
                # A policy is no place for a credential, and the masked text may no longer
                # load: refuse it, keeping only the masked copy.
                masked = "the snippet holds a secret; policies must not carry credentials (stored masked)"
                verdicts += (Verdict("secret_in_snippet", False, masked),)
            assessment = replace(assessment, verdicts=verdicts, status=status_of(verdicts))
            proposal = replace(proposal, verdicts=assessment.verdicts, diff=assessment.diff)
            self._emit("proposal.validated", proposal)
            self._emit("proposal.auto_reviewed", proposal, outcome=assessment.status)

            if assessment.status == "pending":
                self.store.add(proposal)
                return self._outcome(proposal, assessment)
            if assessment.status == "rejected":
                proposal = proposal.advance(ProposalStatus.REJECTED, at=now, reviewer=GUARDRAIL_REVIEWER)
                self.store.add(proposal)
                self._emit("proposal.rejected", proposal)
                return self._outcome(proposal, assessment)
            proposal = proposal.advance(ProposalStatus.APPROVED, at=now, reviewer=GUARDRAIL_REVIEWER)
            try:
                # Intent before effect: the approval is audited before it is stored, and
                # nothing is stored as approved (so recovery could merge it) unless it was.
                self._emit("proposal.approved", proposal)
            except Exception as exc:
                refused = replace(
                    proposal, status=ProposalStatus.REJECTED,
                    verdicts=(*proposal.verdicts, _audit_down(exc)),
                )
                self.store.add(refused)
                return self._outcome(refused, replace(assessment, status="rejected", verdicts=refused.verdicts))
            self.store.add(proposal)  # durable before anything is merged
            try:
                merged, active, note = self._merge(proposal)
            except NegotiationError as exc:
                if exc.code != "audit_unavailable":
                    raise
                refused = self.store.get(proposal.id)
                return self._outcome(refused, replace(assessment, status="rejected", verdicts=refused.verdicts))
            return self._outcome(merged, assessment, active, note)

    def _refusal(self, model_id: str, now: datetime) -> Verdict | None:
        """Why ``model_id`` is refused before its proposal is even read, if it is."""
        identity = self._keys().get(model_id)
        if identity is None or not identity.can_propose:
            why = "is not a known model" if identity is None else "may not propose policy changes"
            return Verdict("model_not_authorized", False, f"`{model_id}` {why}")
        window = timedelta(minutes=self.config.refused_window_minutes)
        refused = self.store.count(model_id, ProposalStatus.REJECTED, since=now - window)
        if refused >= self.config.max_refused_per_window:
            return Verdict(
                "rate_limited",
                False,
                f"`{model_id}` had {refused} proposals refused in the last "
                f"{self.config.refused_window_minutes:g} minutes (limit {self.config.max_refused_per_window}); "
                "try again later",
            )
        return None

    def _refuse_cheaply(
        self, model_id: str, text: str, reason: str, verdict: Verdict, now: datetime, risk: float
    ) -> ProposalOutcome:
        """Refuse without keeping what was sent: its digest and size stand in for it. A
        proposer that is not authorised is refused once per window in the store, then only
        audited (a few hundred bytes each), so refusals cannot fill the disk."""
        size = len(text.encode("utf-8")) + len(reason.encode("utf-8"))
        stand_in = f"# [not stored: {size} bytes, {original_digest(text, reason)}]\n"
        proposal = Proposal(
            id=new_proposal_id(),
            model_id=model_id,
            yaml=stand_in,
            justification="[not stored]",
            status=ProposalStatus.REJECTED,
            created_at=now,
            expires_at=now,
            verdicts=(verdict,),
            reviewer=GUARDRAIL_REVIEWER,
            decided_at=now,
            session_risk=risk,
            original_digest=original_digest(text, reason),
        )
        window = timedelta(minutes=self.config.refused_window_minutes)
        recent = self.store.count(model_id, ProposalStatus.REJECTED, since=now - window)
        if verdict.code != "rate_limited" and recent < self.config.max_refused_per_window:
            self.store.add(proposal)  # past the limit: audited (small), not stored
        self._emit("proposal.rejected", proposal, size=size)
        return self._outcome(proposal, Assessment("rejected", (verdict,)))

    def _assess(
        self,
        proposal: Proposal,
        text: str,
        problems: list[str],
        risk: float,
        now: datetime,
    ) -> Assessment:
        keys = self._keys()  # one key ring for the whole judgement
        identity = keys.get(proposal.model_id)
        if identity is None or not identity.can_propose:
            why = "is not a known model" if identity is None else "may not propose policy changes"
            return Assessment(
                "rejected",
                (Verdict("model_not_authorized", False, f"`{proposal.model_id}` {why}"),),
            )
        if problems:
            return Assessment("rejected", tuple(Verdict("bad_arguments", False, p) for p in problems))
        waiting = self.store.count(proposal.model_id, ProposalStatus.PENDING)
        if waiting >= self.config.max_pending_per_model:
            return Assessment("rejected", (Verdict(
                "too_many_pending", False,
                f"`{proposal.model_id}` already has {waiting} proposals waiting for review "
                f"(limit {self.config.max_pending_per_model})",
            ),))
        return assess(
            text,
            proposer=identity,
            live=self._base().policy,
            keys=keys,
            known_tools=self._known_tools(),
            config=self.config,
            session_risk=risk,
            now=now,
        )

    def _stored_yaml(self, text: str) -> str:
        # An oversized snippet is refused unread; keeping all of it would let a model fill
        # the disk and the audit log, so only an excerpt and its digest are kept.
        size = len(text.encode("utf-8"))
        if size <= self.config.max_snippet_bytes:
            return text
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return f"{text[:_EXCERPT_CHARS]}\n# [truncated: {size} bytes, sha256 {sha}]\n"

    def vet_suggestion(self, model_id: str, rule: Mapping[str, Any], *, session_risk: float = 0.0) -> Any:
        """What proposing ``rule`` (a denial's suggestion) would lead to; see ``negotiation.suggest``."""
        from negotiation.suggest import vet_suggestion

        return vet_suggestion(
            rule,
            model_id=model_id,
            live=self.live.current.policy,
            keys=self._keys(),
            config=self.config,
            session_risk=session_risk,
            now=self._clock(),
        )

    # -- reviewing -------------------------------------------------------------------------

    def get(self, proposal_id: str) -> Proposal:
        return self.store.get(proposal_id)

    def list(self, status: ProposalStatus | str | None = None) -> tuple[Proposal, ...]:
        return self.store.list(ProposalStatus(status) if status is not None else None)

    def current_diff(self, proposal_id: str) -> tuple[DiffEntry, ...]:
        """What approving the proposal would change in the policy that is live now."""
        with self._lock:
            proposal = self.store.get(proposal_id)
            return self._reassess(proposal).diff

    def approve(self, proposal_id: str, *, reviewer: str, comment: str = "") -> Proposal:
        """Approve a pending proposal and merge it into the live policy at once.

        The snippet is judged again against the policy and key ring of *now*: if it no
        longer loads, merges or passes the hard checks, ``MergeConflictError`` says why and
        the proposal stays pending.
        """
        reviewer = _checked_reviewer(reviewer)
        comment = _storable(comment)[0]
        with self._lock:
            proposal = self._pending(proposal_id)
            # Judged before the approval is recorded, so a proposal that no longer applies
            # stays pending rather than stuck approved.
            assessment = self._reassess(proposal)
            if assessment.status == "rejected" or assessment.merged is None:
                raise MergeConflictError(
                    f"proposal `{proposal_id}` no longer applies to the live policy: " + "; ".join(assessment.reasons)
                )
            approved = proposal.advance(ProposalStatus.APPROVED, at=self._clock(), reviewer=reviewer, comment=comment)
            approved = replace(approved, diff=assessment.diff)  # the diff actually applied
            # Intent before effect: an approval the audit log cannot record is not made.
            try:
                self._emit("proposal.approved", approved)
            except Exception as exc:
                raise NegotiationError(
                    f"the approval of `{proposal_id}` could not be audited ({type(exc).__name__}); nothing changed",
                    code="audit_unavailable",
                ) from exc
            self.store.update(approved, expected=ProposalStatus.PENDING)
            merged, _, _ = self._merge(approved)
            return merged

    def reject(self, proposal_id: str, *, reviewer: str, comment: str = "") -> Proposal:
        reviewer = _checked_reviewer(reviewer)
        comment = _storable(comment)[0]
        with self._lock:
            proposal = self._pending(proposal_id)
            rejected = proposal.advance(ProposalStatus.REJECTED, at=self._clock(), reviewer=reviewer, comment=comment)
            self.store.update(rejected, expected=ProposalStatus.PENDING)
            self._emit("proposal.rejected", rejected)
            return rejected

    def expire_pending(self) -> tuple[Proposal, ...]:
        """Expire every pending proposal past its TTL; returns the ones expired now."""
        with self._lock:
            expired = self.store.expire_pending(self._clock())
            for proposal in expired:
                self._emit("proposal.expired", proposal)
            return expired

    def _pending(self, proposal_id: str) -> Proposal:
        proposal = self.store.get(proposal_id)
        if proposal.status is ProposalStatus.PENDING and proposal.expires_at <= self._clock():
            self.expire_pending()
            proposal = self.store.get(proposal_id)
        if proposal.status is not ProposalStatus.PENDING:
            raise InvalidStateError(f"proposal `{proposal_id}` is {proposal.status.value}, not pending")
        return proposal

    def _reassess(self, proposal: Proposal, base: ActivePolicy | None = None) -> Assessment:
        """Judge a stored proposal again, against ``base`` or the policy live now."""
        keys = self._keys()
        identity = keys.get(proposal.model_id)
        if identity is None:
            raise MergeConflictError(f"model `{proposal.model_id}` is no longer in the key ring")
        return assess(
            proposal.yaml,
            proposer=identity,
            live=(base or self._base()).policy,
            keys=keys,
            known_tools=self._known_tools(),
            config=self.config,
            session_risk=proposal.session_risk,
            now=self._clock(),
        )

    # -- merging and recovery --------------------------------------------------------------

    def recover(self) -> tuple[Proposal, ...]:
        """Finish every proposal left ``approved`` by a crash; returns those now merged.

        Idempotent: a proposal whose contract is already in the repository's chain is only
        marked merged, never committed a second time. A proposal that no longer merges stays
        ``approved``, is audited as ``proposal.merge_failed`` and does not stop the others.
        """
        with self._lock:
            done = []
            for proposal in self.store.list(ProposalStatus.APPROVED):
                contract = next((c for c in reversed(self.repo.contracts()) if c.proposal_id == proposal.id), None)
                if contract is not None:
                    active = self._base()  # the crash may also have kept the live swap from happening
                    merged = proposal.advance(ProposalStatus.MERGED, at=self._clock(), contract=contract.to_dict())
                    # Audited first, stored after: a failure here leaves it approved, to be
                    # finished (and audited) by the next recovery.
                    self._emit("proposal.merged", merged, version=contract.version, recovered=True)
                    self._emit("policy.activated", merged, version=contract.version, digest=contract.digest,
                               recovered=True, live_version=active.version)
                    self.store.update(merged, expected=ProposalStatus.APPROVED)
                    done.append(merged)
                    continue
                try:
                    merged, _, _ = self._merge(proposal)
                except MergeConflictError as exc:
                    self._emit("proposal.merge_failed", proposal, code=exc.code, error=exc.message)
                    continue
                except NegotiationError as exc:
                    if exc.code != "audit_unavailable":
                        raise
                    continue  # closed as rejected: nothing was committed
                done.append(merged)
            return tuple(done)

    def _base(self) -> ActivePolicy:
        """The policy to merge into: the repository's head, which is the live policy unless
        another process (the reviewers' CLI) committed a version this one has not loaded yet
        — then that version is swapped in first."""
        head = self.repo.load()
        if head.version != self.live.current.version:
            self.live.swap(head)
        return head

    def _merge(self, proposal: Proposal) -> tuple[Proposal, ActivePolicy, Verdict | None]:
        """Commit (and so sign) ``proposal`` on top of the head, swap it live, mark it merged.

        The snippet is judged again against the exact base it is merged into, on every
        attempt: whatever the guardrails approved must still be approvable there, and what a
        reviewer approved must still not be refused outright. If another process commits in
        between, the repository refuses (``policy_conflict``) and the merge is redone.

        Intent before effect: ``proposal.merge_intent`` (base version, the digest about to go
        live) is audited before the commit; if it cannot be, nothing is committed and the
        error propagates. Once the commit is done the change is live whatever happens next:
        ``proposal.merged`` and ``policy.activated`` are audited, and only then is the
        proposal stored as merged. If those events fail, the proposal stays ``approved``
        and ``recover()`` writes them later; the returned note says so, and the proposer is
        told the truth — the change is live.

        A proposal that adds nothing (everything already allowed) is marked merged with no
        new version.
        """
        for attempt in range(_COMMIT_ATTEMPTS):
            base = self._base()
            assessment = self._reassess(proposal, base)
            by_guardrail = proposal.reviewer == GUARDRAIL_REVIEWER
            acceptable = assessment.status == "approved" if by_guardrail else assessment.status != "rejected"
            if not acceptable or assessment.merged is None:
                raise MergeConflictError(
                    f"proposal `{proposal.id}` no longer applies to policy version {base.version}: "
                    + "; ".join(assessment.reasons)
                )
            if assessment.changes_nothing:
                merged = proposal.advance(ProposalStatus.MERGED, at=self._clock())
                self._emit("proposal.merged", merged, version=base.version, unchanged=True)
                self.store.update(merged, expected=ProposalStatus.APPROVED)
                return merged, base, None
            new_policy = assessment.merged.policy
            try:
                self._emit(
                    "proposal.merge_intent", proposal,
                    base_version=base.version, base_digest=base.policy.digest, digest=new_policy.digest,
                    added_rules=list(assessment.merged.added), replaced_rules=list(assessment.merged.replaced),
                )
            except Exception as exc:
                self._abort(proposal, exc)
            try:
                active = self.repo.commit(
                    new_policy,
                    proposal_id=proposal.id,
                    justification=proposal.justification,
                    approver=_approver(proposal),
                    base_digest=base.policy.digest,
                )
                break
            except RepositoryError as exc:
                if exc.code != "policy_conflict" or attempt == _COMMIT_ATTEMPTS - 1:
                    raise
        self.live.swap(active)
        contract = active.contract.to_dict() if active.contract is not None else None
        merged = proposal.advance(ProposalStatus.MERGED, at=self._clock(), contract=contract)
        try:
            self._emit("proposal.merged", merged, version=active.version)
            self._emit("policy.activated", merged, version=active.version, digest=active.policy.digest)
        except Exception as exc:  # the change is live: say so, and leave the rest to recovery
            note = Verdict(
                "audit_delayed",
                True,
                f"the change is live as policy version {active.version}, but its audit events could not be "
                f"written ({type(exc).__name__}); they are written when the gateway next recovers",
            )
            return replace(proposal, contract=contract), active, note
        self.store.update(merged, expected=ProposalStatus.APPROVED)
        return merged, active, None

    def _abort(self, proposal: Proposal, exc: Exception) -> NoReturn:
        """The merge's intent could not be audited: nothing was committed. The proposal is
        closed as rejected so that no later recovery merges it behind everyone's back."""
        verdict = _audit_down(exc, "merge")
        aborted = proposal.advance(ProposalStatus.REJECTED, at=self._clock())
        self.store.update(replace(aborted, verdicts=(*aborted.verdicts, verdict)), expected=ProposalStatus.APPROVED)
        raise NegotiationError(verdict.message, code="audit_unavailable") from exc

    def _outcome(
        self,
        proposal: Proposal,
        assessment: Assessment,
        active: ActivePolicy | None = None,
        note: Verdict | None = None,
    ) -> ProposalOutcome:
        live = proposal.status is ProposalStatus.MERGED or active is not None
        status: Literal["approved", "pending", "rejected"] = "approved" if live else assessment.status
        return ProposalOutcome(
            status=status,
            proposal_id=proposal.id,
            reasons=assessment.reasons,
            verdicts=proposal.verdicts + ((note,) if note is not None else ()),
            diff=proposal.diff,
            version=active.version if active else None,
            contract=proposal.contract,
        )

    def _emit(self, event: str, proposal: Proposal, **extra: Any) -> None:
        self._audit(event, {**proposal.to_dict(), **extra})


def _audit_down(exc: BaseException, what: str = "approval") -> Verdict:
    return Verdict(
        "audit_unavailable",
        False,
        f"the {what} could not be audited ({type(exc).__name__}), so nothing was merged; propose again later",
    )


def _storable(value: str) -> tuple[str, bool]:
    """``value`` as text SQLite and JSON can hold, and whether it already was (lone
    surrogates, which JSON escapes can carry, are not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8"), False
    return value, True


def _arguments(yaml_text: object, justification: object) -> tuple[str, str, list[str]]:
    """The proposal's text fields, safe to store and audit, and what is wrong with them."""
    problems: list[str] = []
    text, text_ok = _storable(yaml_text) if isinstance(yaml_text, str) else ("", False)
    if not isinstance(yaml_text, str):
        problems.append("`yaml` must be a string holding a policy snippet")
    elif not text_ok:
        problems.append("`yaml` is not valid unicode")
    reason, reason_ok = _storable(justification) if isinstance(justification, str) else ("", True)
    if not isinstance(justification, str) or not justification.strip():
        problems.append("`justification` must be a non-empty string")
    elif not reason_ok:
        problems.append("`justification` is not valid unicode")
    elif len(justification) > _MAX_JUSTIFICATION:
        problems.append(f"`justification` is longer than {_MAX_JUSTIFICATION} characters")
    return text, reason, problems


def _approver(proposal: Proposal) -> str:
    if proposal.reviewer == GUARDRAIL_REVIEWER:
        return GUARDRAIL_REVIEWER
    return f"reviewer:{proposal.reviewer}"


def _checked_reviewer(reviewer: str) -> str:
    name = reviewer.strip() if isinstance(reviewer, str) and _storable(reviewer)[1] else ""
    if not name or len(name) > _MAX_REVIEWER or any(c in name for c in "\r\n\t"):
        raise NegotiationError(
            f"a reviewer name is required (one line, at most {_MAX_REVIEWER} characters)",
            code="bad_request",
        )
    if name in _RESERVED_REVIEWERS:
        raise NegotiationError(f"reviewer name `{name}` is reserved", code="bad_request")
    return name
