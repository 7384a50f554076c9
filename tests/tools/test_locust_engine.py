"""load_test with engine "locust": real Locust master and workers against loopback servers.

Each run starts a headless Locust master and worker processes on this machine
(see conftest.http_target for the target servers), so these tests take a few
seconds each; the percentiles they compare are the exact ones the workers
reported, next to the built-in engine's on the same target.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from tests.conftest import unavailable
from tools.base import ToolError
from tools.loadtest import (
    LoadTestInput,
    check_url,
    locust_plan,
    locust_scenario,
    locustfile,
    run,
    scenario_json,
)

DELAY_MS = 50.0
THRESHOLDS = ["p(95)<500", "med<10", "http_req_failed rate<0.01"]


@pytest.fixture(autouse=True)
def _locust() -> None:
    # Only looked up, never imported here: importing Locust monkey-patches this
    # process with gevent, and it runs in its own processes anyway.
    if importlib.util.find_spec("locust") is None:
        unavailable("the Python package 'locust' is not installed")


def _locust_processes() -> list[psutil.Process]:
    """Locust processes started by this test process (masters and workers)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("locust" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_plan_gives_every_worker_users_that_add_up_to_the_rate() -> None:
    plan, pace = locust_plan(LoadTestInput(url="http://127.0.0.1/", rate=3, duration=2), 4)
    assert pace is not None and plan == [(2.0, pytest.approx(4.0), pytest.approx(4.0))]
    assert plan[0][1] * pace == pytest.approx(3.0)  # 4 users, one per worker, 0.75 req/s each
    ramp, pace = locust_plan(LoadTestInput(url="http://127.0.0.1/", duration=1,
                                           stages=[{"duration": 2, "target": 100}]), 2)
    assert pace is not None and ramp[0][1] == 0 and ramp[0][2] * pace == pytest.approx(100)
    closed, none = locust_plan(LoadTestInput(url="http://127.0.0.1/", vus=5, duration=2,
                                             engine="locust"), 2)
    assert none is None and closed == [(2.0, 5.0, 5.0)]
    scenario = locust_scenario(LoadTestInput(url="http://127.0.0.1:9/x", rate=40, duration=3),
                               2)
    assert scenario["plan"] == [[3.0, 20.0, 20.0]] and scenario["pace"] == 2.0
    text = locustfile()
    compile(text, "locustfile.py", "exec")
    assert "--perfagent-record" in text and "allow_redirects=False" in text


def test_workers_only_with_the_locust_engine() -> None:
    with pytest.raises(ValidationError, match="workers applies"):
        LoadTestInput(url="http://127.0.0.1/", workers=2)


async def test_non_allowed_host_is_refused_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    with pytest.raises(ToolError) as err:
        await run(LoadTestInput(url="http://192.0.2.10:8080/", engine="locust", workers=2,
                                rate=10, duration=1))
    assert err.value.code == "target_refused"
    assert not _locust_processes()


async def test_two_workers_match_the_builtin_engine(http_target: Callable[..., str]) -> None:
    url = http_target("delay", "--delay", str(DELAY_MS / 1000))
    builtin = await run(LoadTestInput(url=url, rate=40, duration=2, thresholds=THRESHOLDS))
    seen: list[float] = []
    distributed = await run(
        LoadTestInput(url=url, rate=40, duration=3, thresholds=THRESHOLDS, engine="locust",
                      workers=2),
        progress=lambda fraction, _text: seen.append(fraction))

    assert distributed.engine == "locust" and distributed.workers == 2
    # both workers sent requests, and together about the planned 40 req/s x 3 s
    assert len(distributed.worker_requests) == 2
    assert all(count > 20 for count in distributed.worker_requests.values())
    assert sum(distributed.worker_requests.values()) == distributed.requests
    assert 100 <= distributed.requests <= 140
    assert distributed.status_counts == {"200": distributed.requests}
    assert distributed.error_rate == 0
    # exact percentiles from every response, near the server's delay, like the built-in's
    lat_b, lat_l = builtin.latency_ms, distributed.latency_ms
    assert lat_b is not None and lat_l is not None
    assert DELAY_MS <= lat_l.p50 < DELAY_MS + 25
    assert abs(lat_l.p50 - lat_b.p50) < 20
    assert lat_l.p95 < DELAY_MS + 150 and lat_b.p95 < DELAY_MS + 150
    # the same thresholds, the same verdicts, in the same measurement shape
    assert [t.passed for t in distributed.thresholds] == [t.passed for t in builtin.thresholds] \
        == [True, False, True]
    names = {m.name for m in distributed.measurements}
    assert {"p50_latency", "p90_latency", "p95_latency", "p99_latency", "max_latency",
            "mean_latency", "throughput", "error_rate"} <= names
    assert any("coordinated omission" in note for note in distributed.notes)
    assert distributed.scheduling_lag_p99_ms is not None
    assert seen and seen[-1] == 1.0
    assert not _locust_processes()


async def test_server_errors_are_counted_as_error_rate(http_target: Callable[..., str]) -> None:
    url = http_target("fast", "--status", "500")
    inp = {"url": url, "vus": 2, "thresholds": ["http_req_failed rate<0.01", "max<1000"]}
    builtin = await run(LoadTestInput(**inp, duration=1))
    distributed = await run(LoadTestInput(**inp, duration=2, engine="locust", workers=2))
    assert distributed.model == "closed" and distributed.vus == 2
    assert distributed.requests > 50
    assert distributed.errors == distributed.requests and distributed.error_rate == 100
    assert distributed.status_counts == {"500": distributed.requests}
    assert [t.passed for t in distributed.thresholds] == [t.passed for t in builtin.thresholds] \
        == [False, True]
    assert any(f.kind == "errors" and f.severity == "high" for f in distributed.findings)


async def test_cancelling_kills_master_and_workers(http_target: Callable[..., str]) -> None:
    url = http_target("fast")
    task = asyncio.create_task(run(LoadTestInput(url=url, rate=20, duration=60,
                                                 engine="locust", workers=2)))
    for _ in range(100):  # master plus two workers, up within a few seconds
        if len(_locust_processes()) >= 3:
            break
        await asyncio.sleep(0.1)
    assert len(_locust_processes()) >= 3
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _locust_processes()


def test_the_emitted_files_run_by_hand(http_target: Callable[..., str], tmp_path: Path) -> None:
    """locustfile.py and scenario.json side by side run as they are; the environment wins.

    Without --perfagent-record the thresholds are checked on Locust's own
    statistics when it quits, and a failed one sets the exit code.
    """
    url = http_target("fast")
    target = check_url(url)

    def scenario(thresholds: list[str]) -> str:
        inp = LoadTestInput(url=url, rate=10, duration=1, timeout=1, thresholds=thresholds,
                            engine="locust", workers=1)
        return scenario_json(locust_scenario(inp, 1, None, target))

    (tmp_path / "locustfile.py").write_text(locustfile(), encoding="utf-8")
    (tmp_path / "scenario.json").write_text(scenario(["http_req_failed rate<0.01"]),
                                            encoding="utf-8")
    elsewhere = tmp_path / "elsewhere" / "failing.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(scenario(["max<0"]), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PERFAGENT_LOCUST_SCENARIO"}
    command = [sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless",
               "--only-summary"]

    beside = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert beside.returncode == 0, beside.stderr[-2000:]
    assert "threshold http_req_failed rate<0.01: observed 0.0 -> ok" in beside.stdout

    named = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           env={**env, "PERFAGENT_LOCUST_SCENARIO": str(elsewhere)})
    assert named.returncode == 1, named.stderr[-2000:]
    assert "threshold max<0: observed" in named.stdout and "-> FAILED" in named.stdout
