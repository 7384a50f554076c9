"""The graph's state: the conversation plus what this turn measured and decided.

Lists that describe one turn (measurements, findings, tool calls, delegations)
accumulate across parallel nodes and are reset by ``prepare`` at the start of
each turn, so a thread's later turn reports only its own work while the
messages (and so the history) persist through the checkpointer.
Everything here is plain JSON-able data so any checkpointer can store it.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages

#: Written by ``prepare`` to empty a per-turn field.
RESET: Any = {"__reset__": True}


def _is_reset(value: object) -> bool:
    return isinstance(value, dict) and value.get("__reset__") is True


def accumulate(old: list[Any] | None, new: list[Any] | dict[str, Any]) -> list[Any]:
    """Append this update's items; ``RESET`` empties the list."""
    if _is_reset(new):
        return []
    return [*(old or []), *new]  # type: ignore[misc]


def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Merge keys (parallel checks each write their own); ``RESET`` empties it."""
    if _is_reset(new):
        return {}
    return {**(old or {}), **new}


def add_numbers(old: dict[str, float] | None, new: dict[str, Any]) -> dict[str, float]:
    """Sum numbers key by key (token usage, node timings).

    An update carrying the ``RESET`` key starts from empty and then adds its
    other keys, so ``prepare`` can reset the turn and record its own time at once.
    """
    total = {} if new.get("__reset__") is True else dict(old or {})
    for key, value in new.items():
        if key != "__reset__":
            total[key] = total.get(key, 0) + value
    return total


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    #: index in ``messages`` of this turn's user message
    turn_start: int
    persona: str
    depth: int
    measurements: Annotated[list[dict[str, Any]], accumulate]
    findings: Annotated[list[dict[str, Any]], accumulate]
    tool_calls: Annotated[list[dict[str, Any]], accumulate]
    delegations: Annotated[list[dict[str, Any]], accumulate]
    knowledge: list[dict[str, Any]]
    #: earlier measurements of the targets this turn's question names
    baselines: list[dict[str, Any]]
    checks: Annotated[dict[str, dict[str, Any]], merge]
    usage: Annotated[dict[str, float], add_numbers]
    timings: Annotated[dict[str, float], add_numbers]
    steps: int
    revisions: int
    answer: str
