"""Claude through the official ``anthropic`` SDK.

What this provider adds on top of the SDK:

* **Wire conversion.** LangChain messages become Messages-API turns. The API
  insists on strict user/assistant alternation and on every ``tool_use`` being
  answered by a ``tool_result`` at the start of the next user turn, so
  consecutive same-role turns are merged (a failed earlier turn can leave two
  user messages in a row) and all results of one tool round go into one user
  turn.
* **Prompt caching.** The persona prompt is long and identical on every turn
  of a thread, so the system block and the tool definitions carry
  ``cache_control`` breakpoints; per-turn ``context`` goes in a second,
  uncached system block after the breakpoint so it never invalidates the cache.
* **Streaming.** Text deltas are forwarded to ``request.on_text`` as they
  arrive; the SDK's accumulated final message is converted to an ``AIMessage``.
* **Errors.** The SDK already retries 408/409/429/5xx (529 "overloaded"
  included: its ``_should_retry`` retries every status >= 500) and connection
  failures/timeouts, with exponential backoff that honours ``retry-after``.
  What survives its ``max_retries`` is mapped to :class:`ModelError` with a
  ``retryable`` verdict and a hint for the user.

``anthropic`` takes over a second to import, so it is imported only when the
first client is built, never when ``agent.models`` is imported.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.models.base import ModelError, ModelRequest, TextSink, ToolSchema

if TYPE_CHECKING:
    import anthropic
    from langchain_core.messages import AIMessage, BaseMessage

#: The Claude model used when a spec names none. A current id of the installed
#: SDK (listed in ``anthropic.types.Model``, absent from
#: ``anthropic/_data/deprecated_models.py``); a test keeps it that way.
DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5"

PROVIDER = "anthropic"
_EPHEMERAL = {"type": "ephemeral"}

#: Error ``type`` values in an Anthropic error body that are worth retrying.
#: A mid-stream ``error`` event arrives with HTTP 200, so the body type is the
#: only signal there.
_RETRYABLE_ERROR_TYPES = frozenset(
    {"rate_limit_error", "overloaded_error", "api_error", "timeout_error"}
)


class AnthropicModel:
    """A :class:`~agent.models.base.ChatModel` backed by the Anthropic Messages API."""

    #: First delay (seconds) before re-sending a request whose stream failed
    #: midway; doubles per retry. Pre-stream retries are timed by the SDK.
    mid_stream_retry_delay: float = 0.5

    def __init__(
        self,
        model: str = DEFAULT_ANTHROPIC_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout: float = 120.0,
    ) -> None:
        """Configure the provider; no network traffic and no SDK import happen here.

        ``api_key`` and ``base_url`` default to ``ANTHROPIC_API_KEY`` and
        ``ANTHROPIC_BASE_URL``. A missing key fails here, at selection time,
        rather than on the first turn.
        """
        self.model = model
        self.spec = f"{PROVIDER}:{model}"
        self.api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.max_retries = max_retries
        self.timeout = timeout
        if not self.api_key:
            raise ModelError(
                "no Anthropic API key configured",
                provider=PROVIDER,
                retryable=False,
                hint="set ANTHROPIC_API_KEY or use --model offline",
            )
        # One SDK client per event loop: its connection pool belongs to the loop
        # that opened it, and a CLI or test suite may run several loops in turn.
        self._client: anthropic.AsyncAnthropic | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"AnthropicModel({self.model!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ client

    def _get_client(self) -> anthropic.AsyncAnthropic:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            import anthropic  # lazy: heavy import

            self._client = anthropic.AsyncAnthropic(
                api_key=self.api_key,
                base_url=self.base_url,
                max_retries=self.max_retries,
                timeout=self.timeout,
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections of the current client, if any."""
        if self._client is not None:
            client, self._client, self._client_loop = self._client, None, None
            await client.close()

    # ------------------------------------------------------------------ generate

    async def generate(self, request: ModelRequest) -> AIMessage:
        """Stream one assistant turn; see :meth:`agent.models.base.ChatModel.generate`.

        Failures before the stream starts are retried by the SDK. A failure
        *inside* an open stream (an ``error`` event such as ``overloaded_error``,
        or a dropped connection) is outside the SDK's retry loop, so it is
        retried here, but only while no text has reached ``on_text`` yet:
        replaying a half-streamed answer would show the user duplicate text.
        """
        params = self.build_params(request)
        client = self._get_client()
        retries = 0
        while True:
            attempt = _Attempt(request.on_text)
            try:
                return await self._stream_once(client, params, attempt)
            except ModelError as error:
                # Pre-stream failures were already retried by the SDK.
                if (
                    not error.retryable
                    or not attempt.opened
                    or attempt.emitted
                    or retries >= self.max_retries
                ):
                    raise
            retries += 1
            await asyncio.sleep(_backoff(retries, self.mid_stream_retry_delay))

    def build_params(self, request: ModelRequest) -> dict[str, Any]:
        """The ``messages.stream`` keyword arguments for a request (no I/O)."""
        stray_system, conversation = split_system(request.messages)
        system = "\n\n".join(part for part in (request.system, stray_system) if part)
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": to_anthropic_messages(conversation),
        }
        blocks = system_blocks(system, request.context)
        if blocks:
            params["system"] = blocks
        if request.tools:
            params["tools"] = tool_definitions(request.tools)
        return params

    async def _stream_once(
        self,
        client: anthropic.AsyncAnthropic,
        params: dict[str, Any],
        attempt: _Attempt,
    ) -> AIMessage:
        """One streamed request (with the SDK's retries), its errors as ModelError."""
        import anthropic

        try:
            async with client.messages.stream(**params) as stream:
                attempt.opened = True
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        attempt.forward(event.delta.text)
                final = await stream.get_final_message()
        except anthropic.APIError as exc:
            raise map_sdk_error(exc, timeout=self.timeout) from exc
        except ValueError as exc:
            # The SDK raises ValueError when the streamed tool input is not
            # valid JSON; a fresh sample usually fixes that. Any other
            # ValueError (e.g. from the caller's on_text) is not ours to map.
            if "tool parameter JSON" not in str(exc):
                raise
            raise ModelError(
                f"Claude returned malformed tool input: {exc}",
                provider=PROVIDER,
                retryable=True,
                hint="retry the turn",
            ) from exc
        except Exception as exc:
            # A connection dropped or stalled mid-stream surfaces as the HTTP
            # library's own transport error, not as an SDK exception.
            if not _is_transport_error(exc):
                raise
            raise ModelError(
                f"the connection to the Anthropic API broke mid-answer: {exc!r}",
                provider=PROVIDER,
                retryable=True,
                hint="check the network connection; retry the turn",
            ) from exc
        return to_ai_message(final)


