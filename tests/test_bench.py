"""``perfagent bench``: its pieces measure what they claim, and CI's budgets match them."""

from __future__ import annotations

import yaml

from agent.bench import PASSING_DRAFT, InstantModel, calibration_ms, graph_overhead
from agent.context import Settings
from agent.run import run_turn
from tests.conftest import REPO


async def test_the_benchmark_draft_passes_every_check_first_time() -> None:
    result = await run_turn("why is /orders slow?", settings=Settings(model="offline"),
                            model=InstantModel())
    assert result.answer.startswith(PASSING_DRAFT.strip()[:40])
    assert {c.status for c in result.checks} == {"pass"} and result.revisions == 0


async def test_graph_overhead_times_both_loops() -> None:
    perfagent_ms, bare_ms = await graph_overhead(turns=5)
    assert perfagent_ms > bare_ms > 0  # the full graph does strictly more work


def test_calibration_is_a_positive_duration() -> None:
    assert 0 < calibration_ms(rounds=1) < 10_000


def test_ci_budgets_name_the_benchmarks() -> None:
    budgets = yaml.safe_load((REPO / ".ci" / "perf-budgets.yaml").read_text())["budgets"]
    source = (REPO / "agent" / "bench.py").read_text()
    assert budgets and all(f'add("{name}"' in source for name in budgets)
