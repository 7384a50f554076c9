"""The run log and the reports: JSON round trip and refusals, JUnit XML, Markdown, HTML,
and the inspect_ai export.

Logs here are built by hand (:func:`make_log`) so these tests depend on the data
model only, not on the runner or the scorers. The HTML page is also opened in
Debian's Chromium to check that its filters and drill-down work and that it
loads nothing from outside the file.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from agent.results import CheckResult, Delegation, Timings, ToolCallRecord, TurnResult, Usage
from evals.inspect_export import export_inspect
from evals.model import (
    LOG_VERSION,
    Case,
    CaseRun,
    CaseSummary,
    CheckRate,
    ErrorInfo,
    PrincipleCompliance,
    RunConfig,
    RunLog,
    RunSummary,
    Score,
    ScorerRate,
    ScorerSpec,
    Suite,
    TurnRecord,
)
from evals.report import (
    ReportError,
    epoch_status,
    html_report,
    junit_xml,
    read_log,
    summary_markdown,
    write_log,
    write_reports,
)
from tests.conftest import require_module
from tests.test_web_page import browser, page  # noqa: F401  (fixtures: Debian Chromium)
from tools.base import Finding, Measurement

CHECKS = ["baseline_established", "impact_quantified", "monitoring_included",
          "implementation_quality", "regression_prevention"]

# ----------------------------------------------------------------------------- factory


def turn_result(answer: str = "p95 is 120 ms; baseline recorded.", *, checks: str = "pass") -> TurnResult:
    """A final turn result with one of everything a report shows."""
    return TurnResult(
        thread_id="t1", model="offline", persona="performance-engineer", answer=answer,
        checks=[CheckResult(name=n, status=checks, evidence=f"evidence for {n}",  # type: ignore[arg-type]
                            feedback="" if checks == "pass" else f"fix {n}") for n in CHECKS],
        tool_calls=[ToolCallRecord(name="load_test", ok=True, duration_ms=812.5,
                                   args={"url": "http://127.0.0.1:9/orders", "requests": 50})],
        delegations=[Delegation(to="database-optimizer", task="index orders", answer="add an index")],
        measurements=[Measurement(name="p95_latency", value=120.0, unit="ms", source="load_test",
                                  target="/orders", budget="<200", passed=True)],
        findings=[Finding(kind="missing_index", severity="high", summary="orders.customer_id has no index",
                          location="orders")],
        revisions=0, usage=Usage(llm_calls=2, input_tokens=1500, output_tokens=300),
        timings_ms=Timings(total=1000.0, nodes={"agent": 150.0, "tools": 812.5}),
    )


def score(label: str, passed: bool | None, explanation: str = "", skipped: str = "") -> Score:
    return Score(scorer=label, type=label.split(":")[0], value=1.0 if passed else 0.0, passed=passed,
                 explanation=explanation, skipped_reason=skipped)


def case_run(case_id: str = "c1", epoch: int = 1, *, suite: str = "core",
             verdicts: Sequence[bool | None] = (True,), error: ErrorInfo | None = None,
             answer: str = "p95 is 120 ms; baseline recorded.", inputs: Sequence[str] = ("profile it",),
             duration_ms: float = 1000.0, tags: Sequence[str] = ("smoke",),
             values: Sequence[float] | None = None, checks: str = "pass") -> CaseRun:
    """One case-epoch: an error run when ``error`` is given, else scored with ``verdicts``
    (True pass, False fail, None skipped), scorer ``i`` labelled ``contains:s<i>``, its
    values 1/0 unless ``values`` says otherwise; every check of the final answer has
    status ``checks``."""
    if error is not None:
        turns = [TurnRecord(input=i, error=error, duration_ms=duration_ms) for i in inputs]
        return CaseRun(suite=suite, case_id=case_id, epoch=epoch, tags=list(tags), status="error",
                       error=error, turns=turns, duration_ms=duration_ms)
    scores = [score(f"contains:s{i}", v, explanation=f"s{i} {'found' if v else 'missing'}",
                    skipped="no grader model configured" if v is None else "")
              for i, v in enumerate(verdicts)]
    if values is not None:
        for s, value in zip(scores, values, strict=True):
            s.value = value
    events = [{"type": "tool_call", "data": {"name": "load_test"}}]
    turns = [TurnRecord(input=i, result=turn_result(answer, checks=checks),
                        duration_ms=duration_ms / len(inputs), events=events) for i in inputs]
    # The shape evals.cache.message_record gives the thread's messages.
    messages = [m for n, i in enumerate(inputs) for m in (
        {"role": "user", "content": i},
        {"role": "assistant", "content": "", "tool_calls": [
            {"name": "load_test", "args": {"url": "http://127.0.0.1:9/orders"}, "id": f"call_{n}"}]},
        {"role": "tool", "content": '{"tool": "load_test", "ok": true}', "name": "load_test",
         "tool_call_id": f"call_{n}", "status": "success"},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    )]
    return CaseRun(suite=suite, case_id=case_id, epoch=epoch, tags=list(tags), status="ok", turns=turns,
                   messages=messages, thread_id=f"thread-{case_id}-{epoch}", duration_ms=duration_ms,
                   scores=scores)


def make_log(runs: Sequence[CaseRun], *, run_id: str = "run-a", model: str = "offline",
             persona: str = "performance-engineer", epochs: int = 1, seed: int = 0,
             sha: str = "abc") -> RunLog:
    """A log whose suites hold exactly the cases of ``runs``."""
    suites: dict[str, dict[str, Case]] = {}
    for r in runs:
        suites.setdefault(r.suite, {})[r.case_id] = Case(
            id=r.case_id, description=f"what {r.case_id} checks", tags=r.tags,
            input=[t.input for t in r.turns] or ["profile it"], scorers=[ScorerSpec(type="contains",
                                                                                    params={"value": "p95"})])
    return RunLog(
        run_id=run_id, created_at=1_760_000_000.0, perfagent_version="0.1.0", git_rev="803a6ce",
        config=RunConfig(model=model, persona=persona, epochs=epochs, seed=seed),
        suites=[Suite(name=name, cases=list(cases.values()), path=f"evals/suites/{name}.yaml", sha256=sha)
                for name, cases in suites.items()],
        runs=list(runs), duration_ms=sum(r.duration_ms for r in runs))


def make_summary(log: RunLog) -> RunSummary:
    """A plainly counted summary (the real one comes from evals.metrics)."""
    statuses = [epoch_status(r) for r in log.runs]
    per_case = []
    for key in dict.fromkeys((r.suite, r.case_id) for r in log.runs):
        runs = [r for r in log.runs if (r.suite, r.case_id) == key]
        mine = [epoch_status(r) for r in runs]
        p, f, e = mine.count("pass"), mine.count("fail"), mine.count("error")
        status = "error" if e else "flaky" if p and f else "fail" if f else "pass" if p else "skipped"
        per_case.append(CaseSummary(suite=key[0], case_id=key[1], tags=runs[0].tags, epochs=len(mine),
                                    passes=p, failures=f, errors=e, mean_score=p / len(mine), stderr=0.0,
                                    pass_at_k=float(p > 0), pass_hat_k=float(p == len(mine)),
                                    flaky=bool(p and f), status=status))
    passed, failed = statuses.count("pass"), statuses.count("fail")
    return RunSummary(
        cases=len(per_case), case_epochs=len(statuses), passed=passed, failed=failed,
        errors=statuses.count("error"), skipped=statuses.count("skipped"),
        pass_rate=passed / (passed + failed) if passed + failed else None, per_case=per_case,
        principles=[
            PrincipleCompliance(name="Baseline First", target_percent=95, rule="measured before advising",
                                applicable=10, compliant=10, rate_percent=100.0, met=True),
            PrincipleCompliance(name="User Impact", target_percent=92, rule="impact in user terms",
                                applicable=10, compliant=8, rate_percent=80.0, met=False),
            PrincipleCompliance(name="Scalability", target_percent=88, rule="growth considered",
                                applicable=0, compliant=0, rate_percent=None, met=None),
        ],
        checks=[CheckRate(name=n, passed=9, failed=1, not_applicable=0, rate_percent=90.0) for n in CHECKS],
        scorers=[ScorerRate(type="contains", passed=passed, failed=failed, skipped=1)],
        latency_p50_ms=950.0, latency_p95_ms=4200.0, input_tokens=15000, output_tokens=3000, llm_calls=20)


@pytest.fixture
def mixed_log() -> RunLog:
    """Two suites: passes, a failure, an error, an all-skipped case and a flaky case."""
    return make_log([
        case_run("fast", 1, answer="Done ≤ 200 ms — naïve cache removed"),
        case_run("slow_answer", 1, verdicts=[True, False], duration_ms=4000),
        case_run("broken", 1, error=ErrorInfo(code="case_timeout", message="no answer in 30 s",
                                              hint="raise the case timeout")),
        case_run("rubric", 1, verdicts=[None]),
        case_run("wobbly", 1, suite="threads", inputs=["first turn", "second turn"]),
        case_run("wobbly", 2, suite="threads", verdicts=[False], inputs=["first turn", "second turn"]),
    ], epochs=2)


# ----------------------------------------------------------------------------- the log


def test_log_round_trip_through_folder_and_file(tmp_path: Path, mixed_log: RunLog) -> None:
    path = write_log(mixed_log, tmp_path / "run" / "log.json")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("{\n  ")  # pretty-printed for diffs of a committed baseline
    assert "Done ≤ 200 ms — naïve" in text  # UTF-8 text, not \u escapes
    assert read_log(tmp_path / "run") == mixed_log
    assert read_log(path) == mixed_log
    assert not list((tmp_path / "run").glob("*.tmp"))  # the atomic write left nothing behind


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"version": LOG_VERSION + 1}, "log_version_newer", f"version {LOG_VERSION + 1}"),
    ({"format": "inspect-eval-log"}, "log_foreign_format", "not a perfagent eval log"),
    ({"version": "one"}, "log_bad_version", "no valid version"),
    ({"runs": [{"suite": "core"}]}, "log_invalid", "runs.0.case_id"),
])
def test_read_log_refuses_what_it_cannot_read(tmp_path: Path, mixed_log: RunLog, change: dict[str, Any],
                                              code: str, words: str) -> None:
    data = {**json.loads(mixed_log.model_dump_json()), **change}
    (tmp_path / "log.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ReportError) as caught:
        read_log(tmp_path)
    assert caught.value.code == code
    assert words in caught.value.message
    assert caught.value.hint


def test_read_log_names_a_missing_or_damaged_file(tmp_path: Path) -> None:
    with pytest.raises(ReportError) as caught:
        read_log(tmp_path)
    assert caught.value.code == "log_not_found" and "has no log.json" in caught.value.message
    (tmp_path / "log.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ReportError) as caught:
        read_log(tmp_path / "log.json")
    assert caught.value.code == "log_unreadable"
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ReportError) as caught:
        read_log(tmp_path / "list.json")
    assert caught.value.code == "log_foreign_format" and "'list'" in caught.value.message


def test_write_reports_writes_the_four_files(tmp_path: Path, mixed_log: RunLog) -> None:
    paths = write_reports(mixed_log, make_summary(mixed_log), tmp_path / "out")
    assert {k: p.name for k, p in paths.items()} == {
        "log": "log.json", "junit": "junit.xml", "markdown": "summary.md", "html": "report.html"}
    assert all(p.parent == tmp_path / "out" and p.stat().st_size > 0 for p in paths.values())
    assert read_log(paths["log"]) == mixed_log


# ----------------------------------------------------------------------------- JUnit

# The children a JUnit testcase / testsuite may have, in the order the common schema
# (Jenkins' junit-10.xsd) requires them.
CASE_CHILDREN = ["skipped", "error", "failure", "system-out", "system-err"]
SUITE_CHILDREN = ["properties", "testcase", "system-out", "system-err"]


def ordered(children: list[str], allowed: list[str]) -> bool:
    positions = [allowed.index(c) for c in children]
    return positions == sorted(positions)


def test_junit_counts_names_and_outcomes(mixed_log: RunLog) -> None:
    root = ET.fromstring(junit_xml(mixed_log).encode("utf-8"))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "2", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"core", "threads"}
    core = suites["core"]
    assert {k: core.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "4", "failures": "1", "errors": "1", "skipped": "1"}
    assert float(core.get("time", "")) == pytest.approx(7.0)
    props = {p.get("name"): p.get("value") for p in core.iter("property")}
    assert props["model"] == "offline" and props["seed"] == "0" and props["epochs"] == "2"
    assert props["suite_sha256"] == "abc"
    cases = {c.get("name"): c for c in core.findall("testcase")}
    assert set(cases) == {"fast[epoch 1]", "slow_answer[epoch 1]", "broken[epoch 1]", "rubric[epoch 1]"}
    assert all(c.get("classname") == "core" for c in cases.values())
    assert cases["slow_answer[epoch 1]"].get("time") == "4.000"
    failure = cases["slow_answer[epoch 1]"].find("failure")
    assert failure is not None and failure.get("message", "").startswith("1 of 2 scorers failed")
    assert "FAILED contains:s1 (contains): s1 missing" in (failure.text or "")
    error = cases["broken[epoch 1]"].find("error")
    assert error is not None and error.get("type") == "case_timeout"
    assert "hint: raise the case timeout" in (error.text or "")
    skipped = cases["rubric[epoch 1]"].find("skipped")
    assert skipped is not None and "no grader model configured" in skipped.get("message", "")
    passing = cases["fast[epoch 1]"]
    assert [c.tag for c in passing] == ["system-out"] and "naïve" in (passing[0].text or "")
    threads = {c.get("name") for c in suites["threads"].findall("testcase")}
    assert threads == {"wobbly[epoch 1]", "wobbly[epoch 2]"}


def test_junit_follows_the_common_schema(mixed_log: RunLog) -> None:
    root = ET.fromstring(junit_xml(mixed_log).encode("utf-8"))
    for suite in root.findall("testsuite"):
        assert {"name", "tests", "failures", "errors", "skipped", "time", "timestamp"} <= set(suite.keys())
        assert ordered([c.tag for c in suite], SUITE_CHILDREN)
        for case in suite.findall("testcase"):
            assert {"name", "classname", "time"} <= set(case.keys())
            assert ordered([c.tag for c in case], CASE_CHILDREN)
            assert sum(c.tag in ("skipped", "error", "failure") for c in case) <= 1
            for verdict in case:
                if verdict.tag in ("error", "failure"):
                    assert {"type", "message"} <= set(verdict.keys())


def test_junit_survives_control_characters_in_answers() -> None:
    log = make_log([case_run("ansi", verdicts=[False], answer="\x1b[31mred\x1b[0m \x00 done")])
    root = ET.fromstring(junit_xml(log).encode("utf-8"))
    out = root.find("testsuite/testcase/system-out")
    assert out is not None and out.text == "\ufffd[31mred\ufffd[0m \ufffd done"


# ----------------------------------------------------------------------------- Markdown


def test_markdown_summary_has_the_key_lines(mixed_log: RunLog) -> None:
    md = summary_markdown(mixed_log, make_summary(mixed_log))
    assert md.splitlines()[0] == "### ❌ perfagent eval: 2/4 passed (50.0 %)"
    assert "**2 failed** · **1 error** · 1 skipped" in md
    assert "model `offline` · persona `performance-engineer` · seed 0" in md
    assert "| Baseline First | 100.0 % (10/10) | 95 % | ✅ met |" in md
    assert "| User Impact | 80.0 % (8/10) | 92 % | ❌ missed |" in md
    assert "| Scalability | – (0/0) | 88 % | – |" in md
    assert "| `impact_quantified` | 90.0 % | 9 | 1 | 0 |" in md
    assert "- `core/slow_answer` (fail): contains:s1: s1 missing" in md
    assert "- `core/broken` (error): error case_timeout: no answer in 30 s" in md
    assert "- `threads/wobbly`: passed 1 of 2 epochs; contains:s0: s0 missing" in md
    assert "Latency p50 950 ms · p95 4.20 s · tokens 15,000 in / 3,000 out" in md
    assert "<details>" not in md  # short lists stay open
    assert len(md) < 3000


def test_markdown_folds_long_lists_and_neutralises_markup() -> None:
    runs = [case_run(f"bad{i}", verdicts=[False]) for i in range(8)]
    runs[0].scores[0].explanation = "expected | pipe <script>x</script>\nsecond line"
    log = make_log(runs)
    md = summary_markdown(log, make_summary(log))
    assert "<details><summary><b>Failing cases (8)</b></summary>" in md
    assert "expected \\| pipe &lt;script&gt;x&lt;/script&gt; second line" in md
    assert "<script>" not in md


# ----------------------------------------------------------------------------- HTML

VOID = {"meta", "input", "br", "img", "hr", "link"}


class Structure(HTMLParser):
    """Collects the page's tags and fails on an end tag that does not close the open one."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)


