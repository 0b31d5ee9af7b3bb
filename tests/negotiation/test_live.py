from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from negotiation.live import LivePolicy, watch_policy_file
from negotiation.repository import ActivePolicy, PolicyRepository
from negotiation.signing import HmacSigner, HmacVerifier

pytestmark = pytest.mark.anyio

SECRET = b"live policy test secret 32 bytes"


def policy_text(*tools: str) -> str:
    return "rules:\n  - id: docs\n    model: claude\n    allow_tools: [" + ", ".join(tools) + "]\n"


def replace_file(path: Path, text: str) -> None:
    """Save the way careful editors do: a new file renamed over the old one."""
    tmp = path.with_suffix(".swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_repo(tmp_path: Path, *, require_signature: bool = False) -> PolicyRepository:
    live = tmp_path / "policies.yaml"
    if not live.exists():
        live.write_text(policy_text("fs.read"))
    return PolicyRepository(
        live,
        tmp_path / "state",
        signer=HmacSigner(SECRET),
        verifier=HmacVerifier(SECRET),
        require_signature=require_signature,
    )


class Events:
    """An ``on_event`` sink that tests can await."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._changed = anyio.Event()

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        self.seen.append((name, data))
        self._changed.set()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data in self.seen if event == name]

    async def wait_for(self, name: str, count: int = 1) -> dict[str, Any]:
        with anyio.fail_after(10):
            while len(self.named(name)) < count:
                self._changed = anyio.Event()
                await self._changed.wait()
        return self.named(name)[count - 1]


@asynccontextmanager
async def watching(repo: PolicyRepository, live: LivePolicy, events: Events) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_policy_file(repo, live, on_event=events, interval=0.005))
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


# -- LivePolicy ---------------------------------------------------------------------------------


def with_version(active: ActivePolicy, version: int) -> ActivePolicy:
    return dataclasses.replace(active, version=version)


def test_swap_moves_forward_notifies_subscribers_and_refuses_older_versions(tmp_path: Path) -> None:
    v1 = make_repo(tmp_path).load()
    live = LivePolicy(v1)
    notified: list[int] = []
    unsubscribe = live.subscribe(lambda active: notified.append(active.version))

    assert live.swap(with_version(v1, 3))
    assert live.current.version == 3
    assert not live.swap(with_version(v1, 2))  # a stale reload
    assert not live.swap(with_version(v1, 3))  # the same version again
    assert live.current.version == 3 and notified == [3]

    unsubscribe()
    assert live.swap(with_version(v1, 4))
    assert notified == [3]


# -- the watcher ----------------------------------------------------------------------------------


async def test_a_valid_edit_is_activated_and_an_invalid_one_keeps_the_old_policy(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    live = LivePolicy(repo.load())
    events = Events()
    async with watching(repo, live, events):
        replace_file(repo.policy_path, policy_text("fs.read", "fs.list"))
        activated = await events.wait_for("policy.activated")
        assert live.current.version == 2
        assert activated["version"] == 2 and activated["previous_version"] == 1
        assert activated["approver"] == "operator" and activated["signed"] is True
        assert activated["digest"] == live.current.digest

        repo.policy_path.write_text("rules:\n  - id: docs\n    model: [unclosed\n")
        failed = await events.wait_for("policy.reload_failed")
        assert failed["code"] == "policy_invalid"
        assert failed["path"] == str(repo.policy_path)
        assert failed["live_version"] == 2 and "policies.yaml" in failed["error"]
        assert live.current.version == 2

        replace_file(repo.policy_path, policy_text("fs.read", "fs.stat"))
        fixed = await events.wait_for("policy.activated", count=2)
        assert fixed["version"] == 3 and live.current.version == 3
    assert len(events.named("policy.reload_failed")) == 1


async def test_an_unsigned_edit_under_require_signature_is_reported_and_not_served(tmp_path: Path) -> None:
    make_repo(tmp_path).load()  # v1 signed, while signing was optional
    repo = make_repo(tmp_path, require_signature=True)
    live = LivePolicy(repo.load())
    events = Events()
    async with watching(repo, live, events):
        replace_file(repo.policy_path, policy_text("everything.*"))
        failed = await events.wait_for("policy.reload_failed")
    assert failed["code"] == "policy_unsigned"
    assert live.current.version == 1
    assert repo.head() == live.current.contract


async def test_the_gateways_own_commit_is_not_announced_twice(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    v1 = repo.load()
    live = LivePolicy(v1)
    events = Events()
    async with watching(repo, live, events):
        committed = repo.commit(v1.policy, proposal_id=None, justification="no-op re-sign", approver="reviewer:ops")
        live.swap(committed)
        os.utime(repo.policy_path)  # a touch alone changes nothing either
        # A later, real edit proves the watcher has processed everything before it.
        replace_file(repo.policy_path, policy_text("fs.read", "fs.write"))
        activated = await events.wait_for("policy.activated")
    assert activated["version"] == 3 and activated["previous_version"] == 2
    assert len(events.seen) == 1


async def test_a_deleted_policy_file_is_reported_and_the_old_policy_kept(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    live = LivePolicy(repo.load())
    events = Events()
    async with watching(repo, live, events):
        repo.policy_path.unlink()
        failed = await events.wait_for("policy.reload_failed")
    assert failed["code"] == "policy_invalid"
    assert live.current.version == 1


# -- the first poll ----------------------------------------------------------------------------


def counting_loads(repo: PolicyRepository, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A spy on ``repo.load``: the list grows by one per call (the real load still runs)."""
    calls: list[int] = []
    real = repo.load

    def load() -> ActivePolicy:
        calls.append(1)
        return real()

    monkeypatch.setattr(repo, "load", load)
    return calls


def test_a_load_records_the_hash_of_the_bytes_it_read(tmp_path: Path) -> None:
    live_file = tmp_path / "policies.yaml"
    live_file.write_bytes(("# café, naïve\n" + policy_text("fs.read")).encode("utf-8"))
    active = make_repo(tmp_path).load()
    assert active.source_sha256 == hashlib.sha256(live_file.read_bytes()).hexdigest()


async def test_the_first_poll_does_not_reparse_the_file_already_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)
    live = LivePolicy(repo.load())
    loads = counting_loads(repo, monkeypatch)
    events = Events()
    async with watching(repo, live, events):
        await anyio.sleep(0.2)  # forty polls
        assert loads == [] and events.seen == []
        replace_file(repo.policy_path, policy_text("fs.read", "fs.list"))
        activated = await events.wait_for("policy.activated")
    assert activated["version"] == 2 and loads  # the spy sees the reload an edit causes


async def test_an_edit_between_the_start_up_load_and_the_watchers_start_is_picked_up(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    live = LivePolicy(repo.load())
    replace_file(repo.policy_path, policy_text("fs.read", "fs.write"))  # before the watcher runs
    events = Events()
    async with watching(repo, live, events):
        activated = await events.wait_for("policy.activated")
    assert activated["version"] == 2
    assert live.current.version == 2 and "fs.write" in live.current.policy.rules[0].allow_tools
