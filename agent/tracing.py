"""OpenTelemetry traces of perfagent's own turns, with the GenAI semantic conventions.

Off unless configured: :func:`configure_tracing` turns it on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set or a trace
file is asked for (``--trace-file``). Off, nothing is imported and a turn pays
nothing.

Spans are built from a turn's run events (:func:`agent.run.stream_turn` passes
them through :meth:`Tracer.observe`), timed as the events arrive, so the graph
itself carries no tracing code:

- ``invoke_agent <persona>``: the turn (``gen_ai.operation.name=invoke_agent``,
  ``gen_ai.agent.name``, ``gen_ai.conversation.id`` = the thread), with each
  pre-response check as a span event;
- ``<node>`` per graph node, and for the model node ``chat <model>``
  (``gen_ai.operation.name=chat``, provider, request model, token usage);
- ``execute_tool <tool>`` per tool call (``gen_ai.tool.name``, call id, ok,
  duration); a delegation's sub-agent nests its nodes under its tool span.

Export is asynchronous: a batch processor with a bounded queue hands spans to
the exporter on its own thread, with a timeout, so a broken collector can
neither slow nor break a turn (spans past the queue are dropped). The trace
file is OTLP JSON, one document per exported batch (JSON Lines), which
``perfagent measure analyze_traces`` reads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.trace import Span

    from agent.results import RunEvent

#: Exporter and flush timeouts (s): a dead collector costs at most this at exit.
EXPORT_TIMEOUT_S = 2.0
#: Spans held for export; past it new spans are dropped rather than block a turn.
MAX_QUEUE = 2048

_PROVIDERS = {"anthropic": "anthropic", "openai": "openai", "offline": "perfagent.offline"}


def _otlp_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_otlp_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _otlp_attributes(attributes: Any) -> list[dict[str, Any]]:
    return [{"key": k, "value": _otlp_value(v)} for k, v in (attributes or {}).items()]


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """Spans as one OTLP JSON document (hex ids, nanosecond strings), grouped by resource."""
    by_resource: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
    for span in spans:
        ctx = span.context
        parent = span.parent
        entry = {
            "traceId": format(ctx.trace_id, "032x"),
            "spanId": format(ctx.span_id, "016x"),
            "parentSpanId": format(parent.span_id, "016x") if parent else "",
            "name": span.name,
            "kind": int(span.kind.value) + 1,  # OTLP counts kinds from 1 (internal)
            "startTimeUnixNano": str(span.start_time),
            "endTimeUnixNano": str(span.end_time),
            "attributes": _otlp_attributes(span.attributes),
            "events": [{"timeUnixNano": str(e.timestamp), "name": e.name,
                        "attributes": _otlp_attributes(e.attributes)} for e in span.events],
            "status": {"code": int(span.status.status_code.value),
                       "message": span.status.description or ""},
        }
        key = id(span.resource)
        by_resource.setdefault(key, (span.resource, []))[1].append(entry)
    return {"resourceSpans": [
        {"resource": {"attributes": _otlp_attributes(resource.attributes)},
         "scopeSpans": [{"scope": {"name": "perfagent"}, "spans": entries}]}
        for resource, entries in by_resource.values()]}


class JsonFileExporter:
    """Appends each exported batch to a file as one OTLP JSON line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        line = json.dumps(otlp_json(spans), separators=(",", ":"))
        try:
            with self._lock, self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class Tracer:
    """The process's tracer provider and the turn observer that makes spans from events."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("perfagent")

    def _start(self, name: str, parent: Span | None, attributes: dict[str, Any]) -> Span:
        from opentelemetry import trace

        context = trace.set_span_in_context(parent) if parent is not None else None
        return self.tracer.start_span(name, context=context, attributes=attributes,
                                      start_time=time.time_ns())

    async def observe(self, events: AsyncIterator[RunEvent], message: str) -> AsyncIterator[RunEvent]:
        """Pass a turn's events through, making its spans."""
        from opentelemetry.trace import Status, StatusCode

        turn: Span | None = None
        model = ""
        nodes: dict[tuple[int, str], Span] = {}
        tools: dict[str, Span] = {}
        # The span a depth's nodes hang from: the turn for depth 0, the delegating
        # tool call for a sub-agent's nodes.
        parents: dict[int, Span] = {}
        try:
            async with aclosing(events) as stream:
                async for event in stream:
                    kind, data = event.type, event.data
                    now = time.time_ns()
                    if kind == "run_start":
                        model = data.get("model", "")
                        provider = _PROVIDERS.get(model.partition(":")[0], model)
                        turn = self._start(f"invoke_agent {data.get('persona', '')}", None, {
                            "gen_ai.operation.name": "invoke_agent",
                            "gen_ai.agent.name": data.get("persona", ""),
                            "gen_ai.conversation.id": data.get("thread_id", ""),
                            "gen_ai.provider.name": provider,
                            "gen_ai.request.model": model.partition(":")[2] or model,
                            "perfagent.question.chars": len(message)})
                        parents[0] = turn
                    elif kind == "node_start" and turn is not None:
                        depth, node = data.get("depth", 0), data.get("node", "")
                        parent = parents.get(depth, turn)
                        if node == "agent":
                            provider = _PROVIDERS.get(model.partition(":")[0], model)
                            name = f"chat {model.partition(':')[2] or model}"
                            attrs = {"gen_ai.operation.name": "chat",
                                     "gen_ai.provider.name": provider,
                                     "gen_ai.request.model": model.partition(":")[2] or model}
                        else:
                            name, attrs = node, {"perfagent.node": node}
                        attrs["perfagent.depth"] = depth
                        nodes[(depth, node)] = self._start(name, parent, attrs)
                    elif kind == "node_end":
                        span = nodes.pop((data.get("depth", 0), data.get("node", "")), None)
                        if span is not None:
                            usage = data.get("usage") or {}
                            if usage:
                                span.set_attribute("gen_ai.usage.input_tokens",
                                                   int(usage.get("input_tokens", 0)))
                                span.set_attribute("gen_ai.usage.output_tokens",
                                                   int(usage.get("output_tokens", 0)))
                                span.set_attribute("gen_ai.usage.cache_read.input_tokens",
                                                   int(usage.get("cache_read_tokens", 0)))
                                span.set_attribute("gen_ai.usage.cache_creation.input_tokens",
                                                   int(usage.get("cache_write_tokens", 0)))
                            span.end(end_time=now)
                    elif kind == "tool_call" and turn is not None:
                        depth = data.get("depth", 0)
                        parent = nodes.get((depth, "tools"), parents.get(depth, turn))
                        span = self._start(f"execute_tool {data.get('name', '')}", parent, {
                            "gen_ai.operation.name": "execute_tool",
                            "gen_ai.tool.name": data.get("name", ""),
                            "gen_ai.tool.call.id": str(data.get("id", "")),
                            "perfagent.depth": depth})
                        tools[str(data.get("id", ""))] = span
                        if data.get("name") == "delegate":
                            parents[depth + 1] = span
                    elif kind == "tool_result":
                        span = tools.pop(str(data.get("id", "")), None)
                        if span is not None:
                            span.set_attribute("perfagent.tool.ok", bool(data.get("ok")))
                            span.set_attribute("perfagent.tool.duration_ms",
                                               float(data.get("duration_ms", 0.0)))
                            if not data.get("ok"):
                                span.set_status(Status(StatusCode.ERROR, str(data.get("error"))))
                            span.end(end_time=now)
                    elif kind == "check" and turn is not None:
                        target = parents.get(data.get("depth", 0), turn)
                        target.add_event("perfagent.check", {
                            "check.name": data.get("name", ""),
                            "check.status": data.get("status", ""),
                            "check.feedback": data.get("feedback", "")}, timestamp=now)
                    elif kind == "final" and turn is not None:
                        usage = data.get("usage", {})
                        turn.set_attribute("gen_ai.usage.input_tokens",
                                           int(usage.get("input_tokens", 0)))
                        turn.set_attribute("gen_ai.usage.output_tokens",
                                           int(usage.get("output_tokens", 0)))
                        turn.set_attribute("perfagent.revisions", int(data.get("revisions", 0)))
                        turn.set_attribute("perfagent.tool_calls", len(data.get("tool_calls", [])))
                    elif kind == "error" and turn is not None:
                        turn.set_status(Status(StatusCode.ERROR, data.get("message", "")))
                        turn.set_attribute("error.type", data.get("code", ""))
                    yield event
        finally:
            now = time.time_ns()
            for span in [*tools.values(), *nodes.values()]:  # cancelled mid-way
                span.end(end_time=now)
            if turn is not None:
                turn.end(end_time=now)

    def shutdown(self) -> None:
        """Flush what is queued (bounded by the export timeout) and stop the exporters."""
        self.provider.force_flush(int(EXPORT_TIMEOUT_S * 1000))
        self.provider.shutdown()


