"""AnthropicModel driven through the real ``anthropic`` SDK against a local stand-in.

The stand-in (tests/standins/anthropic_api.py) enforces the Messages API's
rules (alternation, tool_result placement, non-empty text), so a request it
accepts is one the real API would accept too.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent.models.anthropic import (
    DEFAULT_ANTHROPIC_MODEL,
    INTERRUPTED_TOOL_RESULT,
    AnthropicModel,
)
from agent.models.base import ChatModel, ModelError, ModelRequest, ToolSchema
from tests.standins import AnthropicStandIn, Fail, Hangup, Reply, ToolCall

KEY = "sk-ant-test"
PROBE = ToolSchema(
    name="http_probe",
    description="Measure latency of a URL.",
    parameters={"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
)
EXPLAIN = ToolSchema(
    name="sql_explain",
    description="EXPLAIN a query.",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}},
)


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not depend on (or leak) the developer's Anthropic settings."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api() -> Iterator[AnthropicStandIn]:
    with AnthropicStandIn(api_key=KEY) as server:
        yield server


MakeModel = Callable[..., AnthropicModel]


def model_for(api: AnthropicStandIn, **kwargs: typing.Any) -> AnthropicModel:
    """A model pointed at the stand-in, with short timeouts."""
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("base_url", api.base_url)
    kwargs.setdefault("max_retries", 2)
    kwargs.setdefault("timeout", 5.0)
    return AnthropicModel(**kwargs)


@pytest.fixture
async def make_model(api: AnthropicStandIn) -> AsyncIterator[MakeModel]:
    """Builds models for the stand-in and closes their connections afterwards."""
    made: list[AnthropicModel] = []

    def factory(**kwargs: typing.Any) -> AnthropicModel:
        made.append(model_for(api, **kwargs))
        return made[-1]

    yield factory
    for model in made:
        await model.aclose()


def ask(text: str, **kwargs: typing.Any) -> ModelRequest:
    return ModelRequest(
        system="You are a performance engineer.", messages=[HumanMessage(text)], **kwargs
    )


# ---------------------------------------------------------------------- happy paths


async def test_tool_use_round_trip(api: AnthropicStandIn, make_model: MakeModel) -> None:
    api.push(
        Reply(
            "Measuring first.",
            tool_calls=[ToolCall("http_probe", {"url": "http://x/"}, id="toolu_1")],
        ),
        Reply("p95 is 120 ms."),
    )
    model = make_model()
    assert isinstance(model, ChatModel)
    history: list = [HumanMessage("How fast is http://x/ ?")]

    first = await model.generate(ModelRequest(system="persona", messages=history, tools=[PROBE]))
    assert first.content == "Measuring first."
    assert first.tool_calls == [
        {"name": "http_probe", "args": {"url": "http://x/"}, "id": "toolu_1", "type": "tool_call"}
    ]
    assert first.response_metadata["stop_reason"] == "tool_use"
    assert first.response_metadata["model"] == DEFAULT_ANTHROPIC_MODEL

    history += [first, ToolMessage("p95=120ms", tool_call_id="toolu_1")]
    second = await model.generate(ModelRequest(system="persona", messages=history, tools=[PROBE]))
    assert second.content == "p95 is 120 ms."
    assert second.tool_calls == []
    assert second.response_metadata["stop_reason"] == "end_turn"

    sent = api.messages_bodies()[1]
    assert sent["stream"] is True
    assert sent["tools"][0]["input_schema"] == PROBE.parameters
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "How fast is http://x/ ?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Measuring first."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "http_probe",
                    "input": {"url": "http://x/"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "p95=120ms"}],
        },
    ]


async def test_text_deltas_stream_to_on_text_in_order(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(Reply(["The ", "index ", "helps."], chunk_delay=0.1))
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    message = await make_model().generate(
        ask("why?", on_text=lambda text: seen.append((time.monotonic(), text)))
    )
    finished = time.monotonic()
    assert [text for _, text in seen] == ["The ", "index ", "helps."]
    assert message.content == "The index helps."
    # Delivered as they arrive, not all at the end: the first delta precedes
    # the end of the answer by at least the two remaining server pauses.
    assert finished - seen[0][0] >= 0.15, (started, seen, finished)


async def test_usage_maps_cache_tokens_langchain_style(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(
        Reply(
            "ok",
            input_tokens=10,
            output_tokens=7,
            cache_read_tokens=1000,
            cache_creation_tokens=200,
        )
    )
    message = await make_model().generate(ask("hi"))
    # input_tokens is the whole prompt: uncached 10 + cache read 1000 + cache write 200.
    assert message.usage_metadata == {
        "input_tokens": 1210,
        "output_tokens": 7,
        "total_tokens": 1217,
        "input_token_details": {"cache_read": 1000, "cache_creation": 200},
    }


async def test_system_and_last_tool_carry_cache_control(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(Reply("ok"))
    request = ModelRequest(
        system="long persona prompt",
        context="baseline: p95 140 ms",
        messages=[HumanMessage("hi")],
        tools=[PROBE, EXPLAIN],
    )
    await make_model().generate(request)
    body = api.messages_bodies()[0]
    assert body["system"] == [
        {"type": "text", "text": "long persona prompt", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "baseline: p95 140 ms"},
    ]
    assert "cache_control" not in body["tools"][0]
    assert body["tools"][1]["cache_control"] == {"type": "ephemeral"}
    assert [t["name"] for t in body["tools"]] == ["http_probe", "sql_explain"]


async def test_second_turn_reads_persona_prompt_from_cache(make_model: MakeModel) -> None:
    persona = "Measure before you optimise. " * 400  # ~3000 tokens: above the cache minimum
    with AnthropicStandIn(script=[Reply("a"), Reply("b")], api_key=KEY, caching=True) as api:
        model = make_model(base_url=api.base_url)
        first = await model.generate(
            ModelRequest(
                system=persona, context="turn 1", messages=[HumanMessage("q1")], tools=[PROBE]
            )
        )
        history = [HumanMessage("q1"), first, HumanMessage("q2")]
        second = await model.generate(
            ModelRequest(system=persona, context="turn 2 context", messages=history, tools=[PROBE])
        )
    written = first.usage_metadata["input_token_details"]["cache_creation"]
    assert written > 1000
    assert first.usage_metadata["input_token_details"]["cache_read"] == 0
    assert second.usage_metadata["input_token_details"]["cache_read"] == written
    assert second.usage_metadata["input_token_details"]["cache_creation"] == 0


async def test_consecutive_user_messages_are_merged(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(Reply("ok"))
    # A failed earlier turn left two user messages in a row; the API would reject that.
    await make_model().generate(
        ModelRequest(system="s", messages=[HumanMessage("first try"), HumanMessage("second try")])
    )
    assert api.messages_bodies()[0]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first try"},
                {"type": "text", "text": "second try"},
            ],
        }
    ]


async def test_parallel_tool_results_form_one_user_turn_results_first(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(Reply("done"))
    history = [
        HumanMessage("check both"),
        AIMessage(
            "",
            tool_calls=[
                {"name": "http_probe", "args": {"url": "u"}, "id": "t1"},
                {"name": "sql_explain", "args": {"query": "q"}, "id": "t2"},
            ],
        ),
        ToolMessage("120 ms", tool_call_id="t1"),
        ToolMessage("no such table", tool_call_id="t2", status="error"),
        HumanMessage("and summarise"),
    ]
    await make_model().generate(ModelRequest(system="s", messages=history, tools=[PROBE, EXPLAIN]))
    turns = api.messages_bodies()[0]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    # Empty AI text is dropped (the API rejects empty text blocks).
    assert [b["type"] for b in turns[1]["content"]] == ["tool_use", "tool_use"]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "120 ms"},
        {"type": "tool_result", "tool_use_id": "t2", "content": "no such table", "is_error": True},
        {"type": "text", "text": "and summarise"},
    ]


async def test_tool_calls_that_never_ran_get_an_error_result(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    # e.g. the user declined the tool at an approval interrupt, then wrote again.
    api.push(Reply("ok"))
    history = [
        HumanMessage("probe it"),
        AIMessage("", tool_calls=[{"name": "http_probe", "args": {"url": "u"}, "id": "t9"}]),
        HumanMessage("no, just answer"),
    ]
    await make_model().generate(ModelRequest(system="s", messages=history, tools=[PROBE]))
    last = api.messages_bodies()[0]["messages"][-1]
    assert last["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "t9",
            "content": INTERRUPTED_TOOL_RESULT,
            "is_error": True,
        },
        {"type": "text", "text": "no, just answer"},
    ]


async def test_stray_system_message_is_folded_into_system(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(Reply("ok"))
    await make_model().generate(
        ModelRequest(system="persona", messages=[SystemMessage("be brief"), HumanMessage("hi")])
    )
    body = api.messages_bodies()[0]
    assert body["system"][0]["text"] == "persona\n\nbe brief"
    assert [t["role"] for t in body["messages"]] == ["user"]


# ---------------------------------------------------------------------- retries and errors


async def test_overloaded_529_then_success_is_retried_by_the_sdk(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(Fail(529, "Overloaded", retry_after=0.01), Reply("recovered"))
    message = await make_model().generate(ask("hi"))
    assert message.content == "recovered"
    assert len(api.requests) == 2
    assert [r.headers["x-stainless-retry-count"] for r in api.requests] == ["0", "1"]


async def test_persistent_529_becomes_retryable_model_error(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(*[Fail(529, "Overloaded", retry_after=0.01)] * 3)
    with pytest.raises(ModelError) as caught:
        await make_model(max_retries=2).generate(ask("hi"))
    error = caught.value
    assert error.retryable is True
    assert error.provider == "anthropic"
    assert "529" in str(error) and "overloaded" in str(error).lower()
    assert len(api.requests) == 3  # first try + max_retries


async def test_rate_limit_after_retries_is_retryable(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(*[Fail(429, "slow down", retry_after=0.01)] * 2)
    with pytest.raises(ModelError) as caught:
        await make_model(max_retries=1).generate(ask("hi"))
    assert caught.value.retryable is True
    assert "rate" in caught.value.hint


async def test_bad_key_401_is_not_retryable_and_not_retried(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    model = make_model(api_key="sk-ant-wrong", max_retries=3)
    with pytest.raises(ModelError) as caught:
        await model.generate(ask("hi"))
    assert caught.value.retryable is False
    assert "401" in str(caught.value)
    assert "ANTHROPIC_API_KEY" in caught.value.hint
    assert len(api.requests) == 1


async def test_bad_request_400_is_not_retryable(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(Fail(400, "prompt is too long: 210000 tokens > 200000 maximum"))
    with pytest.raises(ModelError) as caught:
        await make_model().generate(ask("hi"))
    assert caught.value.retryable is False
    assert "prompt is too long" in str(caught.value)
    assert len(api.requests) == 1


async def test_missing_key_fails_with_hint() -> None:
    with pytest.raises(ModelError) as caught:
        AnthropicModel()
    assert caught.value.retryable is False
    assert caught.value.hint == "set ANTHROPIC_API_KEY or use --model offline"


async def test_key_and_base_url_come_from_environment(
    api: AnthropicStandIn, make_model: MakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
    api.push(Reply("from env"))
    model = make_model(api_key=None, base_url=None, max_retries=0)
    assert model.base_url == api.base_url
    assert model.spec == f"anthropic:{DEFAULT_ANTHROPIC_MODEL}"
    assert (await model.generate(ask("hi"))).content == "from env"


async def test_overload_inside_an_open_stream_is_retried(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    # The SDK only retries before a stream opens; an error event inside it is ours.
    api.push(Fail(529, "Overloaded", mid_stream=True), Reply("second time lucky"))
    model = make_model()
    model.mid_stream_retry_delay = 0.01
    message = await model.generate(ask("hi"))
    assert message.content == "second time lucky"
    assert len(api.requests) == 2


async def test_stream_dropped_after_text_is_not_replayed(
    api: AnthropicStandIn, make_model: MakeModel
) -> None:
    api.push(Hangup(mid_stream=True, text="Partial ans"), Reply("must not be requested"))
    seen: list[str] = []
    model = make_model()
    model.mid_stream_retry_delay = 0.01
    with pytest.raises(ModelError) as caught:
        await model.generate(ask("hi", on_text=seen.append))
    assert caught.value.retryable is True
    assert seen == ["Partial ans"]
    assert len(api.requests) == 1 and api.remaining == 1


async def test_unreachable_server_is_retryable(make_model: MakeModel) -> None:
    with AnthropicStandIn() as closed:
        base_url = closed.base_url  # the port is free again once the server stops
    model = make_model(base_url=base_url, max_retries=0, timeout=2.0)
    with pytest.raises(ModelError) as caught:
        await model.generate(ask("hi"))
    assert caught.value.retryable is True
    assert "ANTHROPIC_BASE_URL" in caught.value.hint


async def test_timeout_is_retryable(api: AnthropicStandIn, make_model: MakeModel) -> None:
    api.push(Reply("too late", delay=1.0))
    with pytest.raises(ModelError) as caught:
        await make_model(max_retries=0, timeout=0.2).generate(ask("hi"))
    assert caught.value.retryable is True
    assert "0.2s" in str(caught.value)


# ---------------------------------------------------------------------- packaging


def test_default_model_is_current() -> None:
    from anthropic._data.deprecated_models import DEPRECATED_MODELS
    from anthropic.types.model import Model

    assert DEFAULT_ANTHROPIC_MODEL not in DEPRECATED_MODELS
    known = typing.get_args(typing.get_args(Model)[0])
    assert DEFAULT_ANTHROPIC_MODEL in known


def test_module_import_does_not_import_the_sdk() -> None:
    code = (
        "import sys, agent.models, agent.models.anthropic; "
        "assert 'anthropic' not in sys.modules, 'anthropic imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# The first loop's pooled connection is abandoned, not closed: that is the point.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_one_model_serves_successive_event_loops(api: AnthropicStandIn) -> None:
    # A CLI may call asyncio.run once per command; pooled connections of a
    # closed loop must not be reused.
    api.push(Reply("one"), Reply("two"))
    model = model_for(api)

    async def second_turn() -> AIMessage:
        try:
            return await model.generate(ask("2"))
        finally:
            await model.aclose()

    assert asyncio.run(model.generate(ask("1"))).content == "one"
    assert asyncio.run(second_turn()).content == "two"
    gc.collect()  # let the abandoned connection's warning fire inside this test
