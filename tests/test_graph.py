"""The real graph driven by a scripted tool-calling model."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, ToolMessage

from agent.context import Settings
from agent.run import run_turn, stream_turn
from tests.scripted import ScriptedModel, call
from tests.test_checks import GOOD

# A draft written as an LLM would, passing all five checks, with no figures to ground.
PASSING = GOOD.replace(
    "I load tested `/orders` at 10 req/s: p95 latency is **231 ms** (throughput 9.8 req/s),\n"
    "above the 200 ms target.", "Run a load test against `/orders` to record p95 latency.")

FAILING = "Just add more servers, it will be fine."


def settings(**kw: object) -> Settings:
    return Settings(model="offline").with_overrides(**kw)


async def test_tool_loop_then_checks_pass() -> None:
    model = ScriptedModel([
        AIMessage(content="", tool_calls=[
            call("knowledge_search", {"query": "n+1 queries"}, "c1"),
            call("knowledge_search", {"query": "missing index"}, "c2"),
        ]),
        AIMessage(content=PASSING),
    ])
    events = [e async for e in stream_turn("why is /orders slow?", settings=settings(),
                                            model=model)]
    types = [e.type for e in events]
    assert types[0] == "run_start" and types[-1] == "final"
    final = events[-1].data
    assert [c["name"] for c in final["tool_calls"]] == ["knowledge_search", "knowledge_search"]
    assert all(c["ok"] for c in final["tool_calls"])
    assert {c["status"] for c in final["checks"]} == {"pass"}
    assert [c["name"] for c in final["checks"]] == [
        "baseline_established", "impact_quantified", "monitoring_included",
        "implementation_quality", "regression_prevention"]
    assert final["revisions"] == 0
    # Both tool results went back to the model in one round.
    second = model.requests[1].messages
    assert sum(isinstance(m, ToolMessage) for m in second) == 2
    # The five checks ran as separate nodes, each timed.
    nodes = final["timings_ms"]["nodes"]
    assert {"prepare", "agent", "tools", "gate", "finalize"} <= set(nodes)
    assert sum(1 for n in nodes if n.startswith("check_")) == 5
    assert types.count("check") == 5


async def test_failing_check_drives_one_revision() -> None:
    def revised(request):  # the model sees the checks' feedback
        feedback = str(request.messages[-1].content)
        assert "monitoring_included" in feedback and "regression_prevention" in feedback
        return AIMessage(content=PASSING)

    model = ScriptedModel([AIMessage(content=FAILING), revised])
    result = await run_turn("how do I make it faster?", settings=settings(), model=model)
    assert result.revisions == 1
    assert {c.status for c in result.checks} == {"pass"}
    assert result.answer.startswith(PASSING[:40])
    assert len(model.requests) == 2


async def test_revision_budget_ends_with_honest_report() -> None:
    model = ScriptedModel([AIMessage(content=FAILING)] * 3)
    result = await run_turn("speed it up", settings=settings(max_revisions=2), model=model)
    assert result.revisions == 2
    assert "Unresolved pre-response checks" in result.answer
    failed = {c.name for c in result.checks if c.status == "fail"}
    assert "monitoring_included" in failed


async def test_delegation_runs_the_sub_agent_with_its_own_persona() -> None:
    model = ScriptedModel([
        AIMessage(content="", tool_calls=[call(
            "delegate", {"to": "database-optimizer", "task": "review the orders schema"}, "d1")]),
        AIMessage(content=PASSING),
    ])
    result = await run_turn("Our schema design needs review", settings=settings(), model=model)
    assert [d.to for d in result.delegations] == ["database-optimizer"]
    answer = result.delegations[0].answer
    assert "offline engine" in answer  # the sub-agent ran its own (offline) model
    tool_message = model.requests[1].messages[-1]
    payload = json.loads(tool_message.content)
    assert payload["persona"] == "database-optimizer"
    assert len(payload["checks"]) == 5


async def test_unknown_tool_and_bad_delegate_are_structured_errors() -> None:
    model = ScriptedModel([
        AIMessage(content="", tool_calls=[
            call("teleport", {}, "x1"),
            call("delegate", {"to": "chef", "task": "cook"}, "x2"),
        ]),
        AIMessage(content=PASSING),
    ])
    result = await run_turn("anything", settings=settings(), model=model)
    errors = {c.name: c.error for c in result.tool_calls}
    assert errors["teleport"].startswith("tool_not_available")
    assert errors["delegate"].startswith("unknown_delegate")
    contents = [json.loads(m.content) for m in model.requests[1].messages
                if isinstance(m, ToolMessage)]
    assert all(c["ok"] is False and c["error"]["hint"] for c in contents)


async def test_thread_persists_across_turns() -> None:
    s = settings()
    first = await run_turn("first question", settings=s,
                           model=ScriptedModel([AIMessage(content=PASSING)]))
    model = ScriptedModel([AIMessage(content=PASSING)])
    second = await run_turn("second question", settings=s, thread_id=first.thread_id,
                            model=model)
    assert second.thread_id == first.thread_id
    contents = [str(m.content) for m in model.requests[0].messages]
    assert "first question" in contents and "second question" in contents
    assert second.tool_calls == [] and second.revisions == 0


async def test_step_budget_forces_an_answer() -> None:
    def loop(n: int) -> AIMessage:
        return AIMessage(content="", tool_calls=[call("knowledge_search", {"query": "x"}, f"k{n}")])

    model = ScriptedModel([loop(1), loop(2), loop(3), AIMessage(content=PASSING)])
    result = await run_turn("loop", settings=settings(max_steps=2), model=model)
    assert len(result.tool_calls) == 2
    # From the budget on the model gets no tools; the third call's tool request was
    # dropped, the empty draft failed its checks and the revision answered.
    assert [len(r.tools) > 0 for r in model.requests] == [True, True, False, False]
    assert result.revisions == 1
    assert {c.status for c in result.checks} == {"pass"}


@pytest.mark.parametrize("spec", ["gpt-4", "anthropic", "offline:x"])
def test_unknown_model_spec_lists_valid_ones(spec: str) -> None:
    from agent.models import UnknownModelError, parse_spec

    if spec == "anthropic":
        assert parse_spec(spec)[0] == "anthropic"
        return
    with pytest.raises(UnknownModelError, match="valid specs: offline"):
        parse_spec(spec)


async def test_history_keeps_one_answer_per_turn() -> None:
    from agent.run import thread_history

    s = settings()
    model = ScriptedModel([AIMessage(content=FAILING), AIMessage(content=PASSING)])
    result = await run_turn("make it fast", settings=s, model=model)
    history = await thread_history(result.thread_id, settings=s)
    assert [h["role"] for h in history] == ["user", "assistant"]
    assert history[1]["content"] == PASSING
    assert await thread_history("no-such-thread", settings=s) == []


async def test_check_budgets_defaults_to_the_persona_targets_and_turn_measurements() -> None:
    measured = {"name": "p95_latency", "value": 231.0, "unit": "ms", "source": "load_test",
                "target": "http://127.0.0.1:1/x"}

    def after_measuring(request):  # the model calls check_budgets with no arguments
        return AIMessage(content="", tool_calls=[call("check_budgets", {}, "b1")])

    model = ScriptedModel([after_measuring, AIMessage(content=PASSING)])
    from agent.graph import with_defaults
    from agent.persona import get_persona

    args = with_defaults("check_budgets", {}, get_persona("performance-engineer"),
                         {"measurements": [measured]})
    assert args["budgets"]["p95_latency"] == "<200 ms"
    assert args["budgets"]["lcp"] == "<2.5 s"
    assert args["measurements"] == [measured]
    result = await run_turn("check my budgets", settings=settings(), model=model)
    call_record = result.tool_calls[0]
    assert call_record.name == "check_budgets"
    assert call_record.args["budgets"]["cpu_utilization"] == "<70 %"
