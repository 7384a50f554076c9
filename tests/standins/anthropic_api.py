"""A local stand-in for the Anthropic Messages API (``POST /v1/messages``).

It speaks enough of the protocol for the real ``anthropic`` SDK: a JSON answer
when ``stream`` is false, and otherwise the SSE event sequence the API sends
(``message_start`` with usage, ``content_block_start``/``_delta``/``_stop``
for text and ``tool_use`` blocks with ``input_json_delta``, ``message_delta``
with the stop reason and output tokens, ``message_stop``). Errors use the
API's JSON error shape, so the SDK raises its usual exception classes and
applies its usual retry policy.

It also checks the rules the real API enforces and a provider can break:
strict user/assistant alternation, non-empty text blocks, every ``tool_use``
answered by a ``tool_result`` in the next user message (results first), and at
most four ``cache_control`` breakpoints.

With ``caching=True`` it imitates prompt caching: the request is laid out as
the API caches it (tools, then system blocks, then message blocks); the prefix
up to each ``cache_control`` breakpoint is remembered, and a later request
repeating a remembered prefix reports it as ``cache_read_input_tokens``, while
new cached prefixes count as ``cache_creation_input_tokens``. As with the real
API, a prefix shorter than ``min_cache_tokens`` is not cached.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterable
from typing import Any

from .script import (
    Exchange,
    Fail,
    Hangup,
    Reply,
    StandInServer,
    Step,
    error_type_for,
    estimate_tokens,
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MAX_CACHE_BREAKPOINTS = 4
_ZERO_USAGE = {"input_tokens": 0, "output_tokens": 0}
_ids = itertools.count(1)


class AnthropicStandIn(StandInServer):
    """``with AnthropicStandIn(script=[Reply("hi")]) as api: api.base_url``.

    ``base_url`` is what the SDK takes (it appends ``/v1/messages`` itself).
    """

    provider_name = "anthropic"

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        default: Step | None = None,
        api_key: str | None = None,
        caching: bool = False,
        min_cache_tokens: int = 1024,
    ) -> None:
        super().__init__(script, default=default, api_key=api_key)
        self.caching = caching
        self.min_cache_tokens = min_cache_tokens
        self._cached_prefixes: set[str] = set()

    @property
    def base_url(self) -> str:
        """Root URL for ``anthropic.AsyncAnthropic(base_url=...)``."""
        return self.origin

    def messages_bodies(self) -> list[dict[str, Any]]:
        """Bodies of all ``/v1/messages`` requests received, in order."""
        return self.bodies("/v1/messages")

    # ------------------------------------------------------------------ routing

    def handle(self, http: Exchange) -> None:
        """Route one request."""
        if http.method == "GET" and http.path == "/v1/models":
            http.send_json(200, {"data": [], "has_more": False, "first_id": None, "last_id": None})
            return
        if http.method != "POST" or http.path != "/v1/messages":
            self._error(http, 404, f"no route {http.method} {http.path}")
            return
        credential = http.bearer_or_key()
        if credential is None or (self.api_key is not None and credential != self.api_key):
            self._error(http, 401, "invalid x-api-key")
            return
        body = http.body
        if not isinstance(body, dict):
            self._error(http, 400, "request body must be a JSON object")
            return
        problem = validate_messages_request(body)
        if problem:
            self._error(http, 400, problem)
            return

        step = self.next_step()
        if step is None:
            self._error(http, 500, "stand-in script exhausted", headers={"x-should-retry": "false"})
        elif isinstance(step, Hangup):
            self._hang_up(http, step, body)
        elif isinstance(step, Fail):
            self._fail(http, step, body)
        else:
            self._reply(http, step, body)

    # ------------------------------------------------------------------ answers

    def _error(
        self,
        http: Exchange,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        http.send_json(
            status,
            _error_body(status, message, error_type),
            headers={"request-id": f"req_standin_{next(_ids)}", **(headers or {})},
        )

    def _fail(self, http: Exchange, step: Fail, body: dict[str, Any]) -> None:
        if step.delay:
            time.sleep(step.delay)
        message = step.message or f"stand-in failure {step.status}"
        if step.mid_stream and body.get("stream"):
            http.start_stream()
            http.sse(
                {"type": "message_start", "message": _message_shell(body["model"], _ZERO_USAGE)},
                event="message_start",
            )
            http.sse(_error_body(step.status, message, step.error_type), event="error")
            http.end_stream()
            return
        headers = {} if step.retry_after is None else {"retry-after": f"{step.retry_after:g}"}
        self._error(http, step.status, message, error_type=step.error_type, headers=headers)

    def _hang_up(self, http: Exchange, step: Hangup, body: dict[str, Any]) -> None:
        if step.mid_stream and body.get("stream"):
            http.start_stream()
            http.sse(
                {"type": "message_start", "message": _message_shell(body["model"], _ZERO_USAGE)},
                event="message_start",
            )
            if step.text:
                http.sse(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                    event="content_block_start",
                )
                http.sse(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": step.text},
                    },
                    event="content_block_delta",
                )
        http.hang_up()

    def _reply(self, http: Exchange, step: Reply, body: dict[str, Any]) -> None:
        if step.delay:
            time.sleep(step.delay)
        model = body["model"]
        usage = self._usage(step, body)
        blocks = _content_blocks(step)
        stop_reason = step.stop_reason or ("tool_use" if step.tool_calls else "end_turn")
        if not body.get("stream"):
            message = _message_shell(model, usage)
            content = [{k: v for k, v in b.items() if k != "_wire_arguments"} for b in blocks]
            message.update(content=content, stop_reason=stop_reason)
            http.send_json(200, message, headers={"request-id": f"req_standin_{next(_ids)}"})
            return

        pause = step.chunk_delay
        http.start_stream(headers={"request-id": f"req_standin_{next(_ids)}"})
        start_usage = {**usage, "output_tokens": 1}
        http.sse(
            {"type": "message_start", "message": _message_shell(model, start_usage)},
            event="message_start",
        )
        index = 0
        chunks = step.text_chunks()
        if chunks:
            http.sse(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
                event="content_block_start",
            )
            http.sse({"type": "ping"}, event="ping")
            for chunk in chunks:
                http.sse(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": chunk},
                    },
                    event="content_block_delta",
                    delay=pause,
                )
            http.sse({"type": "content_block_stop", "index": index}, event="content_block_stop")
            index += 1
        for block in blocks:
            if block["type"] != "tool_use":
                continue
            http.sse(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": block["id"],
                        "name": block["name"],
                        "input": {},
                    },
                },
                event="content_block_start",
            )
            arguments = block.pop("_wire_arguments")
            # Split the JSON in two so clients must accumulate partial deltas.
            cut = len(arguments) // 2
            for piece in (arguments[:cut], arguments[cut:]):
                http.sse(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                    event="content_block_delta",
                    delay=pause,
                )
            http.sse({"type": "content_block_stop", "index": index}, event="content_block_stop")
            index += 1
        http.sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
            event="message_delta",
            delay=pause,
        )
        http.sse({"type": "message_stop"}, event="message_stop")
        http.end_stream()

    # ------------------------------------------------------------------ usage & caching

    def _usage(self, step: Reply, body: dict[str, Any]) -> dict[str, int]:
        output = step.output_tokens
        if output is None:
            output = estimate_tokens("".join(step.text_chunks())) + sum(
                estimate_tokens(call.arguments_json()) for call in step.tool_calls
            )
        if self.caching:
            uncached, read, created = self._cache_accounting(body)
        else:
            read, created = step.cache_read_tokens, step.cache_creation_tokens
            uncached = (
                step.input_tokens
                if step.input_tokens is not None
                else max(1, sum(estimate_tokens(s) for s in _segments(body)) - read - created)
            )
        return {
            "input_tokens": uncached,
            "output_tokens": output,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
        }

    def _cache_accounting(self, body: dict[str, Any]) -> tuple[int, int, int]:
        """(uncached input, cache read, cache creation) for a request, updating the cache."""
        segments = _segments(body)
        sizes = [estimate_tokens(_strip_cache_control(s)) for s in segments]
        total = sum(sizes)
        breakpoints = [i for i, s in enumerate(segments) if _has_cache_control(s)]
        hasher = hashlib.sha256(str(body.get("model")).encode())
        prefix_keys: dict[int, str] = {}
        for i, segment in enumerate(segments):
            hasher.update(json.dumps(_strip_cache_control(segment), sort_keys=True).encode())
            if i in breakpoints:
                prefix_keys[i] = hasher.copy().hexdigest()

        read_upto = -1  # longest remembered prefix ending at a breakpoint
        with self._lock:
            for i in breakpoints:
                if prefix_keys[i] in self._cached_prefixes:
                    read_upto = i
            write_upto = read_upto
            for i in breakpoints:
                if i > read_upto and sum(sizes[: i + 1]) >= self.min_cache_tokens:
                    self._cached_prefixes.add(prefix_keys[i])
                    write_upto = i
        read = sum(sizes[: read_upto + 1])
        created = sum(sizes[read_upto + 1 : write_upto + 1])
        return total - read - created, read, created


# ---------------------------------------------------------------------- helpers


def _error_body(status: int, message: str, error_type: str | None) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {
            "type": error_type or error_type_for(status, _ERROR_TYPES, "api_error"),
            "message": message,
        },
    }


def _message_shell(model: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": f"msg_standin_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


def _content_blocks(step: Reply) -> list[dict[str, Any]]:
    """The reply's content blocks; tool_use blocks carry their wire JSON privately."""
    blocks: list[dict[str, Any]] = []
    text = "".join(step.text_chunks())
    if text:
        blocks.append({"type": "text", "text": text})
    for call in step.tool_calls:
        wire = call.arguments_json()
        try:
            parsed = json.loads(wire)
        except ValueError:
            parsed = {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id or f"toolu_standin_{next(_ids)}",
                "name": call.name,
                "input": parsed,
                "_wire_arguments": wire,
            }
        )
    return blocks


