"""``perfagent bench``: perfagent measures itself, as ratios a noisy machine cannot flake.

Each benchmark compares perfagent with a peer measured in the same run on the
same cores, or with a fixed pure-Python workload (the *calibration unit*,
``calibration_ms``), so a figure means the same on a slow CI runner and on a
laptop:

- ``help_cold_start_ratio``: ``perfagent --help`` against ``python -c pass``;
- ``mcp_first_response_ratio``: ``perfagent mcp`` answering ``initialize``
  against ``python -c pass``;
- ``graph_overhead_ratio``: a turn of the full graph against a bare LangGraph
  ReAct loop, both driven by the same model that answers at once with a draft
  passing the five checks, on the same SQLite checkpointer and durability;
- ``kb_query_p95_cal``: the hybrid knowledge-base query p95 in calibration units;
- ``server_overhead_p95_cal``: what the HTTP server adds around a turn
  (latency minus the turn's own time) at 50 concurrent clients, p95, in
  calibration units;
- ``ask_peak_rss_mb``: peak memory of ``perfagent ask`` (offline, knowledge
  store and embedding model loaded), absolute: memory does not drift with load.

The results are measurements, so ``perfagent budget check`` gates them against
a budget file (the CI uses ``.ci/perf-budgets.yaml``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph.message import add_messages

from tools.base import Measurement

#: A reply that passes all five checks without grounding any figure, so the graph's
#: full path (prepare, agent, five checks, gate, finalize) runs with no revision.
PASSING_DRAFT = """\
Record a baseline first: run a load test against `/orders` and note its p95 latency.

## Recommendation
Add an index on `order_items(order_id)`. Expected gain: roughly 60 % lower p95 latency
(estimate, since the scan is most of each request). One migration, so the ROI is high.

```python
import logging

log = logging.getLogger(__name__)


def create_index(conn):
    try:
        conn.execute("CREATE INDEX IF NOT EXISTS idx_items_order ON order_items(order_id)")
    except Exception:
        log.exception("index creation failed")
        raise
```

## Monitoring
Wrap the handler and each query in OpenTelemetry spans exported to Jaeger, and chart
p95 latency per route on a Grafana dashboard.

## Regression prevention
Keep a performance budget of p95 < 200 ms and run the load test in the CI pipeline on
every pull request, failing the build on a breach.
"""

BenchProgress = Callable[[str], None]


class InstantModel:
    """Answers every request at once with the same text (no tools, no tokens)."""

    spec = "bench:instant"

    def __init__(self, text: str = PASSING_DRAFT) -> None:
        self.text = text

    async def generate(self, request: Any) -> Any:
        from langchain_core.messages import AIMessage

        return AIMessage(content=self.text)


# --------------------------------------------------------------------------- peers


def calibration_ms(rounds: int = 5) -> float:
    """Median time of a fixed pure-Python workload: the unit that absorbs machine speed."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _median_run(cmd: list[str], runs: int, stdin: bytes | None = None,
                until_line: bool = False) -> float:
    """Median wall time (ms) of ``cmd``: to exit, or to its first stdout line."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        if until_line:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(stdin or b"")
            proc.stdin.flush()
            proc.stdout.readline()
            samples.append((time.perf_counter() - started) * 1000)
            proc.kill()
            proc.wait()
        else:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=True)
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def cold_starts(runs: int) -> dict[str, float]:
    python = _median_run([sys.executable, "-c", "pass"], runs)
    help_ms = _median_run([sys.executable, "-m", "agent.cli", "--help"], runs)
    initialize = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "perfagent-bench", "version": "0"}}}) + "\n"
    mcp_ms = _median_run([sys.executable, "-m", "agent.cli", "mcp"], runs,
                         stdin=initialize.encode(), until_line=True)
    return {"python_ms": python, "help_ms": help_ms, "mcp_ms": mcp_ms}


class _BareState(TypedDict):
    messages: Annotated[list[Any], add_messages]


def bare_react_graph(model: InstantModel, saver: Any) -> Any:
    """The smallest LangGraph ReAct loop: one model node, one tools node."""
    from langgraph.graph import END, START, StateGraph

    from agent.models.base import ModelRequest

    async def agent(state: _BareState) -> dict[str, Any]:
        message = await model.generate(ModelRequest(system="", messages=state["messages"]))
        return {"messages": [message]}

    async def tools(state: _BareState) -> dict[str, Any]:
        return {"messages": []}

    def route(state: _BareState) -> str:
        return "tools" if state["messages"][-1].tool_calls else END

    graph = StateGraph(_BareState)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=saver)


async def _time_turns(run_one: Callable[[int], Any], turns: int) -> float:
    for i in range(5):  # warm-up: imports, caches, SQLite pages
        await run_one(-1 - i)
    samples = []
    for i in range(turns):
        started = time.perf_counter()
        await run_one(i)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def graph_overhead(turns: int) -> tuple[float, float]:
    """Median ms per turn: (perfagent's graph, the bare ReAct loop)."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from agent.context import Settings
    from agent.run import run_turn

    model = InstantModel()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model="offline", state_dir=Path(tmp))
        async with AsyncSqliteSaver.from_conn_string(str(Path(tmp) / "bare.sqlite")) as saver:
            bare = bare_react_graph(model, saver)

            async def bare_turn(i: int) -> None:
                await bare.ainvoke({"messages": [HumanMessage(content="why is /orders slow?")]},
                                   {"configurable": {"thread_id": f"b{i}"}}, durability="exit")

            bare_ms = await _time_turns(bare_turn, turns)

        async def perfagent_turn(i: int) -> None:
            await run_turn("why is /orders slow?", thread_id=f"p{i}", settings=settings,
                           model=model, record=False)

        perfagent_ms = await _time_turns(perfagent_turn, turns)
    return perfagent_ms, bare_ms


