"""The offline engine: a deterministic planner and writer that needs no LLM.

It reads the user's request, extracts what can be measured (URLs, Python
scripts, SQL and databases), asks for the real tools through the same graph
an LLM would use, follows the evidence one step further (the SQL inside a
profiled hotspot goes to ``explain_query``), and writes the answer from a
Jinja2 template filled only with the numbers the tools returned. When it
cannot measure, it writes a concrete measurement plan instead of figures.
It says plainly that it is the offline engine.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from agent import targets as t
from agent.baselines import changes
from agent.models.base import ModelRequest
from agent.persona import Persona
from prompts import format_number, render

#: The name given to the message that sends a draft back after failed checks.
REVISION_SENDER = "perfagent_checks"

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:rps|req/s|requests? per second|requests?/s)", re.I)
_DURATION = re.compile(r"\bfor\s+(\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min|minutes?)\b", re.I)

DEFAULT_RATE = 10.0
DEFAULT_DURATION_S = 6.0
MAX_EXPLAINS = 3


@dataclass
class ToolOutput:
    name: str
    args: dict[str, Any]
    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.data.get("ok", False))


@dataclass
class Turn:
    """The current turn as the engine sees it."""

    request: str
    outputs: list[ToolOutput] = field(default_factory=list)
    feedback: str = ""

    def already(self, name: str, args: dict[str, Any]) -> bool:
        return any(o.name == name and o.args == args for o in self.outputs)


def read_turn(messages: Sequence[BaseMessage]) -> Turn:
    """The last user request, this turn's tool outputs and any revision feedback."""
    start = 0
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, HumanMessage) and message.name != REVISION_SENDER:
            start = index
            break
    turn = Turn(request=str(messages[start].content) if messages else "")
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    for message in messages[start + 1:]:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                calls[str(call["id"])] = (call["name"], dict(call["args"]))
        elif isinstance(message, ToolMessage):
            name, args = calls.get(message.tool_call_id, (message.name or "", {}))
            try:
                data = json.loads(str(message.content))
            except json.JSONDecodeError:
                data = {"ok": False, "error": {"message": str(message.content)}}
            turn.outputs.append(ToolOutput(name, args, data))
        elif isinstance(message, HumanMessage) and message.name == REVISION_SENDER:
            turn.feedback = str(message.content)
    return turn


# --------------------------------------------------------------------------- planning

def _target_budget(persona: Persona, measurement: str) -> str | None:
    target = persona.target_for(measurement)
    return target.budget if target else None


def _load_test_args(url: str, request: str, persona: Persona) -> dict[str, Any]:
    rate = _RATE.search(request)
    duration = _DURATION.search(request)
    seconds = DEFAULT_DURATION_S
    if duration:
        seconds = float(duration.group(1)) * (60 if duration.group(2).lower().startswith("m") else 1)
    args: dict[str, Any] = {
        "url": t.clean(url),
        "rate": float(rate.group(1)) if rate else DEFAULT_RATE,
        "duration": seconds,
    }
    budget = _target_budget(persona, "p95_latency")
    if budget:
        args["thresholds"] = [f"p(95){budget}"]
    return args


def _databases(text: str) -> list[str]:
    return [*t.PG_DSN.findall(text), *t.DB_FILE.findall(text)]


def _delegate_to(persona: Persona, request: str) -> str | None:
    """The sub-agent whose "when" text the request matches, per the delegation table."""
    lowered = request.lower()
    for target in persona.delegation:
        cues = DELEGATION_CUES.get(target.name, ())
        if any(re.search(cue, lowered) for cue in cues):
            return target.name
    return None


#: Words that put a request in a sub-agent's "when" column. The table in the
#: persona file decides who may be delegated to; these cues only recognise it.
DELEGATION_CUES: dict[str, tuple[str, ...]] = {
    "security-auditor": (r"\bsecurity\b", r"vulnerab", r"\bcve-?\d*", r"\bowasp\b",
                         r"\binjection\b", r"\bxss\b", r"pen(etration)?[- ]test"),
    "database-optimizer": (r"\bschema\b", r"complex quer", r"data model", r"normali[sz]",
                           r"partition(ing)? (the )?table"),
    "systems-architect": (r"\binfrastructure\b", r"provision", r"\biac\b", r"terraform",
                          r"kubernetes|\bk8s\b|helm chart", r"cloudformation|pulumi"),
    "frontend-developer": (r"\bui\b", r"\bux\b", r"design decision", r"user interface"),
    "observability-engineer": (r"observability platform", r"enterprise observability",
                               r"(datadog|new relic|splunk) (rollout|setup|platform)"),
}


