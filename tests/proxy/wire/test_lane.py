"""The fast lane end to end: real ``securegateway run`` processes on stdio, real stdio upstreams.

Invariants:
- a call answered by the fast lane is the call the SDK path answers: same result, same
  decision JSON (decision ids aside), same errors (property over tool names and arguments);
- a request id in flight in either lane is refused with ``-32600`` in the other;
- ``notifications/cancelled`` stops a fast-lane call and reaches the upstream; the call
  is never answered; progress is relayed while it runs;
- concurrent calls never cross; server->client requests (sampling, elicitation, roots)
  during a fast-lane call reach the client and their answers reach the upstream;
- the same holds on a 2026-era (sessionless) stream: a decision table over both eras runs
  each request through a gateway with the fast lane and one without (``fast_lane =
  false``), and checks the answers are alike (``serverInfo`` stamp and ``resultType``
  included) and which lane served it (the gateway's debug log names fast-lane requests);
  an id in flight in either lane is refused in the other, and by the SDK path alone;
  a cancelled 2026 call reaches the upstream and is never answered.
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
from tests.e2e.conftest import GPT_KEY, cli, make_site, text_of
from tests.e2e.test_stdio_wire import INIT, INITIALIZED, Wire, stdio_gateway
from tests.proxy.wire.test_front import replies_for

pytestmark = pytest.mark.anyio

DECISION = "io.securegateway/decision"
SERVER_INFO = "io.modelcontextprotocol/serverInfo"


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
        # (raw_gateway, not stdio_gateway: its time limit covers the start, not the module's life)
        lean = stack.enter_context(portal.wrap_async_context_manager(raw_gateway(root / "lean", era="2025")))
        sdk = stack.enter_context(portal.wrap_async_context_manager(
            raw_gateway(root / "sdk", era="2025", gateway="fast_lane = false")))
        yield Pair(portal, lean.wire, sdk.wire)


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
        # the SDK path is up before the race (its first request imports the SDK: proxy/wire/opening.py)
        await wire.send({"jsonrpc": "2.0", "id": "up", "method": "ping"})
        await replies_for(wire, "up")
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


@pytest.mark.parametrize("gateway", ["", "fast_lane = false"], ids=["fast-lane", "sdk-path"])
async def test_a_2026_client_on_stdio_gets_its_stamp_progress_and_decisions(tmp_path: Path, gateway: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, t: float | None, m: str | None) -> None:
        progress.append((p, t, m))

    with anyio.fail_after(60):
        async with sdk_client(tmp_path / "site", gateway, mode="2026-07-28") as client:
            listed = await client.list_tools()
            results = [await client.call_tool("search.echo", {"text": f"modern {n}"}) for n in range(3)]
            slow = await client.call_tool("search.slow", {"steps": 2}, progress_callback=on_progress)
    assert [text_of(r) for r in results] == ["modern 0", "modern 1", "modern 2"] and text_of(slow) == "done 2"
    for result in (listed, *results, slow):
        assert (result.meta or {})[SERVER_INFO]["name"] == "securegateway"
    assert all((r.meta or {})[DECISION]["allowed"] is True for r in (*results, slow))
    assert progress == [(1, 2, "step 1"), (2, 2, "step 2")]


# ---- 2026-era streams: the same guarantees -----------------------------------------------------


MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}}


def modern(request: dict[str, Any], **meta: Any) -> dict[str, Any]:
    """``request`` with the 2026 envelope in ``params._meta`` (``meta`` adds to it or, as None, drops keys)."""
    if not isinstance(request.get("params", {}), dict):
        return request  # params that are not an object cannot carry one
    params = dict(request.get("params") or {})
    merged = {**MODERN_META, **dict(params.get("_meta") or {}), **meta}
    params["_meta"] = {k: v for k, v in merged.items() if v is not None}
    return {**request, "params": params}


class Logged:
    """A gateway process on a raw wire, its log (debug level) in a file: which lane answered what."""

    def __init__(self, wire: Wire, log: Path) -> None:
        self.wire, self.log = wire, log

    def lane_ids(self) -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [m.group(1) for m in re.finditer(r"fast lane\s.*?\bid=(\S+)", text)]


@contextlib.asynccontextmanager
async def raw_gateway(root: Path, *, era: str, gateway: str = "") -> AsyncIterator[Logged]:
    """A ``securegateway run`` on stdio; a 2025 stream is initialised first, a 2026 one never is."""
    site = make_site(root / "site", listen="stdio", gateway=gateway)
    log = root / "gateway.log"
    env = {**gateway_env(), "SECUREGATEWAY_MODEL_KEY": GPT_KEY, "SECUREGATEWAY_LOG_LEVEL": "debug"}
    with log.open("wb") as errors:
        async with await anyio.open_process(cli("run", "--config", str(site.config_path)), cwd=ROOT, env=env,
                                            stderr=errors) as proc:
            wire = Wire(proc)
            try:
                with anyio.fail_after(60):
                    if era == "2025":
                        await wire.send(INIT, INITIALIZED)
                        assert "result" in await wire.reply()
                    else:  # the first request fixes the era; the SDK path serves it
                        await wire.send(modern({"jsonrpc": "2.0", "id": "open", "method": "tools/list"}))
                        opened = await wire.reply()
                        assert opened["result"]["_meta"][SERVER_INFO]["name"] == "securegateway", opened
                yield Logged(wire, log)
            finally:
                proc.kill()


class Eras:
    """Per era, two gateways fed the same lines: the fast lane on (``lean``) and off (``sdk``)."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, gateways: dict[str, tuple[Logged, Logged]]) -> None:
        self.portal, self.gateways = portal, gateways
        self.next_id = 1000

    def both(self, era: str, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """Both answers, and whether the lean gateway's fast lane served the request."""
        self.next_id += 1
        request = {**request, "id": self.next_id}
        lean, sdk = self.gateways[era]

        async def one(gateway: Logged) -> dict[str, Any]:
            with anyio.fail_after(30):
                await gateway.wire.send(request)
                return (await replies_for(gateway.wire, request["id"]))[request["id"]]

        a, b = self.portal.call(one, lean), self.portal.call(one, sdk)
        assert not sdk.lane_ids(), "the gateway with fast_lane = false served a request on the fast lane"
        return a, b, str(request["id"]) in lean.lane_ids()


@pytest.fixture(scope="module")
def eras(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Eras]:
    root = tmp_path_factory.mktemp("eras")
    with anyio.from_thread.start_blocking_portal() as portal, contextlib.ExitStack() as stack:
        gateways = {
            era: tuple(stack.enter_context(portal.wrap_async_context_manager(
                raw_gateway(root / f"{era}-{name}", era=era, gateway=setting)))
                for name, setting in (("lean", ""), ("sdk", "fast_lane = false")))
            for era in ("2025", "2026")
        }
        yield Eras(portal, gateways)  # type: ignore[arg-type]


def tools_call(name: Any, arguments: Any, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": name, "arguments": arguments, **params}}


LIST = {"jsonrpc": "2.0", "method": "tools/list"}

# (case, request, the era's envelope added?, served by the fast lane when it is on)
#   envelope: "era" adds the 2026 envelope on a 2026 stream only; a dict adds exactly that envelope.
DECISIONS: list[tuple[str, dict[str, Any], Any, bool]] = [
    ("allowed call", tools_call("search.echo", {"text": "hi"}), "era", True),
    ("allowed call with a progress token", tools_call("search.slow", {"steps": 2},
                                                      _meta={"progressToken": "tok"}), "era", True),
    ("denied by a rule", tools_call("calendar.crash", {}), "era", True),
    ("no rule allows it", tools_call("calendar.delete_event", {"id": 1}), "era", True),
    ("unknown tool", tools_call("search.nope", {}), "era", True),
    ("unknown upstream", tools_call("nope.tool", {}), "era", True),
    ("name not a string", tools_call(42, {}), "era", True),
    ("arguments not an object", tools_call("search.echo", [1, 2]), "era", True),
    ("a gateway-served tool", tools_call("propose_policy", {}), "era", True),
    ("task-augmented call", tools_call("search.echo", {"text": "t"}, task={"ttl": 60000}), "era", True),
    ("tools/list", LIST, "era", True),
    ("tools/list, unknown cursor", {**LIST, "params": {"cursor": "zzz"}}, "era", True),
    ("params not an object", {**tools_call("search.echo", {}), "params": [1]}, "era", False),
    ("an extra top-level member", {**tools_call("search.echo", {"text": "x"}), "x": 1}, "era", False),
    ("envelope without client capabilities", tools_call("search.echo", {"text": "x"}),
     {"io.modelcontextprotocol/clientCapabilities": None}, False),
    ("envelope of an unsupported version", tools_call("search.echo", {"text": "x"}),
     {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}, False),
    ("the other era's request", tools_call("search.echo", {"text": "x"}), "other", False),
]


TABLE = [pytest.param(era, *row, id=f"{row[0]}-{era}") for row in DECISIONS for era in ("2025", "2026")
         if era == "2026" or isinstance(row[2], str)]  # an envelope's own defects: 2026 rows only


@pytest.mark.parametrize(("era", "case", "request_", "envelope", "lane"), TABLE)
def test_decision_table_fast_lane_and_sdk_path_answer_alike_in_both_eras(
    eras: Eras, era: str, case: str, request_: dict[str, Any], envelope: Any, lane: bool,
) -> None:
    if envelope == "other":  # a 2025 stream gets an enveloped request, a 2026 stream a bare one
        request_ = modern(request_) if era == "2025" else request_
    elif envelope == "era":
        request_ = modern(request_) if era == "2026" else request_
    else:
        request_ = modern(request_, **envelope)
    lean, sdk, served = eras.both(era, request_)
    a, b = comparable(lean), comparable(sdk)
    assert a == b, "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), "fast lane", "sdk path",
                                                 lineterm=""))
    assert decimals(lean) == pytest.approx(decimals(sdk), rel=0.01, abs=0.01)
    assert served is lane, f"{case}: expected the {'fast lane' if lane else 'sdk path'} to answer"
    if era == "2026" and "result" in lean:
        assert lean["result"]["_meta"][SERVER_INFO]["name"] == "securegateway"
        assert lean["result"]["resultType"] == "complete"


