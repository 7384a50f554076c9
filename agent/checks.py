"""The five pre-response checks of the persona, as deterministic validators.

Each check reads the draft answer and what the turn really did (measurements,
findings, tool calls, the texts the figures may come from) and returns a
:class:`CheckResult` with evidence and, on failure, feedback concrete enough
for a model to fix the draft. They are written against drafts a real LLM
writes, not only the offline engine's: they look for substance (numbers that
trace to a measurement, code that parses, caching paired with invalidation),
not for fixed headings. No check calls a model, so a passing draft costs
nothing extra.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.results import CheckResult

# --------------------------------------------------------------------------- inputs


@dataclass
class CheckInput:
    """What a check may look at."""

    draft: str
    measurements: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    #: texts a cited figure may legitimately come from: tool results, the
    #: user's messages, retrieved knowledge, earlier baselines
    sources: list[str] = field(default_factory=list)
    #: the persona's target values (200 for "< 200ms"), quotable without a measurement
    target_values: list[tuple[float, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- text helpers

_CODE_BLOCK = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.S)
# A figure: a number with a unit that claims something about the system.
_FIGURE = re.compile(
    r"(?<![\w.,])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|µs|us|s|sec|seconds?|req/s|rps|requests?/s|qps|%|MB|MiB|GB|GiB|KB|KiB)"
    r"(?![\w/])",
    re.I,
)
# Words that mark a figure as a goal, budget or estimate rather than a measured fact.
_NOT_A_MEASUREMENT = re.compile(
    r"target|budget|goal|threshold|slo\b|sla\b|limit|under\b|below|less than|at most|"
    r"at least|<|>|≤|≥|estimat|expect|project|could|would|should|might|may\b|up to|"
    r"about|around|approx|roughly|~|≈|typical|e\.g\.|for example|such as|aim|keep|"
    r"ttl|timeout|interval|every|per\b|sleep|duration|ramp|alert|exceed|if\b|when\b",
)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block."""
    return [(lang.lower(), code) for lang, code in _CODE_BLOCK.findall(text)]


def prose(text: str) -> str:
    """The text without its code blocks."""
    return _CODE_BLOCK.sub(" ", text)


_INLINE_CODE = re.compile(r"`[^`\n]*`")
_REFERENCES = re.compile(r"^#{1,6}\s*(sources|references|further reading)\b.*?(?=^#{1,6}\s|\Z)",
                         re.I | re.M | re.S)


def claims(text: str) -> str:
    """The prose that proposes things: no code, no inline code, no list of sources.

    Citing a caching playbook is not proposing a cache; this is the text in
    which a proposal would be made.
    """
    return _INLINE_CODE.sub(" ", _REFERENCES.sub(" ", prose(text)))


def _to_float(raw: str) -> float:
    return float(raw.replace(",", ""))


def _unit_scale(unit: str) -> tuple[str, float]:
    """Normalise a unit to a family and a factor (ms and s compare as time)."""
    u = unit.lower()
    if u in ("ms", "millisecond", "milliseconds"):
        return "time", 1.0
    if u in ("µs", "us"):
        return "time", 0.001
    if u in ("s", "sec", "second", "seconds"):
        return "time", 1000.0
    if u in ("req/s", "rps", "request/s", "requests/s", "qps"):
        return "rate", 1.0
    if u == "%":
        return "percent", 1.0
    return "bytes", {"kb": 1e3, "kib": 1024, "mb": 1e6, "mib": 1024**2,
                     "gb": 1e9, "gib": 1024**3}.get(u, 1.0)


def _numbers_in(texts: Iterable[str]) -> list[float]:
    found: list[float] = []
    for text in texts:
        for raw in re.findall(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE]-?\d+)?", text):
            try:
                found.append(_to_float(raw))
            except ValueError:
                continue
    return found


def _close(a: float, b: float) -> bool:
    """Equal up to the rounding a writer applies (1 % or half a unit of the last digit)."""
    return abs(a - b) <= max(0.01 * max(abs(a), abs(b)), 0.05 if abs(a) < 10 else 0.5)


#: Where a sentence (or a table cell) ends: a full stop before a space or the end, a line
#: break or a cell border. A decimal point ("16.7 %") ends nothing.
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n|\|")


def _sentence_of(text: str, start: int, end: int) -> str:
    left = max((m.end() for m in _SENTENCE_END.finditer(text, 0, start)), default=0)
    after = _SENTENCE_END.search(text, end)
    return text[left:after.start() if after else len(text)]


@dataclass
class FigureAudit:
    """Which figures in a draft trace to a measurement or named source."""

    grounded: list[str]
    unsupported: list[str]


