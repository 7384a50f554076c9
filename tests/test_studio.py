"""langgraph.json: the graph it names loads and runs the way a LangGraph server runs it."""

from __future__ import annotations

import importlib
import json

from langchain_core.messages import HumanMessage

from tests.conftest import REPO

CHECKS = ("baseline_established", "impact_quantified", "monitoring_included",
          "implementation_quality", "regression_prevention")


def _graph_from_config() -> object:
    config = json.loads((REPO / "langgraph.json").read_text())
    path, _, attribute = config["graphs"]["perfagent"].partition(":")
    assert (REPO / path).is_file()
    module = path.removeprefix("./").removesuffix(".py").replace("/", ".")
    return getattr(importlib.import_module(module), attribute)


def test_the_configured_graph_shows_every_node() -> None:
    nodes = set(_graph_from_config().get_graph().nodes)  # type: ignore[attr-defined]
    checks = {f"check_{name}" for name in CHECKS}
    assert {"prepare", "agent", "tools", "gate", "revise", "finalize"} | checks <= nodes


async def test_it_runs_with_server_context_or_none() -> None:
    graph = _graph_from_config()
    for context in ({"model": "offline", "persona": "performance-engineer"}, None):
        state = await graph.ainvoke(  # type: ignore[attr-defined]
            {"messages": [HumanMessage(content="What p95 should a checkout API have?")]},
            context=context)
        assert "offline engine" in state["answer"]
        assert set(state["checks"]) == set(CHECKS)
