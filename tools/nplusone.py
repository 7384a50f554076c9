"""``detect_n_plus_one``: find the same query shape issued many times within one request.

An N+1 loop shows as one query *shape* (the SQL with its literals and
parameters replaced by ``?``) repeated once per row of an earlier result,
inside a single request. The tool collects real queries from one of three
sources, groups them by request, counts each shape per request and reports
the shapes repeated at least ``threshold`` times.

Sources (exactly one):

* ``script``: a Python file in the workspace, run in a subprocess with a
  timeout (its process group killed on expiry). A small runner, written to a
  temp folder and kept below as text, wraps the drivers before the script
  starts: ``sqlite3.connect`` is patched to pass a traced connection factory
  (sqlite3's classes are C types, so their methods cannot be patched in place;
  subclasses created through ``factory=`` can), whose ``execute`` /
  ``executemany`` and cursors' ``execute`` / ``executemany`` record each query;
  psycopg 3 cursors (sync and async) are wrapped when the script imports
  psycopg. Each record holds the SQL, the time spent in the call, a
  monotonic timestamp, the user call site (innermost frame in the script's
  folder or the workspace, not in an installed package or the stdlib) and the
  request.
  A request is one call of ``entry`` (``"function"``, ``"Class.method"`` or
  ``"module:function"``). Rather than rebinding the function (which misses
  references taken earlier: decorator registries, ``from m import f`` done
  before the patch, bound methods), the runner looks for the outermost frame
  of that function on the stack of each query, so every call is one request
  however it was reached. Without ``entry`` the whole run is one request.
* ``query_log``: a PostgreSQL server log (``LOG:  statement: ...``,
  ``LOG:  duration: 1.2 ms  statement: ...``, ``execute <name>: ...``), where a
  request is a backend process (``[pid]`` in the line prefix) unless the
  statement carries a sqlcommenter ``traceparent``; or a plain log with one
  SQL statement per line, optionally prefixed by a request id as ``[id] SQL``.
* ``traces``: an OTLP (or Jaeger) JSON export; spans with ``db.statement`` or
  ``db.query.text`` are the queries and a trace is a request.

Findings are ``n_plus_one`` (high at 20 or more per request); measurements are
``queries_total``, ``queries_per_request_max``, ``repeated_query_share`` and
``n_plus_one_count`` (shapes found repeated).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    ToolError,
    ToolResult,
    ToolSpec,
    resolve_in_workspace,
    tail,
    workspace_roots,
)
from tools.process import ScratchDir, read_tail, run_bounded

TOOL = "detect_n_plus_one"
#: Shapes repeated this many times in one request are a high-severity N+1.
HIGH_COUNT = 20
RUNNER_NAME = "perfagent_nplusone_runner.py"
#: The runner keeps at most this many query records (the rest are only counted).
MAX_EVENTS = 500_000

# --------------------------------------------------------------------------- SQL shapes

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<string>(?:[EeBbXxNn]|[Uu]&)?'(?:[^']|'')*(?:'|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*|)\$.*?\$(?P=tag)\$)
    | (?P<ident>"(?:[^"]|"")*"|`[^`]*`)
    | (?P<param>\?\d*|%s|%\(\w+\)s|\$\d+|(?<![:\w]):[A-Za-z_]\w*|@[A-Za-z_]\w*)
    | (?P<number>0[xX][0-9A-Fa-f]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_][\w$]*)
    | (?P<op>::|<=|>=|<>|!=|\|\||\S)
    """,
    re.X | re.S,
)

#: Words upper-cased when a shape is displayed.
KEYWORDS = frozenset((
    "all", "alter", "analyze", "and", "any", "as", "asc", "begin", "between", "by", "case", "cast",
    "commit", "conflict", "create", "cross", "default", "delete", "desc", "distinct", "do", "drop",
    "else", "end", "except", "exists", "explain", "false", "fetch", "first", "for", "from", "full",
    "group", "having", "ilike", "in", "index", "inner", "insert", "intersect", "into", "is", "join",
    "lateral", "left", "like", "limit", "locked", "natural", "next", "not", "nothing", "nowait",
    "null", "offset", "on", "only", "or", "order", "outer", "over", "partition", "pragma",
    "release", "replace", "returning", "right", "rollback", "row", "rows", "savepoint", "select",
    "set", "share", "show", "skip", "some", "table", "then", "to", "true", "union", "update",
    "using", "values", "when", "where", "window", "with"
))

#: Statements that manage sessions or transactions: repeated, but never an N+1.
CONTROL_VERBS = frozenset((
    "begin", "commit", "rollback", "savepoint", "release", "start", "end", "set", "show", "pragma",
    "discard", "deallocate", "reset", "listen", "unlisten"
))

_TRACEPARENT = re.compile(r"traceparent\s*=\s*'?\d\d-([0-9a-fA-F]{32})-", re.I)


class Shape(NamedTuple):
    """A query with its literals, parameters and lists reduced to ``?``."""

    key: str  # what is compared: single spaces, unquoted words lower-cased
    display: str  # what is shown: keywords upper-cased, spacing as written
    verb: str  # first word, lower-cased