def audit_figures(draft: str, data: CheckInput) -> FigureAudit:
    """Split the draft's factual figures into grounded and unsupported.

    A figure is grounded when its value (in the same unit family, ms and s
    interchangeable) matches a measurement or a number in a source text.
    Figures framed as targets, budgets or estimates are neither: they are
    not claims about what was measured.
    """
    measured: list[tuple[str, float]] = []
    for m in data.measurements:
        family, factor = _unit_scale(str(m.get("unit", "")))
        measured.append((family, float(m["value"]) * factor))
    source_numbers = _numbers_in(data.sources)
    targets = [v for v, _ in data.target_values]

    text = prose(draft)
    grounded: list[str] = []
    unsupported: list[str] = []
    for match in _FIGURE.finditer(text):
        value = _to_float(match.group(1))
        family, factor = _unit_scale(match.group(2))
        normalised = value * factor
        label = match.group(0).strip()
        if any(f == family and _close(normalised, v) for f, v in measured) or any(
            _close(value, n) for n in source_numbers
        ):
            grounded.append(label)
            continue
        if _NOT_A_MEASUREMENT.search(_sentence_of(text, match.start(), match.end()).lower()):
            continue
        if any(_close(value, t) for t in targets):
            continue
        unsupported.append(label)
    return FigureAudit(grounded=grounded, unsupported=unsupported)


def _has(pattern: re.Pattern[str], text: str) -> list[str]:
    """Distinct matches of the lower-case ``pattern`` in ``text``, case-insensitively.

    The vocabularies are lower-case and matched against lower-cased text:
    Python's regex engine runs them several times faster than with re.I.
    """
    seen: list[str] = []
    for match in pattern.finditer(text.lower()):
        word = match.group(0).strip()
        if word not in seen:
            seen.append(word)
    return seen


def _result(name: str, ok: bool, evidence: str, feedback: str) -> CheckResult:
    return CheckResult(
        name=name, status="pass" if ok else "fail", evidence=evidence,
        feedback="" if ok else feedback,
    )


# --------------------------------------------------------------------------- vocabularies
# Lower-case patterns, matched against lower-cased text (see ``_has``).

_MEASURE_METHOD = re.compile(
    r"\bprofil\w*|load[- ]test\w*|\bk6\b|locust|wrk2?\b|\bhey\b|explain(\s+query plan|"
    r"\s+analyze)?|py-spy|pyinstrument|cprofile|lighthouse|web vitals|benchmark\w*|"
    r"flame ?graph|slow query log|pg_stat_statements|\btrac(e|es|ing)\b|\bmeasure\w*",
)
_METRIC = re.compile(
    r"\bp\d{2}\b|percentile|latency|throughput|req(uests)?/s|\blcp\b|\bcls\b|\binp\b|"
    r"\bfid\b|\bttfb\b|hit rate|cpu|memory|error rate|response time|query time",
)
_RECOMMENDATION = re.compile(
    r"^\s*#{1,4}\s*(recommend|fix|optimi[sz]|next step|action|improvement|solution|proposal)|"
    r"\b(recommend|i suggest|we should|you should|consider|add (an? )?(index|cache)|"
    r"replace|switch to|introduce|enable|batch|eager[- ]load|paginat|precompute|"
    r"move .* to a (queue|background))",
    re.M,
)
_IMPROVEMENT = re.compile(
    r"faster|reduc|improv|cut|drop|lower|speed-?up|sav(e|es|ing)|gain|fewer|less|"
    r"increase|boost|shrink|remov|from .* to|→|->",
)
_QUANTITY = re.compile(r"\d+(?:\.\d+)?\s*(%|x\b|×|times\b|ms\b|s\b|req/s|queries|round[- ]trips)")
_ROI = re.compile(
    r"\broi\b|return on investment|effort|cost|payback|engineer[- ](hours|days)|"
    r"\b\d+\s*(hours?|days?|weeks?)\b|worth|priorit|low[- ]risk|high[- ]impact|trade-?off|"
    r"benefit",
)
_TRACING = re.compile(
    r"opentelemetry|\botel\b|distributed tracing|\btracing\b|\btraces?\b|jaeger|zipkin|"
    r"tempo\b|\bspans?\b|x-ray",
)
_DASHBOARD = re.compile(r"dashboards?|grafana|datadog|new relic|kibana|\bpanels?\b|honeycomb")
_CACHING = re.compile(r"\bcach(e|es|ing|ed)\b|redis|memcached|\bcdn\b")
_INVALIDATION = re.compile(
    r"invalidat\w*|evict\w*|\bttl\b|expir\w*|purge|cache[- ]bust\w*|\.delete\(|"
    r"versioned key|stale|setex|max-age|write-through",
)
_ERROR_HANDLING = re.compile(
    r"\btry\b|except|error handling|fallback|fall back|retr(y|ies)|timeout|circuit[- ]breaker|"
    r"graceful|on failure|\braise\b|backoff",
)
_IO_IN_CODE = re.compile(r"redis|requests\.|httpx|execute\(|connect\(|\.get\(|urlopen|session\.")
_BUDGET = re.compile(
    r"performance budget|\bbudgets?\b|threshold|p\(9\d\)\s*<|\bslo\b|\bsla\b|"
    r"fail(s)? the (build|pipeline|job)",
)
_CI = re.compile(
    r"\bci\b|ci/cd|pipeline|github actions|gitlab|jenkins|circleci|buildkite|pre-merge|"
    r"pull request|merge request|on every (commit|push|pr)|nightly|pre-commit",
)


