"""The ACP agent as an editor runs it: ``perfagent acp`` in a subprocess, driven by the
ACP library's own client connection, with every stdout frame checked to be protocol."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from acp import PROTOCOL_VERSION, RequestError, connect_to_agent, resource_link_block, text_block
from acp.client.connection import ClientSideConnection
from acp.schema import AgentMessageChunk, ToolCallProgress, ToolCallStart, UserMessageChunk
from langchain_core.messages import AIMessage

from agent.context import Settings
from agent.server.acp import TurnRenderer, prompt_text, tool_title
from agent.service import AgentService
from agent.threads import thread_index
from tests.conftest import REPO
from tests.scripted import ScriptedModel
from tests.test_graph import FAILING

#: Long enough for a first turn that embeds the playbooks; a hang still fails.
TURN_TIMEOUT = 120


@dataclass
class RecordingClient:
    """The editor's side: keeps every session/update it receives, in order."""

    updates: list[Any] = field(default_factory=list)

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update)

    def message_text(self) -> str:
        return "".join(u.content.text for u in self.updates if isinstance(u, AgentMessageChunk))

    def cards(self) -> dict[str, list[Any]]:
        """Tool-call cards by id: their start, then their updates."""
        cards: dict[str, list[Any]] = {}
        for u in self.updates:
            if isinstance(u, ToolCallStart | ToolCallProgress):
                cards.setdefault(u.tool_call_id, []).append(u)
        return cards


@dataclass
class AgentProcess:
    conn: ClientSideConnection
    process: asyncio.subprocess.Process
    #: every line the agent wrote to stdout
    frames: list[bytes]


@asynccontextmanager
async def acp_agent(client: RecordingClient, tmp_path: Path, *, cwd: Path,
                    env: dict[str, str] | None = None) -> AsyncIterator[AgentProcess]:
    """``perfagent acp`` as a subprocess, initialized; its stdout is copied aside on the way
    to the client so the test can check that nothing but JSON-RPC frames came out."""
    environment = {k: v for k, v in os.environ.items() if k != "PERFAGENT_WORKSPACE"}
    environment.update(env or {})
    stderr_path = tmp_path / "acp-stderr.log"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "acp", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=environment, cwd=cwd,
            limit=16 * 1024 * 1024)
    assert process.stdin is not None and process.stdout is not None
    frames: list[bytes] = []
    to_client = asyncio.StreamReader(limit=16 * 1024 * 1024)

    async def copy_stdout() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            frames.append(line)
            to_client.feed_data(line)
        to_client.feed_eof()

    copying = asyncio.create_task(copy_stdout())
    conn = connect_to_agent(client, process.stdin, to_client)
    try:
        init = await asyncio.wait_for(conn.initialize(protocol_version=PROTOCOL_VERSION), 30)
        assert init.protocol_version == PROTOCOL_VERSION
        assert init.agent_info is not None and init.agent_info.name == "perfagent"
        assert init.agent_capabilities is not None and init.agent_capabilities.load_session
        yield AgentProcess(conn, process, frames)
    finally:
        await conn.close()
        process.stdin.close()  # end of input: the agent shuts down by itself
        try:
            await asyncio.wait_for(process.wait(), 30)
        finally:
            if process.returncode is None:
                process.kill()
            await copying
    assert process.returncode == 0, stderr_path.read_text()
    assert "Traceback" not in stderr_path.read_text()
    for line in frames:
        frame = json.loads(line)
        assert frame["jsonrpc"] == "2.0", line


async def prompt(agent: AgentProcess, session_id: str, *blocks: Any) -> str:
    response = await asyncio.wait_for(
        agent.conn.prompt(session_id=session_id, prompt=list(blocks)), TURN_TIMEOUT)
    return response.stop_reason


