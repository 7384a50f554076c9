"""The figures of a run: per-case reducers over epochs, totals, the five checks' pass
rates, and the persona's Constitutional principles as compliance rates.

Everything here is computed from a :class:`~evals.model.RunLog` alone, so a
saved or re-scored run summarizes the same way as a fresh one.

Vocabulary: a *case-epoch* is one run of one case. It *errors* when it could
not be run to the end (infrastructure), *fails* when a scorer that ran said
no, *passes* when every scorer that ran said yes, and is *skipped* when every
scorer skipped (e.g. only an ``llm_rubric`` and no grader model). Errors are
never counted as failures, and skipped epochs never as passes.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agent.checks import claims
from agent.persona import CHECK_IDS, PersonaError, get_persona
from evals.model import (
    CaseRun,
    CaseSummary,
    CheckRate,
    PrincipleCompliance,
    RunLog,
    RunSummary,
    ScorerRate,
)
from tools.base import Finding, Measurement
from tools.loadtest import percentile

# --------------------------------------------------------------------------- reducers


def _counts_ok(n: int, c: int, k: int) -> None:
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k attempts passes) from c passes in n
    attempts: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021). 1.0 when fewer than k
    attempts failed, since then every k-subset holds a pass."""
    _counts_ok(n, c, k)
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Estimate of P(all k attempts pass) from c passes in n attempts: C(c, k) / C(n, k)
    (tau-bench's pass^k, the reliability a user sees on every try)."""
    _counts_ok(n, c, k)
    return math.comb(c, k) / math.comb(n, k)


def epoch_score(run: CaseRun) -> float | None:
    """One case-epoch's score: the mean value of the scorers that ran; 0 for an error;
    None when every scorer skipped (there is nothing to average)."""
    if run.status == "error":
        return 0.0
    values = [s.value for s in run.scores if s.passed is not None]
    return statistics.fmean(values) if values else None


CaseStatus = Literal["pass", "fail", "error", "flaky", "skipped"]


def _status(epochs: int, passes: int, failures: int, errors: int, flaky: bool) -> CaseStatus:
    if errors == epochs:
        return "error"
    if flaky:
        return "flaky"
    if failures:
        return "fail"
    if errors:
        return "error"  # some epochs passed but not every epoch ran: not a clean pass
    return "pass" if passes else "skipped"


def summarize_case(runs: list[CaseRun], epochs: int) -> CaseSummary:
    """Reduce one case's epochs.

    pass@k and pass^k use n = epochs that errored or got a verdict (skipped ones
    carry no evidence either way), c = passing epochs and k = the run's epoch
    count (at most n). A case is flaky when some epochs passed and others failed;
    an error is infrastructure, not the agent's nondeterminism, so it does not
    make a case flaky.
    """
    first = runs[0]
    passes = sum(r.passed is True for r in runs)
    failures = sum(r.status == "ok" and r.passed is False for r in runs)
    errors = sum(r.status == "error" for r in runs)
    scores = [s for s in map(epoch_score, runs) if s is not None]
    n = passes + failures + errors
    k = min(epochs, n)
    flaky = passes > 0 and failures > 0
    return CaseSummary(
        suite=first.suite, case_id=first.case_id, tags=first.tags, epochs=len(runs),
        passes=passes, failures=failures, errors=errors,
        mean_score=statistics.fmean(scores) if scores else 0.0,
        stderr=statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0,
        pass_at_k=pass_at_k(n, passes, k) if n else 0.0,
        pass_hat_k=pass_hat_k(n, passes, k) if n else 0.0,
        flaky=flaky,
        status=_status(len(runs), passes, failures, errors, flaky),
    )


# --------------------------------------------------------------------------- principles


@dataclass(frozen=True)
class Evidence:
    """What a principle rule sees of one ok case-epoch: the final answer and its
    checks, and what the whole thread measured (a later turn may rest on an earlier
    turn's baseline, which the agent recalls)."""

    question: str
    answer: str
    checks: dict[str, str]
    measurements: list[Measurement] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def applies(self, check: str) -> bool:
        """The check was recorded and did not judge itself not applicable."""
        return self.checks.get(check, "not_applicable") != "not_applicable"

    def passed(self, check: str) -> bool:
        return self.checks.get(check) == "pass"


def evidence_of(run: CaseRun) -> Evidence | None:
    """The evidence of an ok case-epoch; None for an error or a run without a final result."""
    final = run.final
    if run.status != "ok" or final is None:
        return None
    results = [t.result for t in run.turns if t.result is not None]
    return Evidence(
        question="\n".join(t.input for t in run.turns),
        answer=final.answer,
        checks={c.name: c.status for c in final.checks},
        measurements=[m for r in results for m in r.measurements],
        findings=[f for r in results for f in r.findings],
    )


#: Returns None when the principle does not apply to a case-epoch, else whether it was honoured.
Rule = Callable[[Evidence], bool | None]


def baseline_first(e: Evidence) -> bool | None:
    """Measure before optimizing: a change can only be judged against a baseline.

    The baseline is either a measurement the thread took or what baseline_established
    accepts when nothing could be measured (figures traced to a named source and a
    concrete plan to measure before changing anything). A recommendation resting on
    neither is the violation this principle is about.
    """
    if not (e.applies("impact_quantified") or e.measurements or e.findings):
        return None
    return bool(e.measurements) or e.passed("baseline_established")


def user_impact(e: Evidence) -> bool | None:
    """Every recommendation says what users gain and whether it is worth the effort;
    impact_quantified is the check that judges exactly this."""
    if not e.applies("impact_quantified"):
        return None
    return e.passed("impact_quantified")


def observability(e: Evidence) -> bool | None:
    """Tracing, continuous monitoring and enforced budgets: monitoring_included covers
    tracing and dashboards, regression_prevention the budgets enforced in CI, so the
    principle needs both."""
    if not e.applies("monitoring_included"):
        return None
    return e.passed("monitoring_included") and e.passed("regression_prevention")


#: Questions about scale. A bare "load test <url> at 5 req/s" is a request to measure,
#: not a question about scale, so "load" counts only in phrases such as "under load".
SCALE_QUESTION = re.compile(
    r"\bscal(?:e|es|ed|ing|able|ability)\b|\bcapacity\b|\bthroughput\b|\btraffic\b|"
    r"\bconcurren(?:t|cy)\b|\b(?:under|heavy|high|peak)\s+load\b|\bhandle\s+[\d,.]+k?\s*"
    r"(?:users|requests|rps|req/s|qps)\b", re.I)
#: An answer claiming or proposing scalability (advising a load test is not such a claim).
SCALE_CLAIM = re.compile(
    r"\bscal(?:e|es|ed|ing|able|ability)\b|\bcapacity\b|\bhorizontal(?:ly)?\b|\bauto-?scal", re.I)


def scalability(e: Evidence) -> bool | None:
    """A system counts as scalable only once it has been load tested.

    Scale is read from the question (scale, capacity, throughput, traffic,
    concurrency, "under load", "handle 500 users") and from the answer's own
    claims (its prose without code or sources: scaling, capacity, horizontal). A
    load test that ran makes the principle apply too (and honours it). A refused or
    failed load test alone does not: refusing a target is not a claim about scale.
    """
    load_tested = any(m.source == "load_test" for m in e.measurements)
    if not (load_tested or SCALE_QUESTION.search(e.question) or SCALE_CLAIM.search(claims(e.answer))):
        return None
    return load_tested


#: Principle name (lower case) -> (the rule as a report shows it, the rule).
PRINCIPLE_RULES: dict[str, tuple[str, Rule]] = {
    "baseline first": (
        "applies when the answer recommends a change (impact_quantified applies) or the thread "
        "measured or found something; compliant when the thread took a measurement or "
        "baseline_established passed (cited figures trace to a source, or a concrete plan to "
        "measure first); a recommendation with neither is not",
        baseline_first),
    "user impact": (
        "applies when impact_quantified applies; compliant when it passed (quantified gain "
        "and ROI)",
        user_impact),
    "observability": (
        "applies when monitoring_included applies; compliant when monitoring_included (tracing "
        "and dashboards) and regression_prevention (budgets in CI) both passed",
        observability),
    "scalability": (
        "applies when the thread load-tested, the question is about scale, capacity, "
        "throughput, traffic or load, or the answer claims scalability; compliant when a "
        "load_test measurement exists",
        scalability),
}
NO_RULE = "no rule for this principle"


def agent_runs(log: RunLog) -> list[CaseRun]:
    """The runs the model answered. Cases with a fixed ``draft`` test the checks
    themselves (their drafts are written to fail), so they say nothing about how
    often the agent honours its principles and are left out of those rates."""
    drafted = {(s.name, c.id) for s in log.suites for c in s.cases if c.draft is not None}
    return [run for run in log.runs if (run.suite, run.case_id) not in drafted]


def principle_compliance(log: RunLog) -> list[PrincipleCompliance]:
    """Each principle of the run's persona, over the ok case-epochs that persona answered.

    A persona that cannot be loaded any more (a renamed file) yields no rows; a
    principle without a rule is listed with rate None.
    """
    try:
        principles = get_persona(log.config.persona).principles
    except PersonaError:
        return []
    evidence = [e for run in agent_runs(log) if run.final is not None
                and run.final.persona == log.config.persona
                and (e := evidence_of(run)) is not None]
    rows = []
    for principle in principles:
        described = PRINCIPLE_RULES.get(principle.name.lower())
        if described is None:
            rows.append(PrincipleCompliance(name=principle.name, target_percent=principle.target_percent,
                                            rule=NO_RULE, applicable=0, compliant=0,
                                            rate_percent=None, met=None))
            continue
        text, rule = described
        verdicts = [v for v in map(rule, evidence) if v is not None]
        rate = 100.0 * sum(verdicts) / len(verdicts) if verdicts else None
        rows.append(PrincipleCompliance(
            name=principle.name, target_percent=principle.target_percent, rule=text,
            applicable=len(verdicts), compliant=sum(verdicts), rate_percent=rate,
            met=None if rate is None else rate >= principle.target_percent))
    return rows


# --------------------------------------------------------------------------- checks and scorers


def check_rates(runs: list[CaseRun]) -> list[CheckRate]:
    """Pass rate of each check over the final answers of ok case-epochs.

    The rate is passed / (passed + failed): a check that judged itself not
    applicable neither helps nor hurts. The five checks come first, in the
    persona's order, then any other name a result carried.
    """
    tallies: dict[str, dict[str, int]] = {name: {} for name in CHECK_IDS}
    for run in runs:
        if run.status == "ok" and run.final is not None:
            for check in run.final.checks:
                tally = tallies.setdefault(check.name, {})
                tally[check.status] = tally.get(check.status, 0) + 1
    rows = []
    for name, tally in tallies.items():
        passed, failed = tally.get("pass", 0), tally.get("fail", 0)
        rows.append(CheckRate(name=name, passed=passed, failed=failed,
                              not_applicable=tally.get("not_applicable", 0),
                              rate_percent=100.0 * passed / (passed + failed) if passed + failed else None))
    return rows


def scorer_rates(runs: list[CaseRun]) -> list[ScorerRate]:
    """How often each scorer type passed, failed and skipped, over every score."""
    tallies: dict[str, ScorerRate] = {}
    for run in runs:
        for score in run.scores:
            rate = tallies.setdefault(score.type, ScorerRate(type=score.type, passed=0, failed=0, skipped=0))
            if score.passed is None:
                rate.skipped += 1
            elif score.passed:
                rate.passed += 1
            else:
                rate.failed += 1
    return [tallies[name] for name in sorted(tallies)]


# --------------------------------------------------------------------------- the summary


def summarize(log: RunLog) -> RunSummary:
    """Every figure a report shows and CI gates on, from the run log alone.

    Latency percentiles are over the durations of ok case-epochs (a timed-out
    epoch says nothing about speed); token totals count every recorded turn.
    """
    by_case: dict[tuple[str, str], list[CaseRun]] = {}
    for run in log.runs:
        by_case.setdefault((run.suite, run.case_id), []).append(run)
    per_case = [summarize_case(sorted(runs, key=lambda r: r.epoch), log.config.epochs)
                for runs in by_case.values()]

    ok = [r for r in log.runs if r.status == "ok"]
    passed = sum(r.passed is True for r in ok)
    failed = sum(r.passed is False for r in ok)
    durations = sorted(r.duration_ms for r in ok)
    results = [t.result for r in log.runs for t in r.turns if t.result is not None]
    return RunSummary(
        cases=len(by_case),
        case_epochs=len(log.runs),
        passed=passed,
        failed=failed,
        errors=len(log.runs) - len(ok),
        skipped=len(ok) - passed - failed,
        pass_rate=passed / (passed + failed) if passed + failed else None,
        per_case=per_case,
        principles=principle_compliance(log),
        checks=check_rates(agent_runs(log)),
        scorers=scorer_rates(log.runs),
        latency_p50_ms=percentile(durations, 50) if durations else None,
        latency_p95_ms=percentile(durations, 95) if durations else None,
        input_tokens=sum(r.usage.input_tokens for r in results),
        output_tokens=sum(r.usage.output_tokens for r in results),
        cache_read_tokens=sum(r.usage.cache_read_tokens for r in results),
        llm_calls=sum(r.usage.llm_calls for r in results),
    )
