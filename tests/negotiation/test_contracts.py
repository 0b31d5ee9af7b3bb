from __future__ import annotations

import json
from typing import Any

import pytest

from negotiation.contracts import Contract, utc_now
from negotiation.errors import ContractError
from negotiation.signing import HmacSigner, HmacVerifier

DIGEST = "sha256:" + "ab" * 32
PARENT = "sha256:" + "cd" * 32
SECRET = b"a shared secret for the tests"


def make(**overrides: Any) -> Contract:
    fields: dict[str, Any] = {
        "version": 2,
        "digest": DIGEST,
        "parent_digest": PARENT,
        "proposal_id": "prop-7",
        "justification": "let the model read `docs/` — needed for the summary task",
        "approver": "reviewer:alice",
        "created_at": "2025-01-31T12:00:00.000Z",
    }
    fields.update(overrides)
    return Contract(**fields)


def test_signed_bytes_are_canonical_json_whatever_the_dict_order() -> None:
    contract = make()
    one = {"rules": [{"id": "r1", "effect": "allow"}], "settings": {"default": "deny", "b": 1}}
    other = {"settings": {"b": 1, "default": "deny"}, "rules": [{"effect": "allow", "id": "r1"}]}
    assert contract.signed_bytes(one) == contract.signed_bytes(other)
    assert (
        contract.signed_bytes(one)
        == (
            '{"approver":"reviewer:alice","created_at":"2025-01-31T12:00:00.000Z",'
            '"justification":"let the model read `docs/` — needed for the summary task",'
            f'"parent_digest":"{PARENT}",'
            '"policy":{"rules":[{"effect":"allow","id":"r1"}],"settings":{"b":1,"default":"deny"}},'
            '"proposal_id":"prop-7","version":2}'
        ).encode()
    )


def test_signed_bytes_cover_every_field_that_explains_the_version() -> None:
    policy = {"rules": []}
    base = make().signed_bytes(policy)
    for change in (
        {"version": 3},
        {"parent_digest": None},
        {"proposal_id": "prop-8"},
        {"justification": "other"},
        {"approver": "operator"},
        {"created_at": "2025-01-31T12:00:01.000Z"},
    ):
        assert make(**change).signed_bytes(policy) != base, change
    assert make().signed_bytes({"rules": [1]}) != base


def test_sign_then_verify_and_any_change_breaks_it() -> None:
    policy = {"rules": [{"id": "r1"}]}
    signed = make().sign(HmacSigner(SECRET), policy)
    verifier = HmacVerifier(SECRET)
    assert signed.signed and signed.algorithm == "hmac-sha256"
    assert signed.verify(verifier, policy)
    assert not signed.verify(verifier, {"rules": [{"id": "r2"}]})
    tampered = Contract.from_dict({**signed.to_dict(), "approver": "operator"})
    assert not tampered.verify(verifier, policy)
    assert not make().verify(verifier, policy)  # unsigned


def test_to_dict_from_dict_round_trips_through_json() -> None:
    signed = make().sign(HmacSigner(SECRET), {"rules": []})
    assert Contract.from_dict(json.loads(json.dumps(signed.to_dict()))) == signed
    bootstrap = make(version=1, parent_digest=None, proposal_id=None, justification=None, approver="bootstrap")
    assert Contract.from_dict(bootstrap.to_dict()) == bootstrap


@pytest.mark.parametrize(
    "record",
    [
        [],
        {"version": 1},
        {**make().to_dict(), "extra": "smuggled"},
        {**make().to_dict(), "version": 0},
        {**make().to_dict(), "version": True},
        {**make().to_dict(), "digest": "md5:abc"},
        {**make().to_dict(), "approver": "someone"},
        {**make().to_dict(), "approver": "reviewer:"},
        {**make().to_dict(), "created_at": "2025-01-31 12:00:00"},
        {**make().to_dict(), "signature": "abc"},
        {**make().to_dict(), "justification": 5},
    ],
)
def test_from_dict_refuses_malformed_records(record: object) -> None:
    with pytest.raises(ContractError) as info:
        Contract.from_dict(record)
    assert info.value.code == "contract_invalid"


def test_utc_now_is_rfc3339_utc() -> None:
    assert make(created_at=utc_now()).created_at.endswith("Z")
