"""Every scorer passing and failing on hand-built runs, with its explanation checked;
spec validation at load time; the crash-safe wrapper; llm_rubric with a scripted grader.

The factory (:func:`make_turn`, :func:`make_run`) builds CaseRun objects the way
the runner records them, so these tests need only the data model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from agent.persona import CHECK_IDS
from agent.results import CheckResult, Delegation, Timings, ToolCallRecord, TurnResult, Usage
from evals.model import Case, CaseRun, ErrorInfo, Score, ScorerSpec, TurnRecord
from evals.scorers import (
    NO_GRADER,
    SCORERS,
    Scorer,
    ScorerSpecError,
    TextParams,
    ToolUsedParams,
    label_for,
    params_of,
    parse_verdict,
    score_case,
    scorer_names,
    validate_spec,
)
from tests.scripted import ScriptedModel
from tools.base import Finding, Measurement

# ----------------------------------------------------------------------------- factory


def call(name: str, ok: bool = True, **args: Any) -> ToolCallRecord:
    return ToolCallRecord(name=name, args=args, ok=ok, duration_ms=5.0, error=None if ok else "boom")


def checks(**statuses: str) -> list[CheckResult]:
    """The five checks, passing unless given another status."""
    return [CheckResult(name=n, status=statuses.get(n, "pass"),  # type: ignore[arg-type]
                        evidence=f"{n} evidence", feedback="" if statuses.get(n, "pass") == "pass"
                        else f"fix {n}") for n in CHECK_IDS]


def measurement(name: str, value: float, source: str = "load_test", unit: str = "ms") -> Measurement:
    return Measurement(name=name, value=value, unit=unit, source=source, target="http://127.0.0.1:1/")


def agent_events(steps: int, depth: int = 0) -> list[dict[str, Any]]:
    """The node_start events of a turn with ``steps`` model calls (plus a tools node each)."""
    events = [{"type": "node_start", "data": {"node": "prepare", "depth": 0}}]
    for _ in range(steps):
        events += [{"type": "node_start", "data": {"node": "agent", "depth": depth}},
                   {"type": "node_start", "data": {"node": "tools", "depth": depth}}]
    return events


def make_turn(answer: str = "p95 latency is 120 ms.", *, question: str = "How fast is it?",
              tools: Sequence[ToolCallRecord] = (), delegations: Sequence[str] = (),
              check_results: list[CheckResult] | None = None,
              measurements: Sequence[Measurement] = (), findings: Sequence[Finding] = (),
              usage: Usage | None = None, model: str = "offline",
              persona: str = "performance-engineer", events: list[dict[str, Any]] | None = None,
              duration_ms: float = 50.0) -> TurnRecord:
    result = TurnResult(
        thread_id="t1", model=model, persona=persona, answer=answer,
        checks=checks() if check_results is None else check_results,
        tool_calls=list(tools),
        delegations=[Delegation(to=d, task="look", answer="done") for d in delegations],
        measurements=list(measurements), findings=list(findings), revisions=0,
        usage=usage or Usage(), timings_ms=Timings(total=duration_ms))
    return TurnRecord(input=question, result=result, events=events or [], duration_ms=duration_ms)


def make_run(*turns: TurnRecord, status: str = "ok", epoch: int = 1, case_id: str = "c1",
             suite: str = "s", scores: Sequence[Score] = (), duration_ms: float | None = None,
             tags: Sequence[str] = ()) -> CaseRun:
    turns = turns or (make_turn(),)
    error = ErrorInfo(code="timeout", message="case timed out") if status == "error" else None
    return CaseRun(suite=suite, case_id=case_id, epoch=epoch, tags=list(tags), status=status,  # type: ignore[arg-type]
                   error=error, turns=list(turns), scores=list(scores),
                   duration_ms=sum(t.duration_ms for t in turns) if duration_ms is None else duration_ms)


def make_case(*specs: ScorerSpec, case_id: str = "c1") -> Case:
    return Case(id=case_id, input=["How fast is it?"], scorers=list(specs))


def spec(scorer_type: str, /, label: str = "", **params: Any) -> ScorerSpec:
    return ScorerSpec(type=scorer_type, params=params, label=label)


def score(run: CaseRun, scorer_type: str, /, **params: Any) -> Score:
    """One scorer over one run (no grader)."""
    (result,) = asyncio.run(score_case(make_case(spec(scorer_type, **params)), run))
    return result


def passes(result: Score, *fragments: str) -> None:
    assert result.passed is True, result.explanation
    for fragment in fragments:
        assert fragment in result.explanation, (fragment, result.explanation)


def fails(result: Score, *fragments: str) -> None:
    assert result.passed is False, result.explanation
    assert result.value == 0.0
    for fragment in fragments:
        assert fragment in result.explanation, (fragment, result.explanation)


ANSWER = "Baseline: p95 latency is 231 ms at 10 req/s. Add an index on orders(customer_id)."

# ----------------------------------------------------------------------------- text


def test_contains_and_icontains() -> None:
    run = make_run(make_turn(ANSWER))
    passes(score(run, "contains", value="p95"), "found 'p95' in the answer", "[p95]")
    fails(score(run, "contains", value="P95"), "expected 'P95' in the answer; not found",
          "starts \"Baseline: p95")
    passes(score(run, "icontains", value="P95 LATENCY"), "(any case)", "[p95 latency]")
    fails(score(run, "icontains", value="p99"), "expected 'p99' (any case) in the answer")


def test_regex() -> None:
    run = make_run(make_turn(ANSWER))
    passes(score(run, "regex", value=r"p95 latency is \d+ ms"), r"/p95 latency is \d+ ms/",
           "[p95 latency is 231 ms]")
    fails(score(run, "regex", value=r"p99 \d+"), r"expected /p99 \d+/ in the answer; not found")


def test_negated_text_scorers() -> None:
    run = make_run(make_turn(ANSWER))
    passes(score(run, "not_contains", value="guess"), "'guess' absent from the answer, as expected")
    fails(score(run, "not_contains", value="index"), "expected no 'index' in the answer; found",
          "[index]")
    fails(score(run, "not_icontains", value="BASELINE"), "[Baseline]")
    passes(score(run, "not_icontains", value="TODO"))
    fails(score(run, "not_regex", value=r"\d+ ms"), "[231 ms]")
    passes(score(run, "not_regex", value=r"\bN\+1\b"))


def test_text_scope_by_turn() -> None:
    run = make_run(make_turn("first: measured p95", question="one"),
                   make_turn("second: no numbers", question="two"))
    fails(score(run, "contains", value="p95"), "in the final answer; not found")
    passes(score(run, "contains", value="p95", turn=1), "in turn 1's answer")
    fails(score(run, "contains", value="p95", turn="all"), "all 2 answers; not found in turn 2")
    passes(score(run, "contains", value=":", turn="all"))
    fails(score(run, "not_contains", value="numbers", turn="all"), "found in turn 2")
    fails(score(run, "contains", value="p95", turn=3), "turn 3 does not exist: the case ran 2 turn(s)")


def test_json_schema() -> None:
    schema = {"type": "object", "required": ["p95_ms"],
              "properties": {"p95_ms": {"type": "number", "maximum": 200}}}
    passes(score(make_run(make_turn('{"p95_ms": 120}')), "json_schema", schema=schema),
           "valid against the schema")
    fenced = "Here it is:\n```json\n{\"p95_ms\": 150}\n```\nDone."
    passes(score(make_run(make_turn(fenced)), "json_schema", schema=schema))
    fails(score(make_run(make_turn('{"p95_ms": 350}')), "json_schema", schema=schema),
          "none valid: at p95_ms: 350 is greater than the maximum of 200")
    fails(score(make_run(make_turn("no json here")), "json_schema", schema=schema),
          "neither the whole answer nor a ```json block parses")
    with pytest.raises(ScorerSpecError, match="scorer 'json_schema': param 'schema': not a valid JSON"):
        validate_spec(spec("json_schema", schema={"type": "no-such-type"}))


# ----------------------------------------------------------------------------- trajectory


def test_tool_used() -> None:
    run = make_run(make_turn(tools=[call("profile_python", script="a.py")]))
    fails(score(run, "tool_used", name="load_test"),
          "load_test: expected >= 1 call(s) in the run, saw 0 (calls: profile_python)")
    passes(score(run, "tool_used", name="profile_python"), "saw 1")
    twice = make_run(make_turn(tools=[call("load_test"), call("load_test", ok=False)]))
    fails(score(twice, "tool_used", name="load_test", max=1),
          "expected exactly 1 call(s)", "saw 2 (1 failed)")
    passes(score(twice, "tool_used", name="load_test", min=2, max=3), "between 2 and 3")


def test_tool_not_used() -> None:
    run = make_run(make_turn(tools=[call("load_test"), call("check_budgets")]))
    passes(score(run, "tool_not_used", name="web_vitals"), "saw 0")
    fails(score(run, "tool_not_used", name="load_test"),
          "load_test: expected no call in the run, saw 1 (calls: load_test, check_budgets)")


def test_trajectory_spans_turns_unless_scoped() -> None:
    run = make_run(make_turn(tools=[call("load_test")]), make_turn(tools=[call("check_budgets")]))
    passes(score(run, "tool_used", name="load_test"), "in all 2 turns")
    fails(score(run, "tool_used", name="load_test", turn=2), "in turn 2, saw 0 (calls: check_budgets)")
    passes(score(run, "tool_sequence", sequence=["load_test", "check_budgets"]))


def test_tool_sequence_modes() -> None:
    run = make_run(make_turn(tools=[call("load_test"), call("profile_python"), call("check_budgets")]))
    seen = "saw [load_test, profile_python, check_budgets]"
    passes(score(run, "tool_sequence", sequence=["load_test", "profile_python", "check_budgets"]), seen)
    fails(score(run, "tool_sequence", sequence=["load_test", "check_budgets"]),
          "expected strict sequence [load_test, check_budgets], " + seen)
    passes(score(run, "tool_sequence", sequence=["load_test", "check_budgets"], mode="subset"))
    fails(score(run, "tool_sequence", sequence=["check_budgets", "load_test"], mode="subset"),
          "found [check_budgets] in order, then no load_test")
    passes(score(run, "tool_sequence", sequence=["check_budgets", "profile_python", "load_test"],
                 mode="unordered"))
    fails(score(run, "tool_sequence", sequence=["load_test", "load_test", "check_budgets"],
                mode="unordered"), "missing: load_test; extra: profile_python")
    with pytest.raises(ScorerSpecError, match="param 'mode'"):
        validate_spec(spec("tool_sequence", sequence=["a"], mode="sorted"))


def test_tool_args_match() -> None:
    run = make_run(make_turn(tools=[
        call("load_test", url="http://127.0.0.1:8000/orders", rate=20, options={"method": "GET"}),
        call("load_test", url="http://127.0.0.1:8000/users", rate=50, options={"method": "POST"}),
    ]))
    passes(score(run, "tool_args_match", name="load_test", args={"rate": 50}), "call 2 of 2")
    passes(score(run, "tool_args_match", name="load_test", args={"url": "re:/orders$", "rate": 20}),
           "call 1 of 2")
    passes(score(run, "tool_args_match", name="load_test", args={"options": {"method": "POST"}}))
    fails(score(run, "tool_args_match", name="load_test", args={"options": {"method": "PUT"}}),
          "call 1: options.method='GET', expected 'PUT'", "call 2: options.method='POST'")
    fails(score(run, "tool_args_match", name="load_test", args={"url": "re:/items"}),
          "call 1: url='http://127.0.0.1:8000/orders' does not match //items/")
    fails(score(run, "tool_args_match", name="load_test", args={"duration": "30s"}),
          "call 1: duration missing")
    fails(score(run, "tool_args_match", name="web_vitals", args={"url": "x"}),
          "no call of web_vitals in the run (calls: load_test, load_test)")
    with pytest.raises(ScorerSpecError, match=r"param 'args'.*not a valid regular expression"):
        validate_spec(spec("tool_args_match", name="load_test", args={"nested": {"url": "re:(unclosed"}}))


def test_delegated_to() -> None:
    run = make_run(make_turn(delegations=["database-optimizer"]))
    passes(score(run, "delegated_to", target="database-optimizer"), "delegated to database-optimizer")
    fails(score(run, "delegated_to", target="security-auditor"),
          "expected a delegation to security-auditor in the run, saw database-optimizer")
    failed_call = make_run(make_turn(tools=[call("delegate", ok=False, to="security-auditor", task="x")]))
    fails(score(failed_call, "delegated_to", target="security-auditor"),
          "saw none; a delegate call to it failed: boom")


def test_max_steps() -> None:
    run = make_run(make_turn(events=agent_events(2) + agent_events(3, depth=1)),
                   make_turn(events=agent_events(4)))
    passes(score(run, "max_steps", max=4), "the most was 4 in turn 2 (turn 1: 2, turn 2: 4)")
    fails(score(run, "max_steps", max=3), "expected <= 3 model call(s) per turn, the most was 4 in turn 2")
    passes(score(run, "max_steps", max=2, turn=1))
    by_usage = make_run(make_turn(usage=Usage(llm_calls=5, input_tokens=10, output_tokens=5)))
    fails(score(by_usage, "max_steps", max=3), "the most was 5")
    unknown = score(make_run(make_turn()), "max_steps", max=3)
    assert unknown.passed is None and "no step data for turn 1" in unknown.skipped_reason


# ----------------------------------------------------------------------------- checks, evidence


def test_checks_pass() -> None:
    good = make_run(make_turn(check_results=checks(impact_quantified="not_applicable")))
    passes(score(good, "checks_pass"), "5 check(s) pass in the answer (not applicable: impact_quantified)")
    bad = make_run(make_turn(check_results=checks(monitoring_included="fail")))
    fails(score(bad, "checks_pass"), "turn 1: monitoring_included failed (fix monitoring_included)")
    passes(score(bad, "checks_pass", checks=["baseline_established", "impact_quantified"]), "2 check(s)")
    passes(score(bad, "checks_pass", value="regression_prevention"), "1 check(s)")  # the shorthand
    missing = make_run(make_turn(check_results=checks()[:2]))
    fails(score(missing, "checks_pass"), "monitoring_included not recorded")
    with pytest.raises(ScorerSpecError,
                       match="scorer 'checks_pass': param 'checks': unknown check 'baseline'"):
        validate_spec(spec("checks_pass", checks=["baseline"]))


def test_check() -> None:
    run = make_run(make_turn(check_results=checks(impact_quantified="fail")))
    passes(score(run, "check", name="impact_quantified", status="fail"),
           "impact_quantified = fail as expected", "fix impact_quantified")
    fails(score(run, "check", name="impact_quantified"),
          "expected impact_quantified = pass, saw turn 1: fail (fix impact_quantified)")
    passes(score(run, "check", value="baseline_established"))
    with pytest.raises(ScorerSpecError, match="param 'status'"):
        validate_spec(spec("check", name="impact_quantified", status="passed"))


def test_finding() -> None:
    found = Finding(kind="missing_index", severity="high", summary="full scan of orders",
                    location="orders")
    run = make_run(make_turn(findings=[found]))
    passes(score(run, "finding", kind="missing_index"), "found missing_index at orders: full scan")
    passes(score(run, "finding", kind="missing_index", severity="high"))
    fails(score(run, "finding", kind="missing_index", severity="critical"),
          "expected a finding missing_index (critical) in the run, saw missing_index (high)")
    fails(score(run, "finding", kind="n_plus_one"), "saw missing_index (high)")


def test_measurement() -> None:
    run = make_run(make_turn(measurements=[measurement("p95_latency", 231.4),
                                           measurement("cpu_percent", 40, "system_snapshot", "%")]))
    passes(score(run, "measurement", name="p95_latency", min=100, max=300),
           "expected p95_latency in [100, 300], saw 231.4 ms (load_test, http://127.0.0.1:1/)")
    fails(score(run, "measurement", name="p95_latency", max=200), "expected p95_latency <= 200, saw 231.4")
    passes(score(run, "measurement", name="p95_latency", source="load_test", min=200))
    fails(score(run, "measurement", name="p95_latency", source="analyze_traces"),
          "not measured in the run (measured: cpu_percent (system_snapshot), p95_latency (load_test))")
    passes(score(run, "measurement", value="cpu_percent"), "present")
    with pytest.raises(ScorerSpecError, match="max \\(1\\) is below min \\(2\\)"):
        validate_spec(spec("measurement", name="x", min=2, max=1))


# ----------------------------------------------------------------------------- latency, tokens, cost


def test_latency() -> None:
    run = make_run(make_turn(duration_ms=800), make_turn(duration_ms=700))
    passes(score(run, "latency", max_ms=2000), "case took 1,500 ms over 2 turn(s), max 2,000 ms")
    fails(score(run, "latency", max_ms=1000), "case took 1,500 ms")
    unknown = score(make_run(make_turn(duration_ms=0)), "latency", max_ms=10)
    assert unknown.passed is None and unknown.skipped_reason == "the run recorded no duration"


def paid_turn(input_tokens: int, output_tokens: int, cache_read: int = 0,
              model: str = "anthropic:claude-x") -> TurnRecord:
    return make_turn(model=model, usage=Usage(llm_calls=1, input_tokens=input_tokens,
                                              output_tokens=output_tokens, cache_read_tokens=cache_read))


def test_tokens() -> None:
    run = make_run(paid_turn(1000, 200), paid_turn(500, 100))
    passes(score(run, "tokens", max=2000), "used 1,800 tokens (1,500 in + 300 out), max 2,000")
    fails(score(run, "tokens", max=1000), "used 1,800 tokens")
    passes(score(make_run(), "tokens", max=0), "the offline engine reports no usage")


def test_cost() -> None:
    prices = {"anthropic:claude-x": {"input": 3.0, "output": 15.0}}
    run = make_run(paid_turn(1_000_000, 100_000))  # $3 + $1.5
    passes(score(run, "cost", max_usd=5, prices=prices), "cost $4.5000 (anthropic:claude-x $4.5000)")
    fails(score(run, "cost", max_usd=4, prices=prices), "cost $4.5000")
    # a bare model name prices the spec too; cache reads at their own price
    cached = make_run(paid_turn(1_000_000, 0, cache_read=800_000))
    passes(score(cached, "cost", max_usd=1, prices={"claude-x": {"input": 3, "output": 15,
                                                                  "cache_read": 0.3}}),
           "cost $0.8400")  # 200k * $3 + 800k * $0.30
    unpriced = score(run, "cost", max_usd=100)
    assert unpriced.passed is None
    assert "no price for model 'anthropic:claude-x'" in unpriced.skipped_reason
    passes(score(make_run(), "cost", max_usd=0), "cost $0.0000 (no billed tokens)")
    with pytest.raises(ScorerSpecError, match=r"param 'prices\.m\.output': Field required"):
        validate_spec(spec("cost", max_usd=1, prices={"m": {"input": 1}}))


# ----------------------------------------------------------------------------- llm_rubric


RUBRIC = "The answer cites the measured p95 and recommends an index."


def grade(reply: str, run: CaseRun | None = None) -> tuple[Score, ScriptedModel]:
    grader = ScriptedModel([AIMessage(content=reply)], spec="scripted:grader")
    run = run or make_run(make_turn(ANSWER, question="Why is /orders slow?"))
    (result,) = asyncio.run(score_case(make_case(spec("llm_rubric", rubric=RUBRIC)), run, grader=grader))
    return result, grader


def test_llm_rubric_pass_with_prompt() -> None:
    result, grader = grade('{"pass": true, "score": 0.9, "reason": "cites 231 ms and the index"}')
    passes(result, "grader scripted:grader: pass (0.9): cites 231 ms and the index")
    assert result.value == 0.9
    (request,) = grader.requests
    prompt = str(request.messages[0].content)
    assert RUBRIC in prompt and ANSWER in prompt and "Why is /orders slow?" in prompt
    assert not request.tools and "JSON" in request.system


def test_llm_rubric_fail_fenced_and_amid_prose() -> None:
    result, _ = grade('Verdict:\n```json\n{"pass": false, "score": 0.2, "reason": "no index"}\n```')
    assert result.passed is False and result.value == 0.2
    assert "fail (0.2): no index" in result.explanation


def test_llm_rubric_garbage_is_a_failure() -> None:
    result, _ = grade("I think it is fine.")
    fails(result, "gave no usable verdict (no JSON object in the reply)", "I think it is fine.")
    result, _ = grade('{"verdict": "good"}')
    fails(result, "a JSON object that is not a verdict: pass: Field required")
    result, _ = grade('{"pass": true, "score": 7}')
    fails(result, "score: Input should be less than or equal to 1")


def test_llm_rubric_without_grader_is_skipped() -> None:
    (result,) = asyncio.run(score_case(make_case(spec("llm_rubric", rubric=RUBRIC)), make_run()))
    assert result.passed is None
    assert result.skipped_reason == NO_GRADER == "no grader model configured (--grader-model)"


def test_parse_verdict_takes_first_verdict_object() -> None:
    verdict = parse_verdict('notes {"x": 1} then {"pass": false, "reason": "r"}')
    assert verdict.passed is False and verdict.score is None and verdict.reason == "r"


# ----------------------------------------------------------------------------- specs and labels


def test_registry_has_every_contract_type() -> None:
    assert set(scorer_names()) == {
        "contains", "icontains", "regex", "not_contains", "not_icontains", "not_regex", "json_schema",
        "tool_used", "tool_not_used", "tool_sequence", "tool_args_match", "delegated_to", "max_steps",
        "checks_pass", "check", "finding", "measurement", "latency", "tokens", "cost", "llm_rubric"}


@pytest.mark.parametrize(("bad", "message"), [
    (spec("tool_usd", name="x"), "unknown scorer type 'tool_usd'; did you mean 'tool_used'?"),
    (spec("contains", value="x", valu="y"), "scorer 'contains': param 'valu': unknown parameter"),
    (spec("contains"), "scorer 'contains': param 'value': Field required"),
    (spec("tool_used", name="load_test", min=-1), "scorer 'tool_used': param 'min': Input should be"),
    (spec("tool_used", name="load_test", min=3, max=1), "max (1) is below min (3)"),
    (spec("regex", value="(p95"), "param 'value': '(p95' is not a valid regular expression"),
    (spec("latency", max_ms="soon"), "scorer 'latency': param 'max_ms'"),
    (spec("max_steps", max=0), "scorer 'max_steps': param 'max'"),
    (spec("contains", value="x", turn=0), "scorer 'contains': param 'turn': 0 is not a turn"),
])
def test_validate_spec_names_scorer_and_param(bad: ScorerSpec, message: str) -> None:
    with pytest.raises(ScorerSpecError) as caught:
        validate_spec(bad)
    assert message in str(caught.value)
    assert caught.value.scorer == bad.type


def test_shorthand_value_fills_the_main_param() -> None:
    assert params_of(spec("tool_used", value="load_test")) == ToolUsedParams(name="load_test", min=1)
    validate_spec(spec("delegated_to", value="database-optimizer"))
    validate_spec(spec("latency", value=1000))
    assert label_for(spec("tool_used", value="load_test")) == "tool_used:load_test>=1"


@pytest.mark.parametrize(("given", "label"), [
    (spec("contains", value="p95"), "contains:p95"),
    (spec("not_regex", value=r"\bguess", turn="all"), r"not_regex:\bguess@turnall"),
    (spec("tool_used", name="load_test"), "tool_used:load_test>=1"),
    (spec("tool_used", name="load_test", min=0, max=2), "tool_used:load_test>=0<=2"),
    (spec("tool_sequence", sequence=["a", "b"], mode="subset"), "tool_sequence:subset:a>b"),
    (spec("tool_args_match", name="load_test", args={"url": "x", "rate": 1}),
     "tool_args_match:load_test(url,rate)"),
    (spec("checks_pass"), "checks_pass"),
    (spec("checks_pass", checks=["impact_quantified"], turn=2), "checks_pass:impact_quantified@turn2"),
    (spec("check", name="impact_quantified", status="fail"), "check:impact_quantified=fail"),
    (spec("measurement", name="p95_latency", max=200), "measurement:p95_latency<=200"),
    (spec("cost", max_usd=0.05), "cost<=$0.05"),
    (spec("llm_rubric", rubric="x" * 60), "llm_rubric:" + "x" * 39 + "…"),
    (spec("contains", label="mine", value="p95"), "mine"),
])
def test_default_labels(given: ScorerSpec, label: str) -> None:
    assert label_for(given) == label
    if given.type != "llm_rubric":
        (result,) = asyncio.run(score_case(make_case(given), make_run()))
        assert result.scorer == label and result.type == given.type


# ----------------------------------------------------------------------------- score_case


def test_error_run_gets_no_scores() -> None:
    case = make_case(spec("contains", value="p95"), spec("tool_used", name="load_test"))
    assert asyncio.run(score_case(case, make_run(status="error"))) == []


def test_scores_follow_the_case_order_and_a_crash_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(params: TextParams, run: CaseRun) -> Score:
        raise KeyError("answer")

    monkeypatch.setitem(SCORERS, "explode", Scorer("explode", TextParams, lambda p: "explode", explode))
    case = make_case(spec("contains", value="p95"), spec("explode", value="x"),
                     spec("tool_used", name="load_test"))
    results = asyncio.run(score_case(case, make_run(make_turn(ANSWER))))
    assert [r.type for r in results] == ["contains", "explode", "tool_used"]
    assert results[0].passed is True and results[2].passed is False
    crashed = results[1]
    assert crashed.passed is False and crashed.value == 0.0
    assert crashed.explanation == "scorer crashed: KeyError: 'answer'"


def test_an_invalid_spec_at_scoring_time_is_a_failed_score() -> None:
    """A saved run re-scored against an edited suite: the bad spec fails, the others score."""
    case = make_case(spec("contains", value="p95"), spec("tool_usd", name="load_test"))
    first, second = asyncio.run(score_case(case, make_run(make_turn(ANSWER))))
    assert first.passed is True
    assert second.passed is False and second.scorer == "tool_usd"
    assert second.explanation.startswith("invalid scorer: unknown scorer type 'tool_usd'")


def test_a_turn_without_result_fails_the_scorers_that_need_it() -> None:
    run = make_run(make_turn(), TurnRecord(input="second"))
    fails(score(run, "contains", value="p95"), "turn 2 recorded no result")


# ----------------------------------------------------------------------------- a real recorded turn


@pytest.mark.slow  # builds the playbook index on a cold embedding cache: up to a minute
async def test_scorers_read_a_real_offline_turn_as_the_runner_records_it() -> None:
    """The offline engine profiles a script for real; the events are kept the way the runner
    keeps them (every event but text deltas, as JSON), and the scorers read that record."""
    from agent.context import Settings
    from agent.run import stream_turn

    question = "profile examples/orders_workload.py"
    record = TurnRecord(input=question)
    async for event in stream_turn(question, settings=Settings(model="offline")):
        if event.type == "final":
            record.result = TurnResult.model_validate(event.data)
        elif event.type != "text_delta":
            record.events.append(event.model_dump(mode="json"))
    assert record.result is not None, record.events[-1]
    run = make_run(record)
    # every model call but the last asks for tools, and each revision adds one more
    tool_rounds = sum(e["type"] == "node_start" and e["data"]["node"] == "tools" for e in record.events)
    calls = tool_rounds + record.result.revisions + 1
    case = make_case(spec("tool_used", name="profile_python"), spec("tool_not_used", name="load_test"),
                     spec("max_steps", max=calls), spec("max_steps", max=calls - 1),
                     spec("measurement", name="wall_time", source="profile_python", min=0),
                     spec("contains", value="orders_workload"), spec("llm_rubric", rubric="good"))
    used, not_used, steps, too_few, measured, mentions, rubric = await score_case(case, run)
    assert used.passed and not_used.passed and mentions.passed, (used, not_used, mentions)
    assert steps.passed and f"the most was {calls} in turn 1" in steps.explanation
    assert too_few.passed is False
    assert measured.passed, measured.explanation
    assert rubric.passed is None and rubric.skipped_reason == NO_GRADER
