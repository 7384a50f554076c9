"""Reducers over epochs (mean, stderr, pass@k, pass^k, flaky), run totals, check rates
and the persona's principles as compliance rates, on hand-built run logs."""

from __future__ import annotations

import math

import pytest

from agent.results import CheckResult, Usage
from evals.metrics import (
    NO_RULE,
    PRINCIPLE_RULES,
    Evidence,
    baseline_first,
    epoch_score,
    pass_at_k,
    pass_hat_k,
    scalability,
    summarize,
)
from evals.model import Case, CaseRun, RunConfig, RunLog, Score, ScorerSpec, Suite, TurnRecord
from tests.evals.test_scorers import call, checks, make_run, make_turn, measurement
from tools.base import Finding

# ----------------------------------------------------------------------------- pass@k, pass^k


@pytest.mark.parametrize(("n", "c", "k", "at_k", "hat_k"), [
    (5, 2, 1, 2 / 5, 2 / 5),
    (5, 2, 2, 1 - 3 / 10, 1 / 10),         # 1 - C(3,2)/C(5,2); C(2,2)/C(5,2)
    (5, 2, 3, 1 - 1 / 10, 0.0),            # k = n - c: one all-failing subset of ten
    (5, 2, 4, 1.0, 0.0),                   # k > n - c: every subset holds a pass
    (5, 2, 5, 1.0, 0.0),
    (10, 3, 3, 1 - 35 / 120, 1 / 120),     # C(7,3) = 35, C(10,3) = 120
    (4, 4, 4, 1.0, 1.0),
    (4, 0, 2, 0.0, 0.0),
    (1, 1, 1, 1.0, 1.0),
])
def test_pass_at_k_and_pass_hat_k(n: int, c: int, k: int, at_k: float, hat_k: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(at_k)
    assert pass_hat_k(n, c, k) == pytest.approx(hat_k)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, 1, 0), (3, 1, 4), (0, 0, 1), (3, -1, 1)])
def test_pass_at_k_refuses_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="need 0 <= c <= n and 1 <= k <= n"):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError):
        pass_hat_k(n, c, k)


# ----------------------------------------------------------------------------- a hand-built log


def verdict(passed: bool | None, value: float | None = None, kind: str = "contains") -> Score:
    return Score(scorer=kind, type=kind, value=float(bool(passed)) if value is None else value,
                 passed=passed, skipped_reason="no grader" if passed is None else "")


def epoch(case_id: str, number: int, *scores: Score, status: str = "ok", duration_ms: float = 100.0,
          turn: TurnRecord | None = None) -> CaseRun:
    return make_run(*(() if turn is None else (turn,)), case_id=case_id, epoch=number, status=status,
                    scores=() if status == "error" else scores, duration_ms=duration_ms, tags=["t"])


def log_of(runs: list[CaseRun], *, epochs: int = 3, persona: str = "performance-engineer") -> RunLog:
    case_ids = sorted({r.case_id for r in runs})
    suite = Suite(name="s", cases=[Case(id=c, input=["q"], scorers=[ScorerSpec(type="contains",
                                                                             params={"value": "x"})])
                                   for c in case_ids])
    return RunLog(run_id="r1", created_at=0.0, config=RunConfig(model="offline", epochs=epochs,
                                                                persona=persona),
                  suites=[suite], runs=runs)


def mixed_log() -> RunLog:
    yes, no = verdict(True), verdict(False)
    return log_of([
        epoch("always", 1, yes, yes), epoch("always", 2, yes, yes), epoch("always", 3, yes, yes),
        epoch("flaky", 1, yes, yes), epoch("flaky", 2, yes, no), epoch("flaky", 3, yes, yes),
        epoch("broken", 1, status="error"), epoch("broken", 2, yes), epoch("broken", 3, yes),
        epoch("ungraded", 1, verdict(None)), epoch("ungraded", 2, verdict(None)),
        epoch("ungraded", 3, verdict(None)),
        epoch("never", 1, no, verdict(True, kind="tool_used")), epoch("never", 2, no),
        epoch("never", 3, verdict(False, 0.25, kind="llm_rubric")),
    ])


