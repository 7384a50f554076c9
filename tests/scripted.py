"""A scripted tool-calling model: returns planned assistant messages in order.

Used to drive the real graph deterministically, the way an LLM would, and to
record what each call received.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage

from agent.models.base import ModelRequest

Step = AIMessage | Callable[[ModelRequest], AIMessage]


def call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


class ScriptedModel:
    def __init__(self, steps: list[Step], spec: str = "scripted:test") -> None:
        self.steps = list(steps)
        self.spec = spec
        self.requests: list[ModelRequest] = []

    async def generate(self, request: ModelRequest) -> AIMessage:
        self.requests.append(request)
        if not self.steps:
            raise AssertionError("the scripted model ran out of steps")
        step = self.steps.pop(0)
        message = step(request) if callable(step) else step
        if request.on_text and message.content:
            request.on_text(str(message.content))
        return message