class _Tok(NamedTuple):
    text: str
    kind: str  # "lit", "word", "kw", "ident", "op"
    spaced: bool  # whitespace (or a comment) preceded it in the source


def _collapse(tokens: list[_Tok]) -> list[_Tok]:
    """``(?, ?, ?)`` -> ``(?)``, ``[?, ?]`` -> ``[?]``, ``VALUES (?), (?)`` -> ``VALUES (?)``,
    and a sign before a literal after an operator dropped (``= -?`` -> ``= ?``)."""
    out: list[_Tok] = []
    for tok in tokens:
        if (tok.kind == "lit" and len(out) >= 1 and out[-1].text in ("-", "+")
                and (len(out) == 1 or out[-2].kind == "kw"
                     or (out[-2].kind == "op" and out[-2].text not in (")", "]")))):
            sign = out.pop()
            tok = tok._replace(spaced=sign.spaced)
        out.append(tok)
        if tok.text not in (")", "]"):
            continue
        opener = "(" if tok.text == ")" else "["
        k, want_lit, items = len(out) - 2, True, 0
        while k >= 0:
            text = out[k].text
            if want_lit and out[k].kind == "lit":
                want_lit, items = False, items + 1
            elif not want_lit and text == ",":
                want_lit = True
            elif not want_lit and text == opener:
                break
            else:
                k = -1
                break
            k -= 1
        if k < 0 or items == 0:
            continue
        if items > 1:
            out[k + 1:] = [_Tok("?", "lit", False), _Tok(tok.text, "op", False)]
        # a tuple repeated after a comma, as in VALUES (?), (?): keep the first
        if (opener == "(" and len(out) >= 7 and [t.text for t in out[-7:]]
                == ["(", "?", ")", ",", "(", "?", ")"]):
            del out[-4:]
    return out


@lru_cache(maxsize=20_000)
def normalise_sql(sql: str) -> Shape:
    """Reduce ``sql`` to its shape: literals (numbers, strings), placeholders (``?``,
    ``%s``, ``%(name)s``, ``$1``, ``:name``) and ``IN (...)`` lists become ``?``;
    comments go; whitespace collapses; keywords are upper-cased for display and
    unquoted words case-folded for comparison."""
    tokens: list[_Tok] = []
    spaced = False
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        text = match.group()
        if kind in ("space", "comment"):
            spaced = True
            continue
        if kind in ("string", "dollar", "param", "number"):
            tokens.append(_Tok("?", "lit", spaced))
        elif kind == "word":
            lowered = text.lower()
            if lowered in KEYWORDS:
                tokens.append(_Tok(text.upper(), "kw", spaced))
            else:
                tokens.append(_Tok(text, "word", spaced))
        elif kind == "ident":
            tokens.append(_Tok(text, "ident", spaced))
        else:
            tokens.append(_Tok(text, "op", spaced))
        spaced = False
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    tokens = _collapse(tokens)
    display = "".join((" " if tok.spaced and i else "") + tok.text for i, tok in enumerate(tokens))
    key = " ".join(tok.text.lower() if tok.kind in ("word", "kw") else tok.text for tok in tokens)
    verb = tokens[0].text.lower() if tokens and tokens[0].kind in ("word", "kw") else ""
    return Shape(key=key, display=display, verb=verb)


# --------------------------------------------------------------------------- models


