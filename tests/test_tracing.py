"""OpenTelemetry traces and the metrics textfile of perfagent's own turns."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

import agent.tracing as tracing
from agent.context import Settings
from agent.run import run_turn
from tests.conftest import REPO
from tests.scripted import ScriptedModel, call
from tests.test_graph import PASSING
from tools.traces import load_spans


def _tracer(exporter: Any) -> tracing.Tracer:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(
        exporter, max_queue_size=tracing.MAX_QUEUE,
        export_timeout_millis=int(tracing.EXPORT_TIMEOUT_S * 1000), schedule_delay_millis=100))
    return tracing.Tracer(provider)


@pytest.fixture
def trace_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "trace.jsonl"
    tracer = _tracer(tracing.JsonFileExporter(path))
    monkeypatch.setattr(tracing, "_TRACER", tracer)
    yield path
    tracer.shutdown()


def _delegating_model() -> ScriptedModel:
    return ScriptedModel([
        AIMessage(content="", tool_calls=[call("knowledge_search", {"query": "n+1"}, "k1")],
                  usage_metadata={"input_tokens": 120, "output_tokens": 7, "total_tokens": 127}),
        AIMessage(content="", tool_calls=[call(
            "delegate", {"to": "database-optimizer", "task": "review the schema"}, "d1")]),
        AIMessage(content=PASSING),
    ])


async def test_a_turn_becomes_genai_spans_that_analyze_traces_reads(trace_file: Path) -> None:
    result = await run_turn("why is /orders slow?", settings=Settings(model="offline"),
                            model=_delegating_model())
    tracing.active_tracer().shutdown()  # type: ignore[union-attr]
    spans = load_spans(trace_file).spans
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (turn,) = by_name["invoke_agent performance-engineer"]
    assert turn.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert turn.attributes["gen_ai.conversation.id"] == result.thread_id
    assert turn.parent_id in (None, "")
    chats = [s for name, group in by_name.items() if name.startswith("chat ") for s in group]
    assert all(s.attributes["gen_ai.operation.name"] == "chat" for s in chats)
    assert any(s.attributes.get("gen_ai.usage.input_tokens") == 120 for s in chats)
    (tool,) = [s for s in by_name["execute_tool knowledge_search"]
               if s.attributes["perfagent.depth"] == 0]
    assert tool.attributes["gen_ai.tool.name"] == "knowledge_search"
    assert tool.attributes["perfagent.tool.ok"] is True
    # The sub-agent's nodes hang under the delegate tool call, not under the turn.
    (delegate,) = by_name["execute_tool delegate"]
    sub_nodes = [s for s in spans if s.attributes.get("perfagent.depth") == 1
                 and not s.name.startswith("execute_tool")]
    assert sub_nodes and all(s.parent_id == delegate.span_id for s in sub_nodes)
    assert all(s.trace_id == turn.trace_id for s in spans)
    assert len({s.span_id for s in spans}) == len(spans)


async def test_check_results_are_span_events(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    seen: list[Any] = []

    class Collect:
        def export(self, batch: Any) -> Any:
            seen.extend(batch)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None: ...

        def force_flush(self, timeout_millis: int = 0) -> bool:
            return True

    tracer = _tracer(Collect())
    monkeypatch.setattr(tracing, "_TRACER", tracer)
    await run_turn("why?", settings=Settings(model="offline"),
                   model=ScriptedModel([AIMessage(content=PASSING)]))
    tracer.shutdown()
    (turn,) = [s for s in seen if s.name.startswith("invoke_agent")]
    checks = {e.attributes["check.name"]: e.attributes["check.status"] for e in turn.events}
    assert checks == dict.fromkeys(["baseline_established", "impact_quantified",
                                    "monitoring_included", "implementation_quality",
                                    "regression_prevention"], "pass")


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: the worst collector."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


async def test_a_hanging_collector_neither_slows_nor_breaks_turns(
        silent_collector: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", silent_collector)
    tracer = _tracer(tracing._otlp_exporter())
    settings = Settings(model="offline")

    async def timed_turns() -> list[float]:
        durations = []
        for _ in range(5):
            started = time.perf_counter()
            await run_turn("why?", settings=settings,
                           model=ScriptedModel([AIMessage(content=PASSING)]))
            durations.append(time.perf_counter() - started)
        return durations

    plain = await timed_turns()
    monkeypatch.setattr(tracing, "_TRACER", tracer)
    traced = await timed_turns()
    await _wait(0.5)  # let a batch reach the exporter, which now hangs on the collector
    traced += await timed_turns()
    # Export runs on the processor's thread: turns cost what they cost without tracing
    # (a generous bound for a noisy machine; the hang itself would add >= 2 s per export).
    assert sorted(traced)[len(traced) // 2] < sorted(plain)[len(plain) // 2] * 3 + 0.05
    started = time.perf_counter()
    tracer.shutdown()
    assert time.perf_counter() - started < 3 * tracing.EXPORT_TIMEOUT_S + 1


async def _wait(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def test_cli_writes_traces_and_a_metrics_textfile(tmp_path: Path) -> None:
    trace, metrics = tmp_path / "t.jsonl", tmp_path / "m.prom"
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--trace-file", str(trace), "--metrics-file",
         str(metrics), "ask", "What p95 should a checkout API have?", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    names = {s.name for s in load_spans(trace).spans}
    assert "invoke_agent performance-engineer" in names and "chat offline" in names
    text = metrics.read_text()
    assert 'perfagent_turn_duration_seconds_count{model="offline",outcome="ok"} 1.0' in text
    assert 'perfagent_check_results_total{check="monitoring_included"' in text
