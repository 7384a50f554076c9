"""The MCP server through the official ``mcp`` client, as IDE assistants use it.

stdio runs ``perfagent mcp`` as a real subprocess; Streamable HTTP runs both
the standalone ``perfagent mcp --http`` and the endpoint mounted in a FastAPI
app the way the HTTP server mounts it, on real loopback sockets.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TextIO

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import CallToolResult

from agent.context import Settings
from agent.graph import system_prompt
from agent.server.config import ServerConfigError
from agent.server.mcp import ASK_TOOL, MCP_PATH, build_mcp_server, mcp_asgi, serve_http
from agent.service import AgentService
from agent.threads import thread_index
from tests.conftest import REPO
from tests.serving import free_port, served
from tools import get_tool, tool_names

CHECK_NAMES = {"baseline_established", "impact_quantified", "monitoring_included",
               "implementation_quality", "regression_prevention"}
CODE_TOOLS = {"profile_python", "detect_n_plus_one"}
SLOW_SCRIPT = "examples/orders_workload.py"
SERVER = [sys.executable, "-m", "agent.cli", "mcp"]


def server_env(**extra: str) -> dict[str, str]:
    """The test's perfagent settings (state dir, embedding cache) for a server subprocess."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PERFAGENT_")}
    return {**env, "PERFAGENT_WORKSPACE": str(REPO), **extra}


