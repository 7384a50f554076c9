"""The one interface every model provider implements.

A provider turns (system prompt, conversation, tool schemas) into one
assistant message: text and/or tool calls, with token usage. Messages are
LangChain core message objects because LangGraph's ``add_messages`` reducer
and checkpointers already understand them; providers translate them to and
from their wire format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage, BaseMessage

#: Receives text as the model streams it.
TextSink = Callable[[str], None]


@dataclass(frozen=True)
class ToolSchema:
    """A tool as a model sees it: name, what it is for, JSON Schema of its input."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class ModelRequest:
    """Everything one model call needs.

    ``system`` is the rendered persona prompt: long and identical across the
    turns of a thread, so providers that support it mark it cacheable.
    ``context`` carries extra system text that changes per turn (retrieved
    knowledge, earlier baselines); it is kept apart so it does not break the
    persona prompt's cache.
    """

    system: str
    messages: Sequence[BaseMessage]
    tools: Sequence[ToolSchema] = ()
    context: str = ""
    max_tokens: int = 4096
    on_text: TextSink | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class ModelError(Exception):
    """A model call failed after the provider's retries.

    ``retryable`` tells a caller whether trying the same turn later may work
    (rate limits, overload, timeouts) or not (bad key, bad request).
    """

    def __init__(self, message: str, *, provider: str, retryable: bool, hint: str = "") -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
        self.hint = hint


@runtime_checkable
class ChatModel(Protocol):
    """A provider. ``spec`` is the user-facing model spec, e.g. ``anthropic:claude-sonnet-5``."""

    spec: str

    async def generate(self, request: ModelRequest) -> AIMessage:
        """One assistant turn.

        The returned message has ``tool_calls`` (``{"name", "args", "id"}``)
        when the model wants tools, and ``usage_metadata`` with
        ``input_tokens``, ``output_tokens``, ``total_tokens`` and, where the
        provider reports them, ``input_token_details`` ``cache_read`` and
        ``cache_creation``. Raises :class:`ModelError` when the call fails.
        """
        ...
