"""The HTTP API over real sockets: threads, runs, SSE, auth, limits, metrics, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage

from agent.context import Settings
from agent.models.base import ModelError, ModelRequest
from agent.server.app import create_app
from agent.server.config import ServerConfig, ServerConfigError
from agent.service import AgentService
from tests.serving import served

GOOD_ANSWER = "Measured nothing yet: run a load test first."


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream response, as they arrive."""
    event, data = "", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "", ""


class GatedModel:
    """A model that waits for the test to open a gate before it answers (threads safe)."""

    spec = "scripted:gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    async def generate(self, request: ModelRequest) -> AIMessage:
        import asyncio

        self.entered.set()
        await asyncio.to_thread(self.gate.wait, 30)
        return AIMessage(content=GOOD_ANSWER)


class FailingSecondTurn:
    """Answers, then on the next turn streams some text and fails, then answers again."""

    spec = "scripted:flaky"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: ModelRequest) -> AIMessage:
        self.calls += 1
        if self.calls == 2:
            if request.on_text:
                request.on_text("Partial draft that will never fini")
            raise ModelError("the connection dropped mid-answer", provider="scripted",
                             retryable=False)
        return AIMessage(content=GOOD_ANSWER)


@pytest.fixture
def base_url() -> Iterator[str]:
    with served(create_app(ServerConfig())) as url:
        yield url


def _thread(client: httpx.Client) -> str:
    response = client.post("/v1/threads", json={})
    assert response.status_code == 200, response.text
    return response.json()["thread_id"]