def _segments(body: dict[str, Any]) -> list[Any]:
    """The request in the order the API caches it: tools, system, message blocks."""
    segments: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, str):
        segments.append(system)
    elif isinstance(system, list):
        segments.extend(system)
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            segments.extend(content)
        else:
            segments.append(content)
    return segments


def _has_cache_control(segment: Any) -> bool:
    return isinstance(segment, dict) and segment.get("cache_control") is not None


def _strip_cache_control(segment: Any) -> Any:
    if isinstance(segment, dict) and "cache_control" in segment:
        return {k: v for k, v in segment.items() if k != "cache_control"}
    return segment


def validate_messages_request(body: dict[str, Any]) -> str | None:
    """The first rule of the Messages API the request breaks, or ``None``."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"

    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: must be a string or a list of text blocks"
    if isinstance(system, list):
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not block.get("text"):
                return f"system.{i}: text content blocks must be non-empty"

    for i, tool in enumerate(body.get("tools") or []):
        if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            return f"tools.{i}: name and input_schema are required"
        if tool["input_schema"].get("type") != "object":
            return f"tools.{i}.input_schema.type: must be 'object'"

    if sum(_has_cache_control(s) for s in _segments(body)) > _MAX_CACHE_BREAKPOINTS:
        return f"A maximum of {_MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided."

    previous_tool_ids: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        expected = "user" if i % 2 == 0 else "assistant"
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: must be 'user' or 'assistant'"
        if role != expected:
            return (
                "messages: roles must alternate between 'user' and 'assistant', "
                f"starting with 'user' (messages.{i} is '{role}')"
            )
        content = message.get("content")
        blocks: list[Any]
        if isinstance(content, str):
            if not content:
                return f"messages.{i}: text content must be non-empty"
            blocks = [{"type": "text", "text": content}]
        elif isinstance(content, list) and content:
            blocks = content
        else:
            return f"messages.{i}: content must be a non-empty string or list"

        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and not block.get("text"):
                return f"messages.{i}.content.{j}: text content blocks must be non-empty"
            if kind == "tool_use" and role != "assistant":
                return f"messages.{i}.content.{j}: tool_use is only allowed in assistant turns"
            if kind == "tool_result" and role != "user":
                return f"messages.{i}.content.{j}: tool_result is only allowed in user turns"

        if role == "user":
            results = [b for b in blocks if b.get("type") == "tool_result"]
            answered = {b.get("tool_use_id") for b in results}
            if previous_tool_ids - answered:
                missing = ", ".join(sorted(previous_tool_ids - answered))
                return (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {missing}"
                )
            unknown = answered - previous_tool_ids
            if unknown:
                return (
                    f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{', '.join(sorted(map(str, unknown)))}"
                )
            kinds = [b.get("type") for b in blocks]
            if results and kinds[: len(results)] != ["tool_result"] * len(results):
                return f"messages.{i}: tool_result blocks must come first in the content"
            previous_tool_ids = set()
        else:
            previous_tool_ids = {b.get("id") for b in blocks if b.get("type") == "tool_use"}
    if previous_tool_ids:
        return "messages: the last assistant turn has tool_use blocks without tool_result"
    return None
