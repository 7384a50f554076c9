"""`perfagent check`: any answer, from any model, judged by a persona's checks.

The command is a thin surface over :func:`agent.draft_check.check_draft`: its
verdict is the function's, its exit code says whether a check failed, and bad
input is a structured error (exit 1), never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.draft_check import Evidence, check_draft, resolve_persona
from evals.drafts import load_corpus

FIVE = ["baseline_established", "impact_quantified", "monitoring_included",
        "implementation_quality", "regression_prevention"]


def _check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "check", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_an_invented_figure_with_nothing_measured_fails_with_exit_3(tmp_path: Path) -> None:
    draft = tmp_path / "draft.md"
    draft.write_text("The p95 latency is 850 ms. Add a Redis cache in front of the orders "
                     "query and it will be 10x faster.\n")
    done = _check(str(draft), "--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert [c["name"] for c in report["checks"]] == FIVE
    assert report["passed"] is False
    baseline = report["checks"][0]
    assert baseline["status"] == "fail" and baseline["feedback"]


@pytest.mark.parametrize("case_id", ["authors-ci-skipped"])
def test_the_verdict_is_the_python_functions(case_id: str, tmp_path: Path) -> None:
    """The CLI with an evidence file says exactly what check_draft says, the graph's validators."""
    case = next(c for c in load_corpus() if c.id == case_id)
    draft, evidence = tmp_path / "draft.md", tmp_path / "evidence.json"
    draft.write_text(case.draft)
    evidence.write_text(case.evidence.model_dump_json())
    expected = check_draft(case.draft, Evidence.model_validate(case.evidence.model_dump()),
                           resolve_persona(None))
    done = _check(str(draft), "--evidence", str(evidence), "--json")
    assert json.loads(done.stdout) == expected.model_dump(mode="json")
    assert done.returncode == (0 if expected.passed else 3)
    # The same draft from stdin, and a human-readable verdict without --json.
    piped = _check("-", "--evidence", str(evidence), stdin=case.draft)
    assert piped.returncode == done.returncode
    for result in expected.checks:
        assert result.name in piped.stdout


def test_a_turn_result_is_accepted_as_evidence(tmp_path: Path) -> None:
    turn = {"thread_id": "t", "model": "offline", "persona": "performance-engineer",
            "answer": "…", "checks": [], "revisions": 0,
            "measurements": [{"name": "p95_latency", "value": 231.4, "unit": "ms",
                              "source": "load_test", "target": "http://127.0.0.1:8000/items"}],
            "findings": [], "tool_calls": [], "delegations": [], "usage": {}, "timings_ms": {}}
    evidence = tmp_path / "turn.json"
    evidence.write_text(json.dumps(turn))
    draft = tmp_path / "draft.md"
    draft.write_text("p95 of /items is 231 ms.\n")
    done = _check(str(draft), "--evidence", str(evidence), "--json")
    assert done.returncode in (0, 3), done.stderr
    baseline = json.loads(done.stdout)["checks"][0]
    # The measured figure grounds the claim: whatever else fails, not this figure.
    assert "231" not in baseline["feedback"]


@pytest.mark.parametrize(("evidence_text", "code"), [
    ("[1, 2]", "invalid_evidence"),
    ("{not json", "invalid_evidence"),
    ('{"measurements": "p95 231 ms"}', "invalid_evidence"),
])
def test_bad_evidence_is_a_structured_error(evidence_text: str, code: str,
                                            tmp_path: Path) -> None:
    evidence, draft = tmp_path / "evidence.json", tmp_path / "draft.md"
    evidence.write_text(evidence_text)
    draft.write_text("Measure first.\n")
    done = _check(str(draft), "--evidence", str(evidence))
    assert done.returncode == 1
    assert code in done.stderr and "what to do" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_draft_and_an_unknown_persona_are_structured_errors(tmp_path: Path) -> None:
    missing = _check(str(tmp_path / "nope.md"))
    assert missing.returncode == 1 and "unreadable_draft" in missing.stderr
    draft = tmp_path / "draft.md"
    draft.write_text("Measure first.\n")
    unknown = _check(str(draft), "--persona", "no-such-persona")
    assert unknown.returncode == 1 and "unknown_persona" in unknown.stderr
    assert "Traceback" not in missing.stderr + unknown.stderr


def test_a_persona_file_path_is_accepted(tmp_path: Path) -> None:
    from agent.persona import personas_dir

    draft = tmp_path / "draft.md"
    draft.write_text("Measure first.\n")
    done = _check(str(draft), "--persona", str(personas_dir() / "performance-engineer.md"),
                  "--json")
    assert done.returncode in (0, 3), done.stderr
    assert [c["name"] for c in json.loads(done.stdout)["checks"]] == FIVE
