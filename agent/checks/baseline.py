"""baseline_established: current metrics documented? bottlenecks identified by profiling?"""

from __future__ import annotations

import re
from typing import Any

from agent.checks.common import CheckInput, is_conceptual, not_applicable, quote, result
from agent.checks.figures import audit
from agent.checks.text import claims, proposed_mentions, prose, sentences, words
from agent.results import CheckResult

NAME = "baseline_established"

#: finding kinds that describe a symptom, not where the time goes
SYMPTOMS = {"latency_budget_exceeded", "budget_breach", "errors", "threshold_failed",
            "budget_unmeasured", "error_span", "cpu_saturated", "low_hit_rate",
            "generator_saturated", "ttl_too_short"}
#: how a finding's cause is named, by the tool's finding kind
_CAUSE = {
    "missing_index": r"index(?:es|ed)?|unindexed",
    "full_scan": r"(?:full|sequential|seq|table) scan|scans?|unindexed",
    "n_plus_one": r"n\s*\+\s*1|one query per|query per \w+|per-row quer\w*|\d+ (?:identical )?queries",
    "repeated_query": r"n\s*\+\s*1|repeated quer\w*|query per \w+",
    "cpu_hotspot": r"",
    "slow_span": r"",
    "hot_process": r"",
    "temp_sort": r"sort\w*|b-tree",
    "evictions": r"evict\w*|maxmemory\w*",
    "no_ttl": r"ttls?|expir\w*",
    "lcp_slow": r"",
    "cls_shift": r"",
}

_METHOD = words(r"load[- ]tests?|(?:open|closed)[- ]model tests?|(?:stress|soak|perf\w*) tests?|"
                r"k6|locust|wrk2?|vegeta|hey|ab|jmeter|gatling|profil\w*|py-spy|"
                r"pyinstrument|cprofile|scalene|explain(?: analyze)?|pg_stat_statements|"
                r"slow query log|trac\w*|opentelemetry|spans?|benchmark\w*|lighthouse|"
                r"webpagetest|web vitals|rum|flame ?graphs?|measure\w*|time it|timing|"
                r"perf|strace|system_snapshot|profile_python|load_test|explain_query|"
                r"django-debug-toolbar|debug toolbar|query count|assertNumQueries|sample")
_METRIC = words(r"p\d\d|percentiles?|latency|throughput|req/s|rps|lcp|cls|inp|ttfb|hit[- ]rate|"
                r"cpu|memory|error rate|errors|response time|query time|duration|queries|"
                r"wall time|time|share|wait time")
_CAUSAL = re.compile(
    r"\b(?:the )?(?:bottleneck|root cause|culprit|slow part|hot code|limiting factor)"
    r"\s+(?:is|was|here is|lies)\b|\bis (?:the|your) (?:bottleneck|culprit|root cause|"
    r"slow part)\b|\b(?:is|are) caused by\b|\balmost always\b|\bis what(?:'s| is) slow\b",
    re.I)
_HEDGE = words(r"might|may|could|probably|likely|suspect\w*|hypothes\w*|guess|possibly|perhaps|"
               r"unknown|until measured|to confirm|confirm|whether|not yet|can't tell|cannot tell|"
               r"can't see|if|would|candidates?|unclear|don't know|no idea|maybe|worth checking|"
               r"check|measure|profile|fits|when|unless|in case|assuming")


def finding_names(finding: dict[str, Any]) -> list[re.Pattern[str]]:
    """Ways a draft can name a finding: its location (and parts of it) or its cause."""
    names: list[str] = []
    location = str(finding.get("location") or "")
    if location:
        names.append(re.escape(location))
        if "/" in location or ":" in location:
            tail = location.rsplit("/", 1)[-1]
            names.append(re.escape(tail))
            names.append(re.escape(tail.split(":")[0]))
        if location.startswith("pid "):
            names.append(re.escape(location[4:]))
        for part in re.split(r"[/\s]+", location):
            if len(part) > 3 and not re.fullmatch(r"[\d.:]+|https?:|GET|POST|PUT", part):
                names.append(re.escape(part))
        if "." in location and " " not in location and "/" not in location:
            names.extend(re.escape(p) for p in location.split(".") if len(p) > 3)
    summary = str(finding.get("summary", ""))
    # a function, process or element the tool named: "normalise_name (…)", "(author_list)"
    names += [re.escape(m) for m in re.findall(r"\b([a-z_][a-z0-9_]*_[a-z0-9_]+)\b", summary)]
    names += [re.escape(m) for m in re.findall(r"^(\w+) \(pid", summary)]
    cause = _CAUSE.get(str(finding.get("kind", "")))
    if cause is None:
        cause = re.escape(str(finding.get("kind", "")).replace("_", " "))
    if cause:
        names.append(cause)
    return [re.compile(rf"(?<![\w]){n}(?![\w])", re.I) for n in names if n]


