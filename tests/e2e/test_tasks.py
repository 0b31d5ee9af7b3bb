"""MCP tasks end to end: real SDK client -> gateway -> the npm reference server (server-everything).

Invariants: the merged server advertises the upstream's ``tasks`` capability; a task-augmented
``tools/call`` is decided by policy before any task exists (a denial is a gateway-held, already
failed task whose result is the denial; the upstream never sees the call); task ids route to the
upstream that created them, also with several upstreams; ``tasks/get``, ``tasks/result``,
``tasks/list`` and ``tasks/cancel`` behave as directly; status notifications reach the client.
Both client eras.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import JSONRPCNotification

from tests.conftest import running, server_cmd
from tests.e2e.conftest import GPT_KEY, make_site
from tests.e2e.test_reference_servers import DECISION, reference_server

pytestmark = [pytest.mark.anyio, pytest.mark.npm]

RESEARCH = "search.simulate-research-query"
POLICY = """\
rules:
  - id: everything
    model: gpt-4o
    allow_tools: [search.*, calendar.*]
  - id: no-research-on-secrets
    model: "*"
    deny_tools: [search.simulate-research-query]
    when:
      topic: {regex: ".*secret.*"}
    reason: research on secrets is not allowed
"""


@contextlib.asynccontextmanager
async def tapped(url: str, seen: list[dict[str, Any]]) -> AsyncIterator[Any]:
    """Streamable HTTP to ``url``, recording every notification on the wire (the typed client
    drops ``notifications/tasks/status``, which no SDK method table lists)."""
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {GPT_KEY}"}) as http,
        streamable_http_client(url, http_client=http) as (read, write),
    ):
        send, receive = anyio.create_memory_object_stream[Any](16)

        async def pump() -> None:
            async with send:
                async for item in read:
                    message = getattr(item, "message", None)
                    if isinstance(message, JSONRPCNotification):
                        seen.append(message.model_dump(by_alias=True, exclude_none=True))
                    await send.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            yield receive, write
            tg.cancel_scope.cancel()


class Raw:
    """Raw requests on a connected Client (tasks/* have no typed helpers in the SDK)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def __call__(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"method": method, "params": params}
        opts: Any = {}
        session = self.client.session
        session._stamp(data, opts)  # the era's envelope and headers, as the typed methods send them
        return await session._dispatcher.send_raw_request(data["method"], data["params"], opts)


def task_site(root: Path) -> Any:
    return make_site(root, policy=POLICY, upstreams=[
        ("calendar", server_cmd("calendar")),
        ("search", [reference_server("mcp-server-everything"), "stdio"]),
    ])


async def wait_terminal(raw: Raw, task_id: str) -> dict[str, Any]:
    with anyio.fail_after(40):
        while True:
            task = await raw("tasks/get", {"taskId": task_id})
            if task["status"] in ("completed", "failed", "cancelled"):
                return task
            await anyio.sleep(0.3)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_task_augmented_call_runs_as_a_task_routed_to_its_upstream(tmp_path: Path, mode: str) -> None:
    site = task_site(tmp_path / "site")
    notes: list[dict[str, Any]] = []
    async with running(site.app()), Client(tapped(site.url, notes), mode=mode) as client:
        caps = client.server_capabilities.tasks
        assert caps is not None and caps.requests is not None and caps.requests.tools is not None
        assert caps.list is not None and caps.cancel is not None
        raw = Raw(client)
        await client.list_tools()
        created = await raw("tools/call", {"name": RESEARCH, "arguments": {"topic": "rivers"}, "task": {"ttl": 60000}})
        assert created["_meta"][DECISION]["allowed"] is True  # decided before the task existed
        task_id = created["task"]["taskId"]
        assert created["task"]["status"] == "working"
        done = await wait_terminal(raw, task_id)
        assert done["status"] == "completed"
        result = await raw("tasks/result", {"taskId": task_id})
        assert "Research Report: rivers" in result["content"][0]["text"]
        listed = await raw("tasks/list", {})
        assert task_id in {t["taskId"] for t in listed["tasks"]}
        with pytest.raises(MCPError) as err:
            await raw("tasks/get", {"taskId": "no-such-task"})
        assert err.value.code == -32602
        # cancel: a second task, cancelled while it works
        second = await raw("tools/call", {"name": RESEARCH, "arguments": {"topic": "lakes"}, "task": {"ttl": 60000}})
        cancelled = await raw("tasks/cancel", {"taskId": second["task"]["taskId"]})
        assert cancelled["status"] == "cancelled"
        assert (await raw("tasks/get", {"taskId": second["task"]["taskId"]}))["status"] == "cancelled"
        # the other upstream is still a plain tool server
        assert not (await client.call_tool("calendar.echo", {"text": "x"})).is_error
    if mode == "legacy":  # a sessionless client has no channel for notifications outside a request
        statuses = [n["params"]["status"] for n in notes if n.get("method") == "notifications/tasks/status"
                    and n["params"]["taskId"] == task_id]
        assert "completed" in statuses, notes


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_denied_task_augmented_call_is_a_failed_task_and_never_reaches_the_upstream(
    tmp_path: Path, mode: str
) -> None:
    site = task_site(tmp_path / "site")
    async with running(site.app()), Client(tapped(site.url, []), mode=mode) as client:
        raw = Raw(client)
        created = await raw("tools/call", {"name": RESEARCH, "arguments": {"topic": "the secret plans"},
                                           "task": {"ttl": 60000}})
        task = created["task"]
        assert task["status"] == "failed" and task["taskId"].startswith("sg-")
        assert created["_meta"][DECISION]["allowed"] is False
        assert (await raw("tasks/get", {"taskId": task["taskId"]}))["status"] == "failed"
        result = await raw("tasks/result", {"taskId": task["taskId"]})
        assert result["isError"] is True and "research on secrets is not allowed" in result["content"][0]["text"]
        with pytest.raises(MCPError) as err:
            await raw("tasks/cancel", {"taskId": task["taskId"]})
        assert err.value.code == -32602
        upstream_tasks = await raw("tasks/list", {})
        ids = {t["taskId"] for t in upstream_tasks["tasks"]}
        assert task["taskId"] in ids and all(i.startswith("sg-") for i in ids)  # the upstream made none


async def test_a_tasks_result_is_screened_like_the_tool_result_it_is(tmp_path: Path) -> None:
    site = task_site(tmp_path / "site")
    text = site.config_path.read_text().replace("[gateway]\n", '[gateway]\nresult_scan = "block"\n', 1)
    site.config_path.write_text(text)
    async with running(site.app()), Client(tapped(site.url, []), mode="legacy") as client:
        raw = Raw(client)
        # the report repeats its topic; the topic carries a secret, so the result does too
        topic = "rotation of AKIAIOSFODNN7EXAMPLE"
        created = await raw("tools/call", {"name": RESEARCH, "arguments": {"topic": topic}, "task": {"ttl": 60000}})
        assert "task" in created, created
        task_id = created["task"]["taskId"]
        assert (await wait_terminal(raw, task_id))["status"] == "completed"
        with pytest.raises(MCPError) as err:
            await raw("tasks/result", {"taskId": task_id})
        assert "withheld" in err.value.error.message
