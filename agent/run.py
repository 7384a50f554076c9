"""The core run API: every surface (CLI, HTTP, MCP, ACP, evals) runs a turn through here.

:func:`stream_turn` yields :class:`RunEvent` objects as the turn happens and
ends with a ``final`` event carrying the :class:`TurnResult`; :func:`run_turn`
is the same without the stream. Threads persist in a checkpointer (SQLite
under the state directory, or PostgreSQL with ``PERFAGENT_DATABASE_URL``:
see :mod:`agent.storage`), so a turn that fails leaves the thread's earlier
turns intact and the thread resumable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

from agent.context import Settings
from agent.models import ChatModel, ModelError, UnknownModelError
from agent.persona import CHECK_IDS, PersonaError
from agent.results import (
    CheckResult,
    Delegation,
    RunEvent,
    Timings,
    ToolCallRecord,
    TurnResult,
    Usage,
)


class TurnError(Exception):
    """A turn could not complete. ``code`` is stable; ``hint`` says what to do next."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[Any]:
    """The thread checkpointer, opened for the caller's scope.

    PostgreSQL when ``PERFAGENT_DATABASE_URL`` is set (an unreachable database
    raises :class:`agent.storage.DatabaseUnavailable`), else the SQLite file
    under the state directory.
    """
    from agent.storage import database_url

    url = database_url()
    if url is not None:
        from agent.storage import open_postgres_checkpointer

        async with open_postgres_checkpointer(url) as saver:
            yield saver
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(str(settings.checkpoint_path)) as saver:
        yield saver


def new_thread_id() -> str:
    return uuid.uuid4().hex[:16]


def _turn_result(state: dict[str, Any], *, thread_id: str, model: str, persona: str,
                 total_ms: float) -> TurnResult:
    checks = state.get("checks", {})
    usage = state.get("usage", {})
    timings = {k: round(v, 3) for k, v in state.get("timings", {}).items()}
    return TurnResult(
        thread_id=thread_id,
        model=model,
        persona=persona,
        answer=state.get("answer", ""),
        checks=[CheckResult(**checks[name]) for name in CHECK_IDS if name in checks],
        tool_calls=[ToolCallRecord(**r) for r in state.get("tool_calls", [])],
        delegations=[Delegation(**d) for d in state.get("delegations", [])],
        measurements=state.get("measurements", []),
        findings=state.get("findings", []),
        revisions=state.get("revisions", 0),
        usage=Usage(
            llm_calls=int(usage.get("llm_calls", 0)),
            input_tokens=int(usage.get("input_tokens", 0)),
            output_tokens=int(usage.get("output_tokens", 0)),
            cache_read_tokens=int(usage.get("cache_read_tokens", 0)),
            cache_write_tokens=int(usage.get("cache_write_tokens", 0)),
        ),
        timings_ms=Timings(total=round(total_ms, 3), nodes=timings),
    )


def _error_event(error: TurnError) -> RunEvent:
    return RunEvent(type="error", data=error.to_dict())


def _as_turn_error(exc: BaseException) -> TurnError:
    if isinstance(exc, TurnError):
        return exc
    if isinstance(exc, ModelError):
        return TurnError("model_error", str(exc), exc.hint or (
            "try again later; the thread and its earlier turns are intact"
            if exc.retryable else "check the model settings"))
    if isinstance(exc, UnknownModelError):
        return TurnError("unknown_model", str(exc), "pass --model offline or a valid spec")
    if isinstance(exc, PersonaError):
        return TurnError("persona_error", str(exc), "fix the persona file and retry")
    from agent.storage import as_database_error

    if (lost := as_database_error(exc)) is not None:
        return lost
    return TurnError("internal_error", f"{type(exc).__name__}: {exc}",
                     "this is a perfagent bug; the thread's earlier turns are intact")


def stream_turn(
    message: str,
    *,
    thread_id: str | None = None,
    settings: Settings | None = None,
    checkpointer: Any = None,
    model: ChatModel | None = None,
    node_events: bool = True,
    record: bool = True,
) -> AsyncIterator[RunEvent]:
    """Run one turn and yield its events; the last is ``final`` (or ``error``).

    ``checkpointer`` lets a long-lived server share one open saver; by default
    the SQLite file under the state directory is opened for this turn.
    ``model`` overrides the provider built from ``settings.model`` (tests,
    benchmarks and evals inject scripted models this way). ``node_events=False``
    leaves out node_start/node_end events for callers that do not show them.
    ``record=False`` keeps the turn out of the thread index (:mod:`agent.threads`),
    e.g. for benchmarks. When tracing (:mod:`agent.tracing`) or metrics
    (:mod:`agent.telemetry`) are on, the events are observed on their way out.
    """
    from agent.telemetry import active_metrics
    from agent.tracing import active_tracer

    tracer = active_tracer()
    events = _turn_events(message, thread_id=thread_id, settings=settings,
                          checkpointer=checkpointer, model=model,
                          node_events=node_events or tracer is not None, record=record)
    if tracer is not None:
        events = tracer.observe(events, message)
    metrics = active_metrics()
    return metrics.observe(events) if metrics is not None else events


