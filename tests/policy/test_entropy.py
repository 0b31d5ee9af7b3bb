"""The pooled random bytes behind decision and event ids: fresh each time, never shared with a fork."""

from __future__ import annotations

import os

import pytest

from policy.audit.event import new_event_id
from policy.decision import new_decision_id
from policy.entropy import random_bytes


def test_random_bytes_never_repeat_across_pool_refills() -> None:
    seen = {bytes(random_bytes(16)) for _ in range(2000)}  # several 4 KiB pools
    assert len(seen) == 2000
    assert all(len(chunk) == 16 for chunk in seen)


def test_ids_are_version_4_uuids_and_unique() -> None:
    ids = {new_decision_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and i[12] == "4" and i[16] in "89ab" for i in ids)
    event_ids = {new_event_id() for _ in range(1000)}
    assert len(event_ids) == 1000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_different_bytes_than_its_parent() -> None:
    random_bytes(16)  # the pool is filled in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, bytes(random_bytes(16)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != bytes(random_bytes(16))
