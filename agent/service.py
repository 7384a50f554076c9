"""The agent as a long-lived service: what every serving surface shares.

The HTTP server, the OpenAI-compatible endpoint, the MCP server and the ACP
agent all run turns through one :class:`AgentService`. It keeps one
checkpointer open for its lifetime (instead of opening SQLite per turn), owns
the thread index, and caps how many turns run at once (across all workers
when they share PostgreSQL: see :mod:`agent.storage`): past the cap,
:meth:`AgentService.reserve` refuses at once (HTTP answers 429) rather than
queueing work the caller may have given up on. The turn itself is
:func:`agent.run.stream_turn`; nothing here changes what a turn does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing
from typing import Any, Protocol

from pydantic import BaseModel

from agent.context import Settings
from agent.models import ChatModel
from agent.results import RunEvent, TurnResult
from agent.run import (
    TurnError,
    final_result,
    new_thread_id,
    open_checkpointer,
    stream_turn,
    thread_history,
)
from agent.storage import database_errors
from agent.threads import EVERYONE, RecordedTurn, ThreadIndex, ThreadInfo, Viewer, thread_index


def thread_not_found(thread_id: str) -> dict[str, str]:
    """The one answer for a thread that does not exist and for one the caller may not see:
    the two must be indistinguishable, so no one learns of threads that are not theirs."""
    return {"code": "thread_not_found", "message": f"there is no thread {thread_id!r}",
            "hint": "start a new thread (omit the thread id), or continue one of your own"}


class RunsBusy(Exception):
    """Every run slot is taken; the caller should retry later."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} turns are already running; retry in a few seconds")
        self.limit = limit


class ThreadHistory(BaseModel):
    """A thread: its index entry, its messages (user and assistant) and its past TurnResults."""

    thread: ThreadInfo
    messages: list[dict[str, Any]]
    turns: list[RecordedTurn]


