"""The eval runner, its fixtures, the response cache and the suite loader, on real runs.

Cases run through the real agent graph with the offline engine (or with a
scripted model where a model's behaviour is the point: failures to retry,
calls to count); fixtures start real processes and servers on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent.baselines import git_revision
from agent.demo import EXAMPLES_DIR
from agent.models import ModelError, ModelRequest, ToolSchema
from evals.cache import CACHE_FILE, CachedModel
from evals.fixtures import FixtureError, start_fixture, substitute, validate_fixture
from evals.model import Case, Fixture, RunConfig, RunLog, RunSummary, ScorerSpec, Suite
from evals.runner import EXIT_INFRA, EXIT_OK, EXIT_QUALITY, exit_code, run_suites
from evals.suites import SuiteError, load_suite, load_suites
from tests.conftest import unavailable

#: Half a second of pure-Python work: enough for the profiler to see a hotspot.
BUSY_SCRIPT = """\
def work(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


print(work(400_000))
"""


@pytest.fixture(scope="module", autouse=True)
def embedded_playbooks(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Embed the playbooks once, before cases run two at a time: the first turns would
    otherwise embed them side by side with a profiled script on the same cores. The
    vectors land in the session's embedding memo, which subprocesses read too."""
    from agent.knowledge import retriever

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERFAGENT_EMBEDDING_CACHE", str(tmp_path_factory.getbasetemp() / "embeddings"))
        retriever(tmp_path_factory.mktemp("warm-state")).ready()


def scorer(type_: str, **params: Any) -> ScorerSpec:
    return ScorerSpec(type=type_, params=params)


async def arun(suites: list[Suite], model: Any = None, **config: Any) -> RunLog:
    return await run_suites(suites, RunConfig(**{"model": "offline", **config}), progress=False,
                            model=model)


# =========================================================================== the runner


async def test_a_small_suite_end_to_end_with_epochs_and_concurrency() -> None:
    suite = Suite(name="tiny", cases=[
        Case(id="profile", input=["Why is {script} slow?"],
             fixture=Fixture(kind="script", options={"source": BUSY_SCRIPT, "name": "busy.py"}),
             scorers=[scorer("tool_used", name="profile_python")]),
        Case(id="draft", input=["Is the checkout API fast enough?"],
             draft="It is fast enough, trust me.", scorers=[scorer("checks_pass")]),
        Case(id="two-turns", input=["What is an N+1 query?", "And how do I find one?"],
             scorers=[scorer("tool_used", name="knowledge_search")]),
    ])
    before = os.environ.get("PERFAGENT_WORKSPACE")
    log = await arun([suite], epochs=2, concurrency=2)
    assert os.environ.get("PERFAGENT_WORKSPACE") == before

    assert [(r.case_id, r.epoch) for r in log.runs] == [
        ("profile", 1), ("profile", 2), ("draft", 1), ("draft", 2), ("two-turns", 1),
        ("two-turns", 2)]
    assert log.config.cache is False  # the offline engine is never cached
    assert log.git_rev == git_revision(str(EXAMPLES_DIR.parent))  # None outside a checkout
    assert log.perfagent_version and log.duration_ms > 0
    assert log.suites == [suite]
    profile, _, draft, _, multi, _ = log.runs

    # A fixture case: the placeholder became the copied script, which the agent profiled.
    assert profile.status == "ok" and profile.passed is True and profile.attempts == 1
    script = profile.turns[0].input.removeprefix("Why is ").removesuffix(" slow?")
    assert script.endswith("busy.py") and "{" not in script
    assert not Path(script).exists()  # the work folder went away with the run
    assert profile.final is not None and profile.final.tool_calls[0].args["script"] == script
    roles = [m["role"] for m in profile.messages]
    assert roles[0] == "user" and "tool" in roles and roles[-1] == "assistant"
    call = next(m for m in profile.messages if m.get("tool_calls"))
    assert call["tool_calls"][0]["name"] == "profile_python"
    assert json.loads(next(m for m in profile.messages if m["role"] == "tool")["content"])["ok"]
    events = [e["type"] for e in profile.turns[0].events]
    assert events[0] == "run_start" and events[-1] == "final"
    assert "text_delta" not in events and {"tool_call", "tool_result", "check"} <= set(events)
    assert profile.turns[0].duration_ms > 0 and profile.duration_ms >= profile.turns[0].duration_ms

    # A draft case: the checks reject the fixed answer; a failure, not an error.
    assert draft.status == "ok" and draft.error is None and draft.passed is False
    assert draft.final is not None and draft.final.model == "draft"
    assert draft.final.answer.startswith("It is fast enough, trust me.")
    assert draft.scores[0].passed is False

    # Two turns on one thread; the messages read back hold both questions.
    assert len(multi.turns) == 2 and multi.passed is True
    assert {t.result.thread_id for t in multi.turns if t.result} == {multi.thread_id}
    asked = [m["content"] for m in multi.messages if m["role"] == "user" and "name" not in m]
    assert asked == ["What is an N+1 query?", "And how do I find one?"]

    # Two case-epochs at a time: some ran side by side.
    spans = [(r.started_at, r.started_at + r.duration_ms / 1000) for r in log.runs]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])
    # The log is JSON all the way down (events included) and reads back the same.
    assert RunLog.model_validate_json(log.model_dump_json()) == log