async def _turn_events(
    message: str,
    *,
    thread_id: str | None,
    settings: Settings | None,
    checkpointer: Any,
    model: ChatModel | None,
    node_events: bool,
    record: bool,
) -> AsyncIterator[RunEvent]:
    from agent.graph import make_context

    settings = settings or Settings()
    thread_id = thread_id or new_thread_id()
    started = time.perf_counter()
    try:
        context = make_context(settings, settings.persona, model=model, node_events=node_events,
                               thread_id=thread_id)
    except Exception as exc:
        yield _error_event(_as_turn_error(exc))
        return
    yield RunEvent(type="run_start", data={"thread_id": thread_id, "model": context.model.spec,
                                           "persona": context.persona.name})
    config = {"configurable": {"thread_id": thread_id}}
    failure: TurnError | None = None
    try:  # opening the checkpointer fails too when its database is down
        async with _checkpointer_scope(settings, checkpointer) as saver:
            graph = _compiled(saver)
            from langchain_core.messages import HumanMessage

            final_state: dict[str, Any] = {}
            # "values" hands over the state after each step, so the final state needs
            # no extra checkpoint read; "exit" durability writes the checkpoint once,
            # when the turn ends (also when it fails), instead of after every step.
            steps = graph.astream(
                {"messages": [HumanMessage(content=message)]}, config,
                context=context, stream_mode=["custom", "values"], durability="exit",
            )
            async with aclosing(steps):  # a consumer that stops early stops the graph now
                async for mode, chunk in steps:
                    if mode == "custom":
                        yield RunEvent.model_construct(type=chunk["type"], data=chunk["data"])
                    else:
                        final_state = chunk
    except Exception as exc:  # reported as an error event; the thread stays intact
        failure = _as_turn_error(exc)
    if failure is not None:
        yield _error_event(failure)
        return
    result = _turn_result(final_state, thread_id=thread_id, model=context.model.spec,
                          persona=context.persona.name,
                          total_ms=(time.perf_counter() - started) * 1000)
    if record:
        from agent.threads import thread_index

        try:
            await thread_index(settings).arecord(thread_id, message, result)
        except Exception as exc:  # e.g. the database went away after the checkpoint
            yield _error_event(_as_turn_error(exc))
            return
    yield RunEvent(type="final", data=result.model_dump(mode="json"))


@asynccontextmanager
async def _checkpointer_scope(settings: Settings, given: Any) -> AsyncIterator[Any]:
    if given is not None:
        yield given
        return
    async with open_checkpointer(settings) as saver:
        yield saver


_GRAPHS: dict[int, Any] = {}


def _compiled(saver: Any) -> Any:
    """One compiled graph per checkpointer: compiling is not free, so it is reused."""
    from agent.graph import build_graph

    key = id(saver)
    if key not in _GRAPHS:
        _GRAPHS.clear()  # a new saver means the old one is closed
        _GRAPHS[key] = build_graph(checkpointer=saver)
    return _GRAPHS[key]


async def final_result(events: AsyncIterator[RunEvent]) -> TurnResult:
    """Drain a turn's events: its TurnResult, or :class:`TurnError` if it failed."""
    async with aclosing(events) as stream:
        async for event in stream:
            if event.type == "final":
                return TurnResult.model_validate(event.data)
            if event.type == "error":
                raise TurnError(**event.data)
    raise TurnError("internal_error", "the turn ended without a result", "retry the turn")


async def run_turn(message: str, **kwargs: Any) -> TurnResult:
    """Run one turn to completion; raise :class:`TurnError` if it fails."""
    kwargs.setdefault("node_events", False)
    return await final_result(stream_turn(message, **kwargs))


async def thread_history(thread_id: str, *, settings: Settings | None = None,
                         checkpointer: Any = None) -> list[dict[str, Any]]:
    """The user and assistant messages of a thread, oldest first; [] for an unknown thread."""
    from langchain_core.messages import AIMessage, HumanMessage

    from agent.models.offline import REVISION_SENDER

    settings = settings or Settings()
    async with _checkpointer_scope(settings, checkpointer) as saver:
        snapshot = await _compiled(saver).aget_state({"configurable": {"thread_id": thread_id}})
    history: list[dict[str, Any]] = []
    for m in snapshot.values.get("messages", []) if snapshot.values else []:
        if isinstance(m, HumanMessage) and m.name != REVISION_SENDER:
            history.append({"role": "user", "content": str(m.content)})
        elif isinstance(m, AIMessage) and not m.tool_calls and m.content:
            # A revised draft replaces the one before it: one answer per turn.
            if history and history[-1]["role"] == "assistant":
                history.pop()
            history.append({"role": "assistant", "content": str(m.content)})
    return history
