"""``analyze_traces``: read a trace export and say where each request's time went.

Input is a file, never a live backend: an OTLP JSON export (the OpenTelemetry
Collector's file exporter shape, ``{"resourceSpans": [...]}``, one document or
JSON Lines of them) or a Jaeger JSON export (``{"data": [{"traceID", "spans",
"processes"}]}``, what the Jaeger UI and its query API return). Both are
parsed into one span model; anything malformed is an ``invalid_trace_file``
error naming the document, span and field, because an analysis of a
half-understood file would report invented structure.

What is computed, per trace:

* its duration (first start to last end over all its spans);
* the **critical path**: starting at the root, take the child that finished
  last (children ending after their parent are clipped to the parent's end),
  walk into it, then continue with the child that finished before *that* one
  started, and so on; whatever no child covers is the parent's own time on the
  path. Sequential children all land on the path in order; of parallel
  children only the one that ended last does. Each span's contribution is
  the time on the path that is its own;
* **self time** of every span: its duration minus the *union* of its
  children's intervals clipped to it, so overlapping children are not
  subtracted twice.

Across traces the result reports the slowest spans, the critical paths of the
slowest traces, self time per (service, operation), error spans, repeated
children under one parent (``n_plus_one``: the same operation, or the same
SQL shape for database spans, at least ``n_plus_one_threshold`` times) and
spans that alone take more than ``slow_share`` % of a trace's critical path
(``slow_span``).

The parser (:func:`load_spans`) is also what ``detect_n_plus_one`` uses for
its ``traces`` source.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    ToolError,
    ToolResult,
    ToolSpec,
    resolve_in_workspace,
)
from tools.nplusone import normalise_sql

TOOL = "analyze_traces"
#: Files larger than this are refused rather than loaded into memory whole.
MAX_FILE_BYTES = 512 * 1024**2
#: Critical-path steps kept per reported path (the rest are summed in a note).
MAX_PATH_STEPS = 40
#: Attribute keys that carry a database statement (old and new semantic conventions).
DB_STATEMENT_KEYS = ("db.statement", "db.query.text")
ACCEPTED_FORMATS = (
    'accepted formats: OTLP JSON ({"resourceSpans": [{"resource": ..., "scopeSpans": '
    '[{"spans": [...]}]}]}, one document or JSON Lines of them, as the OpenTelemetry '
    'Collector file exporter writes) or Jaeger JSON ({"data": [{"traceID", "spans", '
    '"processes"}]})'
)
_SQL_VERBS = ("select", "insert", "update", "delete", "with", "replace", "upsert", "merge")


# --------------------------------------------------------------------------- span model


@dataclass(slots=True)
class Span:
    """One span, whatever format it came from; times in nanoseconds since the epoch."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start: int
    end: int
    attributes: dict[str, Any] = field(default_factory=dict)
    error: bool = False
    status_message: str = ""

    @property
    def duration(self) -> int:
        return self.end - self.start

    def statement(self) -> str | None:
        """The database statement this span ran, when it records one."""
        for key in DB_STATEMENT_KEYS:
            value = self.attributes.get(key)
            if isinstance(value, str) and value.strip():
                return value
        return None


@dataclass
class SpanFile:
    """What :func:`load_spans` read: the spans, the format(s) and what was skipped."""

    formats: list[str]
    spans: list[Span]
    duplicates: int = 0


def _bad(path: Path, problem: str) -> ToolError:
    return ToolError("invalid_trace_file", f"{path.name}: {problem}", ACCEPTED_FORMATS)