def hostile_log() -> RunLog:
    answer = 'Fixed.<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    run = case_run("xss", verdicts=[False], answer=answer, inputs=["profile <b>this</b>", "and again"])
    run.scores[0].explanation = "<script>document.cookie</script> missing"
    return make_log([run, case_run("ok_case", tags=["db", "smoke"])])


def test_html_escapes_recorded_text() -> None:
    log = hostile_log()
    page_html = html_report(log, make_summary(log))
    parser = Structure()
    parser.feed(page_html)
    parser.close()
    assert parser.stack == []
    assert len(parser.scripts) == 1 and "alert" not in parser.scripts[0]  # only the page's own script
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page_html
    assert "&lt;img src=x onerror=alert(1)&gt;" in page_html
    assert "&lt;script&gt;document.cookie&lt;/script&gt; missing" in page_html
    assert "profile &lt;b&gt;this&lt;/b&gt;" in page_html
    assert not [t for t, _ in parser.tags if t == "img"]


def test_html_is_self_contained_with_charts_and_drill_down(mixed_log: RunLog) -> None:
    page_html = html_report(mixed_log, make_summary(mixed_log))
    parser = Structure()
    parser.feed(page_html)
    tags = parser.tags
    # Nothing loaded from elsewhere: no src/href attributes, no CSS imports or url().
    assert not [a for _, attrs in tags for a in attrs if a in ("src", "href")]
    assert "@import" not in page_html and "url(" not in page_html
    assert "prefers-color-scheme:dark" in page_html
    assert [c.split("<")[0] for c in page_html.split("<figcaption>")[1:]] == [
        "Principle compliance (line: target)", "Pre-response checks: pass rate in final answers",
        "Scorers: passed / failed / skipped", "Case-epoch durations (seconds; colour: outcome)"]
    assert sum(t == "svg" for t, _ in tags) == 4
    assert sum(t == "line" and a.get("class") == "target" for t, a in tags) == 3  # one per principle
    cases = {a["data-search"].split()[1]: a for t, a in tags if t == "tbody" and a.get("class") == "case"}
    assert {k: v["data-status"] for k, v in cases.items()} == {
        "fast": "pass", "slow_answer": "fail", "broken": "error", "rubric": "skipped", "wobbly": "flaky"}
    # The drill-down holds each epoch's turns with everything recorded.
    for needle in ["Epoch 2", "first turn", "second turn", "http://127.0.0.1:9/orders", "812 ms",
                   "evidence for monitoring_included", "p95_latency", "missing_index", "orders.customer_id",
                   "database-optimizer", "s1 missing", "no grader model configured", "error case_timeout",
                   "hint: raise the case timeout", "Thread messages (8)", "pass@k", "Done ≤ 200 ms",
                   "tool (load_test) · answers call_1 · success", "load_test({&quot;url&quot;:"]:
        assert needle in page_html, needle


