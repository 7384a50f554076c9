"""A local stand-in for an OpenAI-compatible chat server (Ollama, vLLM, ...).

Routes: ``POST /v1/chat/completions`` (JSON, or SSE when ``stream`` is true:
``chat.completion.chunk`` objects with text deltas and ``tool_calls`` deltas
keyed by ``index``, a final chunk with ``finish_reason``, a usage-only chunk
when ``stream_options.include_usage`` is set, then ``data: [DONE]``) and
``GET /v1/models``. Errors use the OpenAI ``{"error": {...}}`` shape.

It rejects what strict servers reject: unknown roles, tool-call arguments that
are not strings, and tool messages that do not answer the preceding
assistant's tool calls (or assistant tool calls left unanswered).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
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
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}
_ids = itertools.count(1)


class OpenAIStandIn(StandInServer):
    """``with OpenAIStandIn(script=[Reply("hi")]) as api: api.base_url`` (ends in ``/v1``)."""

    provider_name = "openai"

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        default: Step | None = None,
        api_key: str | None = None,
        models: Sequence[str] = ("standin-model",),
    ) -> None:
        super().__init__(script, default=default, api_key=api_key)
        self.models = list(models)

    @property
    def base_url(self) -> str:
        """The ``OPENAI_BASE_URL`` for this server."""
        return f"{self.origin}/v1"

    def completion_bodies(self) -> list[dict[str, Any]]:
        """Bodies of all chat-completion requests received, in order."""
        return self.bodies("/v1/chat/completions")

    def handle(self, http: Exchange) -> None:
        """Route one request."""
        if self.api_key is not None and http.bearer_or_key() != self.api_key:
            self._error(http, 401, "Incorrect API key provided.", code="invalid_api_key")
            return
        if http.method == "GET" and http.path == "/v1/models":
            http.send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "standin"}
                        for m in self.models
                    ],
                },
            )
            return
        if http.method != "POST" or http.path != "/v1/chat/completions":
            self._error(http, 404, f"no route {http.method} {http.path}")
            return
        body = http.body
        if not isinstance(body, dict):
            self._error(http, 400, "request body must be a JSON object")
            return
        problem = validate_chat_request(body)
        if problem:
            self._error(http, 400, problem)
            return

        step = self.next_step()
        if step is None:
            self._error(http, 500, "stand-in script exhausted")
        elif isinstance(step, Hangup):
            if step.mid_stream and body.get("stream"):
                http.start_stream()
                http.sse(_chunk(body["model"], {"role": "assistant", "content": ""}))
                if step.text:
                    http.sse(_chunk(body["model"], {"content": step.text}))
            http.hang_up()
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
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        http.send_json(status, _error_body(status, message, error_type, code), headers=headers)

    def _fail(self, http: Exchange, step: Fail, body: dict[str, Any]) -> None:
        if step.delay:
            time.sleep(step.delay)
        message = step.message or f"stand-in failure {step.status}"
        if step.mid_stream and body.get("stream"):
            http.start_stream()
            http.sse(_chunk(body["model"], {"role": "assistant", "content": ""}))
            http.sse(_error_body(step.status, message, step.error_type, None))
            http.end_stream()
            return
        headers = {} if step.retry_after is None else {"retry-after": f"{step.retry_after:g}"}
        self._error(http, step.status, message, error_type=step.error_type, headers=headers)

    def _reply(self, http: Exchange, step: Reply, body: dict[str, Any]) -> None:
        if step.delay:
            time.sleep(step.delay)
        model = body["model"]
        chunks = step.text_chunks()
        calls = [
            {
                "id": call.id or f"call_standin_{next(_ids)}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for call in step.tool_calls
        ]
        finish = step.stop_reason or ("tool_calls" if calls else "stop")
        usage = self._usage(step, body)

        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(chunks) or None}
            if calls:
                message["tool_calls"] = calls
            http.send_json(
                200,
                {
                    "id": f"chatcmpl-standin-{next(_ids)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                },
            )
            return

        pause = step.chunk_delay
        completion_id = f"chatcmpl-standin-{next(_ids)}"
        http.start_stream()
        http.sse(_chunk(model, {"role": "assistant", "content": ""}, completion_id))
        for text in chunks:
            http.sse(_chunk(model, {"content": text}, completion_id), delay=pause)
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            http.sse(_chunk(model, {"tool_calls": [head]}, completion_id), delay=pause)
            cut = len(arguments) // 2
            for piece in (arguments[:cut], arguments[cut:]):
                delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                http.sse(_chunk(model, delta, completion_id), delay=pause)
        http.sse(_chunk(model, {}, completion_id, finish_reason=finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = _chunk(model, {}, completion_id)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = usage
            http.sse(usage_chunk)
        http.sse("[DONE]")
        http.end_stream()

    def _usage(self, step: Reply, body: dict[str, Any]) -> dict[str, Any]:
        prompt = step.input_tokens
        if prompt is None:
            prompt = estimate_tokens(body.get("messages")) + estimate_tokens(
                body.get("tools") or ""
            )
        completion = step.output_tokens
        if completion is None:
            completion = estimate_tokens("".join(step.text_chunks())) + sum(
                estimate_tokens(call.arguments_json()) for call in step.tool_calls
            )
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if step.cache_read_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": step.cache_read_tokens}
        return usage


def _chunk(
    model: str,
    delta: dict[str, Any],
    completion_id: str = "chatcmpl-standin",
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _error_body(
    status: int, message: str, error_type: str | None, code: str | None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": error_type or error_type_for(status, _ERROR_TYPES, "server_error"),
            "param": None,
            "code": code,
        }
    }


def validate_chat_request(body: dict[str, Any]) -> str | None:
    """The first rule of the chat-completions API the request breaks, or ``None``."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty array"
    for i, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict):
            return f"tools[{i}]: expected a function tool"
        if not function.get("name"):
            return f"tools[{i}].function.name: required"

    pending: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            return f"messages[{i}].role: invalid value {role!r}"
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                return (
                    f"messages[{i}]: messages with role 'tool' must be a response to a "
                    "preceding message with 'tool_calls'"
                )
            pending.discard(call_id)
            continue
        if pending:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id'. Missing: {', '.join(sorted(pending))}"
            )
        if role == "assistant":
            for j, call in enumerate(message.get("tool_calls") or []):
                arguments = (call.get("function") or {}).get("arguments")
                if not isinstance(arguments, str):
                    return f"messages[{i}].tool_calls[{j}].function.arguments: must be a string"
                pending.add(call.get("id"))
        elif message.get("content") in (None, ""):
            return f"messages[{i}].content: must not be empty"
    if pending:
        return "An assistant message with 'tool_calls' must be followed by tool messages."
    return None
