"""MCP tasks through the gateway: task-augmented ``tools/call`` and the ``tasks/*`` methods.

A task-augmented ``tools/call`` runs the same chain as any call, so policy decides
before the upstream creates the task. The upstream's ``CreateTaskResult`` is
relayed as is and its task id remembered against that upstream; ``tasks/get``,
``tasks/result`` and ``tasks/cancel`` go to the upstream that owns the id, and
``tasks/list`` merges every task-capable upstream's list; a ``tasks/result`` is screened
like the tool result it is. Status notifications
are ordinary upstream notifications and reach the client unchanged.

A call the gateway answers itself (a policy denial, a gateway tool) becomes a
gateway-held task that is already finished, so a client that asked for a task
always gets one: ``tasks/result`` then returns the denial as a tool result.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import anyio

from proxy import protocol
from proxy.protocol import INVALID_PARAMS, METHOD_NOT_FOUND, mcp_error
from proxy.upstream.link import UpstreamLink

TASK_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/cancel", "tasks/list"})
LOCAL_PREFIX = "sg-"
MAX_LOCAL_TASKS = 1000


class TaskRoutes:
    """Which upstream owns each task id one downstream client created, plus gateway-held tasks."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}
        self._call: dict[str, tuple[str, str | None]] = {}  # id -> (upstream tool, decision id)
        self._local: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # id -> (task, result)

    def created(self, upstream: str, result: Mapping[str, Any], tool: str = "", decision_id: str | None = None) -> None:
        task = result.get("task")
        if isinstance(task, Mapping) and isinstance(task.get("taskId"), str):
            self._owner[task["taskId"]] = upstream
            self._call[task["taskId"]] = (tool, decision_id)

    def call_of(self, task_id: Any) -> tuple[str, str | None] | None:
        """The tool and decision behind an upstream task, so its result can be screened like one."""
        return self._call.get(task_id) if isinstance(task_id, str) else None

    def finished(self, result: dict[str, Any], ttl: Any) -> dict[str, Any]:
        """Hold a result the gateway produced as a finished task; the ``CreateTaskResult`` for it."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        task: dict[str, Any] = {
            "taskId": LOCAL_PREFIX + secrets.token_hex(12),
            "status": "failed" if result.get("isError") else "completed",
            "ttl": ttl if isinstance(ttl, int) else None,
            "createdAt": now,
            "lastUpdatedAt": now,
        }
        text = next((c.get("text") for c in result.get("content") or () if isinstance(c, Mapping)), None)
        if isinstance(text, str):
            task["statusMessage"] = text.splitlines()[0][:300]
        if len(self._local) >= MAX_LOCAL_TASKS:
            self._local.pop(next(iter(self._local)))
        self._local[task["taskId"]] = (task, result)
        out: dict[str, Any] = {"task": task}
        if "_meta" in result:
            out["_meta"] = result["_meta"]
        return out

    def owner(self, links: Mapping[str, UpstreamLink], task_id: Any) -> UpstreamLink:
        if not isinstance(task_id, str):
            raise mcp_error(INVALID_PARAMS, "`taskId` must be a string")
        name = self._owner.get(task_id)
        if name is None or name not in links:
            raise mcp_error(INVALID_PARAMS, f"unknown task `{task_id[:200]}`")
        return links[name]

    async def handle(
        self, method: str, params: Mapping[str, Any] | None, links: Mapping[str, UpstreamLink], forward: Any
    ) -> dict[str, Any]:
        """Answer one ``tasks/*`` request; ``forward(link, params)`` sends it to an upstream."""
        params = params or {}
        if not self._local and not any(_tasks_cap(lk) for lk in links.values()):
            raise mcp_error(METHOD_NOT_FOUND, "Method not found", data=method)  # no upstream has tasks
        if method == "tasks/list":
            return await self._list(params, links, forward)
        task_id = params.get("taskId")
        local = self._local.get(task_id) if isinstance(task_id, str) else None
        if local is not None:
            task, result = local
            if method == "tasks/cancel":  # gateway-held tasks are born finished
                raise mcp_error(INVALID_PARAMS, f"task `{task_id}` is already {task['status']}")
            return result if method == "tasks/result" else dict(task)
        return dict(await forward(self.owner(links, task_id), params))

    async def _list(
        self, params: Mapping[str, Any], links: Mapping[str, UpstreamLink], forward: Any
    ) -> dict[str, Any]:
        listing = [lk for lk in links.values() if lk.ready and _tasks_cap(lk).get("list") is not None]
        if not listing and not self._local:
            raise mcp_error(METHOD_NOT_FOUND, "Method not found", data="tasks/list")
        if len(listing) == 1 and not self._local:
            return dict(await forward(listing[0], params))  # one source: its own pagination
        found: list[Any] = [dict(task) for task, _ in self._local.values()]

        async def fetch(link: UpstreamLink) -> None:
            try:
                result = await forward(link, {})
            except protocol.MCP_ERRORS:
                return  # one failing upstream must not hide the others' tasks
            found.extend(t for t in result.get("tasks") or () if isinstance(t, Mapping))

        async with anyio.create_task_group() as tg:
            for link in listing:
                tg.start_soon(fetch, link)
        return {"tasks": found}


def _tasks_cap(link: UpstreamLink) -> Mapping[str, Any]:
    caps = link.info.capabilities if link.info else {}
    tasks = caps.get("tasks")
    return tasks if isinstance(tasks, Mapping) else {}


def merged_capability(links: list[UpstreamLink]) -> dict[str, Any] | None:
    """The ``tasks`` capability of the merged server: what any upstream offers."""
    merged: dict[str, Any] = {}
    for link in links:
        _deep_merge(merged, dict(_tasks_cap(link)))
    return merged or None


def _deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _deep_merge(into[key], value)
        else:
            into[key] = value