async def test_on_a_2026_stream_an_id_in_flight_in_either_lane_is_refused_in_the_other(tmp_path: Path) -> None:
    async with raw_gateway(tmp_path, era="2026") as gateway:
        wire = gateway.wire
        slow = modern(call(7, "search.slow", {"steps": 4, "delay": 0.2}), progressToken="p7")
        await wire.send(slow)
        assert (await wire.reply())["method"] == "notifications/progress"  # the call is running
        await wire.send(modern(call(7, "search.echo", {"text": "dup"}, x=1)),  # SDK path, same id
                        modern(call(7, "search.echo", {"text": "dup"})))  # fast lane, same id
        replies = [await wire.reply() for _ in range(2)]
        assert [r["error"]["code"] for r in replies] == [-32600, -32600], replies
        assert "7" in gateway.lane_ids()
        held = modern(call(8, "search.slow", {"steps": 4, "delay": 0.2}, x=1), progressToken="p8")  # SDK path
        await wire.send(held)
        while True:
            reply = await wire.reply()
            if reply.get("method") == "notifications/progress" and reply["params"]["progressToken"] == "p8":
                break
        await wire.send(modern(call(8, "search.echo", {"text": "dup"})))
        seen = await replies_for(wire, 7, 8)
        assert seen[7]["result"]["content"][0]["text"] == "done 4"
        assert seen[8]["error"]["code"] == -32600 and "already in flight" in seen[8]["error"]["message"]
        while "result" not in seen.get(8, {}):
            seen = await replies_for(wire, 8)
        assert seen[8]["result"]["content"][0]["text"] == "done 4"
        await wire.send(modern(call(7, "search.echo", {"text": "reused"})))  # a finished id is free again
        assert (await replies_for(wire, 7))[7]["result"]["content"][0]["text"] == "reused"
    assert gateway.lane_ids() == ["7", "7"]  # the slow call and the reuse; 8 was the SDK path's