async def test_a_case_past_its_timeout_is_an_error_and_its_script_is_killed() -> None:
    suite = Suite(name="slow", timeout=300, cases=[Case(
        id="sleeper", input=["Why is {script} slow?"], timeout=2,
        fixture=Fixture(kind="script", options={"source": "import time\ntime.sleep(120)\n",
                                                "name": "sleeper.py"}),
        scorers=[scorer("contains", value="anything")])])
    started = time.perf_counter()
    log = await arun([suite])
    assert time.perf_counter() - started < 15
    (case,) = log.runs
    assert case.status == "error" and case.passed is None and case.scores == []
    assert case.error is not None and case.error.code == "timeout" and "2 s" in case.error.message
    assert case.turns[0].error == case.error  # the turn that was under way says so too
    leftover = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                if any("sleeper.py" in part for part in p.info["cmdline"] or [])]
    assert leftover == []


@pytest.mark.parametrize("limit", [0.2, 1.0])
async def test_a_timeout_while_the_fixture_starts_leaves_nothing_behind(limit: float) -> None:
    """Cancelled while building the database (0.2 s) or starting the service (1 s)."""
    suite = Suite(name="fixture-timeout", cases=[Case(
        id="starting", input=["GET {url}/orders"], timeout=limit,
        fixture=Fixture(kind="slow_service", options={"customers": 50, "orders": 20_000}),
        scorers=[scorer("contains", value="x")])])
    log = await arun([suite])
    assert log.runs[0].error is not None and log.runs[0].error.code == "timeout"
    services = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                if any("fixture-timeout.starting" in part for part in p.info["cmdline"] or [])]
    assert services == []
    assert list(Path(tempfile.gettempdir()).glob("perfagent-eval-*/fixture-timeout.*")) == []


async def test_the_run_timeout_applies_to_cases_without_their_own() -> None:
    suite = Suite(name="slow", cases=[Case(
        id="sleeper", input=["Why is {script} slow?"],
        fixture=Fixture(kind="script", options={"source": "import time\ntime.sleep(120)\n"}),
        scorers=[scorer("contains", value="x")])])
    log = await arun([suite], timeout=1.5)
    assert log.runs[0].error is not None and log.runs[0].error.code == "timeout"


class Flaky:
    """Raises ModelError for the first ``failures`` calls, then answers in plain text."""

    spec = "scripted:flaky"

    def __init__(self, failures: int, retryable: bool) -> None:
        self.failures = failures
        self.retryable = retryable
        self.calls = 0

    async def generate(self, request: ModelRequest) -> AIMessage:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ModelError("the model is overloaded", provider="scripted",
                             retryable=self.retryable, hint="try again later")
        return AIMessage(content="Nothing measured yet: run a load test first.")


def _one_case(**case: Any) -> list[Suite]:
    return [Suite(name="s", cases=[Case(**{"id": "c", "input": ["How fast is checkout?"],
                                           "scorers": [scorer("contains", value="load test")],
                                           **case})])]