def test_epoch_score() -> None:
    yes, no = verdict(True), verdict(False)
    assert epoch_score(epoch("c", 1, yes, no, verdict(None))) == 0.5  # the skipped one is left out
    assert epoch_score(epoch("c", 1, status="error")) == 0.0
    assert epoch_score(epoch("c", 1, verdict(None))) is None


def test_per_case_reducers() -> None:
    cases = {c.case_id: c for c in summarize(mixed_log()).per_case}
    assert list(cases) == ["always", "flaky", "broken", "ungraded", "never"]

    always = cases["always"]
    assert (always.status, always.passes, always.mean_score, always.stderr) == ("pass", 3, 1.0, 0.0)
    assert always.pass_at_k == always.pass_hat_k == 1.0 and not always.flaky

    flaky = cases["flaky"]  # epoch scores 1, 0.5, 1
    assert flaky.status == "flaky" and flaky.flaky
    assert (flaky.passes, flaky.failures, flaky.errors) == (2, 1, 0)
    assert flaky.mean_score == pytest.approx(2.5 / 3)
    assert flaky.stderr == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))  # sample sd / sqrt(n)
    assert flaky.pass_at_k == 1.0 and flaky.pass_hat_k == 0.0

    broken = cases["broken"]  # an error counts 0 and as a non-passing epoch, but not as flaky
    assert broken.status == "error" and not broken.flaky
    assert (broken.passes, broken.failures, broken.errors) == (2, 0, 1)
    assert broken.mean_score == pytest.approx(2 / 3)
    assert broken.pass_hat_k == 0.0 and broken.pass_at_k == 1.0

    ungraded = cases["ungraded"]
    assert ungraded.status == "skipped" and ungraded.mean_score == 0.0
    assert ungraded.pass_at_k == ungraded.pass_hat_k == 0.0

    never = cases["never"]  # epoch scores 0.5, 0, 0.25
    assert never.status == "fail" and never.failures == 3 and not never.flaky
    assert never.mean_score == pytest.approx(0.25)
    assert never.pass_at_k == 0.0
    assert always.tags == ["t"] and always.epochs == 3


def test_k_is_the_epoch_count_capped_by_the_epochs_run() -> None:
    yes, no = verdict(True), verdict(False)
    runs = [epoch("c", i, s) for i, s in enumerate([yes, no, yes, no, no], start=1)]
    (one,) = summarize(log_of(runs, epochs=2)).per_case  # n=5, c=2, k=2
    assert one.pass_at_k == pytest.approx(0.7) and one.pass_hat_k == pytest.approx(0.1)
    (capped,) = summarize(log_of(runs[:1], epochs=3)).per_case  # one epoch ran: k = 1
    assert capped.pass_at_k == capped.pass_hat_k == 1.0


def test_totals_keep_errors_apart_from_failures() -> None:
    summary = summarize(mixed_log())
    assert (summary.cases, summary.case_epochs) == (5, 15)
    assert (summary.passed, summary.failed, summary.errors, summary.skipped) == (7, 4, 1, 3)
    assert summary.pass_rate == pytest.approx(7 / 11)
    rates = {r.type: (r.passed, r.failed, r.skipped) for r in summary.scorers}
    assert rates == {"contains": (13, 3, 3), "llm_rubric": (0, 1, 0), "tool_used": (1, 0, 0)}


def test_latency_and_tokens() -> None:
    runs = [epoch("c", i, verdict(True), duration_ms=ms) for i, ms in enumerate([100, 200, 300, 400], 1)]
    runs.append(epoch("c", 5, status="error", duration_ms=99_999))  # a timeout says nothing of speed
    runs.append(epoch("d", 1, verdict(True), turn=make_turn(
        model="anthropic:x", usage=Usage(llm_calls=2, input_tokens=1000, output_tokens=300,
                                         cache_read_tokens=600))))
    summary = summarize(log_of(runs))
    assert summary.latency_p50_ms == pytest.approx(200.0)  # of 100, 100, 200, 300, 400
    assert summary.latency_p95_ms == pytest.approx(380.0)
    assert (summary.input_tokens, summary.output_tokens, summary.cache_read_tokens, summary.llm_calls) == (
        1000, 300, 600, 2)
    empty = summarize(log_of([epoch("c", 1, status="error")]))
    assert empty.latency_p50_ms is None and empty.pass_rate is None


