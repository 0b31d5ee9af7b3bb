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


def test_batched_ids_are_uuid4_and_never_repeat_across_batches() -> None:
    import uuid

    from policy.entropy import _BATCH, uuid4_hex, uuid4_text

    hexes = [uuid4_hex() for _ in range(3 * _BATCH + 5)]
    texts = [uuid4_text() for _ in range(3 * _BATCH + 5)]
    assert len(set(hexes)) == len(hexes) and len(set(texts)) == len(texts)
    assert not {uuid.UUID(hex=h).hex for h in hexes} & {uuid.UUID(t).hex for t in texts}
    for parsed, text in [(uuid.UUID(hex=h), h) for h in hexes] + [(uuid.UUID(t), t) for t in texts]:
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert text in (parsed.hex, str(parsed))


def test_ids_are_unique_across_threads() -> None:
    import threading

    from policy.entropy import uuid4_text

    seen: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(uuid4_text() for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in seen for i in out]
    assert len(set(every)) == len(every) == 12000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_hands_out_none_of_its_parents_ids() -> None:
    new_event_id(), new_decision_id()  # both batches are filled in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, (new_event_id() + new_decision_id()).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parents = {new_event_id() for _ in range(300)} | {new_decision_id() for _ in range(300)}
    assert len(child) == 68 and child[:36] not in parents and child[36:] not in parents
