"""The CLI end to end, as a user runs it: real subprocesses, real targets on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

TURN_KEYS = {"thread_id", "model", "persona", "answer", "checks", "tool_calls", "delegations",
             "measurements", "findings", "revisions", "usage", "timings_ms"}
CHECK_NAMES = ["baseline_established", "impact_quantified", "monitoring_included",
               "implementation_quality", "regression_prevention"]


def perfagent(*args: str, workspace: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    if workspace is not None:
        environment["PERFAGENT_WORKSPACE"] = str(workspace)
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=environment, cwd=REPO)


def ask_json(question: str, **kw: object) -> dict:
    done = perfagent("ask", question, "--json", **kw)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == TURN_KEYS
    assert [c["name"] for c in result["checks"]] == CHECK_NAMES
    assert result["model"] == "offline"
    assert "offline engine" in result["answer"]
    return result


def test_console_script_help_is_fast() -> None:
    script = shutil.which("perfagent", path=str(Path(sys.executable).parent))
    assert script, "the perfagent console script is installed"
    started = time.perf_counter()
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0
    for command in ("demo", "ask", "chat", "measure", "personas"):
        assert command in done.stdout
    assert elapsed < 5  # a generous bound; the benchmark reports the real ratio


def test_ask_profiles_the_slow_script() -> None:
    result = ask_json("Why is examples/orders_workload.py slow?", workspace=REPO)
    # Measure first, then look up the playbooks for what was found.
    names = [c["name"] for c in result["tool_calls"]]
    assert names[0] == "profile_python" and set(names[1:]) == {"knowledge_search"}
    assert "- **Playbook:** `" in result["answer"]
    kinds = {f["kind"] for f in result["findings"]}
    assert "repeated_query" in kinds
    repeated = next(f for f in result["findings"] if f["kind"] == "repeated_query")
    assert repeated["location"].endswith("shop.py:75")
    assert {m["name"] for m in result["measurements"]} >= {"wall_time", "cpu_time"}
    assert {c["status"] for c in result["checks"]} == {"pass"}


def test_ask_finds_the_missing_index(shop_db: Path) -> None:
    question = (f"Why is `SELECT sku, quantity FROM order_items WHERE order_id = 42` slow "
                f"on {shop_db}?")
    result = ask_json(question, workspace=shop_db.parent)
    names = [c["name"] for c in result["tool_calls"]]
    assert names[0] == "explain_query" and set(names[1:]) == {"knowledge_search"}
    kinds = {f["kind"] for f in result["findings"]}
    assert {"full_scan", "missing_index"} <= kinds
    values = {m["name"]: m["value"] for m in result["measurements"]}
    assert values["query_time_with_index"] < values["query_time"]
    assert "CREATE INDEX" in result["answer"] and "order_items" in result["answer"]
    assert {c["status"] for c in result["checks"]} == {"pass"}


def test_ask_load_tests_the_slow_service(service: str) -> None:
    result = ask_json(f"How fast is {service}/orders?customer=3 at 5 rps for 3s?")
    call = result["tool_calls"][0]
    assert call["name"] == "load_test" and call["ok"]
    assert call["args"]["rate"] == 5 and call["args"]["duration"] == 3
    p95 = next(m for m in result["measurements"] if m["name"] == "p95_latency")
    assert p95["budget"] == "<200" and p95["unit"] == "ms" and p95["value"] > 0
    assert p95["passed"] == (p95["value"] < 200)
    assert f"{p95['value']:,.2f}" in result["answer"]


@pytest.mark.slow
def test_demo_finds_the_planted_problems_in_under_a_minute() -> None:
    started = time.perf_counter()
    done = perfagent("demo", "--json", timeout=120)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    kinds = {f["kind"] for f in result["findings"]}
    assert {"repeated_query", "missing_index", "full_scan"} <= kinds
    assert [c["name"] for c in result["tool_calls"]][:2] == ["load_test", "profile_python"]
    assert any(m["name"] == "p95_latency" for m in result["measurements"])
    assert {c["status"] for c in result["checks"]} == {"pass"}
    assert elapsed < 60


# --------------------------------------------------------------------------- bad input


def test_unknown_model_lists_the_valid_specs() -> None:
    done = perfagent("ask", "hi", "--model", "gpt-9")
    assert done.returncode == 1
    assert "valid specs: offline, anthropic:<model>, openai:<model>" in done.stderr


def test_anthropic_without_key_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "agent.cli", "ask", "hi", "--model",
                           "anthropic:claude-sonnet-5"], capture_output=True, text=True,
                          env=env, timeout=60, cwd=REPO)
    assert done.returncode == 1
    assert "ANTHROPIC_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr


def test_non_loopback_target_is_refused_with_the_reason() -> None:
    result = ask_json("Load test http://10.1.2.3/orders please")
    call = result["tool_calls"][0]
    assert not call["ok"] and call["error"].startswith("target_refused")
    assert "PERFAGENT_ALLOWED_HOSTS" in result["answer"]
    assert result["measurements"] == []


def test_missing_script_is_reported(tmp_path: Path) -> None:
    result = ask_json("Profile nothere.py", workspace=tmp_path)
    call = result["tool_calls"][0]
    assert not call["ok"] and call["error"].startswith("not_found")


def test_non_read_sql_is_refused(shop_db: Path) -> None:
    done = perfagent("measure", "explain_query", "--args",
                     json.dumps({"database": str(shop_db), "sql": "DELETE FROM orders"}),
                     workspace=shop_db.parent)
    assert done.returncode == 1
    assert "not_read_only" in done.stderr and "Traceback" not in done.stderr


def test_measure_exits_3_on_a_breached_budget(service: str) -> None:
    args = {"url": f"{service}/orders?customer=5", "rate": 3, "duration": 1,
            "thresholds": ["p(95)<0.001"]}
    done = perfagent("measure", "load_test", "--args", json.dumps(args), "--json")
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_malformed_persona_names_file_and_line(tmp_path: Path) -> None:
    source = REPO / "prompts" / "personas" / "performance-engineer.md"
    broken = tmp_path / "performance-engineer.md"
    broken.write_text(source.read_text().replace("| CPU utilization | < 70% |",
                                                 "| CPU utilization | low |"))
    done = perfagent("personas", "validate", str(broken))
    assert done.returncode == 1
    line = next(i for i, t in enumerate(broken.read_text().splitlines(), 1)
                if "| CPU utilization | low |" in t)
    assert f"{broken}:{line}:" in done.stderr.replace("\n", "")
    assert perfagent("personas", "validate").returncode == 0


def test_personas_list_and_show() -> None:
    listed = json.loads(perfagent("personas", "list", "--json").stdout)
    assert len(listed) == 6
    shown = json.loads(perfagent("personas", "show", "performance-engineer", "--json").stdout)
    assert shown["targets"][0]["measurement"] == "p95_latency"


def test_chat_streams_exits_and_resumes(isolated_state: Path) -> None:
    import asyncio

    from agent.run import thread_history

    def chat(*args: str, lines: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "chat", *args], input=lines,
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    first = chat(lines="Our checkout is sluggish, what now?\n/exit\n")
    assert first.returncode == 0, first.stderr
    assert "offline engine" in first.stdout and "Measurement plan" in first.stdout
    thread = first.stdout.split("resume with --thread ", 1)[1].split(")")[0].strip()
    second = chat("--thread", thread, lines="And the search page?\n/exit\n")
    assert second.returncode == 0, second.stderr
    history = asyncio.run(thread_history(thread))
    users = [h["content"] for h in history if h["role"] == "user"]
    assert users == ["Our checkout is sluggish, what now?", "And the search page?"]


def test_measure_lists_tools_shows_schema_and_takes_flags(service: str) -> None:
    listed = perfagent("measure")
    assert listed.returncode == 0
    for name in ("load_test", "web_vitals", "check_budgets", "analyze_traces"):
        assert name in listed.stdout
    schema = json.loads(perfagent("measure", "load_test", "--schema").stdout)
    assert {"url", "rate", "thresholds"} <= set(schema["properties"])
    done = perfagent("measure", "load_test", "--url", f"{service}/orders?customer=2",
                     "--rate", "4", "--duration=1", "--thresholds", "p(95)<100000",
                     "--thresholds", "http_req_failed rate<0.5", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(result["thresholds"]) == 2 and all(t["passed"] for t in result["thresholds"])
    bad = perfagent("measure", "load_test", "--url", service, "--rate", "fast")
    assert bad.returncode == 1 and "rate" in bad.stderr and "--schema" in bad.stderr
