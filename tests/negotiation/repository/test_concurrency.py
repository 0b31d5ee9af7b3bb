"""Commits from two threads serialise."""

from __future__ import annotations

import threading

from tests.negotiation.repository.support import (
    Env,
    policy,
)


def test_concurrent_commits_from_two_threads_serialize(env: Env) -> None:
    env.repo().load()
    errors: list[BaseException] = []
    per_thread = 8

    def worker(name: str) -> None:
        repo = env.repo()  # its own instance and its own lock file descriptor
        try:
            for i in range(per_thread):
                repo.commit(policy(f"{name}.{i}"), proposal_id=f"{name}-{i}", justification=None, approver="guardrail")
        except BaseException as exc:  # report to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    contracts = env.repo().contracts()
    assert [c.version for c in contracts] == list(range(1, 2 + 2 * per_thread))
    assert {c.proposal_id for c in contracts[1:]} == {f"{n}-{i}" for n in "ab" for i in range(per_thread)}
    assert env.repo().verify_chain().ok
    assert env.repo().load().digest == contracts[-1].digest

