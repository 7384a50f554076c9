"""The OpenAI-compatible endpoint: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Continue, Cline, Open WebUI and the ``openai`` client can point at perfagent
as if it were a model. The "models" are the personas (``performance-engineer``
and the sub-agents); the language model behind them is the server's.

The chat API is stateless: clients resend the whole conversation each time.
perfagent's threads are not, so each answer links a key of the transcript the
client now holds to the thread, and the next request whose earlier messages
have that key continues the same thread (its measurements and baselines
included). A client may instead name the thread in ``X-Perfagent-Thread``.
With API keys, both ways find only the key's own threads: transcript keys are
kept per API key, and a thread of another key's is "not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Response
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.results import RunEvent
from agent.server.deps import (
    ApiError,
    CurrentViewer,
    Lease,
    Service,
    claim_thread,
    error_responses,
    thread_not_found,
    turn_error,
)
from agent.service import AgentService
from agent.threads import Viewer

#: Accepted as the default persona, for clients that insist on a fixed model name.
DEFAULT_MODEL_ALIAS = "perfagent"
THREAD_HEADER = "X-Perfagent-Thread"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields perfagent uses; sampling parameters and the like are accepted and ignored
    (the agent's behaviour is set by its persona, not by temperature)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool = False
    stream_options: StreamOptions | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "perfagent"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: None = None


def transcript_key(messages: list[tuple[str, str]]) -> str:
    """A key of the user and assistant turns of a conversation (system prompts vary by
    client and are left out)."""
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()


def _dialogue(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.text()) for m in messages if m.role in ("user", "assistant")]


def _persona_for(model: str) -> str:
    from agent.persona import persona_library

    names = persona_library().personas
    if model == DEFAULT_MODEL_ALIAS:
        return "performance-engineer"
    if model not in names:
        raise ApiError(404, "model_not_found", f"there is no model {model!r}",
                       f"use one of: {', '.join([DEFAULT_MODEL_ALIAS, *sorted(names)])} "
                       "(GET /v1/models)")
    return model


def _usage(result: dict[str, Any]) -> CompletionUsage:
    usage = result.get("usage", {})
    prompt, completion = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion,
                           total_tokens=prompt + completion)


class _Turn:
    """What one chat completion maps to: the persona, the question and the thread."""

    def __init__(self, body: ChatCompletionRequest, service: AgentService,
                 thread_header: str | None, viewer: Viewer) -> None:
        dialogue = _dialogue(body.messages)
        if not dialogue or dialogue[-1][0] != "user" or not dialogue[-1][1].strip():
            raise ApiError(422, "invalid_request", "the last message must be a user message "
                           "with text", "end messages with {'role': 'user', 'content': '...'}")
        self.persona = _persona_for(body.model)
        self.model_name = body.model
        self.question = dialogue[-1][1]
        self.dialogue = dialogue
        self.service = service
        self.viewer = viewer
        if thread_header:
            if service.thread(thread_header, viewer) is None:
                raise thread_not_found(thread_header, f"omit {THREAD_HEADER} to start a new thread")
            self.thread_id = thread_header
        else:
            known = service.linked_thread(transcript_key(dialogue[:-1]), viewer) \
                if len(dialogue) > 1 else None
            self.thread_id = known or service.create_thread(self.question, viewer).thread_id

    def remember(self, answer: str) -> None:
        """Link the transcript the client now holds (question and answer) to the thread."""
        self.service.link(transcript_key([*self.dialogue, ("assistant", answer)]),
                          self.thread_id, self.viewer)


def openai_router() -> APIRouter:
    router = APIRouter(tags=["openai"])

    @router.get("/v1/models")
    async def list_models() -> ModelList:
        """The personas, each usable as a model."""
        from agent.persona import persona_library

        names = [DEFAULT_MODEL_ALIAS, *sorted(persona_library().personas)]
        return ModelList(data=[ModelCard(id=name) for name in names])

    @router.post("/v1/chat/completions", response_model=None,
                 responses={200: {"content": {"text/event-stream": {}}},
                            **error_responses(404, 409, 429, 500, 502, 503)})
    async def chat_completions(
        body: ChatCompletionRequest, service: Service, lease: Lease, response: Response,
        viewer: CurrentViewer,
        thread: Annotated[str | None, Header(alias=THREAD_HEADER, max_length=64)] = None,
    ) -> ChatCompletion | EventSourceResponse:
        """A chat completion; ``stream: true`` answers with chunks and ``data: [DONE]``."""
        # Off the event loop: mapping the transcript to a thread reads the index.
        turn = await asyncio.to_thread(_Turn, body, service, thread, viewer)
        await asyncio.to_thread(claim_thread, lease, turn.thread_id)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        headers = {THREAD_HEADER: turn.thread_id}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = service.stream(turn.question, thread_id=turn.thread_id,
                                    persona=turn.persona, slot=lease.slot, node_events=False,
                                    viewer=viewer)
            chunks = lease.track(_encoded(_chunks(events, turn, completion_id, include_usage)))
            return EventSourceResponse(chunks, headers=headers)
        from agent.run import TurnError

        try:
            result = await service.run(turn.question, thread_id=turn.thread_id,
                                       persona=turn.persona, slot=lease.slot, viewer=viewer)
        except TurnError as exc:
            raise turn_error(exc) from None
        await asyncio.to_thread(turn.remember, result.answer)
        response.headers.update(headers)
        return ChatCompletion(
            id=completion_id, created=int(time.time()), model=turn.model_name,
            choices=[Choice(message=AssistantMessage(content=result.answer))],
            usage=_usage(result.model_dump()))

    return router


#: Seconds of silence (a long measurement) after which a comment line keeps proxies
#: and clients from timing the stream out.
PING_INTERVAL_S = 15.0
_END = object()


async def _encoded(chunks: AsyncIterator[dict[str, Any] | str]) -> AsyncIterator[bytes]:
    """SSE bytes of the chunks, with a ``: ping`` comment after each quiet interval.

    The chunks are pulled by a separate task so that waiting for the next one
    can time out without cancelling the turn that produces it.
    """
    from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def pull() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put(exc)
        await queue.put(_END)

    puller = asyncio.create_task(pull())
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(queue.get(), PING_INTERVAL_S)
            except TimeoutError:
                yield KEEPALIVE_COMMENT
                continue
            if chunk is _END:
                return
            if isinstance(chunk, Exception):
                raise chunk
            data = chunk if isinstance(chunk, str) else json.dumps(chunk, separators=(",", ":"))
            yield format_sse_event(data_str=data)
    finally:
        puller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await puller
        await chunks.aclose()  # type: ignore[attr-defined]


async def _chunks(events: AsyncIterator[RunEvent], turn: _Turn, completion_id: str,
                  include_usage: bool) -> AsyncIterator[dict[str, Any] | str]:
    """Run events as ``chat.completion.chunk`` objects, then ``[DONE]``.

    A revised draft cannot be taken back from a client that already showed
    it, so a revision is announced in the text and the new draft follows;
    what finalize adds to the last draft arrives as a last delta.
    """
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": turn.model_name, "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    sent: list[str] = []  # everything the client has been shown, in order
    draft = ""
    async for event in events:
        if event.type == "text_delta" and not event.data.get("depth"):
            draft += event.data["text"]
            sent.append(event.data["text"])
            yield chunk({"content": event.data["text"]})
        elif event.type == "revision" and not event.data.get("depth"):
            failed = ", ".join(event.data.get("failed", [])) or "some checks"
            note = f"\n\n---\n*Revising this draft: {failed} failed.*\n\n"
            draft = ""
            sent.append(note)
            yield chunk({"content": note})
        elif event.type == "final":
            answer = event.data["answer"]
            rest = answer[len(draft):] if answer.startswith(draft) else "\n\n" + answer
            if rest:
                sent.append(rest)
                yield chunk({"content": rest})
            await asyncio.to_thread(turn.remember, "".join(sent))
            yield chunk({}, finish="stop")
            if include_usage:
                yield {**chunk({}), "choices": [], "usage": _usage(event.data).model_dump()}
        elif event.type == "error":
            yield {"error": {"message": event.data["message"], "type": "server_error",
                             "code": event.data["code"], "hint": event.data.get("hint", "")}}
    yield "[DONE]"

