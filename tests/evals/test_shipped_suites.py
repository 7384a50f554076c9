"""The eval suites shipped in ``evals/suites``: they load, they cover what the project
promises (every tool, every delegation target, each check passing and failing,
multi-turn threads, bad input), and every case passes with the offline engine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from agent.persona import CHECK_IDS, get_persona
from evals.model import Case, RunConfig, ScorerSpec, Suite
from evals.suites import load_suites
from tests.conftest import REPO, require_module, unavailable

SUITES_DIR = REPO / "evals" / "suites"
PERSONA = "performance-engineer"


@pytest.fixture(scope="module")
def suites() -> list[Suite]:
    paths = sorted(SUITES_DIR.glob("*.yaml"))
    assert paths, f"no suite files in {SUITES_DIR}"
    return load_suites(paths)  # a load error (shape, scorer, fixture option) fails here


def cases(suites: list[Suite]) -> Iterator[Case]:
    for suite in suites:
        yield from suite.cases


def params(spec: ScorerSpec) -> Any:
    """The scorer's parameters as the scorer reads them (shorthand resolved, defaults filled)."""
    from evals.scorers import params_of

    return params_of(spec)


def scorers(suites: list[Suite], kind: str) -> Iterator[tuple[Case, Any]]:
    """Every scorer of type ``kind`` with its case, as (case, parameters)."""
    for case in cases(suites):
        for spec in case.scorers:
            if spec.type == kind:
                yield case, params(spec)


def test_at_least_thirty_described_and_tagged_cases(suites: list[Suite]) -> None:
    everything = list(cases(suites))
    assert len(everything) >= 30
    for case in everything:
        assert case.description.strip(), f"{case.id} has no description"
        assert case.tags, f"{case.id} has no tags"


def test_every_measurement_tool_is_expected_to_run(suites: list[Suite]) -> None:
    from tools import tool_names

    expected = {p.name for _, p in scorers(suites, "tool_used") if p.min >= 1}
    assert set(tool_names()) <= expected, sorted(set(tool_names()) - expected)


def test_cases_are_tagged_with_the_tools_they_expect(suites: list[Suite]) -> None:
    """Tags are how `--tag load_test` picks cases, so a tool a case asserts is in its tags."""
    from tools import tool_names

    for case, p in scorers(suites, "tool_used"):
        if p.name in tool_names() and p.min >= 1:
            assert p.name in case.tags, f"{case.id} expects {p.name} but is not tagged with it"


def test_every_delegation_target_is_expected(suites: list[Suite]) -> None:
    targets = {d.name for d in get_persona(PERSONA).delegation}
    assert len(targets) == 5
    delegated = {p.target for _, p in scorers(suites, "delegated_to")}
    assert targets <= delegated, sorted(targets - delegated)
    for case, p in scorers(suites, "delegated_to"):
        assert {"delegation", p.target} <= set(case.tags), case.id


def _expected_status(spec: ScorerSpec) -> dict[str, str]:
    """check name -> the status a scorer expects of it."""
    if spec.type == "check":
        p = params(spec)
        return {p.name: p.status}
    if spec.type == "checks_pass":
        return dict.fromkeys(params(spec).checks, "pass")
    return {}


def test_each_check_passes_on_a_real_answer_and_fails_on_a_draft(suites: list[Suite]) -> None:
    passing: set[str] = set()
    failing: set[str] = set()
    for case in cases(suites):
        for spec in case.scorers:
            for name, status in _expected_status(spec).items():
                if status == "pass" and case.draft is None:
                    passing.add(name)
                elif status == "fail":
                    assert case.draft is not None, f"{case.id}: a real answer is expected to fail"
                    assert name in case.tags, f"{case.id} fails {name} but is not tagged with it"
                    failing.add(name)
    assert passing == set(CHECK_IDS), sorted(set(CHECK_IDS) - passing)
    assert failing == set(CHECK_IDS), sorted(set(CHECK_IDS) - failing)


def test_multi_turn_threads_and_bad_input_are_covered(suites: list[Suite]) -> None:
    threads = [c for c in cases(suites) if len(c.input) > 1]
    assert len(threads) >= 3
    assert all("multi-turn" in c.tags for c in threads)
    # Some thread compares a re-measurement with the earlier turn's baseline.
    assert any(spec.type in ("contains", "regex") and "since" in params(spec).value
               for c in threads for spec in c.scorers)
    bad = [c for c in cases(suites) if "bad-input" in c.tags]
    assert len(bad) >= 6
    assert any("prompt-injection" in c.tags for c in bad)


@pytest.mark.slow
async def test_every_shipped_case_passes_with_the_offline_engine(suites: list[Suite]) -> None:
    from evals.runner import run_suites

    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (the redis fixture starts one)")
    require_module("playwright")
    from tools.base import ToolError
    from tools.webvitals import find_chromium

    try:
        find_chromium()
    except ToolError as exc:
        unavailable(f"Chromium is not installed: {exc}")

    log = await run_suites(suites, RunConfig(model="offline", concurrency=2, epochs=1),
                           progress=False)
    assert len(log.runs) == sum(len(s.cases) for s in suites)
    problems = []
    for run in log.runs:
        if run.status == "error":
            problems.append(f"{run.suite}/{run.case_id}: ERROR {run.error}")
        elif not run.passed:
            failed = [f"    {s.scorer}: {s.explanation}" for s in run.scores if s.passed is False]
            problems.append(f"{run.suite}/{run.case_id}: FAIL\n" + "\n".join(failed))
    assert not problems, "\n".join(problems)