def test_html_filters_and_expands_in_a_browser(tmp_path: Path, page: Any) -> None:  # noqa: F811
    log = hostile_log()
    path = write_reports(log, make_summary(log), tmp_path)["html"]
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    assert requests == [path.as_uri()]  # the page fetched nothing else
    visible = "() => [...document.querySelectorAll('tbody.case')].filter(b => !b.hidden).length"
    assert page.evaluate(visible) == 2
    page.select_option("#status", "fail")
    assert page.evaluate(visible) == 1 and page.text_content("#shown") == "1"
    page.select_option("#status", "")
    page.select_option("#tag", "db")
    assert page.evaluate(visible) == 1
    page.select_option("#tag", "")
    page.fill("#q", "XSS")
    assert page.evaluate(visible) == 1
    page.fill("#q", "")
    detail = page.locator("tbody.case").first.locator("tr.detail")
    assert not detail.is_visible()
    page.locator("tr.head").first.click()
    assert detail.is_visible()
    assert 'Fixed.<script>alert("x")</script>' in detail.locator("pre").nth(1).inner_text()
    page.locator("tr.head").first.click()
    assert not detail.is_visible()
    page.click("#expand")
    assert page.locator("tr.detail:visible").count() == 2


def test_html_reduces_a_case_the_summary_does_not_list(mixed_log: RunLog) -> None:
    """A summary made from another log lacks cases: the page reduces their epochs itself."""
    summary = make_summary(mixed_log)
    summary.per_case = []
    page_html = html_report(mixed_log, summary)
    assert 'data-status="flaky"' in page_html and 'data-status="error"' in page_html


