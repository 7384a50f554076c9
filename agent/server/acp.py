"""perfagent as an Agent Client Protocol (ACP) agent over stdio, for Zed, JetBrains and other editors.

The editor starts ``perfagent acp`` and speaks JSON-RPC with it over stdin and
stdout. What the editor sees:

* one ACP session is one perfagent thread: the session id is the thread id, so
  a conversation started in the editor is listed by the other surfaces, and
  ``session/load`` reopens any thread (its messages are replayed first);
* a prompt runs one turn through the process's single
  :class:`agent.service.AgentService`. The turn's events become
  ``session/update`` notifications (see :class:`TurnRenderer`): the answer
  streams as agent message chunks, every tool call is a tool-call card with
  live progress and its outcome, each round of the five pre-response checks
  is one card too, and a revision is announced in the message. The final
  message always ends with exactly the TurnResult's answer;
* ``session/cancel`` cancels the running turn; the tools kill the processes
  they started, and the prompt answers with the stop reason ``cancelled``;
* a failed turn (model error, unknown model, all run slots busy) answers the
  prompt with a JSON-RPC error whose message says what went wrong and what to
  do, never a traceback.

The tools measure code inside the workspace (see :func:`tools.base.workspace_roots`).
When ``PERFAGENT_WORKSPACE`` is not set, the folder of the editor's first
session becomes the workspace and later sessions' folders are added to it, so
relative paths in a question mean the project the editor has open.

Only protocol frames may reach stdout: the protocol gets a private copy of
stdout's descriptor, and descriptor 1 is pointed at stderr, so a stray print
or an inherited child's output lands in the editor's log instead of breaking
the JSON-RPC stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import uuid
from collections.abc import Sequence
from contextlib import aclosing
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from acp import PROTOCOL_VERSION, Client, RequestError, run_agent
from acp.core import DEFAULT_STDIO_BUFFER_LIMIT_BYTES
from acp.helpers import (
    SessionUpdate,
    start_tool_call,
    text_block,
    tool_content,
    update_agent_message_text,
    update_tool_call,
    update_user_message_text,
)
from acp.schema import (
    AgentCapabilities,
    Implementation,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PromptCapabilities,
    PromptResponse,
    ResourceContentBlock,
    TextContentBlock,
    ToolCallStatus,
    ToolKind,
)

from agent.context import Settings
from agent.persona import CHECK_IDS
from agent.results import RunEvent
from agent.service import AgentService, RunsBusy
from tools import get_tool, tool_names

#: The argument that names what a tool works on, most telling first; it goes in the card's title.
_TARGET_ARGS = ("script", "module", "url", "path", "access_log", "sql", "database", "query", "to",
                "pid")
_TITLE_CHARS = 80
_WORKSPACE_ENV = "PERFAGENT_WORKSPACE"  # read by tools.base.workspace_roots on every call

# JSON-RPC error codes (the JSON-RPC 2.0 specification's reserved ones).
_INVALID_REQUEST = -32600
_INVALID_PARAMS = -32602
_INTERNAL_ERROR = -32603


def rpc_error(rpc_code: int, code: str, message: str, hint: str = "") -> RequestError:
    """A JSON-RPC error an editor shows as is: the message carries the hint, the data the
    structured ``{code, message, hint}`` every perfagent surface uses."""
    text = f"{message} ({hint})" if hint else message
    return RequestError(rpc_code, text, {"code": code, "message": message, "hint": hint})


# --------------------------------------------------------------------------- prompts


def prompt_text(blocks: Sequence[Any]) -> str:
    """The user's message: text blocks as written, a linked file as its path.

    Editors send an @-mentioned file as a resource link between text blocks
    ("Why is ", <link to slow.py>, " slow?"); writing its path in place keeps the
    sentence whole and lets the agent measure that file. Images and audio are
    not advertised in the capabilities, so clients do not send them.
    """
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, TextContentBlock):
            parts.append(block.text)
        elif isinstance(block, ResourceContentBlock):
            parts.append(_link_target(block.uri))
    text = ""
    for part in parts:
        # Join with a space only where neither side already has one: "Why is " + path.
        needs_space = text and part and not text[-1].isspace() and not part[0].isspace()
        text += (" " if needs_space else "") + part
    return text.strip()


def _link_target(uri: str) -> str:
    parts = urlsplit(uri)
    return unquote(parts.path) if parts.scheme == "file" else uri


# --------------------------------------------------------------------------- turn -> updates


def tool_title(name: str, args: dict[str, Any]) -> str:
    """``profile_python: examples/orders_workload.py``: the tool and what it works on."""
    target = next((str(args[key]) for key in _TARGET_ARGS if args.get(key) not in (None, "")), "")
    target = " ".join(target.split())
    if len(target) > _TITLE_CHARS:
        target = target[:_TITLE_CHARS - 1] + "…"
    return f"{name}: {target}" if target else name


def tool_kind(name: str) -> ToolKind:
    """The ACP kind editors pick an icon by: running code, fetching a URL, searching, thinking."""
    if name == "knowledge_search":
        return "search"
    if name == "delegate":
        return "think"
    if name in tool_names():
        spec = get_tool(name)
        if spec.runs_code:
            return "execute"
        if "url" in spec.input_model.model_fields:
            return "fetch"
    return "other"


def _duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def unsent_answer(draft: str, answer: str) -> str:
    """The part of the final answer the client has not seen yet.

    ``draft`` is the text streamed by the last model call. The answer is that
    draft, possibly extended by finalize (unresolved-check notes); when a
    provider's streamed text and its answer disagree, the answer is sent whole.
    """
    if answer.startswith(draft):
        return answer[len(draft):]
    return ("\n\n" if draft else "") + answer


class TurnRenderer:
    """Turns one turn's RunEvents into ACP session updates; no I/O, one instance per prompt.

    * ``text_delta`` (top-level agent only) -> agent message chunks. Text a model
      writes before calling tools stays visible; the last model call's text is
      the draft, and on ``final`` the part of the TurnResult's answer the client
      has not seen (finalize's notes on unresolved checks) is sent.
    * ``tool_call`` / ``tool_progress`` / ``tool_result`` -> a tool-call card:
      in progress with the progress line as its content, then completed or
      failed with the tool's summary (or its last progress line) or its error.
    * ``check`` -> one card per round of checks (kind ``think``), listing each
      check's status with its evidence or feedback; it fails when a check fails.
      A card rather than a plan (ACP plans have no failed state) and rather than
      text (the message must end with the answer itself).
    * ``revision`` -> a message chunk saying which checks sent the draft back.

    Sub-agents' events (depth > 0) are left out: their work shows as the
    ``delegate`` card. Card ids carry a per-turn prefix: models (the offline
    engine among them) reuse tool-call ids from turn to turn, and an editor
    keys cards by id across the whole session.
    """

    def __init__(self) -> None:
        self.draft = ""
        self._turn = uuid.uuid4().hex[:8]
        #: cards (their ACP ids) not completed or failed yet
        self.open_cards: set[str] = set()
        self._progress: dict[str, str] = {}
        self._checks: list[dict[str, Any]] = []
        self._rounds = 0

    def updates(self, event: RunEvent) -> list[SessionUpdate]:
        data = event.data
        if data.get("depth", 0) != 0:
            return []
        match event.type:
            case "node_start" if data["node"] == "agent":
                self.draft = ""  # a new model call: only the last one's text is the draft
            case "text_delta":
                self.draft += data["text"]
                return [update_agent_message_text(data["text"])]
            case "tool_call":
                return [self._tool_started(data)]
            case "tool_progress" if self._card(data["id"]) in self.open_cards:
                self._progress[data["id"]] = data["text"]
                line = f"{data['text']} ({data['fraction']:.0%})"
                return [update_tool_call(self._card(data["id"]), status="in_progress",
                                         content=[tool_content(text_block(line))])]
            case "tool_result" if self._card(data["id"]) in self.open_cards:
                return [self._tool_finished(data)]
            case "check":
                return self._check(data)
            case "revision":
                failed = ", ".join(data.get("failed", [])) or "some"
                return [update_agent_message_text(
                    f"\n\n---\n\n_Revising the draft (revision {data['revision']}): the {failed} "
                    "check(s) failed. The revised answer follows._\n\n")]
            case "final":
                rest = unsent_answer(self.draft, data["answer"])
                return [update_agent_message_text(rest)] if rest else []
        return []

    def interrupted(self) -> list[SessionUpdate]:
        """Close the cards still running when the turn was cancelled."""
        closing = [update_tool_call(card, status="failed",
                                    content=[tool_content(text_block("cancelled"))])
                   for card in sorted(self.open_cards)]
        self.open_cards.clear()
        return closing

    def _card(self, name: str) -> str:
        return f"{self._turn}-{name}"

    def _tool_started(self, data: dict[str, Any]) -> SessionUpdate:
        self.open_cards.add(self._card(data["id"]))
        return start_tool_call(self._card(data["id"]), tool_title(data["name"], data["args"]),
                               kind=tool_kind(data["name"]), status="in_progress",
                               raw_input=data["args"])

    def _tool_finished(self, data: dict[str, Any]) -> SessionUpdate:
        self.open_cards.discard(self._card(data["id"]))
        took = _duration(data["duration_ms"])
        if data["ok"]:
            said = data.get("summary") or self._progress.get(data["id"])
            text = f"{said}\n\n(done in {took})" if said else f"done in {took}"
        else:
            text = f"failed after {took}: {data.get('error')}"
        self._progress.pop(data["id"], None)
        status: ToolCallStatus = "completed" if data["ok"] else "failed"
        return update_tool_call(self._card(data["id"]), status=status,
                                content=[tool_content(text_block(text))],
                                raw_output={k: data.get(k) for k in ("ok", "duration_ms", "error")})

    def _check(self, data: dict[str, Any]) -> list[SessionUpdate]:
        card = self._card(f"checks-{self._rounds + 1}")
        self._checks.append(data)
        lines = "\n".join(
            f"- **{c['name']}**: {c['status'].replace('_', ' ')}"
            + (f" — {c['feedback'] or c['evidence']}" if c["feedback"] or c["evidence"] else "")
            for c in self._checks)
        content = [tool_content(text_block(lines))]
        started: list[SessionUpdate] = []
        if len(self._checks) == 1:
            self.open_cards.add(card)
            started.append(start_tool_call(card, "Pre-response checks", kind="think",
                                           status="in_progress"))
        if len(self._checks) < len(CHECK_IDS):
            return [*started, update_tool_call(card, status="in_progress", content=content)]
        failed = [c["name"] for c in self._checks if c["status"] == "fail"]
        self._checks = []
        self._rounds += 1
        self.open_cards.discard(card)
        title = f"Pre-response checks: {', '.join(failed)} failed" if failed else (
            "Pre-response checks: all passed")
        return [*started, update_tool_call(card, title=title, content=content,
                                           status="failed" if failed else "completed")]


# --------------------------------------------------------------------------- the agent


def _agent_version() -> str:
    try:
        return version("perfagent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


class PerfAgent:
    """The ACP ``Agent``: sessions are threads of one :class:`AgentService`."""

    def __init__(self, service: AgentService) -> None:
        self._service = service
        self._client: Client | None = None
        #: the running turn of each session; a session runs one turn at a time
        self._turns: dict[str, asyncio.Task[PromptResponse]] = {}
        #: the workspace follows the editor's folders unless the user pinned it
        self._pinned_workspace = bool(os.environ.get(_WORKSPACE_ENV, "").strip())
        self._workspace: list[str] = []

    def on_connect(self, conn: Client) -> None:
        self._client = conn

    async def initialize(self, protocol_version: int, client_capabilities: Any = None,
                         client_info: Any = None, **kwargs: Any) -> InitializeResponse:
        # perfagent needs nothing from the client (no file system, no terminal): it
        # reads and runs files itself, inside the workspace.
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=True,
                                                 prompt_capabilities=PromptCapabilities()),
            agent_info=Implementation(name="perfagent",
                                      title=f"perfagent ({self._service.settings.persona})",
                                      version=_agent_version()),
        )

    async def new_session(self, cwd: str, mcp_servers: Any = None, **kwargs: Any,
                          ) -> NewSessionResponse:
        self._adopt_workspace(cwd)
        return NewSessionResponse(session_id=self._service.create_thread().thread_id)

    async def load_session(self, cwd: str, session_id: str, mcp_servers: Any = None,
                           **kwargs: Any) -> LoadSessionResponse:
        history = await self._service.history(session_id)
        if history is None:
            raise _unknown_session(session_id)
        self._adopt_workspace(cwd)
        await self._send(session_id, [
            update_user_message_text(m["content"]) if m["role"] == "user"
            else update_agent_message_text(m["content"])
            for m in history.messages
        ])
        return LoadSessionResponse()

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        if self._service.thread(session_id) is None:
            raise _unknown_session(session_id)
        if session_id in self._turns:
            raise rpc_error(_INVALID_REQUEST, "turn_running",
                            "a turn is already running in this session",
                            "wait for it to finish or cancel it")
        message = prompt_text(prompt)
        if not message:
            raise rpc_error(_INVALID_PARAMS, "empty_prompt", "the prompt has no text",
                            "write a question, e.g. why is examples/orders_workload.py slow?")
        renderer = TurnRenderer()
        turn = asyncio.create_task(self._run_turn(session_id, message, renderer))
        self._turns[session_id] = turn
        # Forget the turn only once it has wound down (its tool processes killed).
        turn.add_done_callback(lambda _: self._turns.pop(session_id, None))
        try:
            return await turn
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the connection is closing, not a session/cancel
            await self._send(session_id, renderer.interrupted())
            return PromptResponse(stop_reason="cancelled")

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        turn = self._turns.get(session_id)
        if turn is not None:
            turn.cancel()

    async def close(self) -> None:
        """Cancel the running turns and wait until they have wound down."""
        turns = list(self._turns.values())
        for turn in turns:
            turn.cancel()
        await asyncio.gather(*turns, return_exceptions=True)

    async def _run_turn(self, session_id: str, message: str,
                        renderer: TurnRenderer) -> PromptResponse:
        try:
            async with aclosing(self._service.stream(message, thread_id=session_id)) as events:
                async for event in events:
                    await self._send(session_id, renderer.updates(event))
                    if event.type == "error":
                        data = event.data
                        raise rpc_error(_INTERNAL_ERROR, data["code"], data["message"],
                                        data.get("hint", ""))
        except RunsBusy as exc:
            raise rpc_error(_INTERNAL_ERROR, "busy", str(exc), "retry in a few seconds") from None
        return PromptResponse(stop_reason="end_turn")

    async def _send(self, session_id: str, updates: list[SessionUpdate]) -> None:
        assert self._client is not None, "run_agent connects the client before any request"
        for update in updates:
            await self._client.session_update(session_id=session_id, update=update)

    def _adopt_workspace(self, cwd: str) -> None:
        """Let the tools measure code in the session's folder (see the module docstring)."""
        folder = Path(cwd)
        if self._pinned_workspace or not folder.is_absolute() or not folder.is_dir():
            return
        if str(folder) not in self._workspace:
            self._workspace.append(str(folder))
            os.environ[_WORKSPACE_ENV] = os.pathsep.join(self._workspace)


def _unknown_session(session_id: str) -> RequestError:
    return rpc_error(_INVALID_PARAMS, "unknown_session", f"no session {session_id!r}",
                     "start a new session; sessions are perfagent threads of this state directory")


# --------------------------------------------------------------------------- stdio


class AcpStdioError(Exception):
    """stdin or stdout cannot carry the protocol (a regular file or /dev/null, not an
    editor's pipes). ``code``, ``message`` and ``hint`` as in every perfagent error."""

    def __init__(self, stream: str) -> None:
        self.code = "acp_needs_pipes"
        self.message = f"{stream} is neither a pipe nor a terminal, so it cannot carry ACP"
        self.hint = ("let an ACP client (Zed, a JetBrains IDE) start `perfagent acp`; to try it "
                     "by hand, run it in a terminal and type JSON-RPC lines")
        super().__init__(self.message)


async def _protocol_streams() -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
    """stdin, and a private copy of stdout, as asyncio streams; descriptor 1 then points at
    stderr so nothing but protocol frames can reach the editor."""
    for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
        # The event loop can only watch pipes, sockets and terminals (not files or /dev/null).
        mode = os.fstat(stream.fileno()).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(stream.fileno())):
            raise AcpStdioError(name)
    sys.stdout.flush()
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=DEFAULT_STDIO_BUFFER_LIMIT_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        protocol_out)
    return asyncio.StreamWriter(transport, protocol, None, loop), reader


async def _serve(settings: Settings) -> None:
    writer, reader = await _protocol_streams()
    async with AgentService(settings) as service:
        agent = PerfAgent(service)
        serving = asyncio.ensure_future(run_agent(agent, writer, reader))
        # An editor stops its agent with SIGTERM: wind the turns down (killing their
        # tool processes) instead of dying with them still running.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
        try:
            await serving
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        finally:
            await agent.close()


def serve_stdio(settings: Settings) -> None:
    """Run perfagent as an ACP agent on stdin/stdout until the editor closes stdin (blocking).

    Raises :class:`AcpStdioError` when stdin or stdout is not a pipe.
    """
    asyncio.run(_serve(settings))
