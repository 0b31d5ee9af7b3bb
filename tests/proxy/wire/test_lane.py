"""The fast lane end to end: real ``securegateway run`` processes on stdio, real stdio upstreams.

Invariants:
- a call answered by the fast lane is the call the SDK path answers: same result, same
  decision JSON (decision ids aside), same errors (property over tool names and arguments);
- a request id in flight in either lane is refused with ``-32600`` in the other;
- ``notifications/cancelled`` stops a fast-lane call and reaches the upstream; the call
  is never answered; progress is relayed while it runs;
- concurrent calls never cross; server->client requests (sampling, elicitation, roots)
  during a fast-lane call reach the client and their answers reach the upstream.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client, StdioServerParameters, types

from tests.conftest import ROOT, gateway_env
from tests.e2e.conftest import GPT_KEY, make_site, text_of
from tests.e2e.test_stdio_wire import Wire, stdio_gateway
from tests.proxy.wire.test_front import replies_for

pytestmark = pytest.mark.anyio

DECISION = "io.securegateway/decision"


def call(request_id: object, name: str, arguments: Any, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params, **extra}


@contextlib.asynccontextmanager
async def sdk_client(tmp_path: Path, gateway: str = "", **kwargs: Any) -> AsyncIterator[Client]:
    """The SDK's own client, spawning the gateway on stdio."""
    site = make_site(tmp_path, listen="stdio", gateway=gateway)
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY}
    params = StdioServerParameters(command=sys.executable, args=["-m", "proxy.cli", "run", "--config",
                                                                 str(site.config_path)], env=env, cwd=ROOT)
    kwargs.setdefault("mode", "legacy")
    async with Client(params, **kwargs) as client:
        yield client


# ---- the same answer on either path ------------------------------------------------------------


DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?:e[-+]?\d+)?")


def comparable(reply: dict[str, Any]) -> str:
    """A reply without what differs by construction: decision and proposal ids, wherever they appear,
    and decimals (session risk and its factors decay with time, and the two gateways are asked
    moments apart; :func:`decimals` compares them within a tolerance)."""
    text = re.sub(r"\b[0-9a-f]{32}\b", "<decision-id>", json.dumps(reply, indent=1, sort_keys=True))
    text = re.sub(r"\bprop_[0-9a-f]+\b", "<proposal-id>", text)
    return DECIMAL.sub("<decimal>", text)


def decimals(reply: dict[str, Any]) -> list[float]:
    return [float(v) for v in DECIMAL.findall(json.dumps(reply))]


