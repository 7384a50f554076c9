"""Benchmark: perfagent's graph overhead per turn, and ``perfagent --help`` cold start.

Prints ratios measured in one run (never pass/fail times):

- per-turn time of the full perfagent graph (prepare, agent, five checks,
  gate, finalize; SQLite checkpointer) against a bare LangGraph ReAct loop
  (agent <-> tools) on the same checkpointer and the same durability
  (checkpoint when the turn ends), both driven by the same fake model that
  answers at once with a draft passing all five checks;
- cold start of ``perfagent --help`` against a bare ``python -c pass``.

Run: ``python tests/bench/graph_overhead.py [--turns 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


class BareState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


class FakeModel:
    """Answers every request at once with the same passing draft (no tools)."""

    spec = "fake:bench"

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, request: Any) -> Any:
        from langchain_core.messages import AIMessage

        return AIMessage(content=self.text)


def bare_react_graph(model: FakeModel, saver: Any) -> Any:
    """The smallest LangGraph ReAct loop: one model node, one tools node."""
    from langgraph.graph import END, START, StateGraph

    from agent.models.base import ModelRequest

    async def agent(state: BareState) -> dict[str, Any]:
        message = await model.generate(ModelRequest(system="", messages=state["messages"]))
        return {"messages": [message]}

    async def tools(state: BareState) -> dict[str, Any]:
        return {"messages": []}

    def route(state: BareState) -> str:
        return "tools" if state["messages"][-1].tool_calls else END

    graph = StateGraph(BareState)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=saver)


async def time_turns(run_one: Any, turns: int) -> list[float]:
    for _ in range(5):  # warm-up: imports, caches, SQLite pages
        await run_one(0)
    samples = []
    for i in range(turns):
        started = time.perf_counter()
        await run_one(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def graph_overhead(turns: int) -> tuple[float, float]:
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from agent.context import Settings
    from agent.run import run_turn
    from tests.test_graph import PASSING

    model = FakeModel(PASSING)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model="offline", state_dir=Path(tmp))
        async with AsyncSqliteSaver.from_conn_string(str(Path(tmp) / "bare.sqlite")) as saver:
            bare = bare_react_graph(model, saver)

            async def bare_turn(i: int) -> None:
                # Same durability as perfagent's turns: checkpoint once, when the turn ends.
                await bare.ainvoke({"messages": [HumanMessage(content="why is it slow?")]},
                                   {"configurable": {"thread_id": f"b{i}"}}, durability="exit")

            async def full_turn(i: int) -> None:
                result = await run_turn("why is it slow?", settings=settings, model=model,
                                        thread_id=f"f{i}", checkpointer=saver)
                assert all(c.status == "pass" for c in result.checks), result.checks

            bare_ms = statistics.median(await time_turns(bare_turn, turns))
            full_ms = statistics.median(await time_turns(full_turn, turns))
    return full_ms, bare_ms


def cold_start(runs: int) -> tuple[float, float]:
    def median_of(cmd: list[str]) -> float:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    help_ms = median_of([sys.executable, "-m", "agent.cli", "--help"])
    python_ms = median_of([sys.executable, "-c", "pass"])
    return help_ms, python_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    full_ms, bare_ms = asyncio.run(graph_overhead(args.turns))
    help_ms, python_ms = cold_start(args.runs)
    print(f"graph per turn: perfagent {full_ms:.2f} ms, bare ReAct loop {bare_ms:.2f} ms "
          f"-> ratio {full_ms / bare_ms:.2f}x (target <= 2x)")
    print(f"cold start: perfagent --help {help_ms:.0f} ms, python -c pass {python_ms:.0f} ms "
          f"-> ratio {help_ms / python_ms:.2f}x (target: --help < 500 ms)")


if __name__ == "__main__":
    main()