@pytest.mark.slow
async def test_a_turn_streams_tool_cards_and_the_exact_answer(
        tmp_path: Path, isolated_state: Path) -> None:
    client = RecordingClient()
    # The agent starts outside the project; the session's folder becomes the workspace,
    # so the relative path in the question means the project's file.
    async with acp_agent(client, tmp_path, cwd=tmp_path) as agent:
        session = await agent.conn.new_session(cwd=str(REPO))
        sid = session.session_id
        assert await prompt(agent, sid, text_block("Why is examples/orders_workload.py slow?")
                            ) == "end_turn"

        first = thread_index(isolated_state).turns(sid)[0].result
        assert first.revisions == 0
        assert client.message_text() == first.answer
        cards = client.cards()
        profile = next(c for c in cards.values() if c[0].title.startswith("profile_python"))
        start, *progress, done = profile
        assert isinstance(start, ToolCallStart)
        assert start.title == "profile_python: examples/orders_workload.py"
        assert start.kind == "execute" and start.status == "in_progress"
        assert progress and all(u.status == "in_progress" for u in progress)
        assert done.status == "completed" and "orders_workload.py ran" in done.content[0].content.text
        checks = next(c for c in cards.values() if c[0].title == "Pre-response checks")
        assert checks[-1].status == "completed"
        assert checks[-1].title == "Pre-response checks: all passed"
        assert all(not isinstance(u, ToolCallStart) or u.status == "in_progress"
                   for u in client.updates)

        # The same session continues the thread: one thread, two turns.
        client.updates.clear()
        assert await prompt(agent, sid, text_block("What is p95 latency?")) == "end_turn"
        info = thread_index(isolated_state).get(sid)
        assert info is not None and info.turns == 2
        second = thread_index(isolated_state).turns(sid)[1].result
        assert client.message_text() == second.answer
        # Card ids are unique across the session although the model reuses its call ids.
        assert not set(client.cards()) & set(cards)

    # An editor restarted later reopens the thread: its messages are replayed.
    replay = RecordingClient()
    async with acp_agent(replay, tmp_path, cwd=tmp_path) as agent:
        await agent.conn.load_session(cwd=str(REPO), session_id=sid)
        said = [u.content.text for u in replay.updates if isinstance(u, UserMessageChunk)]
        assert said == ["Why is examples/orders_workload.py slow?", "What is p95 latency?"]
        answers = [u.content.text for u in replay.updates if isinstance(u, AgentMessageChunk)]
        assert answers == [first.answer, second.answer]
        with pytest.raises(RequestError) as unknown:
            await agent.conn.load_session(cwd=str(REPO), session_id="no-such-thread")
        assert unknown.value.data["code"] == "unknown_session"