def _sql_in_function(path: Path, line: int) -> list[str]:
    """SQL string literals of the function that encloses ``path:line``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    enclosing = None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
            node.lineno <= line <= (node.end_lineno or node.lineno)
        ) and (enclosing is None or node.lineno > enclosing.lineno):
            enclosing = node
    scope = enclosing or tree
    found: list[str] = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = " ".join(node.value.split())
            if re.match(r"(SELECT|WITH)\b", text, re.I) and text not in found:
                found.append(text)
    return found


def _sql_at(path: Path, line: int) -> str | None:
    """The SQL literal of the statement at ``path:line`` (an execute call), if any."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.lineno <= line <= (node.end_lineno or line):
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    return " ".join(arg.value.split())
    return None


def _resolve(location: str, script: str) -> tuple[Path, int] | None:
    """``shop.py:75`` -> (path, 75): absolute, or relative to the profiled script's
    folder (profile_python) or to a workspace root (detect_n_plus_one)."""
    from tools.base import workspace_roots

    file_part, _, line = location.rpartition(":")
    if not line.isdigit():
        return None
    path = Path(file_part)
    candidates = [path] if path.is_absolute() else [
        Path(script).parent / path, *(root / path for root in workspace_roots())]
    found = next((c for c in candidates if c.is_file()), None)
    return (found, int(line)) if found else None


def _hot_sql(outputs: list[ToolOutput]) -> list[str]:
    """SQL of the code the profiler pointed at: repeated-query sites first, then hotspots."""
    statements: list[str] = []
    for output in outputs:
        if output.name != "profile_python" or not output.ok:
            continue
        script = str(output.data.get("script") or output.args.get("script", "."))
        locations = [f.get("location") for f in output.data.get("findings", [])
                     if f.get("kind") in ("repeated_query", "n_plus_one", "cpu_hotspot")]
        for location in filter(None, locations):
            resolved = _resolve(str(location), script)
            if resolved is None:
                continue
            for sql in _sql_in_function(*resolved):
                if sql not in statements:
                    statements.append(sql)
    return statements


_PAGE_INTENT = re.compile(
    r"\b(page|pages|frontend|front-end|web vitals|lcp|cls|inp|fcp|render\w*|browser|"
    r"layout shift|paint)\b", re.I)
_API_INTENT = re.compile(r"\b(api|endpoint|load|throughput|latency|p9\d|rps|req/s|"
                         r"requests|concurren\w*|slow)\b", re.I)
_NPLUS1_INTENT = re.compile(r"n\s*\+\s*1|\bqueries\b|\borm\b", re.I)
_SYSTEM_INTENT = re.compile(r"\b(cpu|memory|ram|load average|host|server resources|"
                            r"system|saturat\w*)\b", re.I)
_BUDGET_INTENT = re.compile(r"\bbudgets?\b|\bslos?\b", re.I)


