"""``perfagent budget check|show`` end to end, as a user runs it: real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.results import CheckResult, Timings, TurnResult, Usage
from tests.conftest import REPO
from tools.base import Measurement

URL = "http://127.0.0.1:8000/items"


def perfagent(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # a wide terminal, so that rich tables do not cut the names the tests look for
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


def turn_result(tmp_path: Path, p95: float, *, error_rate: float = 0.2) -> Path:
    """A real TurnResult (the shape ``perfagent ask --json`` prints) with load_test numbers."""
    measurements = [
        Measurement(name="p50_latency", value=40.0, unit="ms", source="load_test", target=URL),
        Measurement(name="p95_latency", value=p95, unit="ms", source="load_test", target=URL,
                    budget="<5", passed=False),  # an earlier threshold, not our budget
        Measurement(name="error_rate", value=error_rate, unit="%", source="load_test",
                    target=URL),
        Measurement(name="throughput", value=120.0, unit="req/s", source="load_test",
                    target=URL),
    ]
    result = TurnResult(
        thread_id="t-1", model="offline", persona="performance-engineer", answer="…",
        checks=[CheckResult(name="baseline_established", status="pass")], tool_calls=[],
        delegations=[], measurements=measurements, findings=[], revisions=0, usage=Usage(),
        timings_ms=Timings())
    path = tmp_path / f"turn-{p95:g}.json"
    path.write_text(result.model_dump_json(indent=2))
    return path


def test_breach_of_the_persona_budgets_exits_3_and_names_it(tmp_path: Path) -> None:
    done = perfagent("budget", "check", str(turn_result(tmp_path, 231.0)))
    assert done.returncode == 3, done.stderr
    assert "p95_latency 231 ms > 200" in done.stdout
    assert "persona performance-engineer" in done.stdout
    assert "FAIL" in done.stdout and "unmeasured" in done.stdout  # lcp, fid, ... not measured


def test_passing_file_exits_0(tmp_path: Path) -> None:
    done = perfagent("budget", "check", str(turn_result(tmp_path, 120.0)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1/1 budgets met" in done.stdout


def test_json_output_is_the_tool_result(tmp_path: Path) -> None:
    done = perfagent("budget", "check", str(turn_result(tmp_path, 231.0)), "--json")
    assert done.returncode == 3
    result = json.loads(done.stdout)
    assert result["tool"] == "check_budgets" and result["all_passed"] is False
    row = next(r for r in result["rows"] if r["budget_key"] == "p95_latency")
    assert (row["value"], row["status"], row["margin"], row["target"]) == (
        231.0, "fail", -15.5, URL)
    assert [f["kind"] for f in result["findings"] if f["severity"] != "low"] == ["budget_breach"]


@pytest.mark.parametrize(("name", "text"), [
    ("budgets.yaml", 'budgets:\n  p95_latency: "<250"\n  error_rate: {max: 0.1, unit: "%"}\n'
                     "  throughput: '>=100'\n"),
    ("budgets.toml", '[budgets]\np95_latency = "<250"\nerror_rate = { max = 0.1, unit = "%" }\n'
                     'throughput = ">=100"\n'),
])
def test_yaml_and_toml_budget_files(tmp_path: Path, name: str, text: str) -> None:
    budgets = tmp_path / name
    budgets.write_text(text)
    done = perfagent("budget", "check", str(turn_result(tmp_path, 231.0)), "--budgets",
                     str(budgets))
    # p95 231 < 250 passes now, the error rate 0.2 % breaks its 0.1 % budget
    assert done.returncode == 3, done.stderr
    assert "2/3 budgets met; breached: error_rate 0.2 % > 0.1" in done.stdout
    assert str(budgets) in done.stdout.replace("\n", "")
    passing = perfagent("budget", "check", str(turn_result(tmp_path, 231.0, error_rate=0.0)),
                        "--budgets", str(budgets))
    assert passing.returncode == 0, passing.stdout


def test_tolerance_option(tmp_path: Path) -> None:
    budgets = tmp_path / "b.yaml"
    budgets.write_text('budgets:\n  p95_latency: "<220"\n')
    path = str(turn_result(tmp_path, 231.0))
    assert perfagent("budget", "check", path, "-b", str(budgets)).returncode == 3
    loose = perfagent("budget", "check", path, "-b", str(budgets), "--tolerance", "0.1")
    assert loose.returncode == 0 and "within tolerance" in loose.stdout


@pytest.mark.parametrize(("text", "problem"), [
    ('budgets:\n  p95_latency: "<200\n', "not valid YAML: line"),
    ("budgets:\n  p95_latency: 200\n", "budgets.p95_latency: 200 is a bare number"),
    ('budget:\n  p95_latency: "<200"\n', "no budgets: section"),
])
def test_malformed_budget_file_exits_1_with_file_and_problem(tmp_path: Path, text: str,
                                                              problem: str) -> None:
    budgets = tmp_path / "broken.yaml"
    budgets.write_text(text)
    done = perfagent("budget", "check", str(turn_result(tmp_path, 231.0)), "--budgets",
                     str(budgets))
    assert done.returncode == 1
    assert "invalid_budgets" in done.stderr
    assert str(budgets) in done.stderr and problem in done.stderr
    assert "what to do" in done.stderr
    assert done.stdout == ""


def test_bad_measurements_file_and_unknown_persona_exit_1(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    done = perfagent("budget", "check", str(broken))
    assert done.returncode == 1 and "invalid_measurements" in done.stderr
    assert str(broken) in done.stderr and "line 1" in done.stderr
    missing = perfagent("budget", "check", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "not_found" in missing.stderr
    persona = perfagent("budget", "check", str(turn_result(tmp_path, 1.0)), "--persona",
                        "no-such-persona")
    assert persona.returncode == 1 and "unknown_persona" in persona.stderr


def test_show_prints_a_budget_file_that_check_accepts(tmp_path: Path) -> None:
    done = perfagent("budget", "show")
    assert done.returncode == 0, done.stderr
    import yaml

    document = yaml.safe_load(done.stdout)
    assert document["budgets"]["p95_latency"] == "<200 ms"
    assert document["budgets"]["lcp"] == "<2.5 s"
    assert document["tolerance"] == 0
    assert "# API p95 latency" in done.stdout
    start = tmp_path / "perf-budgets.yaml"
    start.write_text(done.stdout)
    measured = str(turn_result(tmp_path, 231.0))
    from_file = perfagent("budget", "check", measured, "--budgets", str(start), "--json")
    from_persona = perfagent("budget", "check", measured, "--json")
    assert from_file.returncode == from_persona.returncode == 3
    rows = [json.loads(d.stdout)["rows"] for d in (from_file, from_persona)]
    assert rows[0] == rows[1]


def test_help_lists_the_budget_commands() -> None:
    done = perfagent("budget", "--help")
    assert done.returncode == 0
    assert "check" in done.stdout and "show" in done.stdout
