"""OpenAICompatibleModel over real httpx against a local OpenAI-compatible stand-in.

The stand-in (tests/standins/openai_api.py) rejects conversations a strict
server rejects (tool messages that answer nothing, unanswered tool calls), so
a request it accepts is well-formed.
"""

from __future__ import annotations

import json
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent.models.base import ChatModel, ModelError, ModelRequest, ToolSchema
from agent.models.openai import (
    DEFAULT_OPENAI_BASE_URL,
    INTERRUPTED_TOOL_RESULT,
    OpenAICompatibleModel,
    _StreamState,
)
from tests.standins import Fail, Hangup, OpenAIStandIn, Reply, ToolCall

MODEL = "qwen3:8b"
PROBE = ToolSchema(
    name="http_probe",
    description="Measure latency of a URL.",
    parameters={"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
)


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(models=[MODEL]) as server:
        yield server


MakeModel = Callable[..., OpenAICompatibleModel]


@pytest.fixture
async def make_model(api: OpenAIStandIn) -> AsyncIterator[MakeModel]:
    """Builds models for the stand-in (fast backoff) and closes them afterwards."""
    made: list[OpenAICompatibleModel] = []

    def factory(**kwargs: typing.Any) -> OpenAICompatibleModel:
        kwargs.setdefault("base_url", api.base_url)
        kwargs.setdefault("max_retries", 2)
        kwargs.setdefault("timeout", 5.0)
        model = OpenAICompatibleModel(MODEL, **kwargs)
        model.retry_base_delay = 0.01  # keep backoff tests fast
        made.append(model)
        return model

    yield factory
    for model in made:
        await model.aclose()


def ask(text: str, **kwargs: typing.Any) -> ModelRequest:
    return ModelRequest(
        system="You are a performance engineer.", messages=[HumanMessage(text)], **kwargs
    )


# ---------------------------------------------------------------------- happy paths


async def test_streams_text_in_order_and_sends_a_streaming_request(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(Reply(["Add ", "an ", "index."], chunk_delay=0.1))
    seen: list[tuple[float, str]] = []
    model = make_model()
    assert isinstance(model, ChatModel)
    assert model.spec == f"openai:{MODEL}"
    message = await model.generate(
        ModelRequest(
            system="persona",
            context="baseline p95 140 ms",
            messages=[HumanMessage("why slow?")],
            max_tokens=321,
            on_text=lambda text: seen.append((time.monotonic(), text)),
        )
    )
    done = time.monotonic()
    assert [text for _, text in seen] == ["Add ", "an ", "index."]
    assert message.content == "Add an index."
    assert message.response_metadata["stop_reason"] == "end_turn"
    assert message.response_metadata["finish_reason"] == "stop"
    assert done - seen[0][0] >= 0.15  # the first delta arrived before the stream ended

    body = api.completion_bodies()[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 321
    assert body["model"] == MODEL
    assert body["messages"] == [
        {"role": "system", "content": "persona\n\nbaseline p95 140 ms"},
        {"role": "user", "content": "why slow?"},
    ]
    assert "authorization" not in api.requests[0].headers  # no key configured


async def test_tool_call_round_trip(api: OpenAIStandIn, make_model: MakeModel) -> None:
    api.push(
        Reply(
            tool_calls=[
                ToolCall("http_probe", {"url": "http://a/"}, id="call_a"),
                ToolCall("http_probe", {"url": "http://b/"}, id="call_b"),
            ]
        ),
        Reply("a is faster."),
    )
    model = make_model()
    history: list = [HumanMessage("compare a and b")]
    first = await model.generate(ModelRequest(system="s", messages=history, tools=[PROBE]))
    assert first.tool_calls == [
        {"name": "http_probe", "args": {"url": "http://a/"}, "id": "call_a", "type": "tool_call"},
        {"name": "http_probe", "args": {"url": "http://b/"}, "id": "call_b", "type": "tool_call"},
    ]
    assert first.response_metadata["stop_reason"] == "tool_use"

    history += [
        first,
        ToolMessage("80 ms", tool_call_id="call_a"),
        ToolMessage("connection refused", tool_call_id="call_b", status="error"),
    ]
    second = await model.generate(ModelRequest(system="s", messages=history, tools=[PROBE]))
    assert second.content == "a is faster."

    body = api.completion_bodies()[1]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "http_probe",
                "description": PROBE.description,
                "parameters": PROBE.parameters,
            },
        }
    ]
    assistant, result_a, result_b = body["messages"][2:]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [
        {"url": "http://a/"},
        {"url": "http://b/"},
    ]
    assert result_a == {"role": "tool", "tool_call_id": "call_a", "content": "80 ms"}
    assert result_b == {
        "role": "tool",
        "tool_call_id": "call_b",
        "content": "ERROR: connection refused",
    }


