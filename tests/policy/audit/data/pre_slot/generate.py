"""Write the sample log of this directory: ``PYTHONPATH=<checkout> python generate.py <dir>`` (README.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from policy.audit.decision import decision_event
from policy.audit.event import event, redacted_payload
from policy.audit.log import JsonlAuditLog
from policy.decision import Counterfactual, Decision, TraceEntry

SECRET = b"the pre-slot sample's checkpoint secret"
AWS = "AKIAIOSFODNN7EXAMPLE"
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}, "n": {"type": "number"}}}


class SampleKey:
    """HMAC-SHA256 checkpoint signatures over :data:`SECRET`."""

    algorithm = "hmac-sha256"
    key_id = hashlib.sha256(SECRET).hexdigest()[:16]

    def sign(self, data: bytes) -> str:
        return base64.b64encode(hmac.digest(SECRET, data, "sha256")).decode("ascii")

    def verify(self, data: bytes, signature: str, key_id: str, algorithm: str) -> bool:
        return (algorithm, key_id) == (self.algorithm, self.key_id) and hmac.compare_digest(signature, self.sign(data))


def ticking() -> Callable[[], datetime]:
    moment = [datetime(2026, 12, 1, 23, 59, 58, 999_990, tzinfo=UTC)]

    def clock() -> datetime:
        moment[0] += timedelta(microseconds=7)
        return moment[0]

    return clock


def decision(decision_id: str, reason: str, reasoning: tuple[str, ...], allowed: bool = True) -> Decision:
    return Decision(
        decision_id, allowed, reason, "allowed" if allowed else "default_deny", None if allowed else "default",
        "bench-model", "bench.echo", ("bench-echo",) if allowed else (),
        (TraceEntry("bench-echo", "allow", allowed, None if allowed else "text matches `x`"),
         TraceEntry("no-crash", "deny", False, None, "tool mismatch")),
        0.0 if allowed else 0.25, (), reasoning, (), "sha256:" + "c5" * 32,
        None if allowed else Counterfactual("allowed if a rule granted it", None, ("no-crash",)),
    )


def write(out: Path) -> None:
    """The sample's files in ``out``, written by the checkout first on ``sys.path``."""
    out.mkdir(parents=True, exist_ok=True)
    key = SampleKey()
    log = JsonlAuditLog(out / "audit.jsonl", fsync=False, clock=ticking(), signer=key, verifier=key,
                        checkpoint_every=4, max_bytes=6000, head_sign_interval=3600.0, head_sign_events=3)
    with log:
        log.append(event("gateway.started", version="sample", pi=3.25))
        calls = [
            ({"text": "hello 1"}, decision("a" * 32, "allowed by rule bench-echo", ("Model bench-model is allowed.",))),
            ({"text": "hello 2"}, decision("b" * 32, "allowed by rule bench-echo", ("Model bench-model is allowed.",))),
            ({"text": "café ✓ naïve", "n": 1e-05}, decision("c" * 32, "allowed…", ("Fine — “quoted”.",))),
            ({"text": AWS, "nested": [{"password": "hunter22"}]},
             decision("d" * 32, f"argument `text` was `{AWS}`", ("Denied.",), allowed=False)),
            ({"text": "tab\there \x7f del \x00 nul", "big": 2**70, "huge": 1e22}, decision("e" * 32, "ok", ("Ok.",))),
            ({"q": "\ud800 lone"}, decision("f" * 32, "ok", ("Ok.",))),
            # plain events (the builder's fast path) with text orjson writes otherwise than the canonical form
            ({"text": "ünïcode ✓ “quoted” 𝄞"}, decision("1" * 32, "allowed…", ("Fine — ok.",))),
            ({"text": "del \x7f and \"quote\" and \\ and \u2028", "n": 2**70}, decision("2" * 32, "ok", ("Ok.",))),
        ]
        for index, (arguments, made) in enumerate(calls):
            log.write_many([decision_event(
                decision=made.to_dict(), source=made, session_id="s-1", server="bench", tool="echo",
                arguments=arguments, latency_ms=0.125 * index, policy_version=3,
                request={"input_schema": SCHEMA},
            )])
            log.sync()
        log.append(event("proposal.proposed", **redacted_payload({"justification": f"my key is {AWS}"})))


if __name__ == "__main__":
    write(Path(sys.argv[1]))