async def test_a_retryable_model_error_is_retried_on_a_new_thread() -> None:
    model = Flaky(failures=1, retryable=True)
    log = await arun(_one_case(), model=model, retries=2, cache=False)
    (case,) = log.runs
    assert case.status == "ok" and case.attempts == 2 and case.passed is True
    assert case.error is None and case.turns[0].error is None
    # The case's record is the successful attempt's thread, from its first message.
    assert case.messages[0] == {"role": "user", "content": "How fast is checkout?"}


async def test_model_errors_that_persist_or_cannot_be_retried_are_errors() -> None:
    exhausted = await arun(_one_case(), model=Flaky(failures=5, retryable=True), retries=1,
                           cache=False)
    (case,) = exhausted.runs
    assert case.status == "error" and case.attempts == 2 and case.scores == []
    assert case.error is not None and case.error.code == "model_error"
    assert "overloaded" in case.error.message

    model = Flaky(failures=1, retryable=False)
    refused = await arun(_one_case(), model=model, retries=3, cache=False)
    assert refused.runs[0].attempts == 1 and refused.runs[0].error is not None
    assert model.calls == 1


async def test_a_missing_placeholder_value_is_an_error_of_that_case_only() -> None:
    suites = [Suite(name="s", cases=[
        Case(id="typo", input=["Explain SELECT * FROM orders on {db}"],
             fixture=Fixture(kind="shop_database", options={"customers": 5, "orders": 50}),
             scorers=[scorer("contains", value="x")]),
        Case(id="literal", input=["What does {this} mean in a Python f-string?"],
             scorers=[scorer("tool_used", name="knowledge_search")]),
    ])]
    log = await arun(suites)
    typo, literal = log.runs
    assert typo.status == "error" and typo.turns == []
    assert typo.error is not None and typo.error.code == "fixture_value_missing"
    assert "{db}" in typo.error.message and "database" in typo.error.message
    # Without a fixture there is nothing to substitute: braces stay as written.
    assert literal.status == "ok" and literal.turns[0].input.startswith("What does {this}")


def test_substitute() -> None:
    values = {"url": "http://127.0.0.1:1/", "database": "/tmp/shop.db"}
    assert substitute("GET {url} on {database} {{literal}}", values, "slow_service") == (
        "GET http://127.0.0.1:1/ on /tmp/shop.db {literal}")
    with pytest.raises(FixtureError) as err:
        substitute("{uri}", values, "slow_service")
    assert err.value.code == "fixture_value_missing" and "url, database" in err.value.message
    with pytest.raises(FixtureError) as err:
        substitute("a { b", values, "slow_service")
    assert err.value.code == "input_template_invalid"