def test_thread_run_and_history_round_trip(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        thread = _thread(client)
        result = client.post(f"/v1/threads/{thread}/runs",
                             json={"message": "How should I set a latency budget?"}).json()
        assert result["thread_id"] == thread and result["model"] == "offline"
        assert [c["name"] for c in result["checks"]] == [
            "baseline_established", "impact_quantified", "monitoring_included",
            "implementation_quality", "regression_prevention"]
        history = client.get(f"/v1/threads/{thread}").json()
        assert history["messages"][0] == {"role": "user",
                                          "content": "How should I set a latency budget?"}
        assert history["messages"][-1]["content"] == result["answer"]
        assert [t["result"]["answer"] for t in history["turns"]] == [result["answer"]]
        listed = client.get("/v1/threads").json()["threads"]
        assert listed[0]["thread_id"] == thread and listed[0]["turns"] == 1
        assert listed[0]["title"].startswith("How should I set")


def test_stream_sends_each_step_then_the_turn_result(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        thread = _thread(client)
        with client.stream("POST", f"/v1/threads/{thread}/runs/stream",
                           json={"message": "Why is examples/orders_workload.py slow?"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = list(sse_events(r))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "run_start" and kinds[-1] == "final"
    assert {"node_start", "node_end", "tool_call", "tool_result", "check"} <= set(kinds)
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("check")
    result = events[-1][1]
    profiled = [c for c in result["tool_calls"] if c["name"] == "profile_python"]
    assert profiled and profiled[0]["ok"] and profiled[0]["duration_ms"] > 0
    assert sum(kind == "check" for kind in kinds) == 5
    metrics = httpx.get(f"{base_url}/metrics").text
    assert 'perfagent_tool_duration_seconds_count{ok="true",tool="profile_python"}' in metrics


def test_metrics_report_turns_tools_and_checks(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        thread = _thread(client)
        client.post(f"/v1/threads/{thread}/runs", json={"message": "What is a good p95 target?"})
        text = client.get("/metrics").text
    assert 'perfagent_turn_duration_seconds_count{model="offline",outcome="ok"}' in text
    assert 'perfagent_check_results_total{check="baseline_established"' in text
    assert "perfagent_runs_in_progress 0.0" in text
    kb_queries = re.search(r"^perfagent_kb_query_duration_seconds_count (\S+)$", text, re.M)
    assert kb_queries and float(kb_queries.group(1)) >= 1


@pytest.mark.parametrize(("body", "field"), [
    ({}, "body.message"),
    ({"message": "   "}, "body.message"),
    ({"message": "hi", "model": "gpt-nonsense"}, "body.model"),
    ({"message": "hi", "temperature": 2}, "body.temperature"),
    ({"message": 42}, "body.message"),
])
def test_malformed_bodies_are_422_naming_the_field(base_url: str, body: dict[str, Any],
                                                   field: str) -> None:
    with httpx.Client(base_url=base_url) as client:
        thread = _thread(client)
        response = client.post(f"/v1/threads/{thread}/runs", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in [f["field"] for f in error["fields"]]


def test_broken_json_is_422_and_unknown_thread_404(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as client:
        thread = _thread(client)
        broken = client.post(f"/v1/threads/{thread}/runs", content=b'{"message": ',
                             headers={"content-type": "application/json"})
        assert broken.status_code == 422 and broken.json()["error"]["fields"]
        for path in ("/v1/threads/nope", "/v1/threads/nope/runs", "/v1/threads/nope/runs/stream"):
            method = client.get if path == "/v1/threads/nope" else client.post
            kwargs = {} if method == client.get else {"json": {"message": "hi"}}
            response = method(path, **kwargs)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "thread_not_found"


def test_keys_are_required_when_configured(isolated_state: Path) -> None:
    config = ServerConfig(api_keys=("k-one", "k-two"))
    with served(create_app(config)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/healthz").status_code == 200  # liveness stays open
        assert client.get("/").status_code == 200  # the page itself holds no data
        missing = client.get("/v1/threads")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "unauthorized"
        wrong = client.get("/v1/threads", headers={"Authorization": "Bearer k-three"})
        assert wrong.status_code == 401
        wrong_scheme = client.get("/v1/threads", headers={"Authorization": "Basic k-one"})
        assert wrong_scheme.status_code == 401
        assert client.get("/metrics").status_code == 401
        right = client.get("/v1/threads", headers={"Authorization": "Bearer k-two"})
        assert right.status_code == 200


def test_cors_allows_only_the_configured_origins(isolated_state: Path) -> None:
    config = ServerConfig(cors_origins=("http://ide.local:3000",))
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    with served(create_app(config)) as url, httpx.Client(base_url=url) as client:
        allowed = client.options("/v1/threads",
                                 headers={"Origin": "http://ide.local:3000", **preflight})
        assert allowed.headers["access-control-allow-origin"] == "http://ide.local:3000"
        other = client.options("/v1/threads", headers={"Origin": "http://evil.test", **preflight})
        assert "access-control-allow-origin" not in other.headers
        listed = client.get("/v1/threads", headers={"Origin": "http://ide.local:3000"})
        assert listed.headers["access-control-allow-origin"] == "http://ide.local:3000"


def test_non_loopback_bind_without_keys_refuses_to_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_API_KEYS", raising=False)
    with pytest.raises(ServerConfigError) as refused:
        ServerConfig.from_env(host="0.0.0.0")
    assert "PERFAGENT_API_KEYS" in refused.value.hint
    refused_cli = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--host", "0.0.0.0"],
                                 capture_output=True, text=True, timeout=60)
    assert refused_cli.returncode == 1
    assert "api_keys_required" in refused_cli.stderr and "Traceback" not in refused_cli.stderr
    monkeypatch.setenv("PERFAGENT_API_KEYS", "secret")
    public = ServerConfig.from_env(host="0.0.0.0")
    assert public.api_keys == ("secret",) and not public.allow_code_tools
    assert ServerConfig.from_env(host="127.0.0.1").allow_code_tools


def test_oversize_body_is_413(isolated_state: Path) -> None:
    with served(create_app(ServerConfig(max_body_bytes=2048))) as url, \
            httpx.Client(base_url=url) as client:
        thread = _thread(client)
        response = client.post(f"/v1/threads/{thread}/runs", json={"message": "x" * 4096})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted while read
            yield b'{"message": "'
            for _ in range(8):
                yield b"y" * 512
            yield b'"}'

        streamed = client.post(f"/v1/threads/{thread}/runs", content=chunked(),
                               headers={"content-type": "application/json"})
        assert streamed.status_code == 413


def test_runs_past_the_cap_get_429_and_the_slot_comes_back(isolated_state: Path) -> None:
    model = GatedModel()
    service = AgentService(Settings(), max_concurrent_runs=1, model=model)
    with served(create_app(ServerConfig(), service=service)) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        thread = _thread(client)
        first: dict[str, Any] = {}
        running = threading.Thread(target=lambda: first.update(client.post(
            f"/v1/threads/{thread}/runs", json={"message": "first"}).json()))
        running.start()
        assert model.entered.wait(30)
        busy = client.post(f"/v1/threads/{thread}/runs", json={"message": "second"})
        assert busy.status_code == 429 and busy.headers["retry-after"]
        assert busy.json()["error"]["code"] == "too_many_runs"
        assert client.get("/healthz").json()["active_runs"] == 1
        model.gate.set()
        running.join(30)
        assert first["answer"].startswith(GOOD_ANSWER)
        assert client.get("/healthz").json()["active_runs"] == 0
        again = client.post(f"/v1/threads/{thread}/runs", json={"message": "third"})
        assert again.status_code == 200


def test_a_second_turn_on_a_busy_thread_is_409(isolated_state: Path) -> None:
    model = GatedModel()
    service = AgentService(Settings(), max_concurrent_runs=4, model=model)
    with served(create_app(ServerConfig(), service=service)) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        thread = _thread(client)
        running = threading.Thread(target=lambda: client.post(
            f"/v1/threads/{thread}/runs", json={"message": "first"}))
        running.start()
        assert model.entered.wait(30)
        for path in ("runs", "runs/stream"):
            clash = client.post(f"/v1/threads/{thread}/{path}", json={"message": "again"})
            assert clash.status_code == 409, path
            assert clash.json()["error"]["code"] == "thread_busy"
        model.gate.set()
        running.join(30)
        assert client.post(f"/v1/threads/{thread}/runs",
                           json={"message": "after"}).status_code == 200


def test_model_failure_mid_stream_is_an_error_event_and_the_thread_survives(
        isolated_state: Path) -> None:
    service = AgentService(Settings(max_revisions=0), model=FailingSecondTurn())
    with served(create_app(ServerConfig(), service=service)) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        thread = _thread(client)
        assert client.post(f"/v1/threads/{thread}/runs", json={"message": "one"}).status_code == 200
        with client.stream("POST", f"/v1/threads/{thread}/runs/stream",
                           json={"message": "two"}) as r:
            events = list(sse_events(r))
        kinds = [kind for kind, _ in events]
        assert "text_delta" in kinds and kinds[-1] == "error"
        assert events[-1][1]["code"] == "model_error"
        assert "dropped" in events[-1][1]["message"] and events[-1][1]["hint"]
        third = client.post(f"/v1/threads/{thread}/runs", json={"message": "three"})
        assert third.status_code == 200
        history = client.get(f"/v1/threads/{thread}").json()
        assert [t["message"] for t in history["turns"]] == ["one", "three"]
        users = [m["content"] for m in history["messages"] if m["role"] == "user"]
        assert users == ["one", "two", "three"]  # the failed turn is on record, not lost


def test_client_disconnect_cancels_the_turn_and_its_tool_process(
        isolated_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    workspace = tmp_path / "ws"
    workspace.mkdir()
    pid_file = workspace / "pid"
    (workspace / "spin.py").write_text(
        "import os, time\n"
        f"with open({str(pid_file)!r}, 'w') as f:\n"
        "    f.write(str(os.getpid()))\n"
        "end = time.time() + 60\n"
        "while time.time() < end:\n"
        "    time.sleep(0.05)\n")
    monkeypatch.setenv("PERFAGENT_WORKSPACE", str(workspace))
    with served(create_app(ServerConfig())) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        thread = _thread(client)
        with client.stream("POST", f"/v1/threads/{thread}/runs/stream",
                           json={"message": f"Why is {workspace / 'spin.py'} slow?"}) as r:
            for _ in sse_events(r):  # progress events arrive twice a second
                if pid_file.exists() and pid_file.read_text():
                    # Checked before leaving the loop: leaving it closes the stream,
                    # which (rightly) kills the script at once.
                    pid = int(pid_file.read_text())
                    assert psutil.pid_exists(pid)
                    break
        # The response is closed: the turn must stop and take the script with it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                gone = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                gone = True
            idle = client.get("/healthz").json()["active_runs"] == 0
            if gone and idle:
                break
            time.sleep(0.1)
        assert gone, "the profiled script outlived the cancelled turn"
        assert idle, "the cancelled turn still holds its run slot"


async def test_a_metrics_scrape_under_load_costs_about_a_health_check(
        isolated_state: Path) -> None:
    import asyncio
    import statistics

    from agent.bench import InstantModel

    service = AgentService(Settings(), max_concurrent_runs=64, model=InstantModel())
    with served(create_app(ServerConfig(max_concurrent_runs=64), service=service)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:

            async def turns(n: int) -> None:
                for _ in range(n):
                    thread = (await client.post("/v1/threads", json={})).json()["thread_id"]
                    await client.post(f"/v1/threads/{thread}/runs", json={"message": "hi"})

            async def timed(path: str) -> float:
                started = time.perf_counter()
                assert (await client.get(path)).status_code == 200
                return time.perf_counter() - started

            load = asyncio.gather(*(turns(3) for _ in range(12)))
            await asyncio.sleep(0.3)
            scrapes, checks = [], []
            for _ in range(10):
                scrapes.append(await timed("/metrics"))
                checks.append(await timed("/healthz"))
            await load
    # Both wait behind the same busy event loop; rendering the metrics must not add
    # more than a few milliseconds on top.
    assert statistics.median(scrapes) < statistics.median(checks) * 2 + 0.02
