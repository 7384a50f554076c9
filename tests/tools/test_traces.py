"""analyze_traces on OTLP and Jaeger files with known timings, written by the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools.base import ToolError
from tools.traces import SPEC, TracesInput, TracesResult, run

MS = 1_000_000
BASE_NS = 1_700_000_000_000_000_000
DATA = Path(__file__).parent / "data"


def tid(n: int) -> str:
    return f"{n:032x}"


def sid(n: int) -> str:
    return f"{n:016x}"


def span(trace: int, span_id: int, parent: int | None, name: str, start_ms: float, end_ms: float,
         *, error: str | None = None, **attrs: str) -> dict[str, Any]:
    """One OTLP span; times in ms from a fixed base."""
    out: dict[str, Any] = {
        "traceId": tid(trace), "spanId": sid(span_id),
        "parentSpanId": sid(parent) if parent is not None else "",
        "name": name, "kind": 2,
        "startTimeUnixNano": str(BASE_NS + round(start_ms * MS)),
        "endTimeUnixNano": str(BASE_NS + round(end_ms * MS)),
        "attributes": [{"key": k.replace("_", "."), "value": {"stringValue": v}}
                       for k, v in attrs.items()],
        "status": {},
    }
    if error is not None:
        out["status"] = {"code": 2, "message": error}
    return out


def otlp(**services: list[dict[str, Any]]) -> dict[str, Any]:
    """An OTLP export with one resource per service."""
    return {"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
         "scopeSpans": [{"scope": {"name": "tests"}, "spans": spans}]}
        for svc, spans in services.items()]}


def write(folder: Path, name: str, doc: Any) -> str:
    (folder / name).write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return name


async def analyse(folder: Path, doc: Any, **kwargs: Any) -> TracesResult:
    return await run(TracesInput(path=write(folder, "traces.json", doc), **kwargs))


def steps(result: TracesResult, index: int = 0) -> list[tuple[str, float]]:
    return [(s.name, s.contribution_ms) for s in result.critical_paths[index].steps]


def test_spec() -> None:
    assert SPEC.name == "analyze_traces" and SPEC.runs_code is False
    props = SPEC.json_schema()["properties"]
    for name in ("path", "top", "trace_id", "critical_paths", "n_plus_one_threshold", "slow_share"):
        assert props[name].get("description"), name
    with pytest.raises(ValueError):
        TracesInput(path="x.json", nonsense=1)  # type: ignore[call-arg]


async def test_sequential_children_are_all_on_the_critical_path(workspace: Path) -> None:
    doc = otlp(api=[
        span(1, 1, None, "GET /checkout", 0, 100),
        span(1, 2, 1, "validate", 5, 30),
        span(1, 3, 1, "reserve", 30, 60),
        span(1, 4, 1, "charge", 62, 90),
    ])
    result = await analyse(workspace, doc)
    assert steps(result) == [("GET /checkout", 17.0), ("validate", 25.0), ("reserve", 30.0),
                             ("charge", 28.0)]
    path = result.critical_paths[0]
    assert path.duration_ms == 100.0 and path.root == "api/GET /checkout"
    assert sum(s.contribution_ms for s in path.steps) == pytest.approx(100.0)
    assert [s.start_ms for s in path.steps] == [0.0, 5.0, 30.0, 62.0]
    root = next(r for r in result.self_time if r.operation == "GET /checkout")
    assert root.self_ms == 17.0 and root.count == 1


async def test_parallel_children_only_the_longest_is_on_the_path(workspace: Path) -> None:
    doc = otlp(api=[
        span(1, 1, None, "GET /dashboard", 0, 100),
        span(1, 2, 1, "fetch profile", 10, 50),
        span(1, 3, 1, "fetch orders", 10, 90),
        span(1, 4, 1, "fetch ads", 20, 40),
        span(1, 5, 3, "SELECT orders", 15, 85),
    ])
    result = await analyse(workspace, doc)
    assert steps(result) == [("GET /dashboard", 20.0), ("fetch orders", 10.0),
                             ("SELECT orders", 70.0)]
    # the SELECT takes 70 % of the critical path: it dominates the trace
    slow = next(f for f in result.findings if f.kind == "slow_span")
    assert slow.location == "api/SELECT orders" and slow.severity == "medium"
    assert "70%" in slow.summary


async def test_overlapping_children_are_not_subtracted_twice(workspace: Path) -> None:
    doc = otlp(api=[
        span(1, 1, None, "GET /report", 0, 100),
        span(1, 2, 1, "query a", 10, 60),
        span(1, 3, 1, "query b", 40, 80),
        span(1, 4, 1, "late callback", 90, 130),  # ends after its parent: clipped to it
    ])
    result = await analyse(workspace, doc)
    own = {r.operation: r.self_ms for r in result.self_time}
    # children cover 10-80 and 90-100 of the root: 80 ms, so 20 ms is its own
    assert own["GET /report"] == 20.0
    assert own["query a"] == 50.0 and own["query b"] == 40.0
    slowest = result.slowest_spans[0]
    assert (slowest.name, slowest.duration_ms) == ("GET /report", 100.0)
    # the path: the clipped callback (90-100), the root's gap, b (40-80), then the root again
    # (a ended after b started, so it ran in parallel with b and is not on the path)
    assert steps(result) == [("GET /report", 50.0), ("query b", 40.0), ("late callback", 10.0)]
    assert result.duration_max_ms == 130.0  # the trace ends with its last span


async def test_n_plus_one_of_twelve_db_spans(workspace: Path) -> None:
    spans = [span(7, 1, None, "GET /orders", 0, 70),
             span(7, 2, 1, "SELECT orders", 1, 5,
                  db_statement="SELECT id FROM orders WHERE customer_id = 3")]
    for i in range(12):
        spans.append(span(7, 10 + i, 1, "SELECT order_items", 6 + 5 * i, 10 + 5 * i,
                          db_statement=f"SELECT sku, quantity FROM order_items WHERE order_id = {100 + i}"))
    result = await analyse(workspace, otlp(api=spans))
    assert len(result.repeated) == 1
    rep = result.repeated[0]
    assert rep.operation == "SELECT sku, quantity FROM order_items WHERE order_id = ?"
    assert (rep.count, rep.occurrences, rep.sequential) == (12, 1, True)
    assert rep.total_ms == 48.0 and rep.parent_operation == "GET /orders"
    finding = next(f for f in result.findings if f.kind == "n_plus_one")
    assert finding.location == "api/GET /orders" and finding.severity == "medium"
    assert finding.evidence is not None and finding.evidence.startswith("12× SELECT sku")
    # each of the 12 is on the critical path, in order
    names = [name for name, _ in steps(result)]
    assert names == ["GET /orders", "SELECT orders"] + ["SELECT order_items"] * 12
    # below the threshold nothing is reported
    quiet = await analyse(workspace, otlp(api=spans), n_plus_one_threshold=13)
    assert not quiet.repeated and not [f for f in quiet.findings if f.kind == "n_plus_one"]


async def test_error_spans(workspace: Path) -> None:
    doc = otlp(api=[span(1, 1, None, "POST /pay", 0, 40, error="card declined"),
                    span(1, 2, 1, "charge", 5, 35, error="card declined")],
               web=[span(2, 1, None, "GET /", 0, 10)])
    result = await analyse(workspace, doc)
    assert result.error_count == 2
    assert {(s.name, s.status_message) for s in result.error_spans} == {
        ("POST /pay", "card declined"), ("charge", "card declined")}
    errors = {f.location: f for f in result.findings if f.kind == "error_span"}
    assert errors["api/POST /pay"].severity == "high"  # the request itself failed
    assert errors["api/charge"].severity == "medium"
    assert result.trace_count == 2 and result.span_count == 3
    assert {s.service for s in result.slowest_spans} == {"api", "web"}


async def test_measurements_and_summary(workspace: Path) -> None:
    doc = otlp(api=[span(n, 1, None, "GET /x", 0, 100 * n) for n in (1, 2, 3)])
    result = await analyse(workspace, doc, critical_paths=2)
    measured = {m.name: m for m in result.measurements}
    assert measured["trace_duration_p50"].value == 200.0
    assert measured["trace_duration_p95"].value == 290.0
    assert measured["trace_duration_max"].value == 300.0
    assert measured["traces"].value == 3 and measured["spans"].value == 3
    assert all(m.source == "analyze_traces" and m.target.endswith("traces.json")
               for m in measured.values())
    assert measured["trace_duration_p95"].unit == "ms"
    assert [p.trace_id for p in result.critical_paths] == [tid(3), tid(2)]
    assert "p95 290 ms" in result.summary and len(result.summary.splitlines()) <= 3
    # single-span traces are not "dominated" by their only span
    assert not [f for f in result.findings if f.kind == "slow_span"]


async def test_jaeger_format(workspace: Path) -> None:
    def jspan(span_id: str, parent: str | None, name: str, start_ms: float, dur_ms: float,
              process: str, **tags: Any) -> dict[str, Any]:
        return {"traceID": "abc123", "spanID": span_id, "operationName": name,
                "references": [{"refType": "CHILD_OF", "traceID": "abc123", "spanID": parent}]
                if parent else [],
                "startTime": 1_700_000_000_000_000 + int(start_ms * 1000),
                "duration": int(dur_ms * 1000), "processID": process,
                "tags": [{"key": k, "type": "string", "value": v} for k, v in tags.items()]}

    doc = {"data": [{"traceID": "abc123", "spans": [
        jspan("a1", None, "GET /checkout", 0, 100, "p1"),
        jspan("b2", "a1", "validate", 5, 25, "p1"),
        jspan("c3", "a1", "reserve", 30, 30, "p2"),
        jspan("d4", "a1", "charge", 62, 28, "p2", error=True),
    ], "processes": {"p1": {"serviceName": "frontend", "tags": []},
                     "p2": {"serviceName": "payments", "tags": []}}}]}
    result = await analyse(workspace, doc)
    assert result.formats == ["jaeger"]
    assert steps(result) == [("GET /checkout", 17.0), ("validate", 25.0), ("reserve", 30.0),
                             ("charge", 28.0)]
    assert [s.service for s in result.critical_paths[0].steps] == [
        "frontend", "frontend", "payments", "payments"]
    assert result.error_count == 1 and result.error_spans[0].name == "charge"
    # the Jaeger id drops leading zeros; the filter does not care
    filtered = await analyse(workspace, doc, trace_id="0000ABC123")
    assert filtered.trace_count == 1


async def test_json_lines_and_trace_filter(workspace: Path) -> None:
    first = otlp(api=[span(1, 1, None, "GET /a", 0, 10)])
    second = otlp(db=[span(2, 1, None, "GET /b", 0, 30), span(2, 2, 1, "SELECT", 5, 25)])
    name = write(workspace, "export.jsonl", json.dumps(first) + "\n\n" + json.dumps(second) + "\n")
    result = await run(TracesInput(path=name))
    assert (result.trace_count, result.span_count, result.formats) == (2, 3, ["otlp"])
    only = await run(TracesInput(path=name, trace_id=tid(2)))
    assert only.trace_count == 1 and only.duration_max_ms == 30.0
    with pytest.raises(ToolError) as err:
        await run(TracesInput(path=name, trace_id="ffff"))
    assert err.value.code == "trace_not_found" and tid(1) in err.value.hint


async def test_deep_trace_does_not_recurse(workspace: Path) -> None:
    depth = 3000
    spans = [span(1, i + 1, i if i else None, f"level {i}", i * 0.01, 100 - i * 0.01)
             for i in range(depth)]
    result = await analyse(workspace, otlp(api=spans), critical_paths=1)
    assert result.critical_paths[0].steps_omitted == depth - 40
    # each level owns 0.01 ms at either end; the innermost one owns the middle
    innermost = result.self_time[0]
    assert innermost.operation == f"level {depth - 1}" and innermost.self_ms == pytest.approx(40.02)
    assert result.self_time[1].self_ms == pytest.approx(0.02)


async def test_sample_export_from_data_folder(workspace: Path) -> None:
    (workspace / "sample.json").write_bytes((DATA / "otlp_orders.json").read_bytes())
    result = await run(TracesInput(path="sample.json"))
    assert result.trace_count == 2
    finding = next(f for f in result.findings if f.kind == "n_plus_one")
    assert finding.location == "orders-api/GET /orders"
    assert result.error_count == 1


@pytest.mark.parametrize(("content", "expected"), [
    ("this is not json", "is not JSON"),
    ("", "is empty"),
    ('{"spans": 3}', "neither resourceSpans"),
    ('[1, 2]', "is not a JSON object"),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "ab", "name": "q", '
     '"startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}',
     "resourceSpans[0].scopeSpans[0].spans[0] ('q'): spanId is missing"),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "ab", "spanId": "cd", '
     '"name": "q", "startTimeUnixNano": "50", "endTimeUnixNano": "20"}]}]}]}',
     "spanId cd: ends before it starts"),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "ab", "spanId": "cd", '
     '"name": "q", "startTimeUnixNano": "soon", "endTimeUnixNano": "20"}]}]}]}',
     "startTimeUnixNano is missing or not a number"),
    ('{"data": [{"traceID": "t", "spans": [{"spanID": "s", "operationName": "op", '
     '"startTime": 10, "duration": -5}]}]}', "duration is negative"),
    ('{"resourceSpans": []}\n{"resourceSpans": [}\n', "line 2 is not JSON"),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "ab", "spanId": "a", '
     '"parentSpanId": "b", "name": "x", "startTimeUnixNano": "1", "endTimeUnixNano": "2"}, '
     '{"traceId": "ab", "spanId": "b", "parentSpanId": "a", "name": "y", '
     '"startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}', "parentSpanId cycle"),
    ('{"resourceSpans": []}', "contains no spans"),
])
async def test_malformed_files_are_structured_errors(workspace: Path, content: str,
                                                     expected: str) -> None:
    with pytest.raises(ToolError) as err:
        await analyse(workspace, content)
    assert err.value.code == "invalid_trace_file"
    assert expected in err.value.message, err.value.message
    assert "OTLP" in err.value.hint and "Jaeger" in err.value.hint


async def test_missing_and_outside_paths(workspace: Path,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(ToolError) as err:
        await run(TracesInput(path="nope.json"))
    assert err.value.code == "not_found"
    outside = tmp_path_factory.mktemp("elsewhere") / "t.json"
    outside.write_text(json.dumps(otlp(api=[span(1, 1, None, "x", 0, 1)])))
    with pytest.raises(ToolError) as err:
        await run(TracesInput(path=str(outside)))
    assert err.value.code == "path_outside_workspace"