def around(fig: Any) -> str:
    """The words around a figure in its clause, for feedback that names the exact claim."""
    start, end = fig.__dict__.get("_local", (0, len(fig.clause)))
    left = max(0, start - 45)
    if left:
        space = fig.clause.find(" ", left)
        left = space + 1 if 0 <= space < start else left
    return ("…" if left else "") + fig.clause[left:end + 30]


def bottlenecks(data: CheckInput) -> list[dict[str, Any]]:
    return [f for f in data.findings
            if f.get("severity") in ("high", "critical") and f.get("kind") not in SYMPTOMS
            and f.get("location")]


def confident_causes(text: str) -> list[str]:
    """Sentences that assert a cause as established fact, without a hedge."""
    out = []
    for sentence in sentences(claims(text)):
        s = sentence.text
        if _CAUSAL.search(s) and not _HEDGE.search(s):
            out.append(" ".join(s.split()))
    return out


def check_baseline(data: CheckInput) -> CheckResult:
    """Current metrics documented (from a measurement, or a concrete plan to get them),
    bottlenecks identified by profiling, and no figure that was not measured."""
    figures = audit(data)
    facts = [f for f in figures.figures if f.status == "unsupported" or (
        f.status == "grounded" and f.grounds != "percentile definition")]
    if is_conceptual(data) and not facts:
        return not_applicable(NAME, "a conceptual question; the draft states no figure as fact")
    problems: list[str] = []
    evidence: list[str] = []
    unsupported = [f for f in figures.figures if f.status == "unsupported"]
    if unsupported:
        listed = "; ".join(f"{f.text} in {quote(around(f), 90)}" for f in unsupported[:6])
        problems.append(
            f"these figures trace to no measurement, tool result, derivation, user's words or "
            f"named source: {listed}. Replace each with the measured value, derive it from "
            f"measured values, measure it with a tool, or mark it as an estimate in its own "
            f"clause (\"estimate:\", \"~\", \"expected\").")
    text = claims(data.draft)
    named_text = prose(data.draft)
    measured = [f for f in figures.figures if f.status == "grounded" and not f.grounds.startswith(
        ("the question", "target"))]
    if data.measurements:
        if measured:
            evidence.append("cites measured figures: " + ", ".join(f.text for f in measured[:6]))
        else:
            listing = ", ".join(f"{m['name']}={float(m['value']):g} {m.get('unit', '')}"
                                for m in data.measurements[:6])
            problems.append(f"the turn measured {listing} but the draft cites none of it: "
                            "state the current values it measured.")
        found = bottlenecks(data)
        named = [f for f in found if any(p.search(named_text) for p in finding_names(f))]
        if found and not named:
            problems.append(
                "the measurements found bottlenecks the draft does not name: "
                + "; ".join(f"{f['kind']} at {f.get('location')} ({f.get('summary', '')[:80]})"
                            for f in found[:3])
                + ". Name that location and its cause, and drop any cause nothing measured.")
        elif found:
            evidence.append("names the measured bottleneck(s): "
                            + ", ".join(str(f.get("location")) for f in named[:3]))
        else:
            guesses = confident_causes(data.draft)
            if guesses:
                problems.append(
                    f"nothing measured a cause, yet the draft states one as fact: "
                    f"{quote(guesses[0])}. Mark it as a hypothesis and name the measurement "
                    "that would confirm it (profile, trace, EXPLAIN).")
    else:
        plan = []
        for sentence in sentences(text):
            methods, _ = proposed_mentions(sentence.text, _METHOD)
            if methods and _METRIC.search(sentence.text):
                plan.append(sentence.text)
        if plan:
            evidence.append(f"nothing measured; gives a measurement plan: {quote(plan[0])}")
        else:
            problems.append(
                "nothing was measured and the draft gives no concrete plan to measure: name "
                "the tool or method (load test, profiler, EXPLAIN ANALYZE, tracing) and the "
                "metric (p95 latency, throughput, LCP, CPU) to baseline before optimizing.")
        guesses = confident_causes(data.draft)
        if guesses and not is_conceptual(data):
            problems.append(
                f"nothing was measured, yet the draft asserts the cause as fact: "
                f"{quote(guesses[0])}. Say it is a hypothesis to confirm by measuring.")
    return result(NAME, problems, "; ".join(evidence))