def _first_round(persona: Persona, request: str, available: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """What the request itself names: every measurable target, once."""
    wanted: list[tuple[str, dict[str, Any]]] = []
    target = _delegate_to(persona, request) if "delegate" in available else None
    if target:
        wanted.append(("delegate", {"to": target, "task": request}))
    page = bool(_PAGE_INTENT.search(request)) and "web_vitals" in available
    for url in dict.fromkeys(t.URL.findall(request)):
        url = t.clean(url)
        if page:
            wanted.append(("web_vitals", {"url": url, "runs": 3}))
        if not page or _API_INTENT.search(_PAGE_INTENT.sub(" ", request)):
            wanted.append(("load_test", _load_test_args(url, request, persona)))
    without_urls = t.URL.sub(" ", request)
    for script in dict.fromkeys(t.PY_FILE.findall(without_urls)):
        wanted.append(("profile_python", {"script": script}))
        if _NPLUS1_INTENT.search(request):
            wanted.append(("detect_n_plus_one", {"script": script}))
    databases = _databases(request)
    for sql in dict.fromkeys(" ".join(s.split()) for s in t.SQL.findall(request)):
        for database in databases[:1]:
            wanted.append(("explain_query", {"database": database, "sql": sql}))
    for url in dict.fromkeys(t.REDIS_URL.findall(request)):
        wanted.append(("cache_stats", {"url": t.clean(url)}))
    traces = list(dict.fromkeys(t.TRACE_FILE.findall(without_urls)))
    for path in traces:
        wanted.append(("analyze_traces", {"path": path}))
    for path in dict.fromkeys(t.ACCESS_LOG.findall(without_urls)):
        if path not in traces and re.search(r"cache|access|hit", request, re.I):
            wanted.append(("simulate_cache", {"access_log": path}))
    if _SYSTEM_INTENT.search(request) and not any(
            n in ("load_test", "profile_python") for n, _ in wanted):
        wanted.append(("system_snapshot", {"interval": 2}))
    return [(n, a) for n, a in wanted if n in available]


def plan_tool_calls(persona: Persona, turn: Turn, available: set[str]) -> list[dict[str, Any]]:
    """The next tool calls, or [] when it is time to write. Never repeats a call."""
    request = turn.request
    wanted: list[tuple[str, dict[str, Any]]] = []
    if not turn.outputs:
        wanted = _first_round(persona, request, available)
        if not wanted:  # nothing to measure: ground the plan in the playbooks
            wanted = [("knowledge_search", {"query": request, "k": 4})]
    else:
        databases = _databases(request)
        if databases:
            for sql in _hot_sql(turn.outputs)[:MAX_EXPLAINS]:
                wanted.append(("explain_query", {"database": databases[0], "sql": sql}))
    fresh = [(n, a) for n, a in wanted if n in available and not turn.already(n, a)]
    if not fresh and _budget_check_due(turn, available):
        # Measuring is done: the persona's targets fill the budgets (graph.with_defaults).
        fresh = [("check_budgets", {})]
    if not fresh and turn.outputs and "knowledge_search" in available:
        fresh = _playbook_lookup(turn)
    return [{"name": name, "args": args, "id": f"offline_{len(turn.outputs)}_{index}",
             "type": "tool_call"} for index, (name, args) in enumerate(fresh)]


def _budget_check_due(turn: Turn, available: set[str]) -> bool:
    """The request asks about budgets, something was measured, and no check ran yet."""
    return ("check_budgets" in available and bool(_BUDGET_INTENT.search(turn.request))
            and not any(o.name == "check_budgets" for o in turn.outputs)
            and any(o.ok and o.data.get("measurements") for o in turn.outputs))


#: how a finding kind is asked of the playbooks when its own name reads poorly
_KIND_QUERIES = {"repeated_query": "N+1 queries in a loop", "n_plus_one": "N+1 queries in a loop",
                 "full_scan": "missing index full table scan", "temp_sort": "sort without index",
                 "latency_budget_exceeded": "p95 latency budget load test",
                 "generator_saturated": "load testing open model"}


def _playbook_lookup(turn: Turn) -> list[tuple[str, dict[str, Any]]]:
    """Once measuring is done: one playbook lookup per kind of finding, once per turn."""
    if any(o.name == "knowledge_search" for o in turn.outputs):
        return []
    kinds = dict.fromkeys(str(f.get("kind", "")) for o in turn.outputs if o.ok
                          for f in o.data.get("findings", []))
    queries = dict.fromkeys(_KIND_QUERIES.get(k, k.replace("_", " ")) for k in kinds if k)
    return [("knowledge_search", {"query": q, "k": 2}) for q in list(queries)[:4]]


def _passages(outputs: list[ToolOutput]) -> list[dict[str, Any]]:
    return [p for o in outputs if o.name == "knowledge_search" and o.ok
            for p in o.data.get("passages", [])]


_TERM = re.compile(r"[a-z0-9+]{3,}")


def _best_passage(rec: Recommendation, passages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The playbook passage sharing the most words with a recommendation, if any do."""
    wanted = set(_TERM.findall(f"{rec.title} {rec.why}".lower()))
    scored = [(len(wanted & set(_TERM.findall(f"{p['heading']} {p['text']}".lower()))), i)
              for i, p in enumerate(passages)]
    best = max(scored, default=(0, -1))
    return passages[best[1]] if best[0] >= 2 else None


# --------------------------------------------------------------------------- writing

@dataclass
class Recommendation:
    title: str
    why: str
    impact: str
    effort: str
    roi: str
    code_lang: str = ""
    code: str = ""
    #: the playbook passage this advice follows, named so the reader can check it
    playbook: dict[str, Any] | None = None


def _n_plus_one_impact(summary: str) -> str:
    """The saving bound, quoting the call site's time when the profiler (``taking X ms``)
    or the traces (``X ms in all``) reported it."""
    spent = re.search(r"taking ([\d,.]+) ms|([\d,.]+) ms in all", summary)
    bound = (f"saves up to the {spent.group(1) or spent.group(2)} ms measured at that call site"
             if spent else "saves up to the time measured at that call site")
    return (f"estimated: the per-row round trips collapse to one query per request, which "
            f"{bound} (an upper bound: the one batched query still costs something)")


def _measured_bound(finding: dict[str, Any], outputs: list[ToolOutput]) -> str | None:
    """The most a fix can gain, derived from the finding's own measured figures (no
    figure of its own: None, and the advice stays qualitative)."""
    kind, summary = finding.get("kind"), str(finding.get("summary", ""))
    if kind == "slow_span":
        share = re.search(r"takes (\d+)% of trace \w+'s critical path: ([\d,.]+) of ([\d,.]+) ms",
                          summary)
        if share:
            return (f"speeding up this span can save at most its {share.group(1)} % of the "
                    f"trace ({share.group(2)} of {share.group(3)} ms on the critical path, "
                    "measured); halving it would cut the trace by about "
                    f"{int(share.group(1)) // 2} %")
    if kind == "low_hit_rate":
        hit_rate = _measurement(outputs, "cache_hit_rate")
        if hit_rate and float(hit_rate["value"]) < 80:
            misses = 100 - float(hit_rate["value"])
            cut = 100 * (1 - 20 / misses)
            return (f"raising the hit rate from {format_number(hit_rate['value'])} % (measured) "
                    f"to the 80 % target would cut backend reads by about {cut:.0f} %")
    return None


def _measurement(outputs: list[ToolOutput], name: str) -> dict[str, Any] | None:
    for output in outputs:
        for m in output.data.get("measurements", []) if output.ok else []:
            if m.get("name") == name:
                return m
    return None


def _recommendations(outputs: list[ToolOutput], persona: Persona) -> list[Recommendation]:
    recs: list[Recommendation] = []
    seen_kinds: set[str] = set()
    # A hotspot is only worth its own advice when nothing more specific explains it.
    specific = any(f.get("kind") in ("repeated_query", "n_plus_one", "missing_index")
                   for o in outputs if o.ok for f in o.data.get("findings", []))
    for output in outputs:
        if not output.ok:
            continue
        if output.name == "explain_query":
            for suggestion in output.data.get("index_suggestions", []):
                before, after = suggestion.get("time_before_ms"), suggestion.get("time_after_ms")
                speedup = suggestion.get("speedup")
                impact = "the planner stops scanning the whole table"
                if before is not None and after is not None:
                    impact = (
                        f"query time {format_number(before, 2)} ms → {format_number(after, 2)} ms "
                        f"on a temporary copy with the index (measured, {format_number(speedup or 0, 1)}x)"
                    )
                recs.append(Recommendation(
                    title="Add the missing index",
                    why=f"`{output.args.get('sql', '')[:120]}` scans the table instead of seeking.",
                    impact=impact,
                    effort="low: one migration",
                    roi="high: a single migration for a measured speedup; the cost is "
                        "slightly slower writes and some disk for the index",
                    code_lang="sql",
                    code=str(suggestion.get("sql", "")).rstrip(";") + ";",
                ))
        for finding in output.data.get("findings", []):
            kind = finding.get("kind")
            if kind in ("repeated_query", "n_plus_one") and "n_plus_one" not in seen_kinds:
                seen_kinds.add("n_plus_one")
                resolved = _resolve(str(finding.get("location", "")),
                                    str(output.data.get("script") or output.args.get("script", ".")))
                recs.append(Recommendation(
                    title="Collapse the N+1 query loop into one batched query",
                    why=f"{finding.get('summary')} (at `{finding.get('location')}`).",
                    impact=_n_plus_one_impact(str(finding.get("summary", ""))),
                    effort="medium: one function rewritten and its tests",
                    roi="high: removes work that grows with the result size",
                    code_lang="python",
                    code=batched_lookup(_sql_at(*resolved) if resolved else None),
                ))
            elif kind == "cpu_hotspot" and "cpu_hotspot" not in seen_kinds and not specific:
                seen_kinds.add("cpu_hotspot")
                recs.append(Recommendation(
                    title=f"Optimise the hotspot at `{finding.get('location')}`",
                    why=str(finding.get("summary")),
                    impact="estimated: at most the hotspot's share of run time reported by the "
                    "profile above can be saved there",
                    effort="medium: depends on the algorithm",
                    roi="worth it when the share is large; profile again after the change",
                ))
    for output in outputs:
        for finding in output.data.get("findings", []) if output.ok else []:
            advice = FINDING_ADVICE.get(str(finding.get("kind")))
            if advice and finding["kind"] not in seen_kinds:
                seen_kinds.add(finding["kind"])
                title, fix, effort, roi = advice
                recs.append(Recommendation(
                    title=title,
                    why=f"{finding.get('summary')}"
                    + (f" (at `{finding.get('location')}`)" if finding.get("location") else "")
                    + ".",
                    impact="estimated: " + "; ".join(filter(None, (
                        _measured_bound(finding, outputs), fix,
                        f"re-measure with `{output.name}` to confirm the gain"))),
                    effort=effort, roi=roi,
                ))
    p95 = _measurement(outputs, "p95_latency")
    budget = _target_budget(persona, "p95_latency")
    if p95 and budget and p95.get("passed") is False:
        limit = float(budget.lstrip("<>="))
        needed = 100 * (1 - limit / float(p95["value"]))
        recs.append(Recommendation(
            title="Bring p95 latency inside the budget",
            why=f"p95 is {format_number(p95['value'])} ms against a target of {budget} ms.",
            impact=f"estimated: p95 must drop by about {needed:.0f} % to meet the {budget} ms target; "
                   "re-run the same load test after each fix above to confirm",
            effort="follows from the fixes above",
            roi="each fix above is ranked by effort against the measured gain",
        ))
    if not any(r.code_lang == "python" for r in recs) and recs:
        recs.append(Recommendation(
            title="Cache the read path with explicit invalidation",
            why="Repeated identical reads should not reach the database.",
            impact="estimated: requests served from cache skip the query entirely; "
            "aim for a cache hit rate above the 80 % target",
            effort="medium: a cache-aside wrapper and invalidation on writes",
            roi="good when reads dominate writes",
            code_lang="python",
            code=CACHE_ASIDE,
        ))
    # Ranked by return on effort: a measured, one-migration index first.
    return sorted(recs, key=lambda r: _RANK.get(r.title, 5))


#: finding kind -> (title, what fixing it improves, effort, ROI). The impact is
#: stated as a direction tied to the measured finding, never as an invented number.
FINDING_ADVICE: dict[str, tuple[str, str, str, str]] = {
    "low_hit_rate": (
        "Raise the cache hit rate above the 80 % target",
        "cache the hottest keys longer and warm them after deploys; each hit saved is a "
        "backend read removed, so misses drop in proportion to the hit-rate gain",
        "low to medium: TTLs and key design", "high when the backend read is the slow part"),
    "evictions": (
        "Stop evicting live keys",
        "size maxmemory from the miss-ratio curve (`simulate_cache`) or trim value sizes; "
        "fewer evictions improve the hit rate directly",
        "low: a configuration change", "high: evictions turn hits into backend reads"),
    "no_ttl": (
        "Give cached keys a TTL and event-based invalidation",
        "bounded memory and no stale entries; delete the key on every write (invalidation) "
        "and keep the TTL as the safety net",
        "medium: touch every cache write", "high: removes a memory and correctness risk"),
    "no_maxmemory": (
        "Set maxmemory and an eviction policy",
        "a bounded cache cannot take the host down; allkeys-lru keeps the hot set",
        "low: one setting", "high: prevents an outage"),
    "memory_full": (
        "Give the cache room or an eviction policy",
        "with noeviction at the memory limit, writes fail; allkeys-lru or a larger "
        "maxmemory keeps writes succeeding",
        "low: one setting", "high: prevents write errors"),
    "fragmentation": (
        "Reclaim fragmented cache memory",
        "enable activedefrag or restart during a quiet window; memory use improves by "
        "the wasted share the tool measured",
        "low", "medium"),
    "ttl_too_short": (
        "Lengthen the TTL where entries expire before reuse",
        "the simulated curve shows the hit rate a longer TTL reaches; pair it with "
        "event-based invalidation so data stays fresh",
        "low", "high when reads repeat"),
    "layout_shift": (
        "Reserve space for late content to cut layout shift",
        "explicit width/height or aspect-ratio on images, ads and banners reduces CLS "
        "toward the 0.1 target",
        "low: CSS", "high: CLS is a Core Web Vital"),
    "lcp_slow": (
        "Make the largest element paint sooner",
        "preload the LCP image or font, inline critical CSS and cut render-blocking "
        "scripts; LCP improves by the time they block",
        "medium", "high: LCP is a Core Web Vital"),
    "slow_interaction": (
        "Break up the long handler behind the slow interaction",
        "yield to the main thread (split work, move it to a worker) so INP drops under "
        "the 200 ms target",
        "medium", "high: INP is a Core Web Vital"),
    "long_tasks": (
        "Split long main-thread tasks",
        "less total blocking time means faster responses to input",
        "medium", "medium"),
    "cpu_saturated": (
        "Relieve the CPU before it queues requests",
        "profile the hot process (`profile_python`), then scale out; utilisation under "
        "the 70 % target leaves headroom for bursts",
        "medium", "high: saturation multiplies latency"),
    "memory_pressure": (
        "Reduce memory pressure",
        "find the top allocation sites (profile_python with memory) and cap caches; "
        "swapping makes every request slower",
        "medium", "high"),
    "hot_process": (
        "Profile the hot process",
        "its CPU share is the upper bound of what optimising it saves",
        "low to start: one profile", "high"),
    "slow_span": (
        "Shorten the span that dominates the critical path",
        "the trace's duration improves by as much as that span's self time is cut",
        "depends on the span", "high: it is on the critical path"),
    "budget_breach": (
        "Bring the breached budget back in line",
        "each fix above is checked against the budget file in CI",
        "follows from the fixes above", "required: the budget gates releases"),
}

_RANK = {"Add the missing index": 0, "Collapse the N+1 query loop into one batched query": 1}


_LOOKUP = re.compile(r"^SELECT (?P<cols>[\w, ]+?) FROM (?P<table>\w+) WHERE (?P<key>\w+) = \?$", re.I)


def batched_lookup(sql: str | None) -> str:
    """Python that replaces a per-row ``SELECT ... WHERE key = ?`` with one ``IN`` query.

    Built from the repeated query itself so the fix names the user's table and
    columns; a query of another shape gets the general pattern.
    """
    match = _LOOKUP.match(sql or "")
    if not match:
        return BATCHED_LOOKUP
    table, key = match["table"], match["key"]
    columns = [c.strip() for c in match["cols"].split(",")]
    fields = ", ".join(f'"{c}": row[{i + 1}]' for i, c in enumerate(columns))
    return f'''\
import logging
import sqlite3
from collections import defaultdict

log = logging.getLogger(__name__)


def {table}_by_{key}(conn: sqlite3.Connection, keys: list[int]) -> dict[int, list[dict]]:
    """All {table} rows for a page of {key}s in one query, instead of one query each."""
    grouped: dict[int, list[dict]] = defaultdict(list)
    if not keys:
        return grouped
    marks = ",".join("?" * len(keys))
    sql = f"SELECT {key}, {", ".join(columns)} FROM {table} WHERE {key} IN ({{marks}})"
    try:
        for row in conn.execute(sql, keys):
            grouped[row[0]].append({{{fields}}})
    except sqlite3.Error:
        log.exception("batched {table} lookup failed for %d keys", len(keys))
        raise
    return grouped
'''


BATCHED_LOOKUP = '''\
import logging
import sqlite3

log = logging.getLogger(__name__)


def customers_by_id(conn: sqlite3.Connection, ids: list[int]) -> dict[int, str]:
    """One query for all customers of a page instead of one query per order."""
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    try:
        rows = conn.execute(
            f"SELECT id, name FROM customers WHERE id IN ({marks})", ids
        ).fetchall()
    except sqlite3.Error:
        log.exception("customer lookup failed for %d ids", len(ids))
        raise
    return dict(rows)
'''

CACHE_ASIDE = '''\
import json
import logging

import redis

log = logging.getLogger(__name__)
cache = redis.Redis(socket_timeout=0.05)


def cached_orders(customer_id: int, load, ttl: int = 300):
    key = f"orders:{customer_id}"
    try:
        hit = cache.get(key)
        if hit is not None:
            return json.loads(hit)
    except redis.RedisError:
        log.warning("cache unavailable, reading through")  # fall back to the database
    value = load(customer_id)
    try:
        cache.setex(key, ttl, json.dumps(value))
    except redis.RedisError:
        log.warning("cache write skipped")
    return value


def invalidate_orders(customer_id: int) -> None:
    """Call on every write to the customer's orders (event-based invalidation)."""
    try:
        cache.delete(f"orders:{customer_id}")
    except redis.RedisError:
        log.warning("invalidation failed; the TTL bounds staleness")
'''


def _plan_steps(turn: Turn, persona: Persona) -> list[str]:
    """A concrete measurement plan when nothing could be measured."""
    p95 = persona.target_for("p95_latency")
    lcp = persona.target_for("lcp")
    steps = [
        "Load test the slow endpoint with an open-model arrival rate and record p50/p95/p99 "
        "latency and throughput: `perfagent measure load_test --args "
        "'{\"url\": \"http://127.0.0.1:8000/…\", \"rate\": 20, \"duration\": \"30s\"}'`"
        + (f" against the p95 target {p95.display}." if p95 else "."),
        "Profile the handler under that load (`perfagent measure profile_python --args "
        "'{\"script\": \"path/to/workload.py\"}'`) to find the hotspots by self and total time.",
        "Run EXPLAIN on the queries the hotspot issues (`perfagent measure explain_query`) "
        "to see full scans and missing indexes.",
    ]
    if lcp and re.search(r"page|frontend|browser|lcp|web vital", turn.request, re.I):
        steps.append(f"Measure Core Web Vitals in a headless browser against LCP {lcp.display}.")
    return steps


def write_answer(persona: Persona, turn: Turn, knowledge: list[dict[str, Any]],
                 earlier: list[dict[str, Any]] | None = None) -> str:
    """The answer, from the template, with figures only from the tool outputs."""
    outputs = turn.outputs
    measured = [o for o in outputs if o.ok and o.name not in ("delegate", "knowledge_search")]
    measurements = [m for o in measured for m in o.data.get("measurements", [])]
    findings = [f for o in measured for f in o.data.get("findings", [])]
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
    findings.sort(key=lambda f: order.get(str(f.get("severity")), 5))
    failures = [o for o in outputs if not o.ok]
    delegations = [o for o in outputs if o.name == "delegate" and o.ok]
    p95 = persona.target_for("p95_latency")
    passages = _passages(outputs)
    recommendations = _recommendations(outputs, persona)
    for rec in recommendations:
        rec.playbook = _best_passage(rec, passages)
    # Sources: what the tools looked up this turn, then what prepare retrieved.
    sources = list({(p["source"], p["heading"]): p for p in [*passages, *knowledge]}.values())
    return render(
        "offline_answer.md.j2",
        persona=persona,
        request=turn.request,
        summaries=[(o.name, o.data.get("summary", "")) for o in measured if o.data.get("summary")],
        measurements=measurements,
        findings=findings,
        failures=failures,
        delegations=delegations,
        recommendations=recommendations,
        plan=[] if measurements else _plan_steps(turn, persona),
        knowledge=sources,
        changes=changes(measurements, earlier or []),
        targets=persona.targets,
        p95_budget=p95.budget if p95 else "<200",
        load_test_url=next((o.args.get("url") for o in measured if o.name == "load_test"),
                           "http://127.0.0.1:8000/"),
        revised=bool(turn.feedback),
    )


class OfflineEngine:
    """Deterministic planner/writer behind the ``ChatModel`` interface."""

    spec = "offline"

    def __init__(self, persona: Persona) -> None:
        self.persona = persona

    async def generate(self, request: ModelRequest) -> AIMessage:
        turn = read_turn(request.messages)
        available = {tool.name for tool in request.tools}
        calls = plan_tool_calls(self.persona, turn, available)
        if calls:
            return AIMessage(content="", tool_calls=calls, usage_metadata=_NO_USAGE)
        knowledge = list(request.metadata.get("knowledge", []))
        text = write_answer(self.persona, turn, knowledge,
                            list(request.metadata.get("baselines", [])))
        if request.on_text:
            for paragraph in re.split(r"(?<=\n\n)", text):
                request.on_text(paragraph)
        return AIMessage(content=text, usage_metadata=_NO_USAGE)


_NO_USAGE = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