class _Attempt:
    """What one streaming attempt got to: whether the stream opened, whether text went out."""

    def __init__(self, sink: TextSink | None) -> None:
        self.sink = sink
        self.opened = False
        self.emitted = False

    def forward(self, text: str) -> None:
        """Pass a text delta to the caller's sink."""
        self.emitted = True
        if self.sink is not None:
            self.sink(text)


def _backoff(retry: int, base: float) -> float:
    """Exponential backoff with jitter: base, 2*base, 4*base ... at most 8 s, minus up to 25 %."""
    return min(base * 2 ** (retry - 1), 8.0) * (0.75 + random.random() / 4)


def _is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an httpx-family transport error (the SDK's HTTP library).

    Matched by name so this does not depend on which httpx flavour the
    installed SDK vendors (``httpx`` or ``httpx2``).
    """
    return any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0].startswith("httpx")
        for cls in type(exc).__mro__
    )


# ---------------------------------------------------------------------- conversion


def system_blocks(system: str, context: str) -> list[dict[str, Any]]:
    """System prompt as text blocks: the cached persona prompt, then uncached context.

    The breakpoint sits on the persona block, so the cached prefix is
    ``tools + persona``; ``context`` changes per turn and comes after it.
    """
    blocks: list[dict[str, Any]] = []
    if system:
        blocks.append({"type": "text", "text": system, "cache_control": dict(_EPHEMERAL)})
    if context:
        blocks.append({"type": "text", "text": context})
    return blocks


def tool_definitions(tools: Sequence[ToolSchema]) -> list[dict[str, Any]]:
    """ToolSchemas as API tool definitions; the last one closes a cache breakpoint."""
    definitions = [
        {"name": t.name, "description": t.description, "input_schema": _object_schema(t)}
        for t in tools
    ]
    if definitions:
        definitions[-1]["cache_control"] = dict(_EPHEMERAL)
    return definitions


def _object_schema(tool: ToolSchema) -> dict[str, Any]:
    """The tool's JSON Schema; the API requires a top-level object schema."""
    schema = dict(tool.parameters or {})
    schema.setdefault("type", "object")
    return schema


def split_system(messages: Sequence[BaseMessage]) -> tuple[str, list[BaseMessage]]:
    """Pull stray SystemMessages out of the conversation (the API has no system role)."""
    from langchain_core.messages import SystemMessage

    system_parts: list[str] = []
    rest: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            text = _text_of(message.content)
            if text:
                system_parts.append(text)
        else:
            rest.append(message)
    return "\n\n".join(system_parts), rest


def to_anthropic_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as Messages-API turns that satisfy the API's rules.

    * HumanMessage -> user turn; AIMessage -> assistant turn of ``[text?,
      tool_use...]``; ToolMessage -> ``tool_result`` block in a user turn
      (``is_error`` when the tool failed).
    * Adjacent turns of the same role are merged into one, so consecutive
      ToolMessages form one user turn and repeated user messages stay legal.
    * Within a merged user turn the ``tool_result`` blocks are moved first, as
      the API requires; turns that would be empty are dropped.
    """
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    turns: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, ToolMessage):
            role = "user"
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": _tool_result_content(message.content),
            }
            if message.status == "error":
                result["is_error"] = True
            blocks = [result]
        elif isinstance(message, AIMessage):
            role = "assistant"
            blocks = _content_blocks(message.content)
            blocks += [
                {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": call["name"],
                    "input": call.get("args") or {},
                }
                for call in message.tool_calls
            ]
        elif isinstance(message, HumanMessage):
            role = "user"
            blocks = _content_blocks(message.content)
        else:
            raise ModelError(
                f"cannot send a {type(message).__name__} to Claude",
                provider=PROVIDER,
                retryable=False,
            )
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    _answer_orphan_tool_uses(turns)
    for turn in turns:
        if turn["role"] == "user":
            # Stable sort: tool results first, everything else after, order kept.
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
    return turns


#: Stands in for the result of a tool call that never ran.
INTERRUPTED_TOOL_RESULT = "(no result: the tool call was interrupted or declined)"


def _answer_orphan_tool_uses(turns: list[dict[str, Any]]) -> None:
    """Give every ``tool_use`` a ``tool_result`` in the following user turn.

    A thread can hold tool calls that never ran (a crash or cancellation
    mid-tool, a declined approval at an interrupt). The API rejects such a
    history outright, so each missing result is filled in as an error result
    saying the call did not run; the model can then carry on.
    """
    index = 0
    while index < len(turns):
        turn = turns[index]
        wanted = [b["id"] for b in turn["content"] if b.get("type") == "tool_use"]
        if turn["role"] == "assistant" and wanted:
            if index + 1 == len(turns) or turns[index + 1]["role"] != "user":
                turns.insert(index + 1, {"role": "user", "content": []})
            reply = turns[index + 1]["content"]
            answered = {b.get("tool_use_id") for b in reply if b.get("type") == "tool_result"}
            reply.extend(
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use_id,
                    "content": INTERRUPTED_TOOL_RESULT,
                    "is_error": True,
                }
                for tool_use_id in wanted
                if tool_use_id not in answered
            )
        index += 1


def _content_blocks(content: str | list[Any]) -> list[dict[str, Any]]:
    """Message content as API blocks, without empty text (the API rejects it).

    ``tool_use`` blocks found in an AIMessage's list content are dropped: they
    are rebuilt from ``tool_calls``, which is the authoritative record.
    """
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for item in content:
        if isinstance(item, str):
            if item.strip():
                blocks.append({"type": "text", "text": item})
        elif isinstance(item, dict):
            kind = item.get("type")
            if kind == "text":
                if str(item.get("text", "")).strip():
                    blocks.append({"type": "text", "text": item["text"]})
            elif kind in ("image", "document"):
                blocks.append(item)
    return blocks


def _tool_result_content(content: str | list[Any]) -> str | list[dict[str, Any]]:
    """ToolMessage content as ``tool_result`` content (a string or text/image blocks)."""
    if isinstance(content, str):
        return content
    blocks = _content_blocks(content)
    return blocks or ""


def _text_of(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(b["text"] for b in _content_blocks(content) if b["type"] == "text")


def to_ai_message(message: Any) -> AIMessage:
    """The SDK's final ``Message`` as a LangChain ``AIMessage``.

    ``usage_metadata.input_tokens`` follows LangChain's convention (as in
    ``langchain-anthropic``): it is the *whole* prompt, i.e. the API's
    uncached ``input_tokens`` plus ``cache_read_input_tokens`` plus
    ``cache_creation_input_tokens``, whose split is kept in
    ``input_token_details``. The API's own ``input_tokens`` counts only the
    uncached part, so summing it alone would under-report prompt size.
    """
    from langchain_core.messages import AIMessage

    text_parts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            text_parts.append(block.text)
        elif block.type == "tool_use":
            args = (
                block.input if isinstance(block.input, dict) else {"_raw": json.dumps(block.input)}
            )
            tool_calls.append(
                {"name": block.name, "args": args, "id": block.id, "type": "tool_call"}
            )

    usage = message.usage
    cache_read = usage.cache_read_input_tokens or 0
    cache_creation = usage.cache_creation_input_tokens or 0
    input_tokens = (usage.input_tokens or 0) + cache_read + cache_creation
    output_tokens = usage.output_tokens or 0
    return AIMessage(
        content="".join(text_parts),
        tool_calls=tool_calls,
        id=message.id,
        usage_metadata={
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_token_details": {"cache_read": cache_read, "cache_creation": cache_creation},
        },
        response_metadata={
            "stop_reason": message.stop_reason,
            "model": message.model,
            "model_provider": PROVIDER,
        },
    )


# ---------------------------------------------------------------------- errors


def map_sdk_error(exc: Exception, *, timeout: float) -> ModelError:
    """An SDK exception (after the SDK's own retries) as a :class:`ModelError`."""
    import anthropic

    if isinstance(exc, anthropic.APITimeoutError):
        return ModelError(
            f"Claude did not answer within {timeout:g}s (after retries)",
            provider=PROVIDER,
            retryable=True,
            hint="try again, or raise the timeout",
        )
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelError(
            f"could not reach the Anthropic API: {exc}",
            provider=PROVIDER,
            retryable=True,
            hint="check the network connection and ANTHROPIC_BASE_URL",
        )
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = exc.type or ""
        detail = exc.api_message or str(exc)
        request_id = f" [request-id {exc.request_id}]" if exc.request_id else ""
        # An ``error`` event inside a stream arrives on the stream's HTTP 200.
        label = kind if status < 400 and kind else f"{status} {kind}".strip()
        message = f"Anthropic API error {label}: {detail}{request_id}"
        if status == 429 or kind == "rate_limit_error":
            return ModelError(
                message,
                provider=PROVIDER,
                retryable=True,
                hint="rate limited: wait a minute or lower eval --concurrency",
            )
        if status == 529 or kind == "overloaded_error":
            return ModelError(
                message,
                provider=PROVIDER,
                retryable=True,
                hint="the API is overloaded; try again shortly",
            )
        if status in (408, 409) or status >= 500 or kind in _RETRYABLE_ERROR_TYPES:
            return ModelError(
                message, provider=PROVIDER, retryable=True, hint="a server-side failure; retry"
            )
        if status == 401:
            hint = "check ANTHROPIC_API_KEY (it was rejected), or use --model offline"
        elif status == 403:
            hint = "the key lacks permission for this model or feature"
        elif status == 404:
            hint = (
                "check the model id (e.g. --model anthropic:claude-sonnet-5) and ANTHROPIC_BASE_URL"
            )
        elif status == 402:
            hint = "billing: check the account's credit"
        else:
            hint = "the request was rejected; this is likely a bug in the request, not transient"
        return ModelError(message, provider=PROVIDER, retryable=False, hint=hint)
    return ModelError(f"Anthropic SDK error: {exc}", provider=PROVIDER, retryable=False)
