"""The offline engine: a real planner and writer, not a canned reply."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent.context import Settings
from agent.models.offline import plan_tool_calls, read_turn
from agent.persona import get_persona
from agent.run import run_turn, stream_turn

ALL = {"load_test", "profile_python", "explain_query", "knowledge_search", "delegate"}


def plan(text: str, available: set[str] = ALL) -> list[tuple[str, dict]]:
    turn = read_turn([HumanMessage(content=text)])
    return [(c["name"], c["args"]) for c in plan_tool_calls(
        get_persona("performance-engineer"), turn, available)]


def test_planner_picks_tools_from_the_request() -> None:
    calls = plan("Is http://127.0.0.1:8080/api slow at 50 rps for 2 minutes? "
                 "Also profile scripts/batch.py and check "
                 "`SELECT * FROM orders WHERE customer_id = 3` on data/shop.db")
    names = [n for n, _ in calls]
    assert names == ["load_test", "profile_python", "explain_query"]
    load = calls[0][1]
    assert load == {"url": "http://127.0.0.1:8080/api", "rate": 50.0, "duration": 120.0,
                    "thresholds": ["p(95)<200"]}
    assert calls[1][1] == {"script": "scripts/batch.py"}
    assert calls[2][1] == {"database": "data/shop.db",
                           "sql": "SELECT * FROM orders WHERE customer_id = 3"}


@pytest.mark.parametrize(("request_text", "target"), [
    ("Can you run a security vulnerability assessment of the login API?", "security-auditor"),
    ("We need a schema design for multi-tenant invoices", "database-optimizer"),
    ("Write the Terraform IaC to provision the cluster", "systems-architect"),
    ("Which UI/UX design decision makes checkout feel faster?", "frontend-developer"),
    ("Plan our enterprise observability platform setup", "observability-engineer"),
])
def test_planner_delegates_per_the_table(request_text: str, target: str) -> None:
    assert plan(request_text)[0] == ("delegate", {"to": target, "task": request_text})


def test_planner_never_repeats_a_call_and_only_uses_available_tools() -> None:
    assert plan("profile a.py", available={"load_test"}) == []
    messages = [
        HumanMessage(content="profile a.py"),
        AIMessage(content="", tool_calls=[{"name": "profile_python", "args": {"script": "a.py"},
                                           "id": "1", "type": "tool_call"}]),
        ToolMessage(content='{"ok": false, "error": {"message": "gone"}}', tool_call_id="1"),
    ]
    turn = read_turn(messages)
    assert plan_tool_calls(get_persona("performance-engineer"), turn, ALL) == []


async def test_nothing_measurable_gives_a_plan_and_invents_nothing() -> None:
    result = await run_turn("Our checkout feels sluggish. What should we do?",
                            settings=Settings(model="offline"))
    # Nothing to measure: the plan is grounded in the playbooks through the tool.
    assert [c.name for c in result.tool_calls] == ["knowledge_search"]
    assert result.measurements == []
    assert "Measurement plan" in result.answer and "## Sources" in result.answer
    assert {c.status for c in result.checks} <= {"pass", "not_applicable"}
    baseline = next(c for c in result.checks if c.name == "baseline_established")
    assert baseline.status == "pass" and "measurement plan" in baseline.evidence
    assert result.revisions == 0


async def test_offline_delegation_runs_the_sub_agent() -> None:
    events = [e async for e in stream_turn(
        "Please do a security vulnerability assessment of our login endpoint",
        settings=Settings(model="offline"))]
    final = events[-1].data
    assert [d["to"] for d in final["delegations"]] == ["security-auditor"]
    assert "offline engine" in final["delegations"][0]["answer"]
    assert "security-auditor" in final["answer"]
    # The sub-agent ran its own five checks, visible as nested events.
    nested = [e for e in events if e.type == "check" and e.data.get("depth") == 1]
    assert len(nested) == 5


async def test_trace_file_and_n_plus_one_requests_use_their_tools(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import REPO

    monkeypatch.setenv("PERFAGENT_WORKSPACE", str(REPO))
    result = await run_turn(
        "Analyze tests/tools/data/otlp_orders.json and find the N+1 queries in "
        "examples/orders_workload.py", settings=Settings(model="offline"))
    names = [c.name for c in result.tool_calls]
    assert {"analyze_traces", "detect_n_plus_one", "profile_python"} <= set(names)
    assert all(c.ok for c in result.tool_calls), result.tool_calls
    kinds = {f.kind for f in result.findings}
    assert "n_plus_one" in kinds
    assert {c.status for c in result.checks} <= {"pass", "not_applicable"}


def test_planner_measures_pages_caches_and_hosts() -> None:
    everything = ALL | {"web_vitals", "cache_stats", "simulate_cache", "system_snapshot",
                        "analyze_traces", "detect_n_plus_one"}
    page = plan("What are the Core Web Vitals of http://127.0.0.1:3000/home page?", everything)
    assert page == [("web_vitals", {"url": "http://127.0.0.1:3000/home", "runs": 3})]
    both = [n for n, _ in plan("Why is the page http://127.0.0.1:3000/ slow under load?",
                               everything)]
    assert both == ["web_vitals", "load_test"]
    cache = plan("Check redis://127.0.0.1:6379/0 and size the cache from logs/access.log",
                 everything)
    assert cache == [("cache_stats", {"url": "redis://127.0.0.1:6379/0"}),
                     ("simulate_cache", {"access_log": "logs/access.log"})]
    assert plan("Is our host CPU saturated?", everything) == [
        ("system_snapshot", {"interval": 2})]