# ----------------------------------------------------------------------------- inspect export


def test_inspect_export_structure(tmp_path: Path, mixed_log: RunLog) -> None:
    """The fields inspect_ai's EvalLog (log format 2) reads, checked without inspect_ai."""
    path = export_inspect(mixed_log, tmp_path / "inspect" / "run.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["version"], data["status"]) == (2, "success")
    assert {"eval", "plan", "results", "stats", "samples"} <= set(data)
    spec = data["eval"]
    assert (spec["task"], spec["model"], spec["run_id"]) == ("perfagent_eval", "offline", "run-a")
    assert spec["created"] == "2025-10-09T08:53:20+00:00"
    assert spec["dataset"]["samples"] == 5 and "threads/wobbly" in spec["dataset"]["sample_ids"]
    assert spec["config"]["epochs"] == 2 and spec["metadata"]["seed"] == 0
    score = data["results"]["scores"][0]
    assert (score["name"], score["scored_samples"], score["unscored_samples"]) == ("perfagent", 4, 2)
    assert score["metrics"]["accuracy"]["value"] == pytest.approx(0.5)
    samples = {(s["id"], s["epoch"]): s for s in data["samples"]}
    assert len(samples) == 6
    fast = samples[("core/fast", 1)]
    assert fast["input"] == "profile it" and fast["target"] == ""
    assert [m["role"] for m in fast["messages"]] == ["user", "assistant", "tool", "assistant"]
    call = fast["messages"][1]["tool_calls"][0]
    assert call == {"id": "call_0", "function": "load_test", "type": "function",
                    "arguments": {"url": "http://127.0.0.1:9/orders"}}
    assert fast["messages"][2]["tool_call_id"] == "call_0" and "error" not in fast["messages"][2]
    assert fast["messages"][3]["content"] == "Done ≤ 200 ms — naïve cache removed"  # text blocks joined
    assert fast["output"]["completion"] == "Done ≤ 200 ms — naïve cache removed"
    assert fast["scores"]["perfagent"]["value"] == "C"
    assert samples[("core/slow_answer", 1)]["scores"]["perfagent"]["value"] == "I"
    assert samples[("core/rubric", 1)]["scores"]["perfagent"]["value"] == "N"
    broken = samples[("core/broken", 1)]
    assert broken["scores"] is None and broken["messages"] == [
        {"role": "user", "content": "profile it", "source": "input"}]
    assert broken["error"]["message"] == "case_timeout: no answer in 30 s (raise the case timeout)"
    wobbly = samples[("threads/wobbly", 2)]
    assert wobbly["input"] == [{"role": "user", "content": "first turn"},
                               {"role": "user", "content": "second turn"}]
    assert [m["content"] for m in wobbly["messages"] if m["role"] == "user"] == ["first turn", "second turn"]
    assert wobbly["model_usage"]["offline"]["total_tokens"] == 2 * 1800


def test_inspect_export_wants_a_json_name(tmp_path: Path, mixed_log: RunLog) -> None:
    with pytest.raises(ReportError) as caught:
        export_inspect(mixed_log, tmp_path / "run.eval")
    assert caught.value.code == "export_not_json" and "run.json" in caught.value.hint


def test_inspect_export_loads_in_inspect_ai(tmp_path: Path, mixed_log: RunLog) -> None:
    """inspect_ai's own reader accepts the file (the ``inspect`` extra, part of dev)."""
    require_module("inspect_ai")
    from inspect_ai.log import read_eval_log, write_eval_log

    path = export_inspect(mixed_log, tmp_path / "run.json")
    log = read_eval_log(str(path))
    assert log.status == "success" and log.eval.model == "offline" and log.samples is not None
    assert len(log.samples) == 6
    assert log.results is not None and log.results.scores[0].metrics["accuracy"].value == pytest.approx(0.5)
    fast = next(s for s in log.samples if s.id == "core/fast")
    assert fast.output.completion.startswith("Done ≤ 200 ms")
    assert fast.scores is not None and fast.scores["perfagent"].value == "C"
    broken = next(s for s in log.samples if s.id == "core/broken")
    assert broken.error is not None and broken.error.message.startswith("case_timeout")
    # And inspect can write it back out in its own binary format.
    write_eval_log(log, str(tmp_path / "run.eval"))
    assert read_eval_log(str(tmp_path / "run.eval")).eval.run_id == "run-a"
