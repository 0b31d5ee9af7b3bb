"""policy.audit.head: the sidecar's fixed-size record."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from policy.audit.checkpoint import Checkpoint
from policy.audit.head import (
    _HEAD_SIZE,
    HEAD_SCHEMA,
    LAGGING_HEAD_SCHEMA,
    SIGNED_HEAD_SCHEMA,
    Head,
    checkpoint_json,
    head_record_bytes,
)

_hashes = st.one_of(
    st.builds(lambda digits: "sha256:" + digits, st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
    st.text(max_size=80),  # anything else is written as json.dumps writes it
    st.sampled_from(['sha"quote', "back\\slash", "del\x7f", "tab\t", "\u00e9", "\ud800"]),
)


def _reference(head: Head, checkpoint: Checkpoint | None) -> bytes:
    schema = HEAD_SCHEMA
    if checkpoint is not None:
        same = (checkpoint.seq, checkpoint.hash) == (head.seq, head.hash)
        schema = SIGNED_HEAD_SCHEMA if same else LAGGING_HEAD_SCHEMA
    record: dict[str, object] = {"schema": schema, "seq": head.seq, "hash": head.hash}
    if checkpoint is not None:
        record["checkpoint"] = checkpoint.to_dict()
    return json.dumps(record, separators=(",", ":")).encode("ascii").ljust(_HEAD_SIZE - 1) + b"\n"


@given(seq=st.integers(min_value=0, max_value=2**70), hash_=_hashes,
       signed=st.sampled_from(["none", "same", "lagging"]))
def test_the_sidecar_record_is_the_json_of_the_head_and_its_checkpoint(seq: int, hash_: str, signed: str) -> None:
    head = Head(seq, hash_)
    checkpoint = None
    if signed != "none":
        at = (seq, hash_) if signed == "same" else (max(seq - 7, 0), "sha256:" + "0" * 64)
        checkpoint = Checkpoint(at[0], at[1], "hmac-sha256", "0123456789abcdef", "c2lnbmF0dXJl")
    record = head_record_bytes(head, checkpoint)
    assert record == _reference(head, checkpoint)
    if checkpoint is not None:  # the writer's kept json of the checkpoint gives the same record
        assert head_record_bytes(head, checkpoint, checkpoint_json(checkpoint)) == record
    if len(record) == _HEAD_SIZE:
        assert json.loads(record)["seq"] == seq