class NPlusOneInput(BaseModel):
    """Where the queries come from (exactly one source) and what counts as repeated."""

    model_config = ConfigDict(extra="forbid")

    script: str | None = Field(
        default=None,
        description="Python file (inside the workspace) to run in a subprocess; its sqlite3 "
        "and psycopg 3 queries are captured",
    )
    args: list[str] = Field(default_factory=list, description="command-line arguments of script")
    entry: str | None = Field(
        default=None,
        description='with script: the request handler, as "function", "Class.method" or '
        '"module:function"; each call of it is one request (default: the whole run is one)',
    )
    cwd: str | None = Field(default=None, description="working folder for script (default: its "
                                                      "folder; inside the workspace)")
    timeout: float = Field(default=60.0, gt=0, le=3600,
                           description="seconds before the script is killed")
    query_log: str | None = Field(
        default=None,
        description="a query log inside the workspace: PostgreSQL server log (statement: / "
        "duration: ... statement: lines) or one SQL statement per line, optionally prefixed "
        "by a request id as '[id] SQL'",
    )
    traces: str | None = Field(
        default=None,
        description="an OTLP (or Jaeger) JSON trace export inside the workspace; spans with "
        "db.statement or db.query.text are the queries, grouped by trace",
    )
    threshold: int = Field(default=5, ge=2, le=100_000,
                           description="a shape run at least this many times in one request "
                                       "is reported")
    top: int = Field(default=10, ge=1, le=200, description="how many repeated shapes to list")

    @model_validator(mode="after")
    def _one_source(self) -> NPlusOneInput:
        given = [name for name in ("script", "query_log", "traces") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of script, query_log or traces"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.entry is not None and self.script is None:
            raise ValueError("entry only applies to script")
        return self


class RepeatedShape(BaseModel):
    """One query shape that ran many times within single requests."""

    shape: str = Field(description="the SQL with literals and parameters as ?")
    count: int = Field(description="most executions of the shape within one request")
    requests: int = Field(description="requests in which it ran at least threshold times")
    total_count: int = Field(description="executions summed over those requests")
    worst_request: str
    total_ms: float | None = Field(default=None, description="time in those executions, when known")
    per_query_ms: float | None = Field(default=None, description="mean time per execution")
    worst_request_ms: float | None = Field(default=None,
                                           description="time in it during the worst request")
    worst_request_elapsed_ms: float | None = Field(
        default=None, description="worst request: from the first of these queries starting to "
        "the last one ending (the queries plus the code between them), when timestamps are known")
    call_site: str | None = Field(default=None, description="file:line issuing most of them, or "
                                                            "service/span for traces")
    function: str | None = None
    call_sites: list[str] = Field(default_factory=list, description="every place it came from")
    example: str = Field(description="one statement as issued")


class NPlusOneResult(ToolResult):
    """Queries per request and the shapes repeated within a request."""

    tool: str = TOOL
    source: Literal["script", "query_log", "traces"]
    target: str = Field(description="the script, log or trace file analysed")
    entry: str | None = None
    requests: int = Field(description="requests (entry calls, request ids or traces) with queries")
    queries_total: int = Field(description="queries inside requests")
    queries_outside_entry: int = Field(default=0, description="script with entry: queries issued "
                                                              "outside any entry call (not analysed)")
    queries_per_request_max: int
    repeated_query_share: float = Field(description="% of the queries that belong to repeated shapes")
    timed: bool = Field(description="per-query times are known")
    repeated: list[RepeatedShape] = Field(default_factory=list)
    exit_code: int | None = None
    run_time_ms: float | None = Field(default=None, description="script: wall time, with capture")
    stdout_tail: str = ""
    notes: list[str] = Field(default_factory=list)


@dataclass(slots=True)
class Query:
    """One query as a source saw it."""

    sql: str
    request: str
    ms: float | None = None
    site: str | None = None
    start_ms: float | None = None  # monotonic, from the source's own origin
    function: str | None = None


# --------------------------------------------------------------------------- analysis


def _analyse(queries: list[Query], threshold: int) -> tuple[list[RepeatedShape], dict[str, int], int]:
    """Repeated shapes (worst first), queries per request, and how many queries are in
    (request, shape) groups of at least ``threshold``."""
    per_request: dict[str, int] = Counter()
    groups: dict[tuple[str, str], list[Query]] = defaultdict(list)
    displays: dict[str, str] = {}
    for query in queries:
        shape = normalise_sql(query.sql)
        per_request[query.request] += 1
        displays.setdefault(shape.key, shape.display)
        if shape.verb and shape.verb not in CONTROL_VERBS:
            groups[(shape.key, query.request)].append(query)
    repeated_groups: dict[str, list[tuple[str, list[Query]]]] = defaultdict(list)
    in_repeats = 0
    for (key, request), members in groups.items():
        if len(members) >= threshold:
            repeated_groups[key].append((request, members))
            in_repeats += len(members)
    shapes: list[RepeatedShape] = []
    for key, occurrences in repeated_groups.items():
        worst_request, worst = max(occurrences, key=lambda rm: len(rm[1]))
        every = [q for _, members in occurrences for q in members]
        timed = all(q.ms is not None for q in every)
        total = sum(q.ms or 0.0 for q in every) if timed else None
        sites = Counter(q.site for q in every if q.site)
        worst_sites = Counter(q.site for q in worst if q.site)
        site = worst_sites.most_common(1)[0][0] if worst_sites else None
        function = next((q.function for q in worst if q.site == site and q.function), None)
        elapsed = None
        if all(q.start_ms is not None and q.ms is not None for q in worst):
            elapsed = round(max((q.start_ms or 0.0) + (q.ms or 0.0) for q in worst)
                            - min(q.start_ms or 0.0 for q in worst), 3)
        shapes.append(RepeatedShape(
            shape=displays[key], count=len(worst), requests=len(occurrences),
            total_count=len(every), worst_request=worst_request,
            total_ms=round(total, 3) if total is not None else None,
            per_query_ms=round(total / len(every), 4) if total is not None else None,
            worst_request_ms=round(sum(q.ms or 0.0 for q in worst), 3) if timed else None,
            worst_request_elapsed_ms=elapsed,
            call_site=site, function=function, call_sites=[s for s, _ in sites.most_common(10)],
            example=worst[0].sql.strip()[:500]))
    shapes.sort(key=lambda s: (-s.count, -s.total_count))
    return shapes, dict(per_request), in_repeats


_TABLE = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+((?:\w+|\"[^\"]+\")(?:\.(?:\w+|\"[^\"]+\"))?)")


def _location(shape: RepeatedShape) -> str | None:
    """The call site when known, else the table the shape reads or writes (logs have no site)."""
    if shape.call_site:
        return shape.call_site
    match = _TABLE.search(shape.shape)
    return f"table {match.group(1)}" if match else None


def _where(shape: RepeatedShape) -> str:
    """Where the shape comes from, as a phrase: "at file:line (func)" or "on table t"."""
    location = _location(shape)
    if location is None:
        return "from an unknown place"
    phrase = f"at {location}" if shape.call_site else f"on {location}"
    return phrase + (f" ({shape.function})" if shape.function else "")


def _finding(shape: RepeatedShape, source: str) -> Finding:
    unit = "trace" if source == "traces" else "request"
    plural = "" if shape.requests == 1 else "s"
    cost = f", taking {shape.worst_request_ms:g} ms" if shape.worst_request_ms is not None else ""
    return Finding(
        kind="n_plus_one",
        severity="high" if shape.count >= HIGH_COUNT else "medium",
        summary=f"the same query ran {shape.count} times in one {unit} {_where(shape)}{cost}: an "
                f"N+1 query loop (seen in {shape.requests} {unit}{plural}); fetch the rows in one "
                "query (JOIN or IN (...)) or eager-load them",
        location=_location(shape),
        evidence=f"{shape.count}× {shape.shape} in request "
                 + (f"trace {shape.worst_request}" if source == "traces" else shape.worst_request),
    )


def _result(queries: list[Query], inp: NPlusOneInput, *, source: Literal["script", "query_log", "traces"],
            target: str, label: str, notes: list[str], **extra: Any) -> NPlusOneResult:
    every_shape, per_request, in_repeats = _analyse(queries, inp.threshold)
    shapes = every_shape[: inp.top]
    total = len(queries)
    share = round(100.0 * in_repeats / total, 2) if total else 0.0
    most = max(per_request.values(), default=0)
    timed = bool(queries) and all(q.ms is not None for q in queries)

    def measure(name: str, value: float, unit: str) -> Measurement:
        return Measurement(name=name, value=float(value), unit=unit, source=TOOL, target=target)

    measurements = [measure("queries_total", total, "count"),
                    measure("queries_per_request_max", most, "count"),
                    measure("repeated_query_share", share, "%"),
                    measure("n_plus_one_count", len(every_shape), "count")]
    unit = "trace" if source == "traces" else "request"
    count = len(per_request)
    lines = [f"{label}: {total} queries in {count} {unit}{'s' if count != 1 else ''} (max {most} "
             f"per {unit}); {share:.0f}% belong to shapes repeated ≥{inp.threshold}× in one {unit}"]
    if shapes:
        s = shapes[0]
        per = f", {s.per_query_ms:g} ms per query" if s.per_query_ms is not None else ""
        lines.append(f"N+1: `{s.shape[:160]}` {s.count}× in one {unit} {_where(s)}{per}")
        if len(every_shape) > 1:
            lines.append(f"+{len(every_shape) - 1} more repeated shape(s)")
    elif total:
        lines.append(f"no query shape ran {inp.threshold} or more times in one {unit}")
    return NPlusOneResult(
        source=source, target=target, requests=len(per_request), queries_total=total,
        queries_per_request_max=most, repeated_query_share=share, timed=timed, repeated=shapes,
        findings=[_finding(s, source) for s in shapes], measurements=measurements,
        summary="\n".join(lines), notes=notes, **extra)


# --------------------------------------------------------------------------- query logs

_PG_LINE = re.compile(
    r"^(?P<prefix>.*?)\bLOG:\s+(?:duration:\s*(?P<ms>\d+(?:\.\d+)?)\s*ms\s*)?"
    r"(?:(?P<kind>statement|execute\s+[^:]*):\s*(?P<sql>.*))?$")
_PG_ANY = re.compile(r"\b(?:LOG|ERROR|WARNING|STATEMENT|DETAIL|HINT|CONTEXT|FATAL|PANIC|NOTICE|INFO"
                     r"|DEBUG\d?):\s")
_PG_SESSION = re.compile(r"\[(\d+)(?:-\d+)?\]")
_PLAIN_LINE = re.compile(r"^\[(?P<id>[^\]]+)\]\s*(?P<sql>.*)$")
_SQL_START = re.compile(
    r"^\s*(?:/\*.*?\*/\s*)*\(?\s*(select|insert|update|delete|with|replace|upsert|merge|values|call|"
    r"exec|execute|explain|create|alter|drop|truncate|copy|lock|begin|commit|rollback|start|"
    r"savepoint|release|set|show|pragma|grant|revoke|vacuum|analyze|refresh|prepare|listen|"
    r"notify)\b", re.I | re.S)


def _request_from_sql(sql: str) -> str | None:
    """A trace id carried by a sqlcommenter comment (``traceparent='00-<trace>-<span>-01'``)."""
    match = _TRACEPARENT.search(sql)
    return match.group(1).lower() if match else None


def _parse_query_log(path: Path) -> tuple[list[Query], str, list[str]]:
    """Queries from a PostgreSQL log or a plain one-statement-per-line log."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ToolError("not_found", f"cannot read {path}: {exc}", "check the path") from None
    lines = text.splitlines()
    pg = any(_PG_LINE.match(line) and "LOG:" in line for line in lines[:5000])
    notes: list[str] = []
    queries: list[Query] = []
    if pg:
        last_by_session: dict[str, Query] = {}
        current: Query | None = None
        for line in lines:
            if line.startswith(("\t", "  ")) and current is not None and not _PG_ANY.search(line):
                current.sql += " " + line.strip()  # a continuation of a multi-line statement
                continue
            current = None
            match = _PG_LINE.match(line)
            if not match:
                continue
            session_match = _PG_SESSION.search(match.group("prefix"))
            session = f"pid {session_match.group(1)}" if session_match else "log"
            ms = float(match.group("ms")) if match.group("ms") else None
            if match.group("sql") is None:
                # "duration: x ms" alone (log_duration): the time of the session's last statement
                previous = last_by_session.get(session)
                if ms is not None and previous is not None and previous.ms is None:
                    previous.ms = ms
                continue
            current = Query(sql=match.group("sql"), request=session, ms=ms)
            queries.append(current)
            last_by_session[session] = current
        for query in queries:
            query.request = _request_from_sql(query.sql) or query.request
        fmt = "PostgreSQL log"
        if any(q.request.startswith("pid ") or q.request == "log" for q in queries):
            notes.append("a PostgreSQL log does not mark requests: queries are grouped per backend "
                         "process ([pid] in log_line_prefix), so a pooled connection's count "
                         "spans several requests; add sqlcommenter traceparent comments to group "
                         "by request")
    else:
        skipped = 0
        for line in lines:
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "--")):
                continue
            match = _PLAIN_LINE.match(stripped)
            if match:
                request, sql = match.group("id").strip(), match.group("sql")
            else:
                sql = stripped
                request = _request_from_sql(sql) or "log"
            if not _SQL_START.match(sql):
                skipped += 1
                continue
            queries.append(Query(sql=sql, request=request))
        fmt = "plain query log"
        if skipped:
            notes.append(f"{skipped} line(s) that do not start with an SQL statement were skipped")
    if not queries:
        raise ToolError(
            "invalid_query_log", f"{path.name} holds no query this tool can read",
            "give a PostgreSQL log with log_statement=all or log_min_duration_statement=0 "
            "('LOG:  statement: ...' / 'LOG:  duration: 1.2 ms  statement: ...' lines), or a "
            "file with one SQL statement per line, optionally as '[request-id] SQL'")
    return queries, fmt, notes


# --------------------------------------------------------------------------- traces


def _queries_from_traces(path: Path) -> tuple[list[Query], list[str]]:
    from tools.traces import build_traces, load_spans

    loaded = load_spans(path)
    traces = build_traces(loaded.spans, path)
    queries: list[Query] = []
    for trace in traces:
        by_id = {s.span_id: s for s in trace.spans}
        for span in sorted(trace.spans, key=lambda s: s.start):
            statement = span.statement()
            if statement is None:
                continue
            attrs = span.attributes
            file = attrs.get("code.filepath") or attrs.get("code.file.path")
            line = attrs.get("code.lineno") or attrs.get("code.line.number")
            function = attrs.get("code.function") or attrs.get("code.function.name")
            if file:
                site = f"{file}:{line}" if line else str(file)
            else:
                parent = by_id.get(span.parent_id or "")
                site = f"{parent.service}/{parent.name}" if parent else f"{span.service}/{span.name}"
            queries.append(Query(sql=statement, request=trace.trace_id, ms=span.duration / 1e6,
                                 site=site, function=str(function) if function else None,
                                 start_ms=(span.start - trace.start) / 1e6))
    notes = []
    if not queries:
        notes.append(f"none of the {len(loaded.spans)} spans carries db.statement or "
                     "db.query.text: the export has no database queries to count")
    return queries, notes


# --------------------------------------------------------------------------- script runner

# Executed in the child process with its JSON config as argv[1]. It imports
# nothing of perfagent, installs the driver wrappers, runs the script as
# __main__ and writes what it recorded to the output file even when the
# script fails, then exits with the script's exit code.
RUNNER_SOURCE = r'''
import contextvars, json, os, runpy, sys, sysconfig, threading, time, traceback
from collections import OrderedDict

with open(sys.argv[1], encoding="utf-8") as _fh:
    CFG = json.load(_fh)
HERE = os.path.realpath(__file__)
ROOTS = [os.path.realpath(p) for p in CFG["roots"]]
LIBS = sorted({os.path.realpath(p) for p in (sysconfig.get_paths().get("stdlib"),
                                             sysconfig.get_paths().get("platstdlib")) if p})
SCRIPT = os.path.realpath(CFG["script"])
SCRIPT_MODULE = os.path.splitext(os.path.basename(SCRIPT))[0]
ENTRY_MODULE, _, ENTRY_NAME = (CFG["entry"] or "").rpartition(":")
T0 = time.perf_counter_ns()
PID = os.getpid()
SQL, SQL_IDS, SITES, SITE_IDS, EVENTS = [], {}, [], {}, []
STATE = {"dropped": 0, "requests": 0}
NOTES = []
USER, ENTRY_CODES, ACTIVE = {}, {}, OrderedDict()
LOCK = threading.Lock()
BUSY = contextvars.ContextVar("perfagent_busy", default=False)


def is_user(filename):
    hit = USER.get(filename)
    if hit is None:
        real = os.path.realpath(filename) if filename and not filename.startswith("<") else ""
        hit = (bool(real) and real != HERE and "site-packages" not in real
               and "dist-packages" not in real
               and not any(real.startswith(lib + os.sep) for lib in LIBS)
               and any(real == r or real.startswith(r + os.sep) for r in ROOTS))
        USER[filename] = hit
    return hit


def is_entry(frame):
    code = frame.f_code
    hit = ENTRY_CODES.get(code)
    if hit is None:
        qualname = getattr(code, "co_qualname", code.co_name)
        hit = qualname == ENTRY_NAME if "." in ENTRY_NAME else code.co_name == ENTRY_NAME
        if hit and ENTRY_MODULE:
            module = frame.f_globals.get("__name__", "")
            if module == "__main__":
                module = SCRIPT_MODULE
            hit = module == ENTRY_MODULE or module.endswith("." + ENTRY_MODULE) or (
                ENTRY_MODULE == "__main__" and os.path.realpath(code.co_filename) == SCRIPT)
        elif hit:
            hit = is_user(code.co_filename)
        ENTRY_CODES[code] = hit
    return hit


def request_of(frame):
    """The request of the outermost entry frame on the stack (0: none)."""
    key = id(frame)
    with LOCK:
        known = ACTIVE.get(key)
        if known is not None and known[0] is frame:
            ACTIVE.move_to_end(key)
            return known[1]
        STATE["requests"] += 1
        ACTIVE[key] = (frame, STATE["requests"])  # held, so its id cannot be reused meanwhile
        while len(ACTIVE) > 32:
            ACTIVE.popitem(last=False)
        return STATE["requests"]


def where(frame):
    site, entry = None, None
    while frame is not None:
        code = frame.f_code
        if site is None and is_user(code.co_filename):
            site = (code.co_filename, frame.f_lineno, code.co_name)
        if ENTRY_NAME and is_entry(frame):
            entry = frame
        frame = frame.f_back
    request = (request_of(entry) if entry is not None else 0) if ENTRY_NAME else 1
    return site, request


def sql_text(query, cursor):
    if isinstance(query, str):
        return query
    if isinstance(query, (bytes, bytearray, memoryview)):
        return bytes(query).decode("utf-8", "replace")
    for args in ((cursor,), (None,), ()):
        try:
            return query.as_string(*args)
        except Exception:
            continue
    return repr(query)


def note(kind, query, cursor, frame, start, duration):
    site, request = where(frame)
    text = sql_text(query, cursor)
    with LOCK:
        if len(EVENTS) >= CFG["max_events"]:
            STATE["dropped"] += 1
            return
        sql_id = SQL_IDS.get(text)
        if sql_id is None:
            sql_id = SQL_IDS[text] = len(SQL)
            SQL.append(text)
        site_id = -1
        if site is not None:
            site_id = SITE_IDS.get(site)
            if site_id is None:
                site_id = SITE_IDS[site] = len(SITES)
                SITES.append(site)
        EVENTS.append((sql_id, site_id, request, start - T0, duration, kind))


def record(kind, query, cursor, call, *args, **kwargs):
    if BUSY.get():
        return call(*args, **kwargs)
    token = BUSY.set(True)
    start = time.perf_counter_ns()
    try:
        return call(*args, **kwargs)
    finally:
        duration = time.perf_counter_ns() - start
        BUSY.reset(token)
        note(kind, query, cursor, sys._getframe(1), start, duration)


async def arecord(kind, query, cursor, call, *args, **kwargs):
    if BUSY.get():
        return await call(*args, **kwargs)
    frame = sys._getframe(1)
    token = BUSY.set(True)
    start = time.perf_counter_ns()
    try:
        return await call(*args, **kwargs)
    finally:
        duration = time.perf_counter_ns() - start
        BUSY.reset(token)
        note(kind, query, cursor, frame, start, duration)


# ---- sqlite3: C types, so trace through subclasses passed as factories
import sqlite3

_CONNECT = sqlite3.connect
_CURSORS, _CONNECTIONS = {}, {}


def traced_cursor(base):
    cls = _CURSORS.get(base)
    if cls is None:
        # Arguments pass through untouched: a cursor subclass (Django's) may treat
        # "no parameters" differently from "empty parameters".
        class TracedCursor(base):
            def execute(self, sql, *args, **kwargs):
                return record("execute", sql, self, base.execute, self, sql, *args, **kwargs)

            def executemany(self, sql, *args, **kwargs):
                return record("executemany", sql, self, base.executemany, self, sql, *args,
                              **kwargs)

        TracedCursor.__name__ = TracedCursor.__qualname__ = base.__name__
        TracedCursor.__module__ = base.__module__
        cls = _CURSORS[base] = TracedCursor
    return cls


def traced_connection(base):
    cls = _CONNECTIONS.get(base)
    if cls is None:
        class TracedConnection(base):
            def cursor(self, factory=None):
                return base.cursor(self, traced_cursor(factory or sqlite3.Cursor))

            def execute(self, sql, *args, **kwargs):
                return self.cursor().execute(sql, *args, **kwargs)

            def executemany(self, sql, *args, **kwargs):
                return self.cursor().executemany(sql, *args, **kwargs)

        TracedConnection.__name__ = TracedConnection.__qualname__ = base.__name__
        TracedConnection.__module__ = base.__module__
        cls = _CONNECTIONS[base] = TracedConnection
    return cls


def connect(*args, **kwargs):
    if len(args) > 4:
        args = (*args[:4], traced_connection(args[4]), *args[5:])
    else:
        kwargs["factory"] = traced_connection(kwargs.get("factory") or sqlite3.Connection)
    return _CONNECT(*args, **kwargs)


sqlite3.connect = connect
sqlite3.dbapi2.connect = connect


# ---- psycopg 3: Python classes, wrapped in place once the script imports psycopg
def wrap_method(cls, name, is_async):
    original = cls.__dict__.get(name)
    if original is None or getattr(original, "_perfagent", False):
        return
    if is_async:
        async def method(self, query, *args, **kwargs):
            return await arecord(name, query, self, original, self, query, *args, **kwargs)
    else:
        def method(self, query, *args, **kwargs):
            return record(name, query, self, original, self, query, *args, **kwargs)
    method.__name__ = name
    method.__doc__ = original.__doc__
    method._perfagent = True
    setattr(cls, name, method)


def patch_psycopg(module):
    for cls_name, is_async in (("Cursor", False), ("ServerCursor", False),
                               ("AsyncCursor", True), ("AsyncServerCursor", True)):
        cls = getattr(module, cls_name, None)
        if cls is not None:
            for name in ("execute", "executemany"):
                wrap_method(cls, name, is_async)


class PatchOnImport:
    def find_spec(self, name, path=None, target=None):
        if name != "psycopg":
            return None
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            NOTES.append("psycopg was imported through a loader the runner cannot wrap; its "
                         "queries were not captured")
            return None
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            patch_psycopg(module)

        spec.loader.exec_module = exec_module
        return spec


if "psycopg" in sys.modules:
    patch_psycopg(sys.modules["psycopg"])
else:
    sys.meta_path.insert(0, PatchOnImport())


def dump(exit_code, wall_ns):
    if os.getpid() != PID:
        return  # a forked child finishing the script must not overwrite the parent's record
    with LOCK:
        data = {"sql": SQL, "sites": SITES, "events": EVENTS, "dropped": STATE["dropped"],
                "exit_code": exit_code, "wall_ns": wall_ns, "notes": NOTES}
        with open(CFG["out"], "w", encoding="utf-8") as fh:
            json.dump(data, fh)


def main():
    sys.argv = [CFG["script"], *CFG["args"]]
    sys.path[0] = os.path.dirname(CFG["script"])
    exit_code = 0
    try:
        runpy.run_path(CFG["script"], run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            exit_code = 0
        elif isinstance(exc.code, int):
            exit_code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            exit_code = 1
    except BaseException:
        traceback.print_exc()
        exit_code = 1
    dump(exit_code, time.perf_counter_ns() - T0)
    sys.stdout.flush()
    sys.stderr.flush()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
'''


def _relative(filename: str) -> str:
    """A path relative to the workspace root holding it (absolute when none does)."""
    path = Path(filename)
    with contextlib.suppress(OSError):
        path = path.resolve()
    for root in workspace_roots():
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


async def _from_script(inp: NPlusOneInput, progress: ProgressCallback | None) -> NPlusOneResult:
    assert inp.script is not None
    script = resolve_in_workspace(inp.script)
    if not script.is_file():
        raise ToolError("not_found", f"{inp.script} is not a file", "give the path of a Python script")
    cwd = resolve_in_workspace(inp.cwd) if inp.cwd else script.parent
    if not cwd.is_dir():
        raise ToolError("not_found", f"{inp.cwd} is not a folder",
                        "give an existing folder inside the workspace as cwd")
    entry = inp.entry.strip() if inp.entry else None
    if entry is not None and not re.fullmatch(r"(?:[\w.]+:)?[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", entry):
        raise ToolError("invalid_entry", f"entry {entry!r} is not a function name",
                        'write "function", "Class.method" or "module:function"')
    if progress is not None:
        progress(0.0, f"running {script.name} with query capture")
    with ScratchDir("perfagent-nplusone-") as tmp:
        folder = Path(tmp)
        runner = folder / RUNNER_NAME
        runner.write_text(RUNNER_SOURCE, encoding="utf-8")
        cfg = {"script": str(script), "args": list(inp.args), "entry": entry,
               "roots": [str(script.parent), *map(str, workspace_roots())],
               "out": str(folder / "queries.json"), "max_events": MAX_EVENTS}
        (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        out, err = folder / "stdout.txt", folder / "stderr.txt"
        code, timed_out = await run_bounded([sys.executable, str(runner), str(folder / "config.json")],
                                       cwd, inp.timeout, out, err, progress,
                                       f"running {script.name}")
        stderr = tail(read_tail(err))
        if timed_out:
            raise ToolError(
                "timeout",
                f"{script.name} did not finish within {inp.timeout:g} s and was killed"
                + (f"; stderr ends with:\n{stderr}" if stderr else ""),
                "raise timeout, give the script a smaller input, or look for a hang")
        if code != 0:
            how = (f"was killed by signal {-code}" if code is not None and code < 0
                   else f"exited with code {code}")
            raise ToolError(
                "script_failed",
                f"{script.name} {how}" + (f"; stderr ends with:\n{stderr}" if stderr else ""),
                "fix the error above or pass the arguments the script needs, then run again")
        data_path = Path(cfg["out"])
        if not data_path.exists():
            raise ToolError("capture_failed", f"{script.name} exited without the query record",
                            "the script may end with os._exit(); run a function that returns")
        data = json.loads(data_path.read_text(encoding="utf-8"))
        stdout_tail = tail(read_tail(out), 10)

    sites = [(_relative(f), line, func) for f, line, func in data["sites"]]
    sql = data["sql"]
    label = entry.rpartition(":")[2] if entry else "run"
    queries: list[Query] = []
    outside = 0
    for sql_id, site_id, request, started, duration, _kind in data["events"]:
        if entry and request == 0:
            outside += 1
            continue
        file, line, func = sites[site_id] if site_id >= 0 else (None, None, None)
        queries.append(Query(sql=sql[sql_id], request=f"{label}#{request}" if entry else "run",
                             ms=duration / 1e6, site=f"{file}:{line}" if file else None,
                             function=func, start_ms=started / 1e6))
    notes = list(data.get("notes", []))
    notes.append("per-query time is the time inside execute()/executemany() (for sqlite3 that "
                 "includes stepping to the first row, not the fetch of the rest)")
    if data.get("dropped"):
        notes.append(f"{data['dropped']} queries beyond the first {MAX_EVENTS} were not analysed")
    if entry and outside:
        notes.append(f"{outside} queries ran outside any call of {entry} (e.g. setup) and are not "
                     "part of any request")
    if entry and not queries and outside:
        functions = Counter(sites[site_id][2] for _sql, site_id, request, *_ in data["events"]
                            if request == 0 and site_id >= 0)
        raise ToolError(
            "entry_not_found",
            f"{script.name} issued {outside} queries but none inside a call of {entry}"
            + (f"; they came from {', '.join(f for f, _ in functions.most_common(5))}"
               if functions else ""),
            'check the entry name: "function", "Class.method" or "module:function" of the '
            "request handler")
    if not data["events"]:
        notes.append("the script issued no sqlite3 or psycopg query")
    result = _result(queries, inp, source="script", target=str(script),
                     label=f"{script.name}" + (f" ({entry} calls)" if entry else ""),
                     notes=notes, entry=entry, queries_outside_entry=outside,
                     exit_code=data["exit_code"], run_time_ms=round(data["wall_ns"] / 1e6, 3),
                     stdout_tail=stdout_tail)
    return result


# --------------------------------------------------------------------------- the tool


async def run(inp: NPlusOneInput, progress: ProgressCallback | None = None) -> NPlusOneResult:
    """Collect the queries from the chosen source and report shapes repeated per request."""
    if inp.script is not None:
        result = await _from_script(inp, progress)
    else:
        given = inp.query_log if inp.query_log is not None else inp.traces
        assert given is not None
        path = resolve_in_workspace(given)
        if not path.is_file():
            raise ToolError("not_found", f"{given} is not a file", "give the path of a file")
        if progress is not None:
            progress(0.0, f"reading {path.name}")
        if inp.query_log is not None:
            queries, fmt, notes = await asyncio.to_thread(_parse_query_log, path)
            result = _result(queries, inp, source="query_log", target=str(path),
                             label=f"{path.name} ({fmt})", notes=notes)
        else:
            queries, notes = await asyncio.to_thread(_queries_from_traces, path)
            result = _result(queries, inp, source="traces", target=str(path),
                             label=f"{path.name} (traces)", notes=notes)
    if progress is not None:
        progress(1.0, result.summary.splitlines()[0])
    return result


SPEC = ToolSpec(
    name=TOOL,
    description=(
        "Detect N+1 query patterns: the same SQL shape (literals and parameters as ?) issued many "
        "times within one request. Sources: a Python script run in a subprocess with its sqlite3 "
        "and psycopg queries captured (entry names the request handler; each call is one "
        "request), a query log (PostgreSQL or one SQL per line, '[request-id] SQL'), or an OTLP "
        "trace export (db spans grouped by trace). Reports each repeated shape with its count per "
        "request, time and call site (file:line)."
    ),
    input_model=NPlusOneInput,
    result_model=NPlusOneResult,
    run=run,
    runs_code=True,
)

__all__ = ["SPEC", "NPlusOneInput", "NPlusOneResult", "RepeatedShape", "Shape", "normalise_sql", "run"]