# ----------------------------------------------------------------------------- check rates


def test_check_rates_over_final_turns_of_ok_runs() -> None:
    runs = [
        make_run(make_turn(check_results=checks(impact_quantified="fail")),  # turn 1 is not final
                 make_turn(check_results=checks()), epoch=1),
        make_run(make_turn(check_results=checks(impact_quantified="not_applicable",
                                                monitoring_included="fail")), epoch=2),
        make_run(make_turn(check_results=checks(impact_quantified="fail")), epoch=3),
        make_run(make_turn(check_results=checks(monitoring_included="fail")), epoch=4, status="error"),
        make_run(make_turn(check_results=[*checks(), CheckResult(name="extra", status="pass")]), epoch=5),
    ]
    rates = {r.name: r for r in summarize(log_of(runs, epochs=5)).checks}
    assert list(rates) == ["baseline_established", "impact_quantified", "monitoring_included",
                           "implementation_quality", "regression_prevention", "extra"]
    impact = rates["impact_quantified"]
    assert (impact.passed, impact.failed, impact.not_applicable) == (2, 1, 1)
    assert impact.rate_percent == pytest.approx(200 / 3)
    assert rates["monitoring_included"].rate_percent == 75.0
    assert rates["baseline_established"].rate_percent == 100.0
    assert summarize(log_of([epoch("c", 1, status="error")])).checks[0].rate_percent is None


# ----------------------------------------------------------------------------- principles


LOAD_TESTED = make_turn(
    "Load test of /orders: p95 231 ms. Add an index: p95 to ~60 ms (-74 %), low effort.",
    question="Load test http://127.0.0.1:8000/orders and tell me what to fix",
    tools=[call("load_test", url="http://127.0.0.1:8000/orders")],
    measurements=[measurement("p95_latency", 231.0)], check_results=checks())
UNMEASURED_ADVICE = make_turn(
    "Add more replicas behind the balancer.", question="How do I scale my API?",
    check_results=checks(baseline_established="fail", impact_quantified="fail",
                         regression_prevention="fail"))
DIAGNOSIS_ONLY = make_turn(
    "Measure first: profile the handler and record p95 before changing anything.",
    question="Why is my report page slow?",
    check_results=checks(impact_quantified="not_applicable"))
PROFILED_SCALE_OUT = make_turn(
    "The CPU is saturated by `render()`; profile it, then scale out.",
    question="Why is examples/orders_workload.py slow?",
    tools=[call("profile_python", script="examples/orders_workload.py")],
    measurements=[measurement("total_time", 1.2, "profile_python", "s")],
    findings=[Finding(kind="cpu_hotspot", severity="high", summary="render() 80 %")],
    check_results=checks(impact_quantified="not_applicable"))
OTHER_PERSONA = make_turn("Add an index.", persona="database-optimizer",
                          check_results=checks(impact_quantified="fail"))


def principle_rows(runs: list[CaseRun], persona: str = "performance-engineer") -> dict[str, tuple]:
    summary = summarize(log_of(runs, epochs=len(runs), persona=persona))
    return {p.name: (p.target_percent, p.applicable, p.compliant, p.rate_percent, p.met)
            for p in summary.principles}


def test_principle_compliance_on_a_mix_of_runs() -> None:
    turns = [LOAD_TESTED, UNMEASURED_ADVICE, DIAGNOSIS_ONLY, PROFILED_SCALE_OUT, OTHER_PERSONA]
    runs = [make_run(t, epoch=i) for i, t in enumerate(turns, start=1)]
    runs.append(make_run(LOAD_TESTED, epoch=6, status="error"))  # errors never count
    rows = principle_rows(runs)
    assert list(rows) == ["Baseline First", "User Impact", "Observability", "Scalability"]
    # applicable: load-tested, unmeasured advice, profiled; compliant: the two that measured
    assert rows["Baseline First"] == (95.0, 3, 2, pytest.approx(200 / 3), False)
    assert rows["User Impact"] == (92.0, 2, 1, 50.0, False)
    # monitoring always applies; the unmeasured advice lacks regression prevention
    assert rows["Observability"] == (90.0, 4, 3, 75.0, False)
    # the question about scale and the claim "scale out" apply; only the load test complies
    assert rows["Scalability"] == (88.0, 3, 1, pytest.approx(100 / 3), False)