_TRACER: Tracer | None = None


def _otlp_endpoint() -> str | None:
    return (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None)


def configure_tracing(trace_file: Path | None = None) -> Tracer | None:
    """Turn tracing on if an OTLP endpoint or ``trace_file`` is given; idempotent.

    Returns the tracer, or None when tracing stays off.
    """
    global _TRACER
    if _TRACER is not None:
        return _TRACER
    endpoint = _otlp_endpoint()
    if not endpoint and trace_file is None:
        return None
    import atexit

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({
        "service.name": os.environ.get("OTEL_SERVICE_NAME", "perfagent")}))
    batch = {"max_queue_size": MAX_QUEUE, "export_timeout_millis": int(EXPORT_TIMEOUT_S * 1000),
             "schedule_delay_millis": 500}
    if endpoint:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(), **batch))
    if trace_file is not None:
        provider.add_span_processor(BatchSpanProcessor(JsonFileExporter(trace_file), **batch))
    _TRACER = Tracer(provider)
    atexit.register(_TRACER.shutdown)
    return _TRACER


def _otlp_exporter() -> Any:
    """OTLP over HTTP/protobuf (the spec's default), or gRPC when the protocol says so."""
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(timeout=EXPORT_TIMEOUT_S)


def active_tracer() -> Tracer | None:
    """The process's tracer, or None while tracing is off."""
    return _TRACER