class Progress:
    """Collects the progress notifications of one call."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, total, message))

    @property
    def values(self) -> list[float]:
        return [p for p, _, _ in self.seen]

    @property
    def messages(self) -> list[str]:
        return [m or "" for _, _, m in self.seen]


def tool_error(result: CallToolResult) -> dict[str, str]:
    """The structured error of a failed call: {code, message, hint}."""
    assert result.is_error, result
    error = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert set(error) == {"code", "message", "hint"}
    return error


@asynccontextmanager
async def stdio_session() -> AsyncIterator[Client]:
    """``perfagent mcp`` as a subprocess, with the handshake IDE clients speak today."""
    params = StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=server_env(), cwd=REPO)
    with tempfile.TemporaryFile("w+") as errlog:
        try:
            async with Client(stdio_client(params, errlog=errlog), mode="legacy",
                              read_timeout_seconds=120) as client:
                yield client
        except BaseException:
            errlog.seek(0)
            sys.stderr.write(f"server stderr:\n{errlog.read()}")
            raise


# --------------------------------------------------------------------------- stdio


async def test_stdio_lists_tools_and_prompts_and_measures() -> None:
    async with stdio_session() as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) == {*tool_names(), ASK_TOOL}
        for name in tool_names():
            spec = get_tool(name)
            assert listed[name].input_schema == spec.json_schema()
            assert listed[name].description == spec.description
            assert listed[name].output_schema is not None
        assert listed[ASK_TOOL].input_schema["required"] == ["question"]
        assert "checks" in listed[ASK_TOOL].output_schema["properties"]  # type: ignore[index]

        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        assert "performance-engineer" in prompts and len(prompts) > 1
        prompt = await client.get_prompt("performance-engineer")
        assert prompt.messages[0].content.text == system_prompt("performance-engineer")  # type: ignore[union-attr]

        progress = Progress()
        result = await client.call_tool("profile_python", {"script": SLOW_SCRIPT},
                                        progress_callback=progress)
        assert not result.is_error, result.content
        data = result.structured_content
        assert data is not None and data["tool"] == "profile_python" and data["ok"]
        wall = next(m for m in data["measurements"] if m["name"] == "wall_time")
        assert wall["value"] > 100 and wall["unit"] == "ms"  # the script really ran (~1 s)
        assert any(f["kind"] == "repeated_query" for f in data["findings"])
        assert json.loads(result.content[0].text) == data  # type: ignore[union-attr]
        # The profile takes about a second: a start, running updates and the end arrive.
        assert len(progress.values) >= 3, progress.seen
        assert progress.values == sorted(set(progress.values)) and progress.values[-1] == 1.0
        assert any("under cProfile" in m for m in progress.messages)

        invalid = tool_error(await client.call_tool("profile_python",
                                                    {"script": SLOW_SCRIPT, "timeout": -1}))
        assert invalid["code"] == "invalid_arguments" and "timeout" in invalid["message"]
        missing = tool_error(await client.call_tool("profile_python", {"script": "nope.py"}))
        assert missing["code"] == "not_found" and missing["hint"]
        refused = tool_error(await client.call_tool("load_test", {"url": "http://example.com/"}))
        assert refused["code"] == "target_refused"
        # Errors leave the session usable.
        assert len((await client.list_tools()).tools) == len(listed)


async def test_stdio_ask_measures_checks_and_continues_the_thread() -> None:
    async with stdio_session() as client:
        progress = Progress()
        result = await client.call_tool(ASK_TOOL, {"question": f"Why is {SLOW_SCRIPT} slow?"},
                                        progress_callback=progress)
        assert not result.is_error, result.content
        turn = result.structured_content
        assert turn is not None
        assert result.content[0].text == turn["answer"]  # type: ignore[union-attr]
        assert "offline engine" in turn["answer"]
        assert {c["name"] for c in turn["checks"]} == CHECK_NAMES
        assert turn["tool_calls"][0]["name"] == "profile_python"
        assert {m["name"] for m in turn["measurements"]} >= {"wall_time", "cpu_time"}
        # Tool calls, the tool's own progress and the checks arrive while the turn runs.
        assert "running profile_python" in progress.messages
        assert any("under cProfile" in m for m in progress.messages)
        assert any(m.startswith("check impact_quantified") for m in progress.messages)
        assert progress.values == list(range(1, len(progress.values) + 1))

        follow_up = await client.call_tool(ASK_TOOL, {
            "question": f"Profile {SLOW_SCRIPT} again", "thread_id": turn["thread_id"]})
        assert not follow_up.is_error, follow_up.content
        assert follow_up.structured_content["thread_id"] == turn["thread_id"]  # type: ignore[index]
    info = thread_index(Settings().state_dir).get(turn["thread_id"])
    assert info is not None and info.turns == 2


def _reader(stream: TextIO, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_stdio_stdout_carries_only_json_rpc() -> None:
    """Every byte the server writes to stdout, over a whole turn and a shutdown, is JSON-RPC."""
    proc = subprocess.Popen(SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **server_env()},
                            cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    seen: list[dict[str, Any]] = []

    def send(message: dict[str, Any]) -> None:
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    def answer_to(request_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "the server closed stdout early"
            message = json.loads(line)  # a stray print or log line fails here
            assert message["jsonrpc"] == "2.0"
            seen.append(message)
            if message.get("id") == request_id:
                return message

    try:
        send({"id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "0"}}})
        assert answer_to(1)["result"]["serverInfo"]["name"] == "perfagent"
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "tools/call", "params": {
            "name": ASK_TOOL, "arguments": {"question": f"Why is {SLOW_SCRIPT} slow?"},
            "_meta": {"progressToken": "turn"}}})
        answer = answer_to(2)["result"]
        assert not answer.get("isError") and answer["structuredContent"]["tool_calls"]
        progress = [m for m in seen if m.get("method") == "notifications/progress"]
        assert progress and {m["params"]["progressToken"] for m in progress} == {"turn"}
        send({"id": 3, "method": "tools/call", "params": {
            "name": "system_snapshot", "arguments": {"interval": "soon"}}})
        assert answer_to(3)["result"]["isError"] is True
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()  # type: ignore[union-attr]
        while (line := lines.get(timeout=5)) is not None:
            assert json.loads(line)["jsonrpc"] == "2.0"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- Streamable HTTP


@contextmanager
def mcp_http_server(*args: str, **env: str) -> Iterator[str]:
    """``perfagent mcp --http`` on a free loopback port; yields the MCP URL."""
    port = free_port()
    proc = subprocess.Popen([*SERVER, "--http", "--port", str(port), *args], cwd=REPO,
                            env={**os.environ, **server_env(**env)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the MCP HTTP server did not start"
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}{MCP_PATH}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_http_standalone_hides_code_tools_and_reports_turn_errors() -> None:
    # An anthropic model without a key: the turn fails, and says how to fix it.
    with mcp_http_server("--model", "anthropic:claude-sonnet-5",
                         PERFAGENT_ALLOW_CODE_TOOLS="false") as url:
        async with Client(url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names == {*tool_names(), ASK_TOOL} - CODE_TOOLS
            result = await client.call_tool("system_snapshot", {"interval": 0.2})
            assert not result.is_error, result.content
            assert {m["name"] for m in result.structured_content["measurements"]} >= {  # type: ignore[index]
                "cpu_utilization"}
            hidden = await client.call_tool("profile_python", {"script": SLOW_SCRIPT})
            assert hidden.is_error
            failed = tool_error(await client.call_tool(ASK_TOOL, {"question": "Is it fast?"}))
            assert failed["code"] == "model_error" and "ANTHROPIC_API_KEY" in failed["hint"]


async def test_http_mounted_in_an_app_like_the_http_server() -> None:
    """The wiring :func:`mcp_asgi` documents: a route at /mcp, its sessions in the app lifespan."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    service = AgentService(Settings())
    endpoint, sessions = mcp_asgi(service)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with service, sessions:
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_route(MCP_PATH, endpoint)
    target = FastAPI()
    target.add_api_route("/", lambda: PlainTextResponse("ok"))

    with served(app) as base, served(target) as target_url:
        async with Client(f"{base}{MCP_PATH}") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names == {*tool_names(), ASK_TOOL}
            progress = Progress()
            result = await client.call_tool("load_test", {
                "url": f"{target_url}/", "rate": 50, "duration": 2,
                "thresholds": ["p(95)<1000"]}, progress_callback=progress)
            assert not result.is_error, result.content
            data = result.structured_content
            assert data is not None and data["requests"] >= 80
            assert {m["name"] for m in data["measurements"]} >= {"p95_latency", "throughput"}
            # A 2 s test reports about every half second.
            assert len(progress.values) >= 3 and progress.values[-1] == 1.0, progress.seen
        # DNS-rebinding protection on loopback: a foreign Host header is refused.
        refused = httpx.post(f"{base}{MCP_PATH}", headers={"Host": "evil.example"}, json={})
        assert refused.status_code == 421


# --------------------------------------------------------------------------- refusing to start


def test_an_unknown_persona_stops_the_server_with_a_structured_error() -> None:
    with pytest.raises(ServerConfigError) as refused:
        build_mcp_server(AgentService(Settings(persona="no-such-persona")))
    assert refused.value.code == "persona_error" and "no-such-persona" in refused.value.message
    assert "perfagent personas list" in refused.value.hint


def test_http_beyond_loopback_needs_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_API_KEYS", raising=False)
    with pytest.raises(ServerConfigError) as refused:
        serve_http(Settings(), host="0.0.0.0", port=free_port())
    assert refused.value.code == "api_keys_required"
