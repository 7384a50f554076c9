"""Any OpenAI-compatible chat server: Ollama, vLLM, llama.cpp server, LM Studio.

The provider speaks ``POST {base}/chat/completions`` with ``stream: true``
directly over ``httpx`` instead of depending on the ``openai`` package: the
subset these servers implement is small, and owning the SSE parsing lets it
tolerate their differences (tool-call deltas without ``index``, ``error``
payloads inside the stream, missing usage).

Conventions chosen here:

* ``request.system``, ``request.context`` and any stray SystemMessages become
  ONE leading system message (persona first, per-turn context last). Several
  chat templates used by local servers accept only a single system message at
  the start, and keeping the persona text first keeps the token prefix stable,
  which is what vLLM's and llama.cpp's automatic prefix caching reuse.
* Tool-call arguments arrive as JSON text in fragments; they are joined per
  call and parsed once at the end. Arguments that do not parse (small local
  models produce these) are kept verbatim as ``{"_raw": text}`` so the graph
  can report them instead of crashing, and are sent back verbatim.
* ``response_metadata["stop_reason"]`` uses the Anthropic provider's words
  (``end_turn``, ``tool_use``, ``max_tokens``) so the graph can check one
  vocabulary; the server's own value is kept as ``finish_reason``.
* Retries: 408/409/429/5xx, connection failures and timeouts are retried with
  exponential backoff and jitter, honouring ``Retry-After``, but only while
  no text has been streamed to the caller (a replay would duplicate it).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.models.base import ModelError, ModelRequest, TextSink, ToolSchema

if TYPE_CHECKING:
    import httpx
    from langchain_core.messages import AIMessage, BaseMessage

PROVIDER = "openai"
#: Ollama's OpenAI-compatible endpoint, the most common local server.
DEFAULT_OPENAI_BASE_URL = "http://127.0.0.1:11434/v1"

_RETRY_STATUSES = frozenset({408, 409, 429})
_STOP_REASONS = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


class OpenAICompatibleModel:
    """A :class:`~agent.models.base.ChatModel` for OpenAI-compatible servers."""

    #: Backoff: first delay in seconds (doubled per retry) and its ceiling.
    retry_base_delay: float = 0.5
    retry_max_delay: float = 8.0
    #: A ``Retry-After`` longer than this ends the retries: waiting that long
    #: inside one turn is worse than reporting a retryable error.
    max_retry_after: float = 60.0

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout: float = 120.0,
    ) -> None:
        """``api_key`` (optional: local servers rarely need one) and ``base_url``
        default to ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``."""
        self.model = model
        self.spec = f"{PROVIDER}:{model}"
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL
        self.base_url = base.rstrip("/")
        self.max_retries = max_retries
        self.timeout = timeout
        # One client per event loop: an httpx pool belongs to the loop that opened it.
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatibleModel({self.model!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ client

    def _get_client(self) -> httpx.AsyncClient:
        import httpx  # imported on first use: keeps `import agent` cheap

        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            headers = {"accept": "text/event-stream"}
            if self.api_key:
                headers["authorization"] = f"Bearer {self.api_key}"
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections of the current client, if any."""
        if self._client is not None:
            client, self._client, self._client_loop = self._client, None, None
            await client.aclose()

    # ------------------------------------------------------------------ generate

    def build_body(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body for ``/chat/completions`` (no I/O)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(request.system, request.context, request.messages),
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = tool_definitions(request.tools)
        return body

    async def generate(self, request: ModelRequest) -> AIMessage:
        """Stream one assistant turn; see :meth:`agent.models.base.ChatModel.generate`."""
        body = self.build_body(request)
        client = self._get_client()
        retry = 0
        while True:
            stream = _StreamState(request.on_text)
            try:
                return await self._stream_once(client, body, stream)
            except _Retryable as failure:
                delay = failure.retry_after
                if delay is None:
                    delay = self._backoff(retry + 1)
                if stream.emitted or retry >= self.max_retries or delay > self.max_retry_after:
                    raise failure.error from failure.__cause__
            retry += 1
            await asyncio.sleep(delay)

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with jitter (75-100 % of the nominal delay)."""
        nominal = min(self.retry_base_delay * 2 ** (retry - 1), self.retry_max_delay)
        return nominal * (0.75 + random.random() / 4)

    async def _stream_once(
        self, client: httpx.AsyncClient, body: dict[str, Any], stream: _StreamState
    ) -> AIMessage:
        """One HTTP attempt: request, parse the SSE stream, build the message."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    raw = await response.aread()
                    raise self._status_failure(response.status_code, raw, response.headers)
                async for line in response.aiter_lines():
                    if stream.feed_line(line):
                        break
        except httpx.TimeoutException as exc:
            raise _Retryable(
                ModelError(
                    f"{self.base_url} did not answer within {self.timeout:g}s",
                    provider=PROVIDER,
                    retryable=True,
                    hint="a local model may still be loading; retry or raise the timeout",
                )
            ) from exc
        except httpx.TransportError as exc:
            raise _Retryable(
                ModelError(
                    f"could not reach {self.base_url}: {exc!r}",
                    provider=PROVIDER,
                    retryable=True,
                    hint=(
                        f"is the server running at {self.base_url}? "
                        "(e.g. `ollama serve`; set OPENAI_BASE_URL)"
                    ),
                )
            ) from exc
        if stream.error is not None:
            raise stream.error
        if not stream.done and stream.finish_reason is None:
            raise _Retryable(
                ModelError(
                    "the stream ended before the answer was complete",
                    provider=PROVIDER,
                    retryable=True,
                    hint="check the server's log",
                )
            )
        return stream.to_ai_message(self.model)

    def _status_failure(
        self, status: int, raw: bytes, headers: httpx.Headers
    ) -> ModelError | _Retryable:
        """An HTTP error response as a ModelError, wrapped as retryable when it is."""
        detail = _error_detail(raw)
        message = f"{self.base_url} answered {status}: {detail}"
        if status in _RETRY_STATUSES or status >= 500:
            hint = (
                "rate limited: wait, or lower --concurrency"
                if status == 429
                else "the server failed; check its log"
            )
            error = ModelError(message, provider=PROVIDER, retryable=True, hint=hint)
            return _Retryable(error, retry_after=parse_retry_after(headers.get("retry-after")))
        if status in (401, 403):
            hint = "set OPENAI_API_KEY to a key this server accepts"
        elif status == 404:
            hint = (
                f"is model '{self.model}' available? see GET {self.base_url}/models "
                f"(Ollama: `ollama pull {self.model}`); check OPENAI_BASE_URL"
            )
        else:
            hint = "the server rejected the request (prompt too long? tools unsupported?)"
        return ModelError(message, provider=PROVIDER, retryable=False, hint=hint)


class _Retryable(Exception):
    """Internal: a failed attempt that may be retried; ``error`` is raised if not."""

    def __init__(self, error: ModelError, *, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


# ---------------------------------------------------------------------- stream parsing


@dataclass
class _ToolCallBuffer:
    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass
class _StreamState:
    """Accumulates one streamed completion from its SSE lines."""

    sink: TextSink | None
    text: list[str] = field(default_factory=list)
    calls: list[_ToolCallBuffer] = field(default_factory=list)
    by_index: dict[int, _ToolCallBuffer] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    done: bool = False
    emitted: bool = False
    error: ModelError | None = None

    def feed_line(self, line: str) -> bool:
        """Consume one SSE line; True when the stream is over."""
        line = line.strip()
        if line.startswith("error:"):  # llama.cpp reports failures this way
            self.error = _stream_error(line[len("error:") :].strip())
            return True
        if not line.startswith("data:"):
            return False  # blank separators, comments, ``event:`` lines
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            return False
        if not isinstance(chunk, dict):
            return False
        if chunk.get("error"):
            self.error = _stream_error(data)
            return True
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.text.append(content)
                self.emitted = True
                if self.sink is not None:
                    self.sink(content)
            for position, fragment in enumerate(delta.get("tool_calls") or []):
                self._add_tool_fragment(position, fragment)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return False

    def _add_tool_fragment(self, position: int, fragment: dict[str, Any]) -> None:
        """Merge a tool-call delta into its call, matched by ``index`` (or by id)."""
        index = fragment.get("index")
        call_id = fragment.get("id")
        buffer: _ToolCallBuffer | None
        if index is not None:
            buffer = self.by_index.get(index)
            if buffer is None:
                buffer = self.by_index[index] = _ToolCallBuffer()
                self.calls.append(buffer)
        else:
            # Some servers omit ``index``: a new id starts a new call, and a
            # fragment without an id continues the latest one.
            known = next((c for c in self.calls if call_id and c.id == call_id), None)
            if known is not None:
                buffer = known
            elif call_id or not self.calls:
                buffer = _ToolCallBuffer()
                self.calls.append(buffer)
            else:
                buffer = self.calls[-1]
        if call_id:
            buffer.id = call_id
        function = fragment.get("function") or {}
        if function.get("name"):
            buffer.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            buffer.arguments += arguments
        elif isinstance(arguments, dict):  # a few servers send an object
            buffer.arguments += json.dumps(arguments)

    def to_ai_message(self, requested_model: str) -> AIMessage:
        """The accumulated completion as an AIMessage."""
        from langchain_core.messages import AIMessage

        tool_calls = [
            {
                "name": call.name,
                "args": parse_arguments(call.arguments),
                "id": call.id or f"call_{uuid.uuid4().hex[:24]}",
                "type": "tool_call",
            }
            for call in self.calls
            if call.name
        ]
        usage = self.usage or {}
        input_tokens = int(usage.get("prompt_tokens") or 0)
        output_tokens = int(usage.get("completion_tokens") or 0)
        usage_metadata: dict[str, Any] = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": int(usage.get("total_tokens") or input_tokens + output_tokens),
        }
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            # OpenAI counts cached tokens inside prompt_tokens, as LangChain does.
            usage_metadata["input_token_details"] = {"cache_read": int(cached)}
        finish = self.finish_reason
        if finish is None and tool_calls:
            finish = "tool_calls"
        return AIMessage(
            content="".join(self.text),
            tool_calls=tool_calls,
            usage_metadata=usage_metadata,
            response_metadata={
                "stop_reason": _STOP_REASONS.get(finish or "", finish),
                "finish_reason": finish,
                "model": self.model or requested_model,
                "model_provider": PROVIDER,
                "usage_reported": self.usage is not None,
            },
        )


def parse_arguments(text: str) -> dict[str, Any]:
    """Tool-call arguments from their JSON text; unparseable text as ``{"_raw": text}``."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


def _stream_error(data: str) -> ModelError:
    """An error reported inside an otherwise successful stream."""
    detail = _error_detail(data.encode())
    return ModelError(
        f"the server reported an error mid-stream: {detail}",
        provider=PROVIDER,
        retryable=False,
        hint="check the server's log (context length exceeded? model crashed?)",
    )


def _error_detail(raw: bytes) -> str:
    """The human-readable message of an error body, in any of the usual shapes."""
    text = raw.decode(errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, str):
            return error
        if isinstance(error, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(error.get(key), str):
                    return error[key]
        if isinstance(payload.get("detail"), str):
            return payload["detail"]
    return text[:300]


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number (fractions tolerated) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


# ---------------------------------------------------------------------- conversion


def tool_definitions(tools: Sequence[ToolSchema]) -> list[dict[str, Any]]:
    """ToolSchemas in the chat-completions ``function`` tool format."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters or {"type": "object", "properties": {}}),
            },
        }
        for tool in tools
    ]


