"""A supervised link to a stdio upstream: a crash costs only the calls in flight.

Invariant (issue 12, item 5): when the upstream dies mid-call, exactly the calls in flight
fail, with an error naming the upstream; the very next call - made the instant the failure
arrives, before anyone could notice the restart - waits for the restart and succeeds, on
a new process.
"""

from __future__ import annotations

import anyio
import pytest
from mcp import MCPError
from mcp_types import INTERNAL_ERROR

from tests.proxy.wire.test_dispatch import scripted

pytestmark = pytest.mark.anyio


async def test_a_crash_fails_only_the_calls_in_flight_and_the_next_call_succeeds_after_the_restart() -> None:
    async with scripted(timeout=60) as up:
        for round_ in range(3):  # every crash, not only the first
            before = await up.tool("pid")
            failures: list[MCPError] = []

            async def in_flight(failures: list[MCPError] = failures) -> None:
                try:
                    await up.tool("never")
                except MCPError as exc:
                    failures.append(exc)

            with anyio.fail_after(30):  # far inside the 60 s call timeout: failed at once, not timed out
                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(in_flight)
                    await anyio.sleep(0.2)  # let them reach the upstream
                    with pytest.raises(MCPError) as crashed:
                        await up.tool("crash")
                    after = await up.tool("pid")  # the instant the crash is known
            for failure in [crashed.value, *failures]:
                assert failure.code == INTERNAL_ERROR
                assert failure.message == "upstream `up` closed the connection while handling `tools/call`"
            assert len(failures) == 3
            assert after != before  # a new process answered
            assert up.link.generation == round_ + 2
            assert await up.tool("echo", text="fine") == "fine"
