"""The OpenAI-compatible endpoint, driven by the official ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.server.app import create_app
from agent.server.config import ServerConfig
from tests.conftest import require_module
from tests.serving import served

QUESTION = "Why is examples/orders_workload.py slow?"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mp = pytest.MonkeyPatch()
    mp.setenv("PERFAGENT_STATE_DIR", str(tmp_path_factory.mktemp("openai-state")))
    try:
        with served(create_app(ServerConfig())) as url:
            yield url
    finally:
        mp.undo()


def _client(base_url: str) -> Any:
    require_module("openai")
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="unused-on-loopback", max_retries=0,
                  timeout=120)


def test_models_are_the_personas(base_url: str) -> None:
    ids = [m.id for m in _client(base_url).models.list()]
    assert ids[0] == "perfagent"
    assert {"performance-engineer", "database-optimizer"} <= set(ids)


def test_non_streamed_completion_carries_the_measured_answer(base_url: str) -> None:
    client = _client(base_url)
    raw = client.chat.completions.with_raw_response.create(
        model="performance-engineer", messages=[{"role": "user", "content": QUESTION}])
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    answer = completion.choices[0].message.content
    assert "orders_workload.py" in answer and "offline engine" in answer
    thread = raw.headers["x-perfagent-thread"]
    with httpx.Client(base_url=base_url) as http:
        turns = http.get(f"/v1/threads/{thread}").json()["turns"]
    assert turns[0]["result"]["answer"] == answer
    assert any(c["name"] == "profile_python" for c in turns[0]["result"]["tool_calls"])


def test_streamed_chunks_add_up_to_the_answer_and_end_with_done(base_url: str) -> None:
    client = _client(base_url)
    stream = client.chat.completions.create(
        model="perfagent", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You are helpful."},
                  {"role": "user", "content": "What should my p95 budget be?"}])
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert "offline engine" in text
    # The wire format itself: each line a data: JSON chunk, the last one [DONE].
    with httpx.Client(base_url=base_url, timeout=120) as http, http.stream(
            "POST", "/v1/chat/completions",
            json={"model": "perfagent", "stream": True,
                  "messages": [{"role": "user", "content": "hello"}]}) as r:
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert json.loads(data[0])["choices"][0]["delta"]["role"] == "assistant"


def test_a_resent_conversation_continues_its_thread(base_url: str) -> None:
    client = _client(base_url)
    first = client.chat.completions.with_raw_response.create(
        model="perfagent", messages=[{"role": "user", "content": "How do I find an N+1?"}])
    answer = first.parse().choices[0].message.content
    second = client.chat.completions.with_raw_response.create(
        model="perfagent", messages=[
            {"role": "user", "content": "How do I find an N+1?"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And how do I keep it from coming back?"}])
    assert second.headers["x-perfagent-thread"] == first.headers["x-perfagent-thread"]
    unrelated = client.chat.completions.with_raw_response.create(
        model="perfagent", messages=[{"role": "user", "content": "How do I find an N+1?"}])
    assert unrelated.headers["x-perfagent-thread"] != first.headers["x-perfagent-thread"]


def test_bad_requests_get_openai_style_errors(base_url: str) -> None:
    require_module("openai")
    import openai

    client = _client(base_url)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert "perfagent" in unknown.value.body["hint"]
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="perfagent",
                                       messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="perfagent", messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Perfagent-Thread": "no-such-thread"})
