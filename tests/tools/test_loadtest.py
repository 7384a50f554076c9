"""load_test against real HTTP servers on loopback (see conftest.http_target)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from tools import get_tool
from tools.base import ToolError
from tools.loadtest import (
    LoadTestInput,
    locust_scenario,
    locustfile,
    parse_duration,
    parse_threshold,
    percentile,
    run,
    scenario_json,
    send_offsets,
)

# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(10, 10.0), (2.5, 2.5), ("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0),
     ("500ms", 0.5), ("1.5", 1.5), (" 3s ", 3.0)],
)
def test_parse_duration(text: float | str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10x", "abc", "-5", "0", "3s2"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_thresholds_parse_k6_forms() -> None:
    p95 = parse_threshold("p(95)<200")
    assert (p95.metric, p95.stat, p95.percentile, p95.op, p95.limit) == (
        "http_req_duration", "p", 95.0, "<", 200.0)
    assert parse_threshold("http_req_duration p(99.9)<=500").percentile == 99.9
    assert parse_threshold("avg<100").stat == "avg"
    assert parse_threshold("med<50").stat == "med"
    assert parse_threshold("max<1000").stat == "max"
    failed = parse_threshold("http_req_failed rate<0.01")
    assert (failed.metric, failed.stat, failed.limit) == ("http_req_failed", "rate", 0.01)
    assert parse_threshold("http_reqs rate>=100").metric == "http_reqs"


@pytest.mark.parametrize("bad", ["p95<200", "p(95)", "p(101)<5", "rate<0.01",
                                 "http_req_failed p(95)<3", "latency<3", "p(95)<<200"])
def test_invalid_threshold_names_expression_and_forms(bad: str) -> None:
    with pytest.raises(ToolError) as err:
        parse_threshold(bad)
    assert err.value.code == "invalid_threshold"
    assert repr(bad) in err.value.message
    assert "p(95)<200" in err.value.hint  # the accepted forms are listed


def test_percentile_is_exact() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_schedule_constant_and_ramp() -> None:
    constant = list(send_offsets([(1.0, 10.0, 10.0)]))
    assert constant == pytest.approx([i / 10 for i in range(10)])
    # 0 -> 100 req/s over 2 s: 100 requests, ever closer together.
    ramp = list(send_offsets([(2.0, 0.0, 100.0)]))
    assert len(ramp) == 100
    gaps = [b - a for a, b in itertools.pairwise(ramp)]
    assert all(g > 0 for g in gaps)
    assert gaps[-1] < gaps[1] / 3
    # request i leaves when the integral of the rate reaches i: t = sqrt(i * 2 / 50)
    assert ramp[50] == pytest.approx((50 * 2 / 50) ** 0.5)
    # a ramp then a plateau: 50 + 100 requests
    assert len(list(send_offsets([(1.0, 0.0, 100.0), (1.0, 100.0, 100.0)]))) == 150


def test_spec_is_registered() -> None:
    spec = get_tool("load_test")
    assert spec.name == "load_test"
    assert spec.runs_code is False
    props = spec.json_schema()["properties"]
    for name in ("url", "method", "rate", "vus", "duration", "stages", "thresholds",
                 "headers", "body", "timeout", "max_in_flight", "emit_locustfile"):
        assert name in props
        assert props[name].get("description"), name


def test_both_models_at_once_is_invalid() -> None:
    with pytest.raises(ValueError):
        LoadTestInput(url="http://127.0.0.1:1/", rate=5, vus=2)


# --------------------------------------------------------------------------- safety


async def test_non_loopback_is_refused_before_any_traffic(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import aiohttp

    attempts: list[Any] = []

    def trap(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", trap)
    monkeypatch.setattr(socket.socket, "connect_ex", trap)
    monkeypatch.setattr(aiohttp, "ClientSession", trap)
    monkeypatch.setattr(aiohttp, "TCPConnector", trap)
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    with pytest.raises(ToolError) as err:
        await run(LoadTestInput(url="http://10.1.2.3/", rate=10, duration=1))
    assert err.value.code == "target_refused"
    assert "PERFAGENT_ALLOWED_HOSTS" in err.value.hint
    assert attempts == []


async def test_unreachable_port_is_a_clear_error(unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}/"
    with pytest.raises(ToolError) as err:
        await run(LoadTestInput(url=url, rate=10, duration=1))
    assert err.value.code == "target_unreachable"
    assert err.value.hint


async def test_invalid_threshold_is_refused_before_the_load() -> None:
    # A listener that records whether anyone connected.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with pytest.raises(ToolError) as err:
            await run(LoadTestInput(url=url, rate=10, duration=1,
                                    thresholds=["p(95)<200", "p95 < 200"]))
        assert err.value.code == "invalid_threshold"
        assert "'p95 < 200'" in err.value.message
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


# --------------------------------------------------------------------------- measuring


async def test_fixed_delay_latency_thresholds_and_progress(http_target: Callable[..., str]
                                                           ) -> None:
    url = http_target("delay", "--delay", "0.02")
    updates: list[tuple[float, str]] = []
    result = await run(
        LoadTestInput(url=url, rate=50, duration=2,
                      thresholds=["p(95)<5", "p(50)<1000", "http_req_failed rate<0.01"]),
        lambda fraction, text: updates.append((fraction, text)),
    )
    assert result.ok and result.model == "open"
    assert result.requests == 100
    assert result.errors == 0 and result.status_counts == {"200": 100}
    assert result.bytes_received == 200
    assert result.latency_ms is not None
    # Every answer waited the server's 20 ms, and loopback adds little.
    assert 19.0 <= result.latency_ms.p50 < 60.0
    assert result.latency_ms.min >= 19.0
    by_name = {m.name: m for m in result.measurements}
    assert {"p50_latency", "p90_latency", "p95_latency", "p99_latency", "max_latency",
            "throughput", "error_rate"} <= set(by_name)
    assert all(m.source == "load_test" and m.target == url for m in result.measurements)
    assert by_name["p95_latency"].budget == "<5" and by_name["p95_latency"].passed is False
    assert by_name["p50_latency"].budget == "<1000" and by_name["p50_latency"].passed is True
    assert by_name["error_rate"].budget == "<1" and by_name["error_rate"].passed is True
    assert by_name["throughput"].value == pytest.approx(50, rel=0.15)
    verdicts = {t.expression: t.passed for t in result.thresholds}
    assert verdicts == {"p(95)<5": False, "p(50)<1000": True, "http_req_failed rate<0.01": True}
    kinds = [f.kind for f in result.findings]
    assert kinds == ["latency_budget_exceeded"]
    assert result.findings[0].severity == "high"
    assert "p(95)<5" in result.findings[0].summary
    assert "p95" in result.summary and "2/3 passed" in result.summary
    assert not result.generator_saturated
    # progress about every 0.5 s, then a final 1.0
    assert len(updates) >= 3
    assert updates[-1][0] == 1.0
    assert [f for f, _ in updates] == sorted(f for f, _ in updates)


async def test_open_model_sees_stalls_that_closed_loop_hides(http_target: Callable[..., str]
                                                            ) -> None:
    """The server freezes 300 ms every second (like a GC pause).

    Timed from each request's intended send time, the requests due during a
    freeze carry the wait: p95 is in the hundreds of ms. Two closed-loop
    users instead just stop sending during a freeze, so only one request per
    user and freeze is slow and p95 stays at a millisecond or so.
    """
    url = http_target("stall", "--stall", "0.3", "--every", "1.0")
    opened = await run(LoadTestInput(url=url, rate=200, duration=3))
    closed = await run(LoadTestInput(url=url, vus=2, duration=3))
    assert opened.latency_ms is not None and closed.latency_ms is not None
    assert opened.latency_ms.p95 > 100.0, opened.summary
    assert closed.latency_ms.p95 < 50.0, closed.summary
    # the stall did happen during the closed run: its max shows it
    assert closed.latency_ms.max > 200.0
    assert closed.model == "closed" and any("closed model" in n for n in closed.notes)
    assert not opened.generator_saturated


async def test_fast_server_thousands_per_second(http_target: Callable[..., str]) -> None:
    url = http_target("fast")
    result = await run(LoadTestInput(url=url, rate=2000, duration=2))
    assert result.requests == 4000
    assert result.errors == 0
    assert result.throughput > 1800, result.summary
    assert not result.generator_saturated, result.summary
    assert result.scheduling_lag_p99_ms is not None and result.scheduling_lag_p99_ms < 10


async def test_in_flight_cap_marks_generator_saturated(http_target: Callable[..., str]) -> None:
    url = http_target("delay", "--delay", "0.02")
    # One request at a time can answer at most 50/s; 100/s are asked for.
    result = await run(LoadTestInput(url=url, rate=100, duration=0.5, max_in_flight=1))
    assert result.generator_saturated and result.in_flight_cap_hit
    finding = next(f for f in result.findings if f.kind == "generator_saturated")
    assert "in-flight cap" in (finding.evidence or "")
    assert "do not trust" in result.summary
    # the waiting counted in the latencies: far above the server's 20 ms
    assert result.latency_ms is not None and result.latency_ms.p95 > 200


async def test_errors_are_counted_and_reported(http_target: Callable[..., str]) -> None:
    url = http_target("fast", "--status", "500")
    result = await run(LoadTestInput(url=url, rate=100, duration=1,
                                     thresholds=["http_req_failed rate<0.01"]))
    assert result.requests == 100
    assert result.errors == 100 and result.error_rate == 100.0
    assert result.status_counts == {"500": 100}
    errors = next(f for f in result.findings if f.kind == "errors")
    assert errors.severity == "high" and "500: 100" in (errors.evidence or "")
    assert [t.passed for t in result.thresholds] == [False]
    rate = next(m for m in result.measurements if m.name == "error_rate")
    assert rate.value == 100.0 and rate.passed is False


async def test_stages_ramp_the_arrival_rate(http_target: Callable[..., str]) -> None:
    url = http_target("fast")
    result = await run(LoadTestInput(
        url=url, stages=[{"duration": "1s", "target": 100}, {"duration": 1, "target": 100}]))
    assert result.planned_duration_s == 2.0
    assert result.requests == 150  # 50 during the ramp, 100 on the plateau
    assert result.rate == 100


async def test_post_body_headers_and_closed_model(http_target: Callable[..., str]) -> None:
    url = http_target("fast")
    result = await run(LoadTestInput(url=url, method="post", vus=3, duration=0.5,
                                     body='{"q": 1}',
                                     headers={"Content-Type": "application/json"}))
    assert result.method == "POST" and result.vus == 3
    assert result.requests > 50 and result.errors == 0
    assert result.scheduling_lag_p99_ms is None  # no schedule in the closed model


def test_locustfile_is_fixed_python_and_the_scenario_is_data() -> None:
    inp = LoadTestInput(url="http://127.0.0.1:8000/items?x=1", method="POST", rate=50,
                        duration="30s", body="{}", thresholds=["p(95)<200"],
                        stages=[{"duration": "10s", "target": 50}], emit_locustfile=True)
    text = locustfile()
    compile(text, "locustfile.py", "exec")
    assert "FastHttpUser" in text and "LoadTestShape" in text
    assert "/items" not in text and "POST" not in text  # never the scenario's text
    scenario = json.loads(scenario_json(locust_scenario(inp)))
    assert scenario["host"] == "http://127.0.0.1:8000"
    assert scenario["path"] == "/items?x=1" and scenario["method"] == "POST"
    assert scenario["body"] == "{}" and scenario["thresholds"] == ["p(95)<200"]
    # 50 req/s from the start (rate is k6's startRate) to 50: 25 users at 2 req/s each
    assert scenario["plan"] == [[10.0, 25.0, 25.0]]
    assert scenario["pace"] == 2.0 and scenario["spawn_rate"] == 25
    assert scenario["drain_s"] == 12.0 and scenario["timeout"] == 10.0
    assert scenario["pin"] is None  # no checked target given


async def test_locustfile_only_when_asked(http_target: Callable[..., str]) -> None:
    url = http_target("fast")
    plain = await run(LoadTestInput(url=url, rate=20, duration=0.2))
    asked = await run(LoadTestInput(url=url, rate=20, duration=0.2, emit_locustfile=True))
    assert plain.locustfile is None and plain.locust_scenario is None
    assert asked.locustfile is not None and "class Target(FastHttpUser)" in asked.locustfile
    assert asked.locust_scenario is not None
    scenario = json.loads(asked.locust_scenario)
    # the addresses the target was checked at, which a hand run connects to as well
    assert scenario["pin"] == {"host": "127.0.0.1", "addresses": ["127.0.0.1"]}
    assert scenario["host"] + scenario["path"] == url


async def test_cancelling_stops_the_generator(http_target: Callable[..., str]) -> None:
    url = http_target("fast")
    task = asyncio.create_task(run(LoadTestInput(url=url, rate=50, duration=60)))
    await asyncio.sleep(0.5)
    assert _generator_running()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # ... and its thread ends soon after, instead of running out its 60 s
    for _ in range(50):
        if not _generator_running():
            break
        await asyncio.sleep(0.1)
    assert not _generator_running()


def _generator_running() -> bool:
    """True while some thread is executing the load generator's code."""
    me = threading.get_ident()
    return any(
        any(f.filename.endswith("loadtest.py") for f in traceback.extract_stack(frame))
        for ident, frame in sys._current_frames().items() if ident != me)
