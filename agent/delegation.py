"""Delegation: run a sub-agent from the persona's delegation table as a tool call.

The sub-agent is the same graph with its own persona file, its own tool
subset and its own five checks, run without persistence (its work is part of
the parent's turn). The delegation table is the source of truth: a target
that is not in the delegating persona's table is refused. Depth is bounded
so sub-agents cannot delegate in circles.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from langchain_core.messages import HumanMessage

from agent.context import Settings
from agent.toolbox import DelegateRunner
from tools import ToolError


@cache
def _subagent_graph() -> Any:
    from agent.graph import build_graph

    return build_graph(checkpointer=False)


def delegate_runner(settings: Settings, depth: int, table: list[str]) -> DelegateRunner:
    """A runner for the agent at ``depth`` whose delegation table lists ``table``;
    it starts sub-agents at ``depth + 1``."""

    async def run(target: str, task: str) -> dict[str, Any]:
        from agent.graph import make_context

        if target not in table:
            raise ToolError("unknown_delegate",
                            f"{target!r} is not in this persona's delegation table",
                            f"choose one of: {', '.join(table) or 'none'}")
        if depth >= settings.max_delegation_depth:
            raise ToolError("delegation_too_deep",
                            f"delegation depth {depth + 1} exceeds the limit "
                            f"{settings.max_delegation_depth}",
                            "answer with what you have instead of delegating again")
        from langgraph.config import get_stream_writer

        # Runs inside the parent's tools node: the sub-agent's events go to the
        # parent's stream (marked with their depth) so a user sees them live.
        forward = get_stream_writer()
        context = make_context(settings, target, depth=depth + 1)
        state: dict[str, Any] = {}
        async for mode, chunk in _subagent_graph().astream(
            {"messages": [HumanMessage(content=task)]}, context=context,
            stream_mode=["custom", "values"],
        ):
            if mode == "custom":
                forward(chunk)
            else:
                state = chunk
        return {
            "persona": target,
            "answer": state.get("answer", ""),
            "checks": list(state.get("checks", {}).values()),
            "measurements": state.get("measurements", []),
            "findings": state.get("findings", []),
        }

    return run