class Pair:
    """Two gateways, the fast lane on and off, fed the same lines from a blocking portal."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, lean: Wire, sdk: Wire) -> None:
        self.portal, self.lean, self.sdk = portal, lean, sdk
        self.next_id = 100

    def both(self, name: str, arguments: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        self.next_id += 1
        request = call(self.next_id, name, arguments)

        async def one(wire: Wire) -> dict[str, Any]:
            with anyio.fail_after(30):
                await wire.send(request)
                return (await replies_for(wire, request["id"]))[request["id"]]

        return self.portal.call(one, self.lean), self.portal.call(one, self.sdk)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("pair")
    with anyio.from_thread.start_blocking_portal() as portal, contextlib.ExitStack() as stack:
        lean = stack.enter_context(portal.wrap_async_context_manager(stdio_gateway(root / "lean")))
        sdk = stack.enter_context(portal.wrap_async_context_manager(
            stdio_gateway(root / "sdk", gateway="fast_lane = false")))
        yield Pair(portal, lean, sdk)


json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20) | st.floats(
    allow_nan=False, allow_infinity=False)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=8)
arguments = st.one_of(
    st.fixed_dictionaries({"text": st.text(max_size=40)}, optional={"extra": json_value}),
    st.dictionaries(st.text(max_size=6), json_value, max_size=3),
    json_value,  # not an object: an INVALID_PARAMS error on both paths
)
names = st.sampled_from(["search.echo", "calendar.echo", "search.add", "calendar.crash", "nope.tool", "search.nope",
                         "propose_policy", 42])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, args=arguments)
def test_a_call_gets_the_same_answer_from_the_fast_lane_and_the_sdk_path(pair: Pair, name: Any, args: Any) -> None:
    lean, sdk = pair.both(name, args)
    a, b = comparable(lean), comparable(sdk)
    assert a == b, "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), "fast lane", "sdk path",
                                                 lineterm=""))
    assert decimals(lean) == pytest.approx(decimals(sdk), rel=0.01, abs=0.01)


def test_the_fast_lane_and_the_sdk_path_list_the_same_tools(pair: Pair) -> None:
    async def listed(wire: Wire) -> dict[str, Any]:
        await wire.send({"jsonrpc": "2.0", "id": "list", "method": "tools/list"})
        return (await replies_for(wire, "list"))["list"]

    lean, sdk = pair.portal.call(listed, pair.lean), pair.portal.call(listed, pair.sdk)
    assert lean == sdk and lean["result"]["tools"]


# ---- ids, cancellation, progress, concurrency --------------------------------------------------


async def test_an_id_in_flight_on_the_fast_lane_is_refused_on_the_sdk_path_and_back(tmp_path: Path) -> None:
    async with stdio_gateway(tmp_path) as wire:
        slow = call(7, "search.slow", {"steps": 4, "delay": 0.2})
        slow["params"]["_meta"] = {"progressToken": "p7"}
        await wire.send(slow)
        assert (await wire.reply())["method"] == "notifications/progress"  # the call is running
        await wire.send({"jsonrpc": "2.0", "id": 7, "method": "resources/list"},  # SDK path, same id
                        call(7, "search.echo", {"text": "dup"}))  # fast lane, same id
        replies = [await wire.reply() for _ in range(2)]
        assert [r["error"]["code"] for r in replies] == [-32600, -32600], replies
        # the SDK path holds an id (an extra member keeps the request off the fast lane)
        held = call(8, "search.slow", {"steps": 4, "delay": 0.2}, x=1)
        held["params"]["_meta"] = {"progressToken": "p8"}
        await wire.send(held)
        while True:
            reply = await wire.reply()
            if reply.get("method") == "notifications/progress" and reply["params"]["progressToken"] == "p8":
                break
        await wire.send(call(8, "search.echo", {"text": "dup"}))
        seen = await replies_for(wire, 7, 8)
        assert seen[7]["result"]["content"][0]["text"] == "done 4"
        assert seen[8]["error"]["code"] == -32600 and "already in flight" in seen[8]["error"]["message"]
        final = await replies_for(wire, 8) if "result" not in seen[8] else seen
        while "result" not in final.get(8, {}):
            final = await replies_for(wire, 8)
        assert final[8]["result"]["content"][0]["text"] == "done 4"
        await wire.send(call(7, "search.echo", {"text": "reused"}))  # a finished id is free again
        assert (await replies_for(wire, 7))[7]["result"]["content"][0]["text"] == "reused"


async def test_cancelling_a_fast_lane_call_stops_it_upstream_and_it_is_never_answered(tmp_path: Path) -> None:
    async with stdio_gateway(tmp_path) as wire:
        slow = call(9, "search.slow", {"steps": 100, "delay": 0.05})
        slow["params"]["_meta"] = {"progressToken": 99}
        await wire.send(slow)
        first = await wire.reply()
        assert first == {"jsonrpc": "2.0", "method": "notifications/progress",
                         "params": {"progressToken": 99, "progress": 1.0, "total": 100.0, "message": "step 1"}}
        await wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}})
        marker = tmp_path / "site" / "calls.txt"
        with anyio.fail_after(20):
            while not (marker.exists() and "cancelled" in marker.read_text()):
                await anyio.sleep(0.05)
        await wire.send({"jsonrpc": "2.0", "id": 10, "method": "ping"})
        after = await wire.replies_until(10)
    assert not [r for r in after if r.get("id") == 9]  # no answer for a cancelled request


async def test_concurrent_fast_lane_calls_never_cross(tmp_path: Path) -> None:
    async with sdk_client(tmp_path / "site") as client:
        got: dict[int, str] = {}

        async def one(n: int) -> None:
            result = await client.call_tool("search.echo", {"text": f"caller {n}"})
            got[n] = text_of(result)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(one, n)
    assert got == {n: f"caller {n}" for n in range(40)}


@pytest.mark.parametrize("gateway", ["", "fast_lane = false", 'event_loop = "uvloop"'],
                         ids=["fast-lane", "sdk-path", "uvloop"])
async def test_progress_sampling_elicitation_and_roots_round_trip_on_stdio(tmp_path: Path, gateway: str) -> None:
    if "uvloop" in gateway:
        pytest.importorskip("uvloop")

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content.text
        return types.CreateMessageResult(role="assistant", model="m",
                                         content=types.TextContent(type="text", text=f"echo:{prompt}"))

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "yes"})

    async def roots(ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, t: float | None, m: str | None) -> None:
        progress.append((p, t, m))

    async with sdk_client(tmp_path / "site", gateway, sampling_callback=sampling, elicitation_callback=elicit,
                          list_roots_callback=roots) as client:
        with anyio.fail_after(60):
            result = await client.call_tool("search.slow", {"steps": 3}, progress_callback=on_progress)
            assert text_of(result) == "done 3"
            assert (result.meta or {})[DECISION]["allowed"] is True
            assert text_of(await client.call_tool("search.sample", {"prompt": "2+2"})) == "model said: echo:2+2"
            assert text_of(await client.call_tool("search.elicit", {"question": "go?"})) == (
                "user accept: {'answer': 'yes'}")
            assert text_of(await client.call_tool("search.roots", {})) == "file:///work/project"
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_a_2026_client_on_stdio_is_served_by_the_sdk_path_with_its_stamp(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with sdk_client(tmp_path / "site", mode="2026-07-28") as client:
            result = await client.call_tool("search.echo", {"text": "modern"})
    assert text_of(result) == "modern"
    assert (result.meta or {})[DECISION]["allowed"] is True
    assert "io.modelcontextprotocol/serverInfo" in (result.meta or {})
