"""check_budgets: budget files, unit conversion, tolerance, scoping and the verdict rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.base import Measurement, ToolError
from tools.budgets import (
    SPEC,
    CheckBudgetsInput,
    budgets_from_file,
    budgets_from_mapping,
    check,
    convert,
    load_budgets,
    measurements_from_data,
    measurements_from_file,
    run,
)

URL = "http://127.0.0.1:8000/items"

BRIEF_YAML = """\
budgets:
  p95_latency: "<200"          # metric name -> comparison (unit of the measurement)
  error_rate: "<1"
  lcp: {max: 2.5, unit: s}     # mapping form with max/min and unit
  throughput: ">=50"
tolerance: 0.05
"""

BRIEF_TOML = """\
tolerance = 0.05

[budgets]
p95_latency = "<200"
error_rate = "<1"
lcp = { max = 2.5, unit = "s" }
throughput = ">=50"
"""


def m(name: str, value: float, unit: str = "ms", target: str = URL,
      source: str = "load_test") -> Measurement:
    return Measurement(name=name, value=value, unit=unit, source=source, target=target)


def load_test_values(p95: float = 231.0) -> list[Measurement]:
    return [m("p50_latency", 12.0), m("p95_latency", p95), m("error_rate", 0.4, "%"),
            m("throughput", 180.0, "req/s"),
            m("lcp", 2100.0, "ms", "http://127.0.0.1:8000/", "web_vitals")]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("name", "text"), [("budgets.yaml", BRIEF_YAML),
                                            ("budgets.toml", BRIEF_TOML)])
def test_budget_file_forms_of_the_brief(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    budgets = budgets_from_file(path)
    assert budgets.source == str(path)
    rules = {r.key: r for r in budgets.rules}
    assert set(rules) == {"p95_latency", "error_rate", "lcp", "throughput"}
    assert (rules["p95_latency"].op, rules["p95_latency"].limit, rules["p95_latency"].unit) == (
        "<", 200.0, None)
    assert (rules["lcp"].op, rules["lcp"].limit, rules["lcp"].unit) == ("<=", 2.5, "s")
    assert rules["throughput"].comparison == ">=50"
    assert all(r.tolerance == 0.05 for r in budgets.rules)


def test_inline_forms_units_ranges_and_scopes() -> None:
    budgets = budgets_from_mapping({
        "ttfb": "<800 ms",
        "cpu_utilization": {"min": 10, "max": 70, "unit": "%"},
        "p95_latency@/checkout": {"budget": "<400", "tolerance": 0.1},
    })
    assert budgets.source == "inline budgets"
    ttfb, cpu_max, cpu_min, scoped = budgets.rules
    assert (ttfb.op, ttfb.limit, ttfb.unit, ttfb.display) == ("<", 800.0, "ms", "<800 ms")
    assert (cpu_max.op, cpu_max.limit) == ("<=", 70.0)
    assert (cpu_min.op, cpu_min.limit) == (">=", 10.0)
    assert (scoped.metric, scoped.scope, scoped.tolerance) == ("p95_latency", "/checkout", 0.1)
    # the document form, and an overriding tolerance
    doc = budgets_from_mapping({"budgets": {"a": "<1"}, "tolerance": 0.2}, tolerance=0.0)
    assert doc.rules[0].tolerance == 0.0


@pytest.mark.parametrize(("budgets", "problem"), [
    ({"p95_latency": 200}, "bare number"),
    ({"p95_latency": "fast"}, "is not a comparison"),
    ({"p95_latency": "<200 ms!"}, "is not a comparison"),
    ({"p95_latency": {"maximum": 3}}, "unknown key(s) maximum"),
    ({"p95_latency": {"unit": "ms"}}, "no max, min or budget"),
    ({"p95_latency": {"max": "fast"}}, "max must be a number"),
    ({"p95_latency": {"budget": "<2 s", "unit": "ms"}}, "two units"),
    ({"p95 latency": "<200"}, "is not a metric name"),
    ({"budgets": {"a": "<1"}, "tolerance": 2}, "outside [0, 1)"),
    ({"budgets": {"a": "<1"}, "tolerence": 0.1}, "unknown key(s) tolerence"),
    ({"budgets": ["<1"]}, "must be a mapping"),
])
def test_malformed_budgets_name_the_key_and_problem(budgets: dict, problem: str) -> None:
    with pytest.raises(ToolError) as err:
        budgets_from_mapping(budgets, source="b.yaml")
    assert err.value.code == "invalid_budgets"
    assert err.value.message.startswith("b.yaml: ")
    assert problem in err.value.message
    assert err.value.hint


def test_no_budgets_is_a_clear_error() -> None:
    with pytest.raises(ToolError) as err:
        load_budgets(None)
    assert err.value.code == "no_budgets"
    assert "persona" in err.value.hint
    with pytest.raises(ToolError) as empty:
        budgets_from_mapping({})
    assert empty.value.code == "no_budgets"


@pytest.mark.parametrize(("name", "text", "where"), [
    ("bad.yaml", "budgets:\n  p95_latency: \"<200\n  error_rate: <1\n", "line "),
    ("bad.toml", "[budgets]\np95_latency = <200\n", "line 2"),
    ("flat.yaml", "p95_latency: '<200'\n", "no budgets: section"),
    ("list.yaml", "- p95_latency\n", "no budgets: section"),
])
def test_malformed_files_name_file_and_place(tmp_path: Path, name: str, text: str,
                                             where: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ToolError) as err:
        budgets_from_file(path)
    assert err.value.code == "invalid_budgets"
    assert str(path) in err.value.message and where in err.value.message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ToolError) as err:
        budgets_from_file(empty)
    assert err.value.code == "no_budgets"
    with pytest.raises(ToolError) as missing:
        budgets_from_file(tmp_path / "nope.yaml")
    assert missing.value.code == "not_found"


def test_unit_conversion() -> None:
    assert convert(2500, "ms", "s") == pytest.approx(2.5)
    assert convert(0.25, "s", "ms") == pytest.approx(250)
    assert convert(1500, "us", "ms") == pytest.approx(1.5)
    assert convert(2, "MiB", "KiB") == pytest.approx(2048)
    assert convert(5, "%", "percent") == 5
    assert convert(5, "req/s", "rps") == 5
    assert convert(5, "ms", "%") is None
    assert convert(5, "", "ms") is None


# --------------------------------------------------------------------------- checking


def test_the_brief_example_summary_rows_findings_and_echo(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(BRIEF_YAML)
    result = check(load_test_values(), budgets_from_file(path))
    assert result.summary == "3/4 budgets met; breached: p95_latency 231 ms > 200"
    assert (result.met, result.breached, result.missing, result.all_passed) == (3, 1, 0, False)
    rows = {r.budget_key: r for r in result.rows}
    p95 = rows["p95_latency"]
    assert (p95.value, p95.unit, p95.status, p95.passed, p95.target) == (
        231.0, "ms", "fail", False, URL)
    assert p95.margin == pytest.approx(-15.5)
    lcp = rows["lcp"]  # 2100 ms against 2.5 s
    assert lcp.value_in_budget_unit == pytest.approx(2.1)
    assert lcp.passed and lcp.margin == pytest.approx(16.0)
    assert rows["throughput"].margin == pytest.approx(260.0)
    breach = [f for f in result.findings if f.kind == "budget_breach"]
    assert len(breach) == 1
    assert breach[0].severity == "medium" and breach[0].location == URL  # 15.5 % over
    assert "tolerance 0.05" in (breach[0].evidence or "")
    # echoed measurements carry the verdict, in their own unit
    echoed = {e.name: e for e in result.measurements}
    assert echoed["p95_latency"].budget == "<200" and echoed["p95_latency"].passed is False
    assert echoed["lcp"].budget == "<=2500" and echoed["lcp"].unit == "ms"
    assert echoed["lcp"].source == "web_vitals"
    assert result.unbudgeted == ["p50_latency"]


def test_far_over_budget_is_high_severity() -> None:
    result = check(load_test_values(p95=250.0), budgets_from_mapping({"p95_latency": "<200"}))
    assert result.findings[0].severity == "high"  # 25 % over
    assert "25.0 % beyond" in result.findings[0].summary


def test_unit_conversion_decides_the_verdict() -> None:
    result = check([m("lcp", 3100.0, "ms")], budgets_from_mapping({"lcp": {"max": 2.5,
                                                                           "unit": "s"}}))
    row = result.rows[0]
    assert row.status == "fail" and row.margin == pytest.approx(-24.0)
    assert "lcp 3100 ms > 2.5 s" in result.summary


def test_tolerance_lets_a_near_miss_pass_and_says_so() -> None:
    values = [m("p95_latency", 205.0), m("throughput", 48.0, "req/s")]
    strict = check(values, budgets_from_mapping({"p95_latency": "<200", "throughput": ">=50"}))
    assert strict.breached == 2
    loose = check(values, budgets_from_mapping(
        {"budgets": {"p95_latency": "<200", "throughput": ">=50"}, "tolerance": 0.05}))
    assert loose.breached == 0 and loose.all_passed
    assert all(r.tolerated and r.passed for r in loose.rows)
    assert loose.rows[0].margin == pytest.approx(-2.5)
    assert "within tolerance: p95_latency 205 ms > 200" in loose.summary
    too_far = check([m("p95_latency", 211.0)], budgets_from_mapping(
        {"budgets": {"p95_latency": "<200"}, "tolerance": 0.05}))
    assert too_far.breached == 1


def test_missing_budgets_are_neither_met_nor_breached() -> None:
    result = check([m("p95_latency", 120.0)],
                   budgets_from_mapping({"p95_latency": "<200", "cls": "<0.1"}))
    assert result.summary == "1/1 budgets met; unmeasured: cls"
    missing = next(r for r in result.rows if r.budget_key == "cls")
    assert missing.status == "missing" and missing.passed is None and missing.value is None
    unmeasured = next(f for f in result.findings if f.kind == "budget_unmeasured")
    assert unmeasured.severity == "low" and "cls" in unmeasured.summary
    assert result.all_passed


def test_scoped_keys_and_one_row_per_matching_measurement() -> None:
    values = [m("p95_latency", 150.0, target="http://127.0.0.1:8000/items"),
              m("p95_latency", 350.0, target="http://127.0.0.1:8000/checkout")]
    everywhere = check(values, budgets_from_mapping({"p95_latency": "<200"}))
    assert [r.status for r in everywhere.rows] == ["pass", "fail"]
    # with several measurements under one key, the breach names its target
    assert "p95_latency@http://127.0.0.1:8000/checkout 350 ms > 200" in everywhere.summary
    assert everywhere.findings[0].location == "http://127.0.0.1:8000/checkout"
    scoped = check(values, budgets_from_mapping({"p95_latency@/checkout": "<400",
                                                 "p95_latency@/items": "<100"}))
    assert [(r.budget_key, r.status) for r in scoped.rows] == [
        ("p95_latency@/checkout", "pass"), ("p95_latency@/items", "fail")]


def test_units_that_do_not_convert_are_not_guessed() -> None:
    result = check([m("cpu_utilization", 0.5, "ratio")],
                   budgets_from_mapping({"cpu_utilization": "<70 %"}))
    row = result.rows[0]
    assert row.status == "unit_mismatch" and row.passed is None
    assert result.findings[0].kind == "budget_unit_mismatch"
    assert result.all_passed and result.unit_mismatches == 1
    assert "no budget could be checked" in result.summary


def test_exclusive_and_equal_comparisons() -> None:
    at_limit = check([m("p95_latency", 200.0)], budgets_from_mapping({"p95_latency": "<200"}))
    assert at_limit.rows[0].passed is False and at_limit.rows[0].margin == 0.0
    assert "p95_latency 200 ms = 200" in at_limit.summary
    equal = check([m("replicas", 3.0, "count")], budgets_from_mapping({"replicas": "==3"}))
    assert equal.rows[0].passed and equal.rows[0].margin == 0.0
    zero = check([m("errors", 2.0, "count")], budgets_from_mapping({"errors": "<=0"}))
    assert zero.rows[0].margin is None and zero.findings[0].severity == "high"


# --------------------------------------------------------------------------- measurements input


def test_measurements_from_a_list_a_tool_result_and_a_turn_result(tmp_path: Path) -> None:
    items = [{"name": "p95_latency", "value": 231, "unit": "ms"}]
    assert measurements_from_data(items)[0].source == "unknown"
    tool_result = {"tool": "load_test", "measurements": [
        {**items[0], "source": "load_test", "target": URL, "budget": "<5", "passed": False}]}
    parsed = measurements_from_data(tool_result)[0]
    assert (parsed.source, parsed.target, parsed.budget, parsed.passed) == (
        "load_test", URL, None, None)  # earlier verdicts are not carried over
    turn = tmp_path / "turn.json"
    turn.write_text(json.dumps({"thread_id": "t", "answer": "…", **tool_result}))
    assert measurements_from_file(turn)[0].value == 231.0


@pytest.mark.parametrize(("text", "problem"), [
    ('{"measurements": [', "not valid JSON: line 1"),
    ('{"answer": "no numbers here"}', "no top-level measurements list"),
    ('{"measurements": {"p95": 1}}', "must be a list"),
    ('[{"name": "p95_latency", "value": 1}, {"name": "x", "value": "fast"}]',
     "measurements[1].value"),
    ('[{"value": 3}]', "measurements[0].name"),
])
def test_malformed_measurement_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(ToolError) as err:
        measurements_from_file(path)
    assert err.value.code == "invalid_measurements"
    assert str(path) in err.value.message and problem in err.value.message


# --------------------------------------------------------------------------- the tool


def test_spec_is_a_tool_that_runs_no_code() -> None:
    assert SPEC.name == "check_budgets" and SPEC.runs_code is False
    props = SPEC.json_schema()["properties"]
    for name in ("measurements", "budgets", "tolerance"):
        assert props[name].get("description"), name


async def test_run_with_workspace_files(workspace: Path) -> None:
    (workspace / "results").mkdir()
    (workspace / "results" / "turn.json").write_text(json.dumps(
        {"measurements": [v.model_dump() for v in load_test_values()]}))
    (workspace / "perf-budgets.toml").write_text(BRIEF_TOML)
    updates: list[tuple[float, str]] = []
    result = await SPEC.run(CheckBudgetsInput(measurements="results/turn.json",
                                              budgets="perf-budgets.toml"),
                            lambda f, text: updates.append((f, text)))
    assert result.tool == "check_budgets" and result.breached == 1
    assert result.budgets_source.endswith("perf-budgets.toml")
    assert updates == [(1.0, result.summary)]


async def test_run_with_inline_values_and_budgets() -> None:
    inp = CheckBudgetsInput.model_validate({
        "measurements": [{"name": "p95_latency", "value": 180, "unit": "ms"}],
        "budgets": {"p95_latency": "<200 ms"}})
    result = await run(inp)
    assert result.all_passed and result.summary == "1/1 budgets met"


async def test_run_refuses_paths_outside_the_workspace(workspace: Path, tmp_path_factory:
                                                       pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "budgets.yaml"
    elsewhere.write_text(BRIEF_YAML)
    with pytest.raises(ToolError) as err:
        await run(CheckBudgetsInput(measurements=[], budgets=str(elsewhere)))
    assert err.value.code == "path_outside_workspace"
    with pytest.raises(ToolError) as none:
        await run(CheckBudgetsInput(measurements=[]))
    assert none.value.code == "no_budgets"