def _pick(obj: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``obj`` (protobuf JSON allows camelCase or snake_case)."""
    for name in names:
        if name in obj:
            return obj[name]
    return None


def _any_value(value: Any) -> Any:
    """Decode an OTLP ``AnyValue`` ({"stringValue": ...}, {"intValue": "3"}, ...)."""
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "string_value", "boolValue", "bool_value", "doubleValue",
                "double_value", "bytesValue", "bytes_value"):
        if key in value:
            return value[key]
    raw = _pick(value, "intValue", "int_value")
    if raw is not None:
        try:
            return int(raw)
        except (TypeError, ValueError):
            return raw
    array = _pick(value, "arrayValue", "array_value")
    if isinstance(array, dict):
        return [_any_value(v) for v in array.get("values") or []]
    kvlist = _pick(value, "kvlistValue", "kvlist_value")
    if isinstance(kvlist, dict):
        return _attributes(kvlist.get("values"))
    return None


def _attributes(raw: Any) -> dict[str, Any]:
    """OTLP attributes (a list of {"key", "value"}) as a plain dict."""
    out: dict[str, Any] = {}
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                out[item["key"]] = _any_value(item.get("value"))
    return out


def _nanos(value: Any, what: str, path: Path) -> int:
    """An OTLP timestamp (uint64 as a JSON string or number) as an int."""
    if isinstance(value, bool):
        raise _bad(path, f"{what} is not a number of nanoseconds: {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise _bad(path, f"{what} is missing or not a number of nanoseconds: {value!r}")
    if number < 0:
        raise _bad(path, f"{what} is negative: {number}")
    return number


def _micros(value: Any, what: str, path: Path) -> int:
    """A Jaeger time (microseconds, a JSON number) as nanoseconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(path, f"{what} is missing or not a number of microseconds: {value!r}")
    if value < 0:
        raise _bad(path, f"{what} is negative: {value}")
    return round(value * 1000)


def _text_id(value: Any, what: str, path: Path) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _bad(path, f"{what} is missing or empty")


def _otlp_error(status: Any) -> tuple[bool, str]:
    if not isinstance(status, dict):
        return False, ""
    code = status.get("code")
    failed = code == 2 or (isinstance(code, str) and code.upper() in ("STATUS_CODE_ERROR", "ERROR", "2"))
    message = status.get("message")
    return failed, message if isinstance(message, str) else ""


def _otlp_document(doc: dict[str, Any], where: str, path: Path) -> Iterator[Span]:
    resource_spans = _pick(doc, "resourceSpans", "resource_spans")
    if not isinstance(resource_spans, list):
        raise _bad(path, f"{where}resourceSpans is not a list")
    for r, resource_block in enumerate(resource_spans):
        at_r = f"{where}resourceSpans[{r}]"
        if not isinstance(resource_block, dict):
            raise _bad(path, f"{at_r} is not an object")
        resource = resource_block.get("resource") or {}
        resource_attrs = _attributes(resource.get("attributes") if isinstance(resource, dict) else None)
        service = str(resource_attrs.get("service.name") or "unknown")
        scopes = _pick(resource_block, "scopeSpans", "scope_spans", "instrumentationLibrarySpans")
        if scopes is None:
            continue
        if not isinstance(scopes, list):
            raise _bad(path, f"{at_r}.scopeSpans is not a list")
        for s, scope in enumerate(scopes):
            at_s = f"{at_r}.scopeSpans[{s}]"
            spans = scope.get("spans") if isinstance(scope, dict) else None
            if spans is None:
                continue
            if not isinstance(spans, list):
                raise _bad(path, f"{at_s}.spans is not a list")
            for i, raw in enumerate(spans):
                yield _otlp_span(raw, f"{at_s}.spans[{i}]", service, path)


def _otlp_span(raw: Any, at: str, service: str, path: Path) -> Span:
    if not isinstance(raw, dict):
        raise _bad(path, f"{at} is not an object")
    name = raw.get("name")
    label = f"{at} ({name!r})" if isinstance(name, str) else at
    trace_id = _text_id(_pick(raw, "traceId", "trace_id"), f"{label}: traceId", path)
    span_id = _text_id(_pick(raw, "spanId", "span_id"), f"{label}: spanId", path)
    label = f"{label}, spanId {span_id}"
    parent = _pick(raw, "parentSpanId", "parent_span_id")
    start = _nanos(_pick(raw, "startTimeUnixNano", "start_time_unix_nano"),
                   f"{label}: startTimeUnixNano", path)
    end = _nanos(_pick(raw, "endTimeUnixNano", "end_time_unix_nano"),
                 f"{label}: endTimeUnixNano", path)
    if end < start:
        raise _bad(path, f"{label}: ends before it starts (endTimeUnixNano {end} < "
                         f"startTimeUnixNano {start})")
    attrs = _attributes(raw.get("attributes"))
    failed, message = _otlp_error(raw.get("status"))
    if failed and not message:
        for event in raw.get("events") or []:
            if isinstance(event, dict) and event.get("name") == "exception":
                message = str(_attributes(event.get("attributes")).get("exception.message") or "")
                break
    return Span(trace_id=trace_id, span_id=span_id,
                parent_id=parent.strip() if isinstance(parent, str) and parent.strip() else None,
                name=name if isinstance(name, str) and name else "(unnamed)", service=service,
                start=start, end=end, attributes=attrs, error=failed, status_message=message)


def _jaeger_tags(raw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(raw, list):
        for tag in raw:
            if isinstance(tag, dict) and isinstance(tag.get("key"), str):
                out[tag["key"]] = tag.get("value")
    return out


def _jaeger_trace(trace: Any, at: str, path: Path) -> Iterator[Span]:
    if not isinstance(trace, dict):
        raise _bad(path, f"{at} is not an object")
    spans = trace.get("spans")
    if not isinstance(spans, list):
        raise _bad(path, f"{at}.spans is missing or not a list")
    processes = trace.get("processes") if isinstance(trace.get("processes"), dict) else {}
    for i, raw in enumerate(spans):
        label = f"{at}.spans[{i}]"
        if not isinstance(raw, dict):
            raise _bad(path, f"{label} is not an object")
        name = raw.get("operationName")
        if isinstance(name, str):
            label = f"{label} ({name!r})"
        trace_id = _text_id(raw.get("traceID") or trace.get("traceID"), f"{label}: traceID", path)
        span_id = _text_id(raw.get("spanID"), f"{label}: spanID", path)
        label = f"{label}, spanID {span_id}"
        start = _micros(raw.get("startTime"), f"{label}: startTime", path)
        duration = _micros(raw.get("duration"), f"{label}: duration", path)
        parent = raw.get("parentSpanID") if isinstance(raw.get("parentSpanID"), str) else None
        references = raw.get("references") or []
        if not isinstance(references, list):
            raise _bad(path, f"{label}: references is not a list")
        refs = [r for r in references if isinstance(r, dict) and r.get("spanID")]
        # CHILD_OF is the parent; FOLLOWS_FROM only when there is no CHILD_OF.
        refs.sort(key=lambda r: r.get("refType") != "CHILD_OF")
        if refs:
            parent = str(refs[0]["spanID"])
        process = raw.get("process")
        if not isinstance(process, dict):
            process = processes.get(raw.get("processID"), {})
        service = process.get("serviceName") if isinstance(process, dict) else None
        tags = _jaeger_tags(raw.get("tags"))
        failed = tags.get("error") in (True, "true", "True", 1) or str(
            tags.get("otel.status_code", "")).upper() == "ERROR"
        message = str(tags.get("otel.status_description") or tags.get("error.message") or "")
        yield Span(trace_id=trace_id, span_id=span_id, parent_id=parent or None,
                   name=name if isinstance(name, str) and name else "(unnamed)",
                   service=str(service or "unknown"), start=start, end=start + duration,
                   attributes=tags, error=failed, status_message=message)


def _documents(text: str, path: Path) -> list[tuple[str, Any]]:
    """The JSON document(s) in ``text``: one, a list of them, or JSON Lines."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as whole:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        docs: list[tuple[str, Any]] = []
        for n, line in lines:
            try:
                docs.append((f"line {n}: ", json.loads(line)))
            except json.JSONDecodeError as exc:
                if not docs or len(lines) < 2:
                    raise _bad(path, f"is not JSON ({whole.msg} at line {whole.lineno}, "
                                     f"column {whole.colno})") from None
                raise _bad(path, f"line {n} is not JSON ({exc.msg} at column {exc.colno}); "
                                 "in JSON Lines every line must be one whole document") from None
        return docs
    if isinstance(doc, list):
        return [(f"[{i}]: ", item) for i, item in enumerate(doc)]
    return [("", doc)]


def load_spans(path: Path) -> SpanFile:
    """Parse an OTLP or Jaeger JSON file into spans; ToolError(invalid_trace_file) otherwise."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ToolError("not_found", f"cannot read {path}: {exc}", "check the path") from None
    if size > MAX_FILE_BYTES:
        raise ToolError("trace_file_too_large",
                        f"{path.name} is {size / 1024**2:.0f} MB, above the "
                        f"{MAX_FILE_BYTES // 1024**2} MB this tool loads",
                        "export fewer traces (a time window or a trace_id) and analyse that")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _bad(path, "is not UTF-8 text (binary protobuf exports are not read; export "
                         "JSON)") from None
    except OSError as exc:
        raise ToolError("not_found", f"cannot read {path}: {exc}", "check the path") from None
    if not text.strip():
        raise _bad(path, "is empty")
    spans: list[Span] = []
    formats: list[str] = []
    for where, doc in _documents(text, path):
        if not isinstance(doc, dict):
            raise _bad(path, f"{where or 'the top level'} is not a JSON object")
        if _pick(doc, "resourceSpans", "resource_spans") is not None:
            kind, found = "otlp", _otlp_document(doc, where, path)
        elif isinstance(doc.get("data"), list):
            kind = "jaeger"
            found = (span for t, trace in enumerate(doc["data"])
                     for span in _jaeger_trace(trace, f"{where}data[{t}]", path))
        elif "spans" in doc and ("traceID" in doc or "processes" in doc):
            kind, found = "jaeger", _jaeger_trace(doc, where.rstrip(": ") or "trace", path)
        else:
            keys = ", ".join(sorted(doc)[:8]) or "none"
            raise _bad(path, f"{where or 'the top-level object'} has neither resourceSpans "
                             f"(OTLP) nor data (Jaeger); its keys: {keys}")
        spans.extend(found)
        if kind not in formats:
            formats.append(kind)
    if not spans:
        raise _bad(path, "contains no spans")
    unique: dict[tuple[str, str], Span] = {}
    for span in spans:
        unique.setdefault((span.trace_id, span.span_id), span)
    return SpanFile(formats=formats, spans=list(unique.values()),
                    duplicates=len(spans) - len(unique))


# --------------------------------------------------------------------------- per-trace analysis


def same_trace_id(a: str, b: str) -> bool:
    """Trace ids compare as hex, case- and leading-zero-insensitive (Jaeger drops zeros)."""
    return a.lower().lstrip("0") == b.lower().lstrip("0")


def operation(span: Span) -> str:
    """The span's operation; database spans named by their SQL are reduced to its shape."""
    name = span.name
    if name.split(" ", 1)[0].lower() in _SQL_VERBS and " " in name:
        return normalise_sql(name).display
    return name


def repeat_key(span: Span) -> str:
    """What makes two sibling spans "the same call": their SQL shape, else their operation."""
    statement = span.statement()
    return normalise_sql(statement).display if statement else operation(span)


@dataclass
class Trace:
    """One trace's spans, tree and timings."""

    trace_id: str
    spans: list[Span]
    children: dict[str, list[Span]]
    roots: list[Span]
    start: int
    end: int
    orphans: int

    @property
    def duration(self) -> int:
        return self.end - self.start

    @property
    def root(self) -> Span:
        """The root that ended last: the request the trace is about."""
        return max(self.roots, key=lambda s: (s.end, -s.start))


def build_traces(spans: Iterable[Span], path: Path) -> list[Trace]:
    """Group spans by trace and link parents; a parent cycle is a malformed file."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    traces = []
    for trace_id, members in by_trace.items():
        ids = {s.span_id for s in members}
        children: dict[str, list[Span]] = defaultdict(list)
        roots: list[Span] = []
        orphans = 0
        for span in members:
            if span.parent_id and span.parent_id in ids and span.parent_id != span.span_id:
                children[span.parent_id].append(span)
            else:
                roots.append(span)
                orphans += bool(span.parent_id)
        reached = 0
        stack = list(roots)
        while stack:
            node = stack.pop()
            reached += 1
            stack.extend(children.get(node.span_id, ()))
        if reached != len(members):
            raise _bad(path, f"trace {trace_id}: {len(members) - reached} spans form a "
                             "parentSpanId cycle (no root above them)")
        traces.append(Trace(trace_id=trace_id, spans=members, children=dict(children),
                            roots=roots, start=min(s.start for s in members),
                            end=max(s.end for s in members), orphans=orphans))
    return traces


def covered(intervals: Iterable[tuple[int, int]]) -> int:
    """Length of the union of ``intervals``: overlaps count once."""
    total, cur_start, cur_end = 0, 0, None
    for lo, hi in sorted(intervals):
        if hi <= lo:
            continue
        if cur_end is None or lo > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = lo, hi
        else:
            cur_end = max(cur_end, hi)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def self_time(span: Span, children: list[Span]) -> int:
    """``span``'s duration minus the union of its children's intervals clipped to it."""
    return span.duration - covered((max(c.start, span.start), min(c.end, span.end))
                                   for c in children)


def critical_path(trace: Trace) -> list[tuple[Span, int, int]]:
    """The critical path of ``trace`` as (span, segment start, segment end), in time order.

    Iterative (traces can be deeper than Python's recursion limit). A frame is
    (span, window start, cursor, its children sorted by clipped end, index):
    the cursor moves back from the window's end; each step takes the child
    that ended last at or before the cursor, records the parent's own time
    between that child's end and the cursor, descends into the child, and
    moves the cursor to the child's start. Children that ended after the
    cursor overlapped the chosen one (they ran in parallel) and are skipped.
    """
    root = trace.root
    segments: list[tuple[Span, int, int]] = []

    def frame(span: Span, lo: int, hi: int) -> list[Any]:
        kids = []
        for child in trace.children.get(span.span_id, ()):
            c_lo, c_hi = max(child.start, lo), min(child.end, hi)
            if c_hi > c_lo:
                kids.append((c_hi, c_hi - c_lo, c_lo, child))
        kids.sort(key=lambda k: (k[0], k[1]))
        return [span, lo, hi, kids, len(kids) - 1]

    stack = [frame(root, root.start, root.end)]
    while stack:
        top = stack[-1]
        span, lo, cursor, kids, index = top
        while index >= 0 and kids[index][0] > cursor:
            index -= 1
        if index < 0 or kids[index][0] <= lo:
            if cursor > lo:
                segments.append((span, lo, cursor))
            stack.pop()
            continue
        c_hi, _length, c_lo, child = kids[index]
        if cursor > c_hi:
            segments.append((span, c_hi, cursor))
        top[2], top[4] = c_lo, index - 1
        stack.append(frame(child, c_lo, c_hi))
    segments.reverse()
    return segments


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _ms(nanos: float) -> float:
    return round(nanos / 1e6, 3)


# --------------------------------------------------------------------------- models


class TracesInput(BaseModel):
    """Which trace file to analyse and how much to report."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="OTLP JSON (or JSON Lines) or Jaeger JSON trace export, "
                                  "inside the workspace")
    top: int = Field(default=10, ge=1, le=200,
                     description="how many slowest spans, operations and error spans to list")
    trace_id: str | None = Field(default=None,
                                 description="analyse only this trace (hex id; case and "
                                             "leading zeros ignored)")
    critical_paths: int = Field(default=3, ge=1, le=20,
                                description="report the critical path of this many of the "
                                            "slowest traces")
    n_plus_one_threshold: int = Field(default=5, ge=2, le=10_000,
                                      description="same operation or SQL shape repeated at least "
                                                  "this many times under one parent is an N+1")
    slow_share: float = Field(default=50.0, gt=0, lt=100,
                              description="a span whose own time is more than this % of its "
                                          "trace's critical path is reported as slow_span")


class SpanSummary(BaseModel):
    """One span, as listed among the slowest or the failed."""

    name: str
    service: str
    duration_ms: float
    trace_id: str
    span_id: str
    self_ms: float = Field(description="duration minus the union of its children's intervals")
    error: bool = False
    status_message: str = ""


class PathStep(BaseModel):
    """One span on a critical path and what it contributed to it."""

    name: str
    service: str
    span_id: str
    start_ms: float = Field(description="start, relative to the trace's start")
    duration_ms: float
    contribution_ms: float = Field(description="time on the critical path that is this span's own")
    contribution_share: float = Field(description="% of the trace's duration")


class CriticalPath(BaseModel):
    """The chain of spans that determined when one trace ended."""

    trace_id: str
    root: str = Field(description="service/operation of the root span")
    duration_ms: float
    steps: list[PathStep]
    steps_omitted: int = Field(default=0, description="steps beyond the listed ones")


class OperationTime(BaseModel):
    """Self time of one (service, operation) summed over every span of it."""

    service: str
    operation: str
    count: int
    self_ms: float
    self_share: float = Field(description="% of all spans' self time")
    duration_ms: float = Field(description="summed durations (inclusive of children)")


class RepeatedSpans(BaseModel):
    """The same call made many times under one parent span."""

    service: str = Field(description="service of the parent span")
    parent_operation: str
    operation: str = Field(description="the repeated operation, or its SQL shape")
    child_service: str
    count: int = Field(description="most repetitions under a single parent span")
    occurrences: int = Field(description="parent spans under which it repeated")
    total_ms: float = Field(description="summed duration of the repeated spans")
    sequential: bool = Field(description="the repetitions ran one after another (not in parallel)")
    trace_id: str = Field(description="trace of the worst occurrence")


class TracesResult(ToolResult):
    """Where the traced requests spent their time."""

    tool: str = TOOL
    path: str
    formats: list[str]
    trace_count: int
    span_count: int
    duration_p50_ms: float
    duration_p95_ms: float
    duration_max_ms: float
    slowest_spans: list[SpanSummary] = Field(default_factory=list)
    critical_paths: list[CriticalPath] = Field(default_factory=list)
    self_time: list[OperationTime] = Field(default_factory=list)
    error_count: int = 0
    error_spans: list[SpanSummary] = Field(default_factory=list)
    repeated: list[RepeatedSpans] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- the tool


def _label(span: Span) -> str:
    return f"{span.service}/{operation(span)}"


def _repeats(trace: Trace, threshold: int) -> Iterator[tuple[Span, str, list[Span]]]:
    """(parent, repeated key, the repeated children) for every parent with >= threshold."""
    by_id = {s.span_id: s for s in trace.spans}
    for parent_id, kids in trace.children.items():
        if len(kids) < threshold:
            continue
        groups: dict[tuple[str, str], list[Span]] = defaultdict(list)
        for kid in kids:
            groups[(kid.service, repeat_key(kid))].append(kid)
        for (_service, key), members in groups.items():
            if len(members) >= threshold:
                yield by_id[parent_id], key, members


def _analyse(inp: TracesInput, path: Path) -> TracesResult:
    loaded = load_spans(path)
    spans = loaded.spans
    if inp.trace_id:
        wanted = inp.trace_id.strip()
        spans = [s for s in spans if same_trace_id(s.trace_id, wanted)]
        if not spans:
            known = sorted({s.trace_id for s in loaded.spans})
            raise ToolError("trace_not_found", f"no trace {wanted} in {path.name}",
                            f"{len(known)} traces are in the file, e.g. "
                            + ", ".join(known[:5]))
    traces = build_traces(spans, path)
    notes: list[str] = []
    if loaded.duplicates:
        notes.append(f"{loaded.duplicates} duplicate spans (same trace and span id) were ignored")
    orphans = sum(t.orphans for t in traces)
    if orphans:
        notes.append(f"{orphans} spans name a parent that is not in the file (partial traces); "
                     "they are treated as roots")

    self_ns: dict[tuple[str, str], int] = {}
    for trace in traces:
        for span in trace.spans:
            self_ns[(trace.trace_id, span.span_id)] = self_time(
                span, trace.children.get(span.span_id, []))

    def summary_of(trace_id: str, span: Span) -> SpanSummary:
        return SpanSummary(name=span.name, service=span.service, duration_ms=_ms(span.duration),
                           trace_id=trace_id, span_id=span.span_id,
                           self_ms=_ms(self_ns[(trace_id, span.span_id)]), error=span.error,
                           status_message=span.status_message)

    everything = [(t.trace_id, s) for t in traces for s in t.spans]
    slowest = sorted(everything, key=lambda ts: -ts[1].duration)[: inp.top]

    # Self time per (service, operation).
    per_op: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for trace_id, span in everything:
        row = per_op[(span.service, operation(span))]
        row[0] += 1
        row[1] += self_ns[(trace_id, span.span_id)]
        row[2] += span.duration
    all_self = sum(r[1] for r in per_op.values()) or 1
    self_rows = [OperationTime(service=svc, operation=op, count=n, self_ms=_ms(own),
                               self_share=round(100.0 * own / all_self, 2), duration_ms=_ms(total))
                 for (svc, op), (n, own, total) in sorted(per_op.items(), key=lambda kv: -kv[1][1])]

    # Critical paths: every trace for slow_span findings, the slowest ones reported.
    by_duration = sorted(traces, key=lambda t: -t.duration)
    paths: list[CriticalPath] = []
    dominant: dict[str, list[tuple[float, int, int, str, bool]]] = defaultdict(list)
    for rank, trace in enumerate(by_duration):
        segments = critical_path(trace)
        contribution: dict[str, int] = defaultdict(int)
        for span, lo, hi in segments:
            contribution[span.span_id] += hi - lo
        trace_ns = trace.duration or 1
        on_path = sorted({s.span_id: s for s, _, _ in segments}.values(),
                         key=lambda s: (s.start, -s.duration))
        if len(trace.spans) > 1:
            for span in on_path:
                share = 100.0 * contribution[span.span_id] / trace_ns
                if share > inp.slow_share:
                    has_children = bool(trace.children.get(span.span_id))
                    dominant[_label(span)].append((share, contribution[span.span_id],
                                                   trace.duration, trace.trace_id, has_children))
        if rank < inp.critical_paths:
            steps = [PathStep(name=s.name, service=s.service, span_id=s.span_id,
                              start_ms=_ms(s.start - trace.start), duration_ms=_ms(s.duration),
                              contribution_ms=_ms(contribution[s.span_id]),
                              contribution_share=round(100.0 * contribution[s.span_id] / trace_ns, 2))
                     for s in on_path]
            paths.append(CriticalPath(trace_id=trace.trace_id, root=_label(trace.root),
                                      duration_ms=_ms(trace.duration),
                                      steps=steps[:MAX_PATH_STEPS],
                                      steps_omitted=max(0, len(steps) - MAX_PATH_STEPS)))

    # Repeated children under one parent.
    repeats: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for trace in traces:
        for parent, key, members in _repeats(trace, inp.n_plus_one_threshold):
            group_key = (parent.service, operation(parent), members[0].service, key)
            total = sum(m.duration for m in members)
            union = covered((m.start, m.end) for m in members)
            entry = repeats.setdefault(group_key, {"count": 0, "occurrences": 0, "total": 0,
                                                   "trace": trace.trace_id, "sequential": True})
            entry["occurrences"] += 1
            entry["total"] += total
            if len(members) > entry["count"]:
                entry["count"], entry["trace"] = len(members), trace.trace_id
                # Overlapping repetitions cover less wall time than they sum to.
                entry["sequential"] = total <= union * 1.2 + 1
    repeated = [RepeatedSpans(service=k[0], parent_operation=k[1], child_service=k[2], operation=k[3],
                              count=v["count"], occurrences=v["occurrences"], total_ms=_ms(v["total"]),
                              sequential=v["sequential"], trace_id=v["trace"])
                for k, v in sorted(repeats.items(), key=lambda kv: (-kv[1]["count"], -kv[1]["total"]))]

    errors = [(t, s) for t, s in everything if s.error]
    findings = _findings(repeated, dominant, errors, inp, len(traces),
                         root_ids={(t.trace_id, t.root.span_id) for t in traces})

    durations = sorted(t.duration / 1e6 for t in traces)
    p50, p95, worst = (round(_percentile(durations, 50), 3), round(_percentile(durations, 95), 3),
                       round(durations[-1], 3))
    target = str(path)
    measurements = [
        Measurement(name="trace_duration_p50", value=p50, unit="ms", source=TOOL, target=target),
        Measurement(name="trace_duration_p95", value=p95, unit="ms", source=TOOL, target=target),
        Measurement(name="trace_duration_max", value=worst, unit="ms", source=TOOL, target=target),
        Measurement(name="traces", value=float(len(traces)), unit="count", source=TOOL, target=target),
        Measurement(name="spans", value=float(len(spans)), unit="count", source=TOOL, target=target),
    ]
    if len(traces) < 20:
        notes.append(f"only {len(traces)} traces: p95 is interpolated between few values")

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    lines = [f"{count(len(traces), 'trace')}, {count(len(spans), 'span')} "
             f"({'+'.join(loaded.formats)}): duration "
             f"p50 {p50:g} ms, p95 {p95:g} ms, max {worst:g} ms"]
    if paths:
        first = paths[0]
        by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for step in first.steps:
            row = by_op[f"{step.service}/{step.name}"]
            row[0] += step.contribution_share
            row[1] += 1
        heavy = sorted(by_op.items(), key=lambda kv: -kv[1][0])[:3]
        lines.append(f"slowest trace {first.trace_id[:16]} ({first.duration_ms:g} ms): critical path "
                     "mostly in " + ", ".join(f"{label} {share:.0f}%" + (f" ({n:.0f} spans)" if n > 1 else "")
                                              for label, (share, n) in heavy))
    if findings:
        lines.append("findings: " + "; ".join(f"{f.kind} at {f.location}" for f in findings[:3])
                     + (f" (+{len(findings) - 3} more)" if len(findings) > 3 else ""))
    return TracesResult(
        path=target, formats=loaded.formats, trace_count=len(traces), span_count=len(spans),
        duration_p50_ms=p50, duration_p95_ms=p95, duration_max_ms=worst,
        slowest_spans=[summary_of(t, s) for t, s in slowest], critical_paths=paths,
        self_time=self_rows[: inp.top], error_count=len(errors),
        error_spans=[summary_of(t, s) for t, s in sorted(errors, key=lambda ts: ts[1].start)[: inp.top]],
        repeated=repeated[: inp.top], findings=findings, measurements=measurements,
        summary="\n".join(lines), notes=notes)


def _findings(repeated: list[RepeatedSpans], dominant: dict[str, list[tuple[float, int, int, str, bool]]],
              errors: list[tuple[str, Span]], inp: TracesInput, trace_count: int,
              root_ids: set[tuple[str, str]]) -> list[Finding]:
    findings: list[Finding] = []
    for rep in repeated:
        how = "one after another" if rep.sequential else "partly in parallel"
        callee = f" in {rep.child_service}" if rep.child_service != rep.service else ""
        findings.append(Finding(
            kind="n_plus_one", severity="high" if rep.count >= 20 else "medium",
            summary=f"{rep.service}/{rep.parent_operation} runs {rep.operation!r}{callee} "
                    f"{rep.count} times ({how}) under one span ({rep.occurrences} such span(s), "
                    f"{rep.total_ms:g} ms in all): an N+1 pattern; batch the calls (one query with "
                    "IN (...) or a JOIN, or a bulk endpoint)",
            location=f"{rep.service}/{rep.parent_operation}",
            evidence=f"{rep.count}× {rep.operation} under one {rep.parent_operation} span "
                     f"in trace {rep.trace_id}"))
    for label, hits in sorted(dominant.items(), key=lambda kv: -max(h[0] for h in kv[1])):
        share, own, total, trace_id, has_children = max(hits)
        where = " in its own code (outside any child span)" if has_children else ""
        findings.append(Finding(
            kind="slow_span", severity="high" if share >= 80 else "medium",
            summary=f"{label} takes {share:.0f}% of trace {trace_id[:16]}'s critical path{where}: "
                    f"{_ms(own):g} of {_ms(total):g} ms; it dominates in {len(hits)} of "
                    f"{trace_count} traces",
            location=label,
            evidence=f"{_ms(own):g} ms of {_ms(total):g} ms on the critical path of trace {trace_id}"))
    by_op: dict[str, list[tuple[str, Span]]] = defaultdict(list)
    for trace_id, span in errors:
        by_op[_label(span)].append((trace_id, span))
    for label, failed in sorted(by_op.items(), key=lambda kv: -len(kv[1])):
        trace_id, span = failed[0]
        roots = any((t, s.span_id) in root_ids for t, s in failed)
        findings.append(Finding(
            kind="error_span", severity="high" if roots else "medium",
            summary=f"{len(failed)} {label} span(s) ended in error"
                    + (f": {span.status_message}" if span.status_message else "")
                    + (" (the request itself failed)" if roots else ""),
            location=label,
            evidence=f"span {span.span_id} in trace {trace_id}"))
    return findings


async def run(inp: TracesInput, progress: ProgressCallback | None = None) -> TracesResult:
    """Analyse a trace export inside the workspace (parsing runs in a worker thread)."""
    path = resolve_in_workspace(inp.path)
    if not path.is_file():
        raise ToolError("not_found", f"{inp.path} is not a file",
                        "give the path of an OTLP or Jaeger JSON export")
    if progress is not None:
        progress(0.0, f"reading {path.name}")
    result = await asyncio.to_thread(_analyse, inp, path)
    if progress is not None:
        progress(1.0, result.summary.splitlines()[0])
    return result


SPEC = ToolSpec(
    name=TOOL,
    description=(
        "Analyse a trace export (OTLP JSON/JSON Lines or Jaeger JSON file inside the workspace): "
        "trace duration percentiles, slowest spans, the critical path of the slowest traces with "
        "each span's contribution, self time per service/operation (overlapping children not "
        "double-counted), error spans, N+1 patterns (the same call or SQL shape repeated under "
        "one parent) and spans dominating the critical path."
    ),
    input_model=TracesInput,
    result_model=TracesResult,
    run=run,
    runs_code=False,
)

__all__ = ["SPEC", "Span", "SpanFile", "TracesInput", "TracesResult", "load_spans", "run"]
