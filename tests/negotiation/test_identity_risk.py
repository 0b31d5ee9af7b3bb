from __future__ import annotations

from negotiation.identity_risk import MemoryIdentityRiskStore
from policy import Finding


def test_every_connection_of_one_model_shares_one_decaying_risk() -> None:
    store = MemoryIdentityRiskStore(half_life_s=100)
    first = store.for_identity("gpt-4o")
    first.record_findings([Finding("prompt_injection", "ignore_previous_instructions", "a", "x")], now=1000.0)
    again = store.for_identity("gpt-4o")  # a reconnect

    assert again is first
    assert store.score("gpt-4o", 1000.0) > 0.1
    assert abs(store.score("gpt-4o", 1100.0) - store.score("gpt-4o", 1000.0) / 2) < 1e-9
    assert store.score("claude", 1000.0) == 0.0
    assert store.for_identity("claude") is not first