class ThreadBusy(Exception):
    """A turn is already running on this thread; two at once would interleave its state."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"a turn is already running on thread {thread_id!r}")
        self.thread_id = thread_id
        self.hint = "wait for it to finish (or cancel it), then send the next message"


class RunSlot:
    """One reserved run slot, bound to the thread it runs on; releasing it twice is harmless."""

    def __init__(self, claim: RunClaim) -> None:
        self._claim = claim
        self._held = True
        self.thread_id: str | None = None

    def bind(self, thread_id: str) -> None:
        """Claim ``thread_id`` for this slot, or raise :class:`ThreadBusy`."""
        if self.thread_id == thread_id:
            return
        if not self._claim.claim_thread(thread_id):
            raise ThreadBusy(thread_id)
        self.thread_id = thread_id

    def release(self) -> None:
        if self._held:
            self._held = False
            self._claim.release()


class RunClaim(Protocol):
    """A held run slot as the claim store sees it (see :class:`RunClaims`)."""

    def claim_thread(self, thread_id: str) -> bool: ...

    def release(self) -> None: ...


class RunClaims(Protocol):
    """Where the run cap and the one-turn-per-thread rule are kept.

    In this process by default (:class:`LocalRunClaims`); in PostgreSQL, shared
    by every worker, when threads are (:class:`agent.storage.PostgresRunClaims`).
    """

    def take(self) -> RunClaim | None: ...

    def active(self) -> int: ...


class LocalRunClaims:
    """The run cap and thread claims of one process: a counter and a set, under a lock
    (the server takes and releases them from worker threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def take(self) -> _LocalClaim | None:
        with self.lock:
            if self.running >= self.limit:
                return None
            self.running += 1
        return _LocalClaim(self)

    def active(self) -> int:
        return self.running


class _LocalClaim:
    def __init__(self, claims: LocalRunClaims) -> None:
        self._claims = claims
        self._threads: list[str] = []

    def claim_thread(self, thread_id: str) -> bool:
        with self._claims.lock:
            if thread_id in self._claims.threads:
                return False
            self._claims.threads.add(thread_id)
        self._threads.append(thread_id)
        return True

    def release(self) -> None:
        with self._claims.lock:
            self._claims.running -= 1
            self._claims.threads.difference_update(self._threads)


def run_claims(limit: int) -> RunClaims:
    """In-process claims, or PostgreSQL advisory locks when threads live in PostgreSQL
    (then several server processes share one cap and one claim per thread)."""
    from agent.storage import database_url

    url = database_url()
    if url is None:
        return LocalRunClaims(limit)
    from agent.storage import PostgresRunClaims

    return PostgresRunClaims(url, limit)


class AgentService:
    """Runs turns for a serving surface: one open checkpointer, a thread index, a run cap.

    Use it as an async context manager. ``model`` replaces the provider built
    from the settings (tests and benchmarks inject scripted models this way).
    """

    def __init__(self, settings: Settings | None = None, *, max_concurrent_runs: int = 16,
                 model: ChatModel | None = None) -> None:
        self.settings = settings or Settings()
        self.max_concurrent_runs = max_concurrent_runs
        self._model = model
        self._claims = run_claims(max_concurrent_runs)
        self._stack: AsyncExitStack | None = None
        self._checkpointer: Any = None
        self.index: ThreadIndex = thread_index(self.settings)

    async def __aenter__(self) -> AgentService:
        self._stack = AsyncExitStack()
        self._checkpointer = await self._stack.enter_async_context(
            open_checkpointer(self.settings))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._checkpointer = None

    @property
    def active_runs(self) -> int:
        """Turns running now (in every worker, when they share a database)."""
        return self._claims.active()

    def reserve(self) -> RunSlot:
        """Take a run slot now, or raise :class:`RunsBusy` if all are taken.

        With a shared database this also raises
        :class:`agent.storage.DatabaseUnavailable` when the database is down.
        """
        claim = self._claims.take()
        if claim is None:
            raise RunsBusy(self.max_concurrent_runs)
        return RunSlot(claim)

    # ------------------------------------------------------------------ threads

    # Every method below takes the ``viewer`` asking (:class:`agent.threads.Viewer`):
    # with API keys, a key sees and continues only the threads it created. A thread
    # the viewer may not see answers exactly as one that does not exist.

    def create_thread(self, title: str = "", viewer: Viewer = EVERYONE) -> ThreadInfo:
        return self.index.ensure(new_thread_id(), title, owner=viewer.owner)

    def thread(self, thread_id: str, viewer: Viewer = EVERYONE) -> ThreadInfo | None:
        """The thread; None when it does not exist or ``viewer`` may not see it."""
        info = self.index.get(thread_id)
        return info if info is not None and viewer.can_see(info) else None

    def threads(self, limit: int = 50, viewer: Viewer = EVERYONE) -> list[ThreadInfo]:
        return self.index.list(limit, viewer)

    async def history(self, thread_id: str, viewer: Viewer = EVERYONE) -> ThreadHistory | None:
        """The thread's messages and past TurnResults; None for a thread that does not
        exist or that ``viewer`` may not see."""
        info = await asyncio.to_thread(self.thread, thread_id, viewer)
        if info is None:
            return None
        with database_errors():
            messages = await thread_history(thread_id, settings=self.settings,
                                            checkpointer=self._checkpointer)
        turns = await asyncio.to_thread(self.index.turns, thread_id)
        return ThreadHistory(thread=info, messages=messages, turns=turns)

    def linked_thread(self, transcript: str, viewer: Viewer = EVERYONE) -> str | None:
        """The thread a client's transcript key was linked to by :meth:`link`, if
        ``viewer`` linked it (keys are kept per owner) and may still see it."""
        thread_id = self.index.linked(_owned_key(transcript, viewer))
        return thread_id if thread_id and self.thread(thread_id, viewer) else None

    def link(self, transcript: str, thread_id: str, viewer: Viewer = EVERYONE) -> None:
        """Link a transcript key to a thread, for ``viewer`` only: another key that sends
        the same conversation starts its own thread rather than continuing this one."""
        self.index.link(_owned_key(transcript, viewer), thread_id)

    def may_run(self, thread_id: str, viewer: Viewer = EVERYONE) -> bool:
        """Whether ``viewer`` may run a turn on ``thread_id``.

        An unknown id starts a thread by that id for a viewer who sees all threads
        (as it always has); for a key that sees only its own it is refused like a
        foreign thread, so that the two cannot be told apart.
        """
        info = self.index.get(thread_id)
        if info is None:
            if viewer.sees_all and viewer.owner is not None:
                self.index.ensure(thread_id, owner=viewer.owner)
            return viewer.sees_all
        return viewer.can_see(info)

    # ------------------------------------------------------------------ turns

    def settings_for(self, model: str | None, persona: str | None = None) -> Settings:
        return self.settings.with_overrides(model=model, persona=persona)

    async def stream(self, message: str, *, thread_id: str | None = None,
                     model: str | None = None, persona: str | None = None,
                     slot: RunSlot | None = None, node_events: bool = True,
                     viewer: Viewer = EVERYONE) -> AsyncIterator[RunEvent]:
        """Run one turn and yield its events (see :func:`agent.run.stream_turn`).

        Pass a ``slot`` from :meth:`reserve` (bound to the thread with
        :meth:`RunSlot.bind`) when the caller must answer "busy" before it starts
        streaming; otherwise one is reserved here. One turn runs per thread at a
        time: a second gets a ``thread_busy`` error event. The slot is released
        when the turn ends, fails or is cancelled. A thread ``viewer`` may not run
        (:meth:`may_run`) gets a ``thread_not_found`` error event, before any claim,
        so that a busy thread of someone else's does not say it is busy.
        """
        # Claims and the thread index may be database round trips: off the event loop.
        slot = slot or await asyncio.to_thread(self.reserve)
        try:
            try:
                if thread_id is None:
                    thread_id = (await asyncio.to_thread(self.create_thread, message,
                                                         viewer)).thread_id
                elif not await asyncio.to_thread(self.may_run, thread_id, viewer):
                    yield RunEvent(type="error", data=thread_not_found(thread_id))
                    return
                await asyncio.to_thread(slot.bind, thread_id)
            except ThreadBusy as exc:
                yield RunEvent(type="error", data={"code": "thread_busy", "message": str(exc),
                                                   "hint": exc.hint})
                return
            except TurnError as exc:  # the shared database is down
                yield RunEvent(type="error", data=exc.to_dict())
                return
            events = stream_turn(message, thread_id=thread_id,
                                 settings=self.settings_for(model, persona),
                                 checkpointer=self._checkpointer, model=self._model,
                                 node_events=node_events)
            async for event in _in_own_task(events):
                yield event
        finally:
            slot.release()

    async def run(self, message: str, *, thread_id: str | None = None, model: str | None = None,
                  persona: str | None = None, slot: RunSlot | None = None,
                  viewer: Viewer = EVERYONE) -> TurnResult:
        """Run one turn to completion; raise :class:`TurnError` if it fails."""
        return await final_result(self.stream(message, thread_id=thread_id, model=model,
                                              persona=persona, slot=slot, node_events=False,
                                              viewer=viewer))


def _owned_key(transcript: str, viewer: Viewer) -> str:
    """A transcript key in the viewer's own space (unchanged without an owner)."""
    return transcript if viewer.owner is None else f"{viewer.owner}:{transcript}"


#: Events a turn may run ahead of a slow reader before it waits for the reader.
_EVENT_BUFFER = 256
_DONE = object()


async def _in_own_task(events: AsyncIterator[RunEvent]) -> AsyncIterator[RunEvent]:
    """Drive a turn in a task of its own and pass its events on.

    Servers cancel a request's work through anyio cancel scopes, which keep
    cancelling every await inside them; a turn stopped that way can have its
    cleanup interrupted and leave a tool's task (and the process it started)
    running. Owning the task means the turn is stopped with one plain
    ``Task.cancel()`` when the reader goes away, however it goes away.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(_EVENT_BUFFER)

    async def drive() -> None:
        try:
            async with aclosing(events) as stream:
                async for event in stream:
                    await queue.put(event)
        except Exception as exc:  # the turn turns its own failures into events; not this
            await queue.put(exc)
        await queue.put(_DONE)

    task = asyncio.create_task(drive())
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
        # Wait for the turn's cleanup (its tools' processes killed) before the caller
        # hears that the turn is over; a reader cancelled again stops waiting at once.
        await asyncio.wait({task})