async def test_malformed_arguments_are_kept_raw_and_sent_back_verbatim(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    raw = '{"url": "http://a/", '
    api.push(Reply(tool_calls=[ToolCall("http_probe", raw_arguments=raw, id="c1")]), Reply("ok"))
    model = make_model()
    first = await model.generate(ask("go", tools=[PROBE]))
    assert first.tool_calls[0]["args"] == {"_raw": raw}
    history = [HumanMessage("go"), first, ToolMessage("bad arguments", tool_call_id="c1")]
    await model.generate(ModelRequest(system="s", messages=history, tools=[PROBE]))
    sent_call = api.completion_bodies()[1]["messages"][2]["tool_calls"][0]
    assert sent_call["function"]["arguments"] == raw


async def test_usage_from_final_chunk(api: OpenAIStandIn, make_model: MakeModel) -> None:
    api.push(Reply("ok", input_tokens=900, output_tokens=12, cache_read_tokens=512))
    message = await make_model().generate(ask("hi"))
    assert message.usage_metadata == {
        "input_tokens": 900,
        "output_tokens": 12,
        "total_tokens": 912,
        "input_token_details": {"cache_read": 512},
    }
    assert message.response_metadata["usage_reported"] is True


async def test_consecutive_user_messages_are_merged(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(Reply("ok"))
    await make_model().generate(
        ModelRequest(system="s", messages=[HumanMessage("first"), HumanMessage("second")])
    )
    assert api.completion_bodies()[0]["messages"][1:] == [
        {"role": "user", "content": "first\n\nsecond"}
    ]


async def test_tool_calls_that_never_ran_get_an_answer(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(Reply("ok"))
    history = [
        HumanMessage("probe it"),
        AIMessage("", tool_calls=[{"name": "http_probe", "args": {"url": "u"}, "id": "c9"}]),
        HumanMessage("no, just answer"),
    ]
    await make_model().generate(ModelRequest(system="s", messages=history, tools=[PROBE]))
    assert api.completion_bodies()[0]["messages"][3:] == [
        {"role": "tool", "tool_call_id": "c9", "content": INTERRUPTED_TOOL_RESULT},
        {"role": "user", "content": "no, just answer"},
    ]


async def test_key_and_base_url_come_from_environment(
    make_model: MakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OpenAIStandIn(script=[Reply("hello")], api_key="local-secret") as api:
        monkeypatch.setenv("OPENAI_BASE_URL", api.base_url + "/")
        monkeypatch.setenv("OPENAI_API_KEY", "local-secret")
        model = make_model(base_url=None, max_retries=0)
        assert model.base_url == api.base_url  # trailing slash dropped
        message = await model.generate(ask("hi"))
        assert message.content == "hello"
        assert api.requests[0].headers["authorization"] == "Bearer local-secret"
        async with httpx.AsyncClient() as client:  # the stand-in also lists models
            listing = (
                await client.get(
                    f"{api.base_url}/models", headers={"authorization": "Bearer local-secret"}
                )
            ).json()
        assert [m["id"] for m in listing["data"]] == ["standin-model"]


def test_default_base_url_is_local_ollama() -> None:
    assert OpenAICompatibleModel(MODEL).base_url == DEFAULT_OPENAI_BASE_URL


# ---------------------------------------------------------------------- retries and errors


async def test_429_then_success_honours_retry_after(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(Fail(429, "Too many requests", retry_after=0.3), Reply("ok"))
    model = make_model()
    started = time.monotonic()
    message = await model.generate(ask("hi"))
    assert message.content == "ok"
    assert len(api.requests) == 2
    assert time.monotonic() - started >= 0.3  # waited as told, not the 10 ms backoff


async def test_server_error_and_dropped_connection_are_retried(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(Fail(503, "model loading"), Hangup(), Reply("ready"))
    message = await make_model(max_retries=2).generate(ask("hi"))
    assert message.content == "ready"
    assert len(api.requests) == 3


async def test_persistent_500_becomes_retryable_error(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(*[Fail(500, "CUDA out of memory")] * 3)
    with pytest.raises(ModelError) as caught:
        await make_model(max_retries=2).generate(ask("hi"))
    assert caught.value.retryable is True
    assert caught.value.provider == "openai"
    assert "500" in str(caught.value) and "CUDA out of memory" in str(caught.value)
    assert len(api.requests) == 3


async def test_auth_failure_is_not_retried(make_model: MakeModel) -> None:
    with OpenAIStandIn(script=[Reply("never")], api_key="right") as api:
        with pytest.raises(ModelError) as caught:
            await make_model(api_key="wrong", base_url=api.base_url).generate(ask("hi"))
        assert caught.value.retryable is False
        assert "OPENAI_API_KEY" in caught.value.hint
        assert len(api.requests) == 1


async def test_unknown_model_404_hints_at_pulling_it(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(Fail(404, f"model '{MODEL}' not found, try pulling it first"))
    with pytest.raises(ModelError) as caught:
        await make_model().generate(ask("hi"))
    assert caught.value.retryable is False
    assert "not found" in str(caught.value)
    assert f"ollama pull {MODEL}" in caught.value.hint
    assert len(api.requests) == 1


async def test_error_inside_the_stream_is_reported(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(Fail(400, "context length exceeded", mid_stream=True))
    with pytest.raises(ModelError) as caught:
        await make_model().generate(ask("hi"))
    assert "context length exceeded" in str(caught.value)
    assert caught.value.retryable is False


async def test_stream_dropped_after_text_is_not_replayed(
    api: OpenAIStandIn, make_model: MakeModel
) -> None:
    api.push(Hangup(mid_stream=True, text="Half an"), Reply("never requested"))
    seen: list[str] = []
    with pytest.raises(ModelError) as caught:
        await make_model().generate(ask("hi", on_text=seen.append))
    assert caught.value.retryable is True
    assert seen == ["Half an"]
    assert len(api.requests) == 1


async def test_unreachable_server_is_retryable_with_hint(make_model: MakeModel) -> None:
    with OpenAIStandIn() as closed:
        base_url = closed.base_url
    model = make_model(base_url=base_url, max_retries=1)
    with pytest.raises(ModelError) as caught:
        await model.generate(ask("hi"))
    assert caught.value.retryable is True
    assert base_url in caught.value.hint


async def test_timeout_is_retryable(api: OpenAIStandIn, make_model: MakeModel) -> None:
    api.push(Reply("late", delay=1.0))
    with pytest.raises(ModelError) as caught:
        await make_model(max_retries=0, timeout=0.2).generate(ask("hi"))
    assert caught.value.retryable is True
    assert "0.2s" in str(caught.value)


# ---------------------------------------------------------------------- stream parsing details


def test_tool_call_deltas_without_index_are_split_by_id() -> None:
    # Some servers (older Ollama) send whole tool calls without "index".
    state = _StreamState(sink=None)
    lines = [
        {"tool_calls": [{"id": "c1", "function": {"name": "a", "arguments": '{"x": 1}'}}]},
        {"tool_calls": [{"id": "c2", "function": {"name": "b", "arguments": '{"y":'}}]},
        {"tool_calls": [{"function": {"arguments": " 2}"}}]},
    ]
    for delta in lines:
        state.feed_line("data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}))
    assert state.feed_line("data: [DONE]") is True
    message = state.to_ai_message(MODEL)
    assert [(c["id"], c["name"], c["args"]) for c in message.tool_calls] == [
        ("c1", "a", {"x": 1}),
        ("c2", "b", {"y": 2}),
    ]
    # No usage chunk: zeros, and the metadata says usage was not reported.
    assert message.usage_metadata["total_tokens"] == 0
    assert message.response_metadata["usage_reported"] is False


def test_empty_assistant_turn_is_dropped() -> None:
    from agent.models.openai import to_openai_messages

    out = to_openai_messages("s", "", [HumanMessage("a"), AIMessage(""), HumanMessage("b")])
    assert out == [{"role": "system", "content": "s"}, {"role": "user", "content": "a\n\nb"}]
