"""The access gate for everything but ``tools/call``: decide before forwarding, screen what comes back.

``tools/call`` runs the interceptor chain (:mod:`proxy.intercept`); every other request that
reaches an upstream's data - ``prompts/get``, ``resources/read``, ``resources/subscribe`` /
``unsubscribe``, ``completion/complete``, a passed-through method - is decided here by the
host's :class:`~proxy.route.seams.AccessGate` (identity, key scope, rules, audit), a denial
raised as the JSON-RPC error with the decision in ``data``; what the upstream answers (or asks
of the client) is screened before the client sees it. Without a gate everything passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from proxy import protocol
from proxy.enforce import POLICY_DENIED, RESULT_BLOCKED
from proxy.protocol import INVALID_PARAMS, mcp_error
from proxy.route.seams import SessionHost
from proxy.session import DownstreamSession

if TYPE_CHECKING:  # the SDK is loaded at a stdio client's first need (proxy/wire/opening.py)
    pass

__all__ = ["Access"]


class Access:
    """The host's gate, asked per request (the host may swap it: read at each use)."""

    def __init__(self, host: SessionHost) -> None:
        self._host = host

    def attach_screen(self, session: DownstreamSession) -> DownstreamSession:
        """Upstream -> client requests (sampling, elicitation) pass the same result scan."""
        gate = self._host.access
        if gate is not None and session.screen is None:

            async def screen(upstream: str, method: str, params: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
                outcome = await gate.screen(session, method=method, server=upstream, target=method, payload=params)
                if outcome.payload is None and outcome.findings:
                    codes = ", ".join(sorted({f.code for f in outcome.findings}))
                    raise mcp_error(
                        RESULT_BLOCKED, f"the gateway withheld `{method}` from the client: it contained {codes}"
                    )
                return params if not outcome.findings else outcome.payload

            session.screen = screen
        return session

    async def decide(
        self, session: DownstreamSession, method: str, kind: str, server: str, name: str, arguments: Any
    ) -> str | None:
        """Ask the gate; raise the JSON-RPC denial (decision in ``data``) or return the decision id."""
        gate = self._host.access
        if gate is None:
            return None
        args = dict(arguments) if isinstance(arguments, Mapping) else {}
        verdict = await gate.authorize(session, method=method, kind=kind, server=server, name=name, arguments=args)
        if not verdict.allowed:
            reason = verdict.view.get("reason", "denied by policy")
            raise mcp_error(POLICY_DENIED, f"denied: {reason}", data=verdict.view)
        return verdict.decision.decision_id

    async def screened(
        self, session: DownstreamSession, method: str, server: str, target: str, result: dict[str, Any],
        decision_id: str | None,
    ) -> dict[str, Any]:
        gate = self._host.access
        if gate is None:
            return result
        outcome = await gate.screen(
            session, method=method, server=server, target=target, payload=result, decision_id=decision_id
        )
        if not outcome.findings:
            return result
        if outcome.payload is None:
            codes = ", ".join(sorted({f.code for f in outcome.findings}))
            raise mcp_error(RESULT_BLOCKED, f"the gateway withheld the `{method}` result: it contained {codes}")
        return dict(outcome.payload)

    async def listable(
        self, session: DownstreamSession, kind: Any, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Prompts and resources of upstreams the model's key scope does not reach are not listed."""
        gate = self._host.access
        if gate is None:
            return items
        kept: list[dict[str, Any]] = []
        for item in items:
            name = item.get(kind.key)
            if kind.namespaced:
                target = session.catalog.split(name)
                owner = target[0].name if target is not None else None
            else:
                try:
                    owner = (await session.catalog.resource_owner(name)).name
                except protocol.MCP_ERRORS:
                    owner = None
            if owner is not None and gate.reaches(session, owner):
                kept.append(item)
        return kept

    async def unknown_tool(self, session: DownstreamSession, name: str) -> None:
        gate = self._host.access
        data = (await gate.unknown_tool(session, name)).view if gate is not None else None
        raise mcp_error(INVALID_PARAMS, f"unknown tool `{name[:200]}`", data=data)