def test_principles_met_and_not_applicable() -> None:
    rows = principle_rows([make_run(LOAD_TESTED)])
    assert all(met for *_, met in rows.values()), rows
    rows = principle_rows([make_run(DIAGNOSIS_ONLY)])
    assert rows["Baseline First"] == (95.0, 0, 0, None, None)
    assert rows["Observability"][1:] == (1, 1, 100.0, True)


def test_principle_rows_carry_the_rule_text() -> None:
    summary = summarize(log_of([make_run(LOAD_TESTED)], epochs=1))
    for row in summary.principles:
        assert row.rule == PRINCIPLE_RULES[row.name.lower()][0]
        assert "applies when" in row.rule and "compliant when" in row.rule


def test_a_principle_without_a_rule_is_reported_not_guessed() -> None:
    rows = principle_rows([make_run(OTHER_PERSONA)], persona="database-optimizer")
    assert list(rows) == ["Plan Before Change", "Fewer, Better Queries", "Indexes Have a Cost",
                          "Safe Migrations"]
    assert rows["Plan Before Change"] == (95.0, 0, 0, None, None)
    summary = summarize(log_of([make_run(OTHER_PERSONA)], epochs=1, persona="database-optimizer"))
    assert {p.rule for p in summary.principles} == {NO_RULE}


def test_baseline_first_accepts_a_plan_to_measure_but_not_a_bare_recommendation() -> None:
    recommends = {"impact_quantified": "pass", "baseline_established": "pass"}
    assert baseline_first(Evidence(question="q", answer="a", checks=recommends)) is True
    bare = {**recommends, "baseline_established": "fail"}
    assert baseline_first(Evidence(question="q", answer="a", checks=bare)) is False
    measured = Evidence(question="q", answer="a", checks=bare, measurements=[measurement("p95", 1.0)])
    assert baseline_first(measured) is True
    assert baseline_first(Evidence(question="q", answer="a", checks={"impact_quantified":
                                                                    "not_applicable"})) is None


@pytest.mark.parametrize(("question", "answer", "applies"), [
    ("Why is it slow?", "Load test the endpoint and record p95 and throughput:\n"
                        "```bash\nk6 run --vus 100 scale.js\n```", False),  # advice, and code
    ("Load test http://10.0.0.5:8000/ at 5 req/s", "Refused: 10.0.0.5 is not loopback.", False),
    ("Will it handle 10x traffic?", "", True),
    ("Can it handle 5,000 users?", "", True),
    ("What is the p95 under load?", "", True),
    ("Why is it slow?", "Then scale out horizontally.", True),
])
def test_when_scalability_applies(question: str, answer: str, applies: bool) -> None:
    verdict = scalability(Evidence(question=question, answer=answer, checks={}))
    assert verdict is (False if applies else None)
    measured = Evidence(question=question, answer=answer, checks={},
                        measurements=[measurement("p95_latency", 120.0)])
    assert scalability(measured) is True  # a load test that ran always applies and complies


def test_drafted_cases_stay_out_of_check_and_principle_rates() -> None:
    agent = make_run(make_turn(check_results=checks()), case_id="agent")
    drafted = make_run(make_turn(check_results=checks(impact_quantified="fail")),
                       case_id="drafted")
    log = log_of([agent, drafted], epochs=1)
    log.suites[0].cases[1].draft = "Just add servers."
    rates = {r.name: r for r in summarize(log).checks}
    assert rates["impact_quantified"].passed == 1 and rates["impact_quantified"].failed == 0
    assert summarize(log).case_epochs == 2  # still scored and reported as a case
