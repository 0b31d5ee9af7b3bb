"""Optional OpenTelemetry traces: one span per relayed request, carrying its decision.

Off by default, and then nothing here is imported: bootstrap only loads this module when
``[telemetry] traces`` is ``console`` or ``otlp`` (extra ``securegateway[otel]``). When on,
three hooks registered once in the composition root feed one tracer:

- :meth:`Tracing.interceptor`, outermost in the tools/call chain: a ``tools/call <tool>``
  span around the whole call (quarantine, taint, enforcement, forwarding);
- :meth:`Tracing.middleware`, in front of the relay: a ``<method>`` span for every other
  request (prompts/get, resources/*, completion/complete, logging/setLevel, lists, ...);
- :meth:`Tracing.observe_audit`, around the audit functions: what is audited is what is
  traced. Each ``decision`` event sets the span's ``securegateway.*`` attributes (decision id,
  model, upstream, tool, outcome, reason code) and adds a ``securegateway.decision`` event.

What never goes on a span: argument values, resource URIs (they can carry tokens), reason
texts, exception messages (both may quote arguments), keys. Only ids, names and codes.

The gateway's spans are not made current in the OpenTelemetry context: the MCP SDK injects
the current context into every request it sends, so a current span would add a
``traceparent`` to what the gateway forwards, and the relay promises to forward untouched.
A client's own ``_meta.traceparent`` is honoured as the parent (read, never changed). The
tracer provider is the gateway's own, never the global one, so the SDK's spans are not
exported and several gateways in one process (as in the tests) do not share exporters.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import structlog

from proxy.config import TelemetryConfig
from proxy.errors import ConfigError
from proxy.intercept import CallNext, ToolCall, ToolResult

try:
    from opentelemetry.propagate import extract
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
        SpanExporter,
    )
    from opentelemetry.trace import Span, SpanKind, StatusCode
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

__all__ = ["INSTALL_HINT", "Tracing", "open_tracing"]

log = structlog.get_logger("securegateway.telemetry")

INSTALL_HINT = "pip install 'securegateway[otel]'"
OTLP_HINT = "pip install 'securegateway[otlp]'"
PREFIX = "securegateway."
AuditFn = Callable[[Mapping[str, Any]], Awaitable[None]]
Middleware = Callable[[Any, Callable[[Any], Awaitable[Any]]], Awaitable[Any]]

# The span a decision made in this task belongs to (the gateway's spans are never current in
# the OpenTelemetry context, see the module docstring).
_SPAN: contextvars.ContextVar[Any] = contextvars.ContextVar("securegateway_span", default=None)
# Methods whose span is opened by the tools/call interceptor (or that carry nothing to trace).
_NOT_BY_MIDDLEWARE = frozenset({"tools/call", "ping", "initialize"})
_NAMED = frozenset({"prompts/get"})  # methods whose ``params.name`` is a safe span-name suffix


def open_tracing(config: TelemetryConfig) -> Tracing:
    """The tracer ``[telemetry]`` asks for; a ConfigError naming the extra when it is missing."""
    if _MISSING is not None:
        raise ConfigError(
            f"telemetry.traces: `{config.traces}` needs OpenTelemetry ({_MISSING}): {INSTALL_HINT}"
        )
    exporter: SpanExporter
    if config.traces == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout is the MCP stream of a stdio gateway
    elif config.traces == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigError(f"telemetry.traces: `otlp` needs the OTLP exporter ({exc}): {OTLP_HINT}") from None
        exporter = OTLPSpanExporter(endpoint=config.endpoint)
    else:
        raise ConfigError(f"telemetry.traces: `{config.traces}` turns tracing off; nothing to open")
    tracing = Tracing(config.service_name)
    tracing.add_exporter(exporter)
    return tracing


class Tracing:
    """The gateway's tracer provider and the hooks that feed it."""

    def __init__(self, service_name: str) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._tracer = self.provider.get_tracer("securegateway")

    def add_exporter(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        """Export finished spans; ``batch=False`` exports each as it ends (tests, in-memory)."""
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)

    def shutdown(self) -> None:
        """Flush what is buffered; called once when the gateway stops."""
        try:
            self.provider.shutdown()
        except Exception:  # boundary: a stuck exporter must not keep the gateway from stopping
            log.exception("flushing traces failed")

    # ---- hooks ---------------------------------------------------------------------------------

    async def interceptor(self, call: ToolCall, call_next: CallNext) -> ToolResult:
        """Outermost in the tools/call chain: one span around the whole call."""
        attributes = {
            "mcp.method.name": "tools/call",
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.qualified,
            PREFIX + "tool": call.qualified,
            PREFIX + "upstream": call.server or "gateway",
        }
        model = _model_of(call.session)
        if model is not None:
            attributes[PREFIX + "model"] = model
        with self._span(f"tools/call {call.qualified}", attributes, call.params.get("_meta")) as span:
            result = await call_next(call)
            if result.get("isError") and span.attributes.get(PREFIX + "outcome") is None:
                span.set_attribute(PREFIX + "outcome", "error")  # refused before any decision was made
            return result

    async def middleware(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        """In front of the relay: a span for each request the tools/call chain does not see."""
        method = ctx.method
        if ctx.request_id is None or method in _NOT_BY_MIDDLEWARE:
            return await call_next(ctx)
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        name = params.get("name") if method in _NAMED else None
        title = f"{method} {name}" if isinstance(name, str) else method
        with self._span(title[:200], {"mcp.method.name": method}, params.get("_meta")):
            return await call_next(ctx)

    def observe_audit(self, audit: AuditFn) -> AuditFn:
        """Wrap an audit function: each decision it writes is put on the current span."""

        async def record(item: Mapping[str, Any]) -> None:
            await audit(item)
            span = _SPAN.get()
            if span is not None:
                with contextlib.suppress(Exception):  # tracing never breaks a recorded decision
                    _annotate(span, item)

        return record

    # ---- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _span(self, name: str, attributes: dict[str, Any], meta: Any) -> Iterator[Any]:
        span = self._tracer.start_span(name, context=_parent(meta), kind=SpanKind.SERVER, attributes=attributes)
        token = _SPAN.set(span)
        try:
            yield span
        except BaseException as exc:
            code = getattr(getattr(exc, "error", None), "code", None)
            span.set_attribute("error.type", str(code) if code is not None else type(exc).__qualname__)
            span.set_status(StatusCode.ERROR)  # no message: it may quote the request
            raise
        finally:
            _SPAN.reset(token)
            span.end()


def _annotate(span: Span, item: Mapping[str, Any]) -> None:
    kind = item.get("type")
    if kind == "decision":
        decision = item.get("decision") if isinstance(item.get("decision"), Mapping) else {}
        assert isinstance(decision, Mapping)
        request = item.get("request") if isinstance(item.get("request"), Mapping) else {}
        assert isinstance(request, Mapping)
        outcome = "allow" if decision.get("allowed") else "deny"
        values = {
            "decision_id": item.get("decision_id") or decision.get("decision_id"),
            "outcome": outcome,
            "reason_code": decision.get("reason_code"),
            "model": item.get("model") or decision.get("model"),
            "upstream": item.get("server") or None,
            "policy_version": item.get("policy_version"),
        }
        if request.get("kind") in (None, "tool", "prompt", "method"):  # a resource's "tool" is its URI
            values["tool"] = _dotted(item.get("server"), item.get("tool"))
        attributes = {PREFIX + k: v for k, v in values.items() if isinstance(v, str | int) and v != ""}
        span.set_attributes(attributes)
        span.add_event(PREFIX + "decision", attributes)
        if decision.get("reason_code") == "gateway_error":
            span.set_status(StatusCode.ERROR)
    elif kind == "result.flagged":
        findings = item.get("findings") or ()
        codes = sorted({str(f.get("code")) for f in findings if isinstance(f, Mapping)})
        span.add_event(PREFIX + "result_flagged", {"codes": codes, "action": str(item.get("action") or "")})


def _dotted(server: Any, tool: Any) -> str | None:
    if not isinstance(tool, str) or not tool:
        return None
    return f"{server}.{tool}" if isinstance(server, str) and server and not tool.startswith(server + ".") else tool


def _parent(meta: Any) -> Any:
    """The client's trace context from ``_meta.traceparent``, if it sent a valid one."""
    if not isinstance(meta, Mapping) or not isinstance(meta.get("traceparent"), str):
        return None
    try:
        return extract({k: v for k, v in meta.items() if k in ("traceparent", "tracestate") and isinstance(v, str)})
    except (ValueError, TypeError):
        return None


def _model_of(session: Any) -> str | None:
    model = getattr(getattr(session, "identity", None), "model_id", None)
    return model if isinstance(model, str) else None