async def test_on_a_2026_stream_the_sdk_path_alone_refuses_an_id_in_flight(tmp_path: Path) -> None:
    async with raw_gateway(tmp_path, era="2026", gateway="fast_lane = false") as gateway:
        wire = gateway.wire
        await wire.send(modern(call(5, "search.slow", {"steps": 3, "delay": 0.2}), progressToken="p5"))
        assert (await wire.reply())["method"] == "notifications/progress"
        await wire.send(modern(call(5, "search.echo", {"text": "dup"})))
        refused = await wire.reply()
        assert refused["id"] == 5 and refused["error"]["code"] == -32600, refused
        finished = await replies_for(wire, 5)
        assert finished[5]["result"]["content"][0]["text"] == "done 3"
    assert gateway.lane_ids() == []


async def test_cancelling_a_2026_fast_lane_call_stops_it_upstream_and_it_is_never_answered(tmp_path: Path) -> None:
    async with raw_gateway(tmp_path, era="2026") as gateway:
        wire = gateway.wire
        await wire.send(modern(call(9, "search.slow", {"steps": 100, "delay": 0.05}), progressToken=99))
        first = await wire.reply()
        assert first == {"jsonrpc": "2.0", "method": "notifications/progress",
                         "params": {"progressToken": 99, "progress": 1.0, "total": 100.0, "message": "step 1"}}
        assert "9" in gateway.lane_ids()
        await wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}})
        marker = tmp_path / "site" / "calls.txt"
        with anyio.fail_after(20):
            while not (marker.exists() and "cancelled" in marker.read_text()):
                await anyio.sleep(0.05)
        await wire.send(modern({"jsonrpc": "2.0", "id": 10, "method": "tools/list"}))
        after = await wire.replies_until(10)
    assert not [r for r in after if r.get("id") == 9]  # no answer for a cancelled request