def kb_query_p95_ms(queries: int) -> float:
    from agent import knowledge

    questions = ["p99 spikes when the cache is cold", "slow query with a missing index",
                 "how to load test an API", "N+1 queries in an ORM", "reduce LCP on a page",
                 "garbage collector pauses", "autoscaling on CPU", "connection pool exhausted"]
    knowledge.search(questions[0], 3)  # store and model loaded outside the timing
    samples = []
    for i in range(queries):
        started = time.perf_counter()
        knowledge.search(f"{questions[i % len(questions)]} {i}", 3)
        samples.append((time.perf_counter() - started) * 1000)
    return sorted(samples)[int(0.95 * (len(samples) - 1))]


def ask_peak_rss_mb() -> float:
    """Peak RSS of one offline ``perfagent ask`` with its store already built.

    A small parent process runs the command and reads the kernel's peak for its
    only child, so no other process of this run can be counted by mistake.
    """
    question = "How should I set a latency budget for an API?"
    ask = [sys.executable, "-m", "agent.cli", "ask", question, "--json"]
    subprocess.run(ask, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    probe = ("import resource, subprocess, sys; "
             "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
             "stderr=subprocess.DEVNULL, check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *ask], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.strip()) / 1024  # Linux reports KiB


def serve_instant(port: int) -> None:
    """A server process whose model answers at once (``--serve-instant``)."""
    import uvicorn

    from agent.context import Settings
    from agent.server.app import create_app
    from agent.server.config import ServerConfig
    from agent.service import AgentService

    config = ServerConfig(port=port, max_concurrent_runs=64)
    service = AgentService(config.agent_settings(Settings()), max_concurrent_runs=64,
                           model=InstantModel())
    uvicorn.run(create_app(config, service=service), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


async def server_overhead_samples(url: str, clients: int, turns_each: int) -> list[float]:
    """Per turn, the client latency of ``POST /v1/threads/{id}/runs`` minus the turn's own
    time (its TurnResult's total), from ``clients`` concurrent clients."""
    import aiohttp

    overheads: list[float] = []

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in range(turns_each):
            async with session.post(f"{url}/v1/threads", json={}) as r:
                thread = (await r.json())["thread_id"]
            started = time.perf_counter()
            async with session.post(f"{url}/v1/threads/{thread}/runs",
                                    json={"message": "hello"}) as r:
                result = await r.json()
            overheads.append((time.perf_counter() - started) * 1000
                             - result["timings_ms"]["total"])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return overheads


def server_overhead_p95_ms(clients: int, turns_each: int) -> float:
    """What the server adds around each turn at ``clients`` concurrent clients (p95, ms)."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.bench", "--serve-instant", str(port)],
            env={**os.environ, "PERFAGENT_STATE_DIR": tmp}, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the benchmark server did not start") from None
                    time.sleep(0.1)
            asyncio.run(server_overhead_samples(url, 1, 5))  # warm-up
            overheads = sorted(asyncio.run(server_overhead_samples(url, clients, turns_each)))
        finally:
            proc.terminate()
            proc.wait(10)
    return overheads[int(0.95 * (len(overheads) - 1))]


# --------------------------------------------------------------------------- the run


def run_benchmarks(*, quick: bool = False,
                   progress: BenchProgress | None = None) -> list[Measurement]:
    """Run every benchmark; the results as measurements (``source`` perfagent bench)."""
    say = progress or (lambda _: None)
    runs, turns, queries, per_client = (3, 60, 40, 2) if quick else (7, 200, 200, 6)
    results: list[Measurement] = []

    def add(name: str, value: float, unit: str) -> None:
        results.append(Measurement(name=name, value=round(value, 3), unit=unit,
                                   source="perfagent bench", target="perfagent"))

    say("calibrating")
    unit = calibration_ms()
    add("calibration_ms", unit, "ms")
    say("cold starts: perfagent --help, perfagent mcp")
    starts = cold_starts(runs)
    add("help_cold_start_ratio", starts["help_ms"] / starts["python_ms"], "x")
    add("mcp_first_response_ratio", starts["mcp_ms"] / starts["python_ms"], "x")
    say("graph overhead against a bare LangGraph loop")
    perfagent_ms, bare_ms = asyncio.run(graph_overhead(turns))
    add("graph_overhead_ratio", perfagent_ms / bare_ms, "x")
    say("knowledge-base queries")
    add("kb_query_p95_cal", kb_query_p95_ms(queries) / unit, "x")
    say("server overhead at 50 clients")
    add("server_overhead_p95_cal", server_overhead_p95_ms(50, per_client) / unit, "x")
    say("peak memory of perfagent ask")
    add("ask_peak_rss_mb", ask_peak_rss_mb(), "MB")
    return results


if __name__ == "__main__" and sys.argv[1:2] == ["--serve-instant"]:
    serve_instant(int(sys.argv[2]))