def _tool_children(process: psutil.Process) -> list[psutil.Process]:
    """The process's descendants, less its reaper (which lives as long as the process)."""
    found = []
    for child in process.children(recursive=True):
        try:
            if not any(part.endswith("reaper.py") for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


async def no_children(process: psutil.Process, within: float = 10) -> None:
    """Wait until ``process`` has no tool processes left (they are killed asynchronously)."""
    async with asyncio.timeout(within):
        while _tool_children(process):
            await asyncio.sleep(0.05)


SPIN = """\
import os
import time

with open("spin.pid", "w") as fh:
    fh.write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


@pytest.mark.slow
async def test_cancel_ends_the_turn_and_kills_its_processes(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "spin.py").write_text(SPIN)
    pid_file = workspace / "spin.pid"
    client = RecordingClient()
    async with acp_agent(client, tmp_path, cwd=workspace,
                         env={"PERFAGENT_WORKSPACE": str(workspace)}) as agent:
        sid = (await agent.conn.new_session(cwd=str(workspace))).session_id
        turn = asyncio.create_task(prompt(agent, sid, text_block("profile spin.py")))
        async with asyncio.timeout(TURN_TIMEOUT):
            while not pid_file.exists() or not pid_file.read_text():
                await asyncio.sleep(0.05)
        spinning = psutil.Process(int(pid_file.read_text()))
        agent_process = psutil.Process(agent.process.pid)
        assert spinning in agent_process.children(recursive=True)

        await agent.conn.cancel(session_id=sid)
        assert await turn == "cancelled"
        # The tool killed its process group: nothing the turn started is left.
        await no_children(agent_process)
        assert not spinning.is_running() or spinning.status() == psutil.STATUS_ZOMBIE
        card = next(c for c in client.cards().values() if c[0].title == "profile_python: spin.py")
        assert card[-1].status == "failed" and card[-1].content[0].content.text == "cancelled"

        # The session takes the next prompt.
        assert await prompt(agent, sid, text_block("What is p95 latency?")) == "end_turn"


@pytest.mark.slow
async def test_sigterm_mid_turn_exits_cleanly_without_leaving_processes(tmp_path: Path) -> None:
    """How an editor stops its agent: the running turn is wound down, its tool's process
    group killed, and the agent exits with status 0."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "spin.py").write_text(SPIN)
    pid_file = workspace / "spin.pid"
    async with acp_agent(RecordingClient(), tmp_path, cwd=workspace,
                         env={"PERFAGENT_WORKSPACE": str(workspace)}) as agent:
        sid = (await agent.conn.new_session(cwd=str(workspace))).session_id
        turn = asyncio.create_task(prompt(agent, sid, text_block("profile spin.py")))
        async with asyncio.timeout(TURN_TIMEOUT):
            while not pid_file.exists() or not pid_file.read_text():
                await asyncio.sleep(0.05)
        spinning = psutil.Process(int(pid_file.read_text()))
        agent.process.terminate()
        assert await asyncio.wait_for(agent.process.wait(), 30) == 0
        with pytest.raises(ConnectionError):  # the agent went away mid-prompt
            await turn
        assert not spinning.is_running() or spinning.status() == psutil.STATUS_ZOMBIE


async def test_failures_are_json_rpc_errors_with_code_and_hint(tmp_path: Path) -> None:
    client = RecordingClient()
    # An Anthropic model without a key (the fixtures drop ANTHROPIC_API_KEY): every turn fails.
    async with acp_agent(client, tmp_path, cwd=REPO,
                         env={"PERFAGENT_MODEL": "anthropic:claude-sonnet-5"}) as agent:
        with pytest.raises(RequestError) as unknown:
            await prompt(agent, "no-such-thread", text_block("hi"))
        assert unknown.value.data["code"] == "unknown_session"

        sid = (await agent.conn.new_session(cwd=str(REPO))).session_id
        with pytest.raises(RequestError) as empty:
            await prompt(agent, sid, text_block("  "))
        assert empty.value.data["code"] == "empty_prompt"

        with pytest.raises(RequestError) as failed:
            await prompt(agent, sid, text_block("Why is examples/orders_workload.py slow?"))
        error = failed.value.data
        assert error == {"code": "model_error", "message": "anthropic models need an API key",
                         "hint": "set ANTHROPIC_API_KEY, or use --model offline"}
        assert str(failed.value) == f"{error['message']} ({error['hint']})"


async def test_revisions_are_announced_and_the_message_ends_with_the_answer() -> None:
    """The real graph with a model whose drafts keep failing the checks: two revisions,
    then finalize appends its notes, which the client gets as the missing suffix."""
    model = ScriptedModel([AIMessage(content=FAILING)] * 3)
    renderer = TurnRenderer()
    updates: list[Any] = []
    answer = ""
    async with AgentService(Settings(model="offline", max_revisions=2), model=model) as service:
        async for event in service.stream("speed it up"):
            updates.extend(renderer.updates(event))
            if event.type == "final":
                answer = event.data["answer"]
    text = "".join(u.content.text for u in updates if isinstance(u, AgentMessageChunk))
    notices = text.split("\n\n---\n\n")
    assert len(notices) == 3 and "(revision 2)" in notices[-1]
    assert notices[-1].split("The revised answer follows._\n\n", 1)[1] == answer
    assert answer.startswith(FAILING) and "Unresolved pre-response checks" in answer
    rounds = [u for u in updates if isinstance(u, ToolCallProgress) and u.title]
    assert len(rounds) == 3 and all(u.status == "failed" for u in rounds)
    assert not renderer.open_cards


def test_prompt_text_writes_linked_files_as_paths() -> None:
    blocks = [text_block("Why is"), resource_link_block("slow.py", "file:///work/my%20app/slow.py"),
              text_block(" slow?\n"), resource_link_block("docs", "https://example.com/x")]
    assert prompt_text(blocks) == "Why is /work/my app/slow.py slow?\nhttps://example.com/x"


def test_tool_titles_name_the_target() -> None:
    assert tool_title("load_test", {"url": "http://127.0.0.1:8000/orders", "rate": 5}) == (
        "load_test: http://127.0.0.1:8000/orders")
    assert tool_title("system_snapshot", {"interval": 2}) == "system_snapshot"
    long_sql = tool_title("explain_query", {"database": "shop.db", "sql": "SELECT " + "x, " * 60})
    assert long_sql.startswith("explain_query: SELECT x, x,") and long_sql.endswith("…")