# ---- offer_now: the read callback's half of offer() ------------------------------------------------


class _Relay:
    """What the lane asks of the relay before a call starts (nothing of it runs here)."""

    def attach_stdio_lane(self, lane: Any) -> None:
        pass

    def offers(self, session: Any, method: str) -> bool:
        return method != "resources/list"  # a capability no upstream has


class _Spawner:
    def __init__(self) -> None:
        self.started: list[tuple[Any, ...]] = []

    def start_soon(self, func: Any, *args: Any) -> None:
        self.started.append(args)
        # nothing is run: only which calls would start


class _Writer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(data)


def _lane(initialized: bool = True) -> tuple[Any, Any]:
    from proxy.route.ids import IN_FLIGHT_KEY, SESSION_KEY, id_key
    from proxy.wire.lane import FastLane
    from proxy.wire.opening import StandInConnection

    lane = FastLane(_Relay(), _Writer())  # type: ignore[arg-type]
    connection = StandInConnection("2025-11-25")
    connection.state[SESSION_KEY] = object()
    connection.state[IN_FLIGHT_KEY] = {id_key(99)}  # id 99 is in flight
    if initialized:
        lane.attach(connection)
    return lane, connection


ENVELOPE = {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
NOW_CASES = [
    # (case, message, initialized, offer_now starts it)
    ("a plain tools/call", call(1, "a.echo", {}), True, True),
    ("a string id", call("7", "a.echo", {}), True, True),
    ("an id in flight", call(99, "a.echo", {}), True, False),
    ("before initialize", call(2, "a.echo", {}), False, False),
    ("tools/list", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, True, False),
    ("a list no upstream offers", {"jsonrpc": "2.0", "id": 3, "method": "resources/list"}, True, False),
    ("a bool id", call(True, "a.echo", {}), True, False),
    ("params null", {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": None}, True, False),
    ("an extra member", call(5, "a.echo", {}, extra=1), True, False),
    ("a 2026 envelope", {**call(6, "a.echo", {}), "params": {"name": "a.echo", **ENVELOPE}}, True, False),
    ("a cancellation", {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
     True, False),
    ("a ping", {"jsonrpc": "2.0", "id": 8, "method": "ping"}, True, False),
]


@pytest.mark.parametrize(("case", "message", "initialized", "starts"), NOW_CASES, ids=[c[0] for c in NOW_CASES])
async def test_offer_now_starts_exactly_the_calls_offer_starts_without_awaiting_and_touches_nothing_else(
    case: str, message: dict[str, Any], initialized: bool, starts: bool
) -> None:
    from proxy.route.ids import IN_FLIGHT_KEY

    now_lane, now_conn = _lane(initialized)
    now_spawn = _Spawner()
    before = set(now_conn.state[IN_FLIGHT_KEY])
    assert now_lane.offer_now(dict(message), now_spawn) is starts
    if not starts:  # declined: nothing claimed, nothing started, nothing written
        assert now_conn.state[IN_FLIGHT_KEY] == before and not now_spawn.started and not now_lane._calls
        assert not now_lane._writer.sent
    lane, conn = _lane(initialized)
    spawn = _Spawner()
    taken = await lane.offer(dict(message), spawn)
    if starts:  # offer() would have started the same call, with the same id claimed
        assert taken and len(spawn.started) == 1
        assert now_conn.state[IN_FLIGHT_KEY] == conn.state[IN_FLIGHT_KEY]
        assert [a[1:3] for a in now_spawn.started] == [a[1:3] for a in spawn.started]