async def test_fixture_failures_are_errors_with_their_code(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    missing = _one_case(input=["Why is {script} slow?"],
                        fixture=Fixture(kind="script", options={"path": "examples/nope.py"}))
    (case,) = (await arun(missing)).runs
    assert case.error is not None and case.error.code == "fixture_failed"
    assert "examples/nope.py" in case.error.message

    monkeypatch.setenv("PATH", str(tmp_path))  # as on a machine without redis-server
    redis_case = _one_case(input=["Check the cache at {redis_url}"], fixture=Fixture(kind="redis"))
    (case,) = (await arun(redis_case)).runs
    assert case.error is not None and case.error.code == "fixture_unavailable"
    assert "redis-server" in case.error.message and case.error.hint


async def test_unknown_persona_and_empty_selection_fail_before_running() -> None:
    with pytest.raises(SuiteError) as err:
        await arun(_one_case(persona="no-such-persona"))
    assert err.value.code == "unknown_persona" and '"c"' in err.value.message
    with pytest.raises(SuiteError) as err:
        await arun(_one_case(tags=["smoke"]), tags=["nightly"])
    assert err.value.code == "no_cases"


async def test_tags_select_cases_and_the_log_keeps_only_those() -> None:
    suite = Suite(name="s", cases=[
        Case(id="a", input=["What is an N+1 query?"], tags=["smoke"],
             scorers=[scorer("tool_used", name="knowledge_search")]),
        Case(id="b", input=["What is a flame graph?"], tags=["nightly"],
             scorers=[scorer("tool_used", name="knowledge_search")]),
    ])
    log = await arun([suite], tags=["smoke"])
    assert [r.case_id for r in log.runs] == ["a"] and [c.id for c in log.suites[0].cases] == ["a"]
    assert log.runs[0].tags == ["smoke"]


def _summary(passed: int, failed: int, errors: int) -> RunSummary:
    judged = passed + failed
    return RunSummary(cases=1, case_epochs=judged + errors, passed=passed, failed=failed,
                      errors=errors, skipped=0, pass_rate=passed / judged if judged else None,
                      per_case=[], principles=[], checks=[], scorers=[])


def test_exit_codes() -> None:
    assert exit_code(_summary(3, 0, 0), 1.0) == EXIT_OK == 0
    assert exit_code(_summary(3, 1, 0), 1.0) == EXIT_QUALITY == 4
    assert exit_code(_summary(3, 1, 0), 0.75) == EXIT_OK
    assert exit_code(_summary(3, 0, 1), 0.5) == EXIT_INFRA == 5
    assert exit_code(_summary(0, 0, 0), 0.0) == EXIT_QUALITY  # nothing judged is no pass


# =========================================================================== the cache


class Counting:
    """Counts its calls. To a user's message (or the checks' feedback) it answers with a
    knowledge_search call, to a tool result with text."""

    def __init__(self, spec: str = "scripted:count", fail: bool = False) -> None:
        self.spec = spec
        self.calls = 0
        self.fail = fail

    async def generate(self, request: ModelRequest) -> AIMessage:
        self.calls += 1
        if self.fail:
            raise ModelError("boom", provider="scripted", retryable=True)
        usage = {"input_tokens": 120, "output_tokens": 8, "total_tokens": 128}
        if request.messages[-1].type == "human":
            return AIMessage(content="", usage_metadata=usage, tool_calls=[
                {"name": "knowledge_search", "args": {"query": "load testing"}, "id": "t1"}])
        if request.on_text:
            request.on_text("Run a load test first.")
        return AIMessage(content="Run a load test first.", usage_metadata=usage)


def _request(text: str = "how fast?", *, answered: bool = False) -> tuple[ModelRequest, list[str]]:
    """A first call of a turn, or (``answered``) the call after its tool result."""
    messages: list[Any] = [HumanMessage(content=text)]
    if answered:
        messages += [AIMessage(content="", tool_calls=[{"name": "load_test", "args": {}, "id": "1"}]),
                     ToolMessage(content='{"ok": true}', tool_call_id="1", name="load_test")]
    streamed: list[str] = []
    return ModelRequest(system="sys", messages=messages,
                        tools=[ToolSchema("load_test", "load", {"type": "object"})],
                        on_text=streamed.append), streamed


async def test_cached_model_hits_misses_and_never_stores_errors(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    inner = Counting()
    first = CachedModel(inner, path, epoch=1)
    fresh = await first.generate(_request()[0])
    again = await first.generate(_request()[0])
    assert inner.calls == 1 and (first.hits, first.misses) == (1, 1)
    assert again.tool_calls == fresh.tool_calls and again.tool_calls
    assert again.usage_metadata == fresh.usage_metadata
    await first.generate(_request(answered=True)[0])
    replay, streamed = _request(answered=True)
    text = await first.generate(replay)
    assert inner.calls == 2 and text.content == "Run a load test first."
    assert streamed == ["Run a load test first."]  # a hit still streams its text

    await CachedModel(inner, path, epoch=2).generate(_request()[0])
    await CachedModel(inner, path, epoch=1).generate(_request("other question")[0])
    await CachedModel(Counting(spec="scripted:other"), path, epoch=1).generate(_request()[0])
    assert inner.calls == 4  # another epoch, another question: misses; another model: its own

    broken = Counting(spec="scripted:broken", fail=True)
    for _ in range(2):
        with pytest.raises(ModelError):
            await CachedModel(broken, path, epoch=1).generate(_request()[0])
    assert broken.calls == 2  # the failure was not cached
    with sqlite3.connect(path) as conn:
        models = {m for (m,) in conn.execute("SELECT model FROM responses")}
    assert models == {"scripted:count", "scripted:other"}


async def test_a_second_run_is_served_from_the_cache(isolated_state: Path) -> None:
    suites = _one_case(scorers=[scorer("contains", value="load test")])
    model = Counting()
    first = await arun(suites, model=model, epochs=2)
    calls = model.calls
    assert calls >= 4 and first.config.cache is True
    assert [r.cached for r in first.runs] == [False, False]
    assert (isolated_state / CACHE_FILE).exists()

    second = await arun(suites, model=model, epochs=2)
    assert model.calls == calls  # nothing new was asked
    assert [r.cached for r in second.runs] == [True, True]
    assert [r.passed for r in second.runs] == [True, True]
    for a, b in zip(first.runs, second.runs, strict=True):
        assert a.final is not None and b.final is not None
        assert b.final.answer == a.final.answer and b.final.usage == a.final.usage

    off = await arun(suites, model=model, cache=False)
    assert model.calls > calls and off.config.cache is False and not off.runs[0].cached


# =========================================================================== fixtures


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _refused(url_or_port: str | int) -> bool:
    port = url_or_port if isinstance(url_or_port, int) else int(
        url_or_port.split(":")[2].split("/")[0])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


async def test_slow_service_and_shop_database_fixtures(tmp_path: Path) -> None:
    options = {"customers": 20, "orders": 300}
    async with start_fixture(Fixture(kind="slow_service", options=options), tmp_path / "a") as v:
        assert set(v) == {"url", "database"}
        status, body = await asyncio.to_thread(_get, v["url"] + "/orders?customer=3")
        assert status == 200 and isinstance(json.loads(body), dict | list)
    assert _refused(v["url"])
    async with start_fixture(Fixture(kind="shop_database", options=options), tmp_path / "b") as v:
        with sqlite3.connect(v["database"]) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (300,)


async def test_script_fixture_copies_or_writes(tmp_path: Path) -> None:
    fixture = Fixture(kind="script", options={"path": "examples/orders_workload.py"})
    async with start_fixture(fixture, tmp_path / "a") as values:
        copied = Path(values["script"])
        assert copied.parent == tmp_path / "a" and copied.name == "orders_workload.py"
        assert copied.read_bytes() == (EXAMPLES_DIR / "orders_workload.py").read_bytes()
    inline = Fixture(kind="script", options={"source": "print(1)\n", "name": "one.py"})
    async with start_fixture(inline, tmp_path / "b") as values:
        assert Path(values["script"]).read_text() == "print(1)\n"


@pytest.mark.parametrize("fmt", ["otlp", "jaeger"])
async def test_trace_file_fixture_has_the_slow_span_and_the_repeats(
        fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.traces import TracesInput
    from tools.traces import run as analyze

    monkeypatch.setenv("PERFAGENT_WORKSPACE", str(tmp_path))
    fixture = Fixture(kind="trace_file", options={"format": fmt, "slow_span": "SELECT carts",
                                                  "slow_ms": 250, "repeats": 8})
    async with start_fixture(fixture, tmp_path) as values:
        result = await analyze(TracesInput(path=values["trace"]))
    assert result.formats == [fmt] and result.span_count == 3 + 8
    slow = next(s for s in result.slowest_spans if s.name == "SELECT carts")
    assert slow.duration_ms == pytest.approx(250)
    kinds = {f.kind for f in result.findings}
    assert {"slow_span", "n_plus_one"} <= kinds


async def test_http_server_fixture_delays_and_sets_the_status(tmp_path: Path) -> None:
    fixture = Fixture(kind="http_server", options={"delay_ms": 200, "status": 503, "body": "busy"})
    async with start_fixture(fixture, tmp_path) as values:
        started = time.perf_counter()
        status, body = await asyncio.to_thread(_get, values["url"] + "anything")
        assert time.perf_counter() - started >= 0.2
        assert (status, body) == (503, b"busy")
    assert _refused(values["url"])


async def test_page_fixture_serves_the_page_and_its_files(tmp_path: Path) -> None:
    fixture = Fixture(kind="page", options={"files": {"app.css": "h1 { color: red }"}})
    async with start_fixture(fixture, tmp_path) as values:
        assert values["url"].endswith("/index.html")
        status, body = await asyncio.to_thread(_get, values["url"])
        assert status == 200 and b"<h1>" in body
        status, body = await asyncio.to_thread(_get, values["url"].replace("index.html", "app.css"))
        assert (status, body) == (200, b"h1 { color: red }")


async def test_redis_fixture_runs_its_commands(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    fixture = Fixture(kind="redis", options={"commands": ["SET greeting hello", "GET nothing"]})
    async with start_fixture(fixture, tmp_path) as values:
        port = int(values["redis_url"].rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET greeting\r\n")
        assert await reader.readuntil(b"hello\r\n") == b"$5\r\nhello\r\n"
        writer.close()
    assert _refused(port)


def test_fixture_options_are_validated() -> None:
    with pytest.raises(FixtureError) as err:
        validate_fixture(Fixture(kind="kafka"))
    assert err.value.code == "unknown_fixture" and "slow_service" in err.value.hint
    with pytest.raises(FixtureError) as err:
        validate_fixture(Fixture(kind="script", options={"path": "a.py", "source": "x"}))
    assert err.value.code == "fixture_invalid" and "exactly one" in err.value.message
    with pytest.raises(FixtureError) as err:
        validate_fixture(Fixture(kind="http_server", options={"delay": 5}))
    assert "delay" in err.value.message and "delay_ms" in err.value.hint


# =========================================================================== loading suites


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
name: good
persona: performance-engineer
cases:
  - id: first
    input: "Why is {script} slow?"
    fixture: {kind: script, options: {path: examples/orders_workload.py}}
    tags: [profile]
    scorers:
      - checks_pass
      - contains: "profile"
      - {type: tool_used, name: profile_python, min: 1, label: "profiled it"}
  - id: second
    input: ["What is an N+1 query?", "How do I find one?"]
    scorers:
      - {icontains: "n+1", label: "names it"}
"""


def test_load_suite_reads_every_scorer_form(tmp_path: Path) -> None:
    path = _write(tmp_path, "good.yaml", GOOD)
    suite = load_suite(path)
    assert suite.name == "good" and suite.path == str(path)
    assert suite.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    first, second = suite.cases
    assert first.input == ["Why is {script} slow?"] and first.fixture is not None
    assert [(s.type, s.params, s.label) for s in first.scorers] == [
        ("checks_pass", {}, ""), ("contains", {"value": "profile"}, ""),
        ("tool_used", {"name": "profile_python", "min": 1}, "profiled it")]
    assert second.input == ["What is an N+1 query?", "How do I find one?"]
    assert (second.scorers[0].type, second.scorers[0].params, second.scorers[0].label) == (
        "icontains", {"value": "n+1"}, "names it")


@pytest.mark.parametrize(("text", "code", "fragments"), [
    (GOOD.replace("- checks_pass", "- checks_passes"), "invalid_scorer",
     ['case "first"', "scorers[0]", "checks_passes"]),
    (GOOD.replace("min: 1,", "min: -3,"), "invalid_scorer", ['case "first"', "scorers[2]"]),
    (GOOD.replace("id: second", "id: first"), "duplicate_case_id", ['"first"']),
    (GOOD.replace('input: ["What', 'inputs: ["What'), "suite_invalid",
     ['case "second"', "inputs"]),
    (GOOD.replace("    tags: [profile]\n", "    timeout: -1\n"), "suite_invalid",
     ['case "first"', "field timeout"]),
    (GOOD.replace("kind: script,", "kind: scrypt,"), "unknown_fixture",
     ['case "first"', "scrypt"]),
    (GOOD.replace("path: examples/orders_workload.py", "file: x.py"), "fixture_invalid",
     ['case "first"', "file"]),
    (GOOD.replace("cases:", "cases: [").replace("  - id: first", "  - id: first]", 1),
     "suite_invalid_yaml", ["not valid YAML"]),
    ("- just\n- a list\n", "suite_invalid", ["mapping"]),
])
def test_load_errors_name_the_file_the_case_and_the_field(
        tmp_path: Path, text: str, code: str, fragments: list[str]) -> None:
    path = _write(tmp_path, "broken.yaml", text)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert err.value.code == code
    assert str(path) in err.value.message
    for fragment in fragments:
        assert fragment in err.value.message
    assert err.value.hint


def test_load_suites_refuses_two_suites_with_one_name(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.yaml", GOOD)
    b = _write(tmp_path, "b.yaml", GOOD)
    with pytest.raises(SuiteError) as err:
        load_suites([a, b])
    assert err.value.code == "duplicate_suite_name" and str(a) in err.value.message
    with pytest.raises(SuiteError) as err:
        load_suites([tmp_path / "missing.yaml"])
    assert err.value.code == "suite_not_found"
    with pytest.raises(SuiteError) as err:
        load_suites([])
    assert err.value.code == "no_suites"
