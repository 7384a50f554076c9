"""The whole graph on the Anthropic provider, against the local Messages API stand-in."""

from __future__ import annotations

import pytest

from agent.context import Settings
from agent.run import TurnError, run_turn, thread_history
from tests.standins import AnthropicStandIn, Fail, Reply, ToolCall
from tests.test_graph import PASSING


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    return Settings(model="anthropic:claude-sonnet-5")


async def test_tool_use_round_trip_through_the_graph(claude: Settings,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    script = [Reply(tool_calls=[ToolCall("knowledge_search", {"query": "n+1"}, id="tu_1")]),
              Reply(text=PASSING)]
    with AnthropicStandIn(script=script) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
        result = await run_turn("why are my queries slow?", settings=claude)
        bodies = api.messages_bodies()
    assert result.model == "anthropic:claude-sonnet-5"
    assert [c.name for c in result.tool_calls] == ["knowledge_search"]
    assert {c.status for c in result.checks} == {"pass"}
    assert result.usage.llm_calls == 2 and result.usage.input_tokens > 0
    # The persona prompt is marked for caching and the tool result went back.
    assert bodies[0]["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "performance-engineer" in bodies[0]["system"][0]["text"]
    last_user = bodies[1]["messages"][-1]
    assert last_user["content"][0]["type"] == "tool_result"
    assert last_user["content"][0]["tool_use_id"] == "tu_1"


async def test_second_turn_reads_the_persona_prompt_from_cache(
        claude: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with AnthropicStandIn(default=Reply(text=PASSING), caching=True) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
        first = await run_turn("first", settings=claude)
        second = await run_turn("second", settings=claude, thread_id=first.thread_id)
    assert first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens > 0


async def test_model_failure_after_retries_keeps_the_thread(
        claude: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = [Fail(529, "overloaded", retry_after=0.01)] * 5  # the first try + 4 retries
    with AnthropicStandIn(script=[Reply(text=PASSING), *failures, Reply(text=PASSING)]) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
        first = await run_turn("first question", settings=claude)
        with pytest.raises(TurnError) as caught:
            await run_turn("second question", settings=claude, thread_id=first.thread_id)
        assert caught.value.code == "model_error"
        assert "intact" in caught.value.hint or caught.value.hint
        third = await run_turn("third question", settings=claude, thread_id=first.thread_id)
        last_body = api.messages_bodies()[-1]
    assert third.thread_id == first.thread_id
    history = await thread_history(first.thread_id, settings=claude)
    users = [h["content"] for h in history if h["role"] == "user"]
    assert users == ["first question", "second question", "third question"]
    # The failed turn's question and the next one reach the API merged, not dropped.
    sent = str(last_body["messages"])
    assert "first question" in sent and "second question" in sent and "third question" in sent


async def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TurnError) as caught:
        await run_turn("hi", settings=Settings(model="anthropic:claude-sonnet-5"))
    assert caught.value.code == "model_error"
    assert "ANTHROPIC_API_KEY" in caught.value.hint