# --------------------------------------------------------------------------- the checks

def check_baseline(data: CheckInput) -> CheckResult:
    """Current metrics documented (from a measurement, or a concrete plan to get them),
    bottlenecks identified by profiling, and no figure that was not measured."""
    name = "baseline_established"
    audit = audit_figures(data.draft, data)
    text = prose(data.draft)
    problems: list[str] = []
    evidence: list[str] = []
    if audit.unsupported:
        problems.append(
            "these figures trace to no measurement or named source in this thread: "
            + ", ".join(audit.unsupported[:8])
            + "; cite measured values, run a tool to measure them, or mark them as "
            "targets or estimates"
        )
    if data.measurements:
        if audit.grounded:
            evidence.append("cites measured figures: " + ", ".join(audit.grounded[:6]))
        else:
            listing = ", ".join(
                f"{m['name']}={m['value']:g} {m['unit']}" for m in data.measurements[:6]
            )
            problems.append(f"the turn measured {listing} but the draft cites none of it")
        serious = [f for f in data.findings if f.get("severity") in ("high", "critical")]
        if serious and not any(_mentions_finding(text, f) for f in serious):
            problems.append(
                "profiling found bottlenecks the draft does not name: "
                + "; ".join(f"{f['kind']} at {f.get('location') or '?'}" for f in serious[:4])
            )
        elif serious:
            evidence.append("names the profiled bottleneck(s)")
    else:
        methods = _has(_MEASURE_METHOD, text)
        metrics = _has(_METRIC, text)
        if methods and metrics:
            evidence.append(
                f"no measurement ran; gives a measurement plan ({', '.join(methods[:3])} "
                f"for {', '.join(metrics[:3])})"
            )
        else:
            problems.append(
                "nothing was measured and the draft gives no concrete plan to measure: name "
                "the tool (load test, profiler, EXPLAIN ANALYZE, tracing) and the metric "
                "(p95 latency, throughput, LCP, CPU) to baseline before optimizing"
            )
    return _result(name, not problems, "; ".join(evidence), " ".join(problems))


_FINDING_WORDS = {
    "missing_index": r"\bindex",
    "full_scan": r"scan",
    "n_plus_one": r"n\s*\+\s*1|per[- ]row quer|query per",
    "repeated_query": r"n\s*\+\s*1|repeated quer|query per|round[- ]trips",
    "latency_budget_exceeded": r"p9\d|latency",
    "cpu_hotspot": r"hotspot|hot path|cpu",
    "temp_sort": r"sort",
    "errors": r"error",
    "generator_saturated": r"saturat",
}


def _mentions_finding(text: str, finding: dict[str, Any]) -> bool:
    """The draft names the finding by its location (file:line, table) or by its kind."""
    lowered = text.lower()
    location = (finding.get("location") or "").lower()
    if location and location.rsplit("/", 1)[-1] in lowered:
        return True
    kind = str(finding.get("kind", ""))
    return bool(re.search(_FINDING_WORDS.get(kind, re.escape(kind.replace("_", " "))), lowered))


def check_impact(data: CheckInput) -> CheckResult:
    """Recommendations carry a quantified expected improvement and an ROI judgement."""
    name = "impact_quantified"
    text = prose(data.draft)
    if not _RECOMMENDATION.search(claims(data.draft).lower()):
        return CheckResult(name=name, status="not_applicable",
                           evidence="the draft makes no recommendation to quantify")
    quantified = [
        line.strip() for line in text.splitlines()
        if _QUANTITY.search(line.lower()) and _IMPROVEMENT.search(line.lower())
    ]
    roi = _has(_ROI, text)
    problems = []
    if not quantified:
        problems.append(
            "quantify each recommendation's expected gain (e.g. 'p95 231 ms -> ~60 ms, -74 %', "
            "'3.2x throughput'), derived from the measurements or the named source"
        )
    if not roi:
        problems.append("weigh the return against the effort (ROI: effort, cost or priority)")
    evidence = ""
    if quantified:
        evidence = "quantified: " + quantified[0][:160]
    if roi:
        evidence += ("; " if evidence else "") + "ROI terms: " + ", ".join(roi[:3])
    return _result(name, not problems, evidence, " ".join(problems))


