"""Baseline memory: measurements are remembered and the next answer reports the change."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.baselines import BaselineStore, BaselineStoreError, changes
from agent.context import Settings
from agent.run import run_turn
from tests.conftest import REPO

P95 = {"name": "p95_latency", "value": 181.0, "unit": "ms", "source": "load_test",
       "target": "http://127.0.0.1:8000/orders?customer=17", "budget": "<200", "passed": True}


def test_store_records_and_recalls_the_latest(isolated_state: Path) -> None:
    store = BaselineStore(isolated_state)
    store.record([P95], thread_id="t1", git_rev="abc123",
                 when=datetime(2026, 11, 20, 9, 0, tzinfo=UTC))
    store.record([{**P95, "value": 240.0, "passed": False}], thread_id="t2",
                 when=datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    latest = store.latest_for(["/orders"])
    assert [(b.value, b.passed) for b in latest] == [(240.0, False)]
    assert [b.value for b in store.history("/orders", "p95_latency")] == [181.0, 240.0]
    assert store.latest_for(["/nothing"]) == []
    assert store.targets()[0]["measurements"] == 2
    earlier = store.latest_for(["/orders"], before="2026-11-21")
    assert earlier[0].git_rev == "abc123" and earlier[0].day == "2026-11-20"
    paired = changes([{**P95, "value": 250.0}], [b.model_dump() for b in earlier])
    assert paired == [{"metric": "p95_latency", "target": P95["target"], "unit": "ms",
                       "before": 181.0, "now": 250.0, "since": "2026-11-20",
                       "git_rev": "abc123"}]


def test_corrupted_store_names_the_file(isolated_state: Path) -> None:
    isolated_state.mkdir(parents=True, exist_ok=True)
    (isolated_state / "baselines.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(BaselineStoreError, match=r"baselines\.sqlite"):
        BaselineStore(isolated_state).latest_for(["/orders"])
    done = subprocess.run([sys.executable, "-m", "agent.cli", "baselines", "list"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1 and "baselines.sqlite" in done.stderr
    assert "Traceback" not in done.stderr


async def test_second_turn_reports_the_change(service: str) -> None:
    settings = Settings(model="offline")
    question = f"How fast is {service}/orders?customer=4 at 4 rps for 1s?"
    first = await run_turn(question, settings=settings)
    first_p95 = next(m for m in first.measurements if m.name == "p95_latency")
    assert "Change since the earlier baselines" not in first.answer
    second = await run_turn(question, settings=settings)
    second_p95 = next(m for m in second.measurements if m.name == "p95_latency")
    assert "Change since the earlier baselines" in second.answer
    line = next(x for x in second.answer.splitlines() if x.startswith("- **p95_latency**"))
    assert f"{first_p95.value:,.2f} ms → {second_p95.value:,.2f} ms since" in line
    assert {c.status for c in second.checks} <= {"pass", "not_applicable"}
    listed = subprocess.run([sys.executable, "-m", "agent.cli", "baselines", "show",
                             "/orders?customer=4", "--metric", "p95_latency", "--json"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    history = json.loads(listed.stdout)
    assert [h["value"] for h in history] == [first_p95.value, second_p95.value]
    assert history[0]["git_rev"]  # the workspace (this checkout) is a git repository