def to_openai_messages(
    system: str, context: str, messages: Sequence[BaseMessage]
) -> list[dict[str, Any]]:
    """The conversation as chat-completions messages (see the module notes)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    system_parts = [part for part in (system,) if part]
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            text = _text_of(message.content)
            if text:
                system_parts.append(text)
        elif isinstance(message, HumanMessage):
            content = _user_content(message.content)
            if not content:
                continue
            previous = out[-1] if out else None
            if (
                previous is not None
                and previous["role"] == "user"
                and isinstance(previous["content"], str)
                and isinstance(content, str)
            ):
                # Strict templates require alternation; a failed turn can leave
                # two user messages in a row.
                previous["content"] += "\n\n" + content
            else:
                out.append({"role": "user", "content": content})
        elif isinstance(message, AIMessage):
            text = _text_of(message.content)
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": _arguments_text(call)},
                    }
                    for call in message.tool_calls
                ]
            if text or message.tool_calls:
                out.append(entry)
        elif isinstance(message, ToolMessage):
            text = _text_of(message.content)
            if message.status == "error":
                text = f"ERROR: {text}"
            out.append({"role": "tool", "tool_call_id": message.tool_call_id, "content": text})
        else:
            raise ModelError(
                f"cannot send a {type(message).__name__} to an OpenAI-compatible server",
                provider=PROVIDER,
                retryable=False,
            )
    out = _answer_orphan_tool_calls(out)
    if context:
        system_parts.append(context)
    if system_parts:
        out.insert(0, {"role": "system", "content": "\n\n".join(system_parts)})
    return out


#: Stands in for the result of a tool call that never ran.
INTERRUPTED_TOOL_RESULT = "ERROR: no result: the tool call was interrupted or declined"


def _answer_orphan_tool_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Follow every assistant tool call with a tool message answering it.

    A thread can hold tool calls that never ran (a crash mid-tool, a declined
    approval); strict servers reject that history, so the missing answers are
    added, saying the call did not run.
    """
    fixed: list[dict[str, Any]] = []
    pending: list[str] = []

    def flush() -> None:
        fixed.extend(
            {"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_TOOL_RESULT}
            for call_id in pending
        )
        pending.clear()

    for message in messages:
        if message["role"] == "tool" and message["tool_call_id"] in pending:
            pending.remove(message["tool_call_id"])
        elif message["role"] != "tool":
            flush()
        fixed.append(message)
        if message["role"] == "assistant":
            pending.extend(call["id"] for call in message.get("tool_calls", []))
    flush()
    return fixed


def _arguments_text(call: dict[str, Any]) -> str:
    """Arguments as JSON text; ``{"_raw": text}`` goes back exactly as received."""
    args = call.get("args") or {}
    if set(args) == {"_raw"} and isinstance(args["_raw"], str):
        return args["_raw"]
    return json.dumps(args)


def _user_content(content: str | list[Any]) -> str | list[dict[str, Any]]:
    """User content: a string, or content parts when images are present."""
    if isinstance(content, str):
        return content if content.strip() else ""
    parts: list[dict[str, Any]] = []
    for item in content:
        if isinstance(item, str):
            parts.append({"type": "text", "text": item})
        elif isinstance(item, dict) and item.get("type") == "text":
            parts.append({"type": "text", "text": item.get("text", "")})
        elif isinstance(item, dict) and item.get("type") == "image_url":
            parts.append(item)
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _text_of(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        item if isinstance(item, str) else str(item.get("text", ""))
        for item in content
        if isinstance(item, str) or (isinstance(item, dict) and item.get("type") == "text")
    )