def _both_present(name: str, text: str,
                  *requirements: tuple[re.Pattern[str], str]) -> CheckResult:
    """Pass when every pattern matches; each missing one adds its feedback."""
    found = [(_has(pattern, text), feedback) for pattern, feedback in requirements]
    problems = [feedback for matches, feedback in found if not matches]
    evidence = ", ".join(word for matches, _ in found for word in matches[:2])
    return _result(name, not problems, f"mentions {evidence}" if evidence else "",
                   " ".join(problems))


def check_monitoring(data: CheckInput) -> CheckResult:
    """Distributed tracing recommended and dashboards specified."""
    return _both_present(
        "monitoring_included", data.draft,
        (_TRACING, "recommend distributed tracing (OpenTelemetry spans around the slow path)"),
        (_DASHBOARD, "specify the dashboard (e.g. a Grafana panel of p95 latency and errors)"),
    )


def _code_problem(lang: str, code: str) -> str | None:
    """Why a code block would not run as written, or None."""
    if lang in ("python", "py", "python3"):
        try:
            ast.parse(code)
        except SyntaxError as exc:
            return f"python block does not parse (line {exc.lineno}: {exc.msg})"
    elif lang == "json":
        try:
            json.loads(code)
        except json.JSONDecodeError as exc:
            return f"json block does not parse (line {exc.lineno}: {exc.msg})"
    elif lang in ("yaml", "yml"):
        import yaml

        try:
            yaml.safe_load(code)
        except yaml.YAMLError as exc:
            return f"yaml block does not parse ({str(exc).splitlines()[0]})"
    elif lang == "sql" and code.count("(") != code.count(")"):
        return "sql block has unbalanced parentheses"
    return None


def check_implementation(data: CheckInput) -> CheckResult:
    """Production-ready: code that parses, error handling, caching paired with invalidation."""
    name = "implementation_quality"
    blocks = code_blocks(data.draft)
    proposals = claims(data.draft)
    recommends = _RECOMMENDATION.search(proposals.lower())
    if not blocks and not recommends:
        return CheckResult(name=name, status="not_applicable",
                           evidence="no implementation proposed")
    problems = [
        f"code block {i + 1}: {problem}"
        for i, (lang, code) in enumerate(blocks)
        if (problem := _code_problem(lang, code))
    ]
    everything = data.draft
    if _has(_CACHING, proposals) and not _has(_INVALIDATION, everything):
        problems.append(
            "caching is proposed without invalidation: say how entries expire or are "
            "invalidated (TTL, event-based delete on write, versioned keys)"
        )
    io_code = any(_IO_IN_CODE.search(code) for _, code in blocks)
    if (io_code or recommends) and not _has(_ERROR_HANDLING, everything):
        problems.append(
            "add error handling to the proposed implementation (timeouts, retries or a "
            "fallback when the cache or database fails)"
        )
    evidence = f"{len(blocks)} code block(s) parse" if blocks else "prose implementation"
    return _result(name, not problems, evidence, "; ".join(problems))


def check_regression(data: CheckInput) -> CheckResult:
    """Performance budgets established and an automated check in CI/CD."""
    return _both_present(
        "regression_prevention", data.draft,
        (_BUDGET, "set performance budgets (e.g. p95 < 200 ms as a load-test threshold)"),
        (_CI, "run the budget check automatically in CI/CD so a regression fails the build"),
    )


#: check name -> validator, in the persona's order
CHECKS: dict[str, Callable[[CheckInput], CheckResult]] = {
    "baseline_established": check_baseline,
    "impact_quantified": check_impact,
    "monitoring_included": check_monitoring,
    "implementation_quality": check_implementation,
    "regression_prevention": check_regression,
}


def revision_feedback(results: Iterable[CheckResult]) -> str:
    """The message that sends a failed draft back: one line per failed check."""
    lines = [f"- {r.name}: {r.feedback}" for r in results if r.status == "fail"]
    return (
        "Your draft failed these pre-response checks. Revise the whole answer so each "
        "passes; do not invent figures, measure them with a tool or label them as "
        "estimates.\n" + "\n".join(lines)
    )
