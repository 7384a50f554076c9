"""``perfagent eval`` end to end, in subprocesses: run, rescore, compare, baseline, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evals.model import RunLog, RunSummary
from tests.evals.test_runner import embedded_playbooks  # noqa: F401  (a fixture)

PASSING = """\
name: cli
cases:
  - id: knows
    input: "What is an N+1 query?"
    scorers:
      - {type: tool_used, name: knowledge_search}
  - id: answers
    input: "What is a flame graph?"
    scorers:
      - contains: "offline"
"""

# The same suite, but its "answers" case now gets a fixed draft that fails its scorer.
REGRESSED = PASSING.replace('    input: "What is a flame graph?"\n',
                            '    input: "What is a flame graph?"\n    draft: "No idea."\n')

BROKEN_FIXTURE = """\
name: broken
cases:
  - id: typo
    input: "Explain SELECT * FROM orders on {db}"
    fixture: {kind: shop_database, options: {customers: 5, orders: 50}}
    scorers: [checks_pass]
"""


def environment(state: Path, embeddings: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANTHROPIC_API_KEY", "PERFAGENT_MODEL", "PERFAGENT_WORKSPACE")}
    # Wide enough that rich does not wrap a table cell or an error line.
    return {**env, "PERFAGENT_STATE_DIR": str(state), "PERFAGENT_EMBEDDING_CACHE": str(embeddings),
            "COLUMNS": "200"}


def perfagent(env: dict[str, str], cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "eval", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=240)


class Runs:
    """Two runs of one suite made once for the module: one passing, one regressed."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.passing_suite = folder / "passing.yaml"
        self.passing_suite.write_text(PASSING, encoding="utf-8")
        regressed_suite = folder / "regressed.yaml"
        regressed_suite.write_text(REGRESSED, encoding="utf-8")
        # No --out: the run goes to evals-runs/<run id>/ under the working directory.
        self.passing_done = self("run", self.passing_suite, "--json")
        assert self.passing_done.returncode == 0, self.passing_done.stderr
        (self.passing,) = (folder / "evals-runs").iterdir()
        self.regressed_done = self("run", regressed_suite, "--out", folder / "regressed")
        self.regressed = folder / "regressed"

    def __call__(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return perfagent(self.env, self.folder, *args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, embedded_playbooks: None) -> Runs:  # noqa: F811
    folder = tmp_path_factory.mktemp("eval-cli")
    return Runs(folder, environment(folder / "state",
                                    tmp_path_factory.getbasetemp() / "embeddings"))


def test_a_passing_run_exits_0_and_writes_the_log_and_the_reports(runs: Runs) -> None:
    done = runs.passing_done
    summary = RunSummary.model_validate_json(done.stdout)
    assert (summary.cases, summary.passed, summary.failed, summary.errors) == (2, 2, 0, 0)
    names = {p.name for p in runs.passing.iterdir()}
    assert {"log.json", "junit.xml", "summary.md", "report.html"} <= names
    log = RunLog.model_validate_json((runs.passing / "log.json").read_text())
    assert runs.passing.name == log.run_id and log.config.model == "offline"
    assert "eval" in done.stderr and "2/2" in done.stderr  # the progress bar, on stderr


def test_a_failing_case_exits_4_unless_the_threshold_allows_it(runs: Runs, tmp_path: Path) -> None:
    done = runs.regressed_done
    assert done.returncode == 4, done.stderr
    assert "cli/answers" in done.stdout and "fail" in done.stdout
    assert "1 passed · 1 failed · 0 errors" in done.stdout
    assert str(runs.regressed / "report.html") in done.stdout
    lenient = runs("run", runs.folder / "regressed.yaml", "--threshold", "0.5", "--out", tmp_path)
    assert lenient.returncode == 0, lenient.stderr


def test_a_case_that_cannot_run_exits_5(runs: Runs, tmp_path: Path) -> None:
    suite = tmp_path / "broken.yaml"
    suite.write_text(BROKEN_FIXTURE, encoding="utf-8")
    done = runs("run", suite, "--out", tmp_path / "out", "--json")
    assert done.returncode == 5, done.stderr
    summary = RunSummary.model_validate_json(done.stdout)
    assert summary.errors == 1 and summary.per_case[0].status == "error"
    log = RunLog.model_validate_json((tmp_path / "out" / "log.json").read_text())
    assert log.runs[0].error is not None and log.runs[0].error.code == "fixture_value_missing"


@pytest.mark.parametrize(("args", "code"), [
    (["--model", "nonsense"], "unknown_model"),
    (["--grader-model", "anthropic:claude-x"], "model_error"),
    (["--tag", "nowhere"], "no_cases"),
])
def test_usage_errors_exit_1_with_a_structured_message(runs: Runs, args: list[str],
                                                       code: str) -> None:
    done = runs("run", runs.passing_suite, *args)
    assert done.returncode == 1
    assert f"error ({code})" in done.stderr and "what to do:" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_invalid_suite_exits_1_naming_the_file_and_the_case(runs: Runs, tmp_path: Path) -> None:
    suite = tmp_path / "typo.yaml"
    suite.write_text(PASSING.replace("contains:", "contians:"), encoding="utf-8")
    done = runs("run", suite)
    assert done.returncode == 1
    assert "error (invalid_scorer)" in done.stderr and str(suite) in done.stderr
    assert 'case "answers"' in done.stderr and "Traceback" not in done.stderr


def test_compare_lists_the_regression_and_fails_only_when_asked(runs: Runs, tmp_path: Path) -> None:
    plain = runs("compare", runs.passing, runs.regressed, "--markdown", tmp_path / "cmp.md")
    assert plain.returncode == 0, plain.stderr
    assert "answers" in plain.stdout and "answers" in (tmp_path / "cmp.md").read_text()
    strict = runs("compare", runs.passing, runs.regressed, "--fail-on-regression", "--json")
    assert strict.returncode == 4
    comparison: dict[str, Any] = json.loads(strict.stdout)
    assert [c["case_id"] for c in comparison["regressions"]] == ["answers"]
    improved = runs("compare", runs.regressed / "log.json", runs.passing, "--fail-on-regression")
    assert improved.returncode == 0, improved.stderr
    missing = runs("compare", tmp_path / "nothing", runs.passing)
    assert missing.returncode == 1 and "error (log_not_found)" in missing.stderr


def test_baseline_copies_the_log_and_says_what_changed(runs: Runs, tmp_path: Path) -> None:
    target = tmp_path / "baselines" / "offline.json"
    created = runs("baseline", runs.passing, "--to", target)
    assert created.returncode == 0, created.stderr
    assert target.read_bytes() == (runs.passing / "log.json").read_bytes()
    assert "created" in created.stdout
    updated = runs("baseline", runs.regressed, "--to", target)
    assert updated.returncode == 0, updated.stderr
    assert "1 regressed, 0 improved, 1 unchanged" in updated.stdout
    assert target.read_bytes() == (runs.regressed / "log.json").read_bytes()


def test_rescore_judges_a_saved_run_with_newer_scorers(runs: Runs, tmp_path: Path) -> None:
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(PASSING.replace('contains: "offline"', 'contains: "no such words"'),
                        encoding="utf-8")
    done = runs("rescore", runs.passing, "--suite", stricter, "--json")
    assert done.returncode == 4, done.stderr
    summary = RunSummary.model_validate_json(done.stdout)
    assert (summary.passed, summary.failed) == (1, 1)
    (rescored,) = (runs.folder / "evals-runs").glob("*-rescored")
    log = RunLog.model_validate_json((rescored / "log.json").read_text())
    assert log.suites[0].sha256 != RunLog.model_validate_json(
        (runs.passing / "log.json").read_text()).suites[0].sha256
    # The agent did not run again: the turns are the recorded ones.
    original = RunLog.model_validate_json((runs.passing / "log.json").read_text())
    assert [r.turns for r in log.runs] == [r.turns for r in original.runs]

    fewer = tmp_path / "fewer.yaml"
    fewer.write_text(PASSING.split("  - id: answers")[0], encoding="utf-8")
    dropped = runs("rescore", runs.passing, "--suite", fewer, "--out", tmp_path / "fewer")
    assert dropped.returncode == 0, dropped.stderr
    assert "cli/answers is no longer in" in dropped.stderr


def test_export_inspect_writes_an_inspect_log(runs: Runs, tmp_path: Path) -> None:
    target = tmp_path / "inspect" / "run.json"
    done = runs("export-inspect", runs.passing, "--to", target)
    assert done.returncode == 0, done.stderr
    exported = json.loads(target.read_text())
    assert len(exported["samples"]) == 2 and "wrote" in done.stdout
    wrong = runs("export-inspect", runs.passing, "--to", tmp_path / "run.eval")
    assert wrong.returncode == 1 and "error (export_not_json)" in wrong.stderr
