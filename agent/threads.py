"""The thread index: which threads exist, their titles, and the TurnResult of each turn.

The LangGraph checkpointer keeps a thread's messages and state, but it cannot
list threads cheaply or tell an unknown thread from an empty one, and it does
not keep past TurnResults. This small SQLite index beside it does: every
surface records its turns here through :mod:`agent.run`, so a thread started
in the terminal shows up in the web page's thread list.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.results import TurnResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS turns (
    thread_id TEXT NOT NULL,
    turn INTEGER NOT NULL,
    message TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (thread_id, turn)
);
CREATE INDEX IF NOT EXISTS threads_by_update ON threads (updated_at DESC);
CREATE TABLE IF NOT EXISTS conversation_keys (
    key TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

#: How much of the first message becomes the thread's title.
TITLE_CHARS = 80


class ThreadInfo(BaseModel):
    """A thread as listed: id, title (its first question), timestamps and number of turns."""

    thread_id: str
    title: str
    created_at: float
    updated_at: float
    turns: int


class RecordedTurn(BaseModel):
    """One finished turn: the user's message and the TurnResult it produced."""

    turn: int
    message: str
    result: TurnResult
    created_at: float


class ThreadIndex:
    """The SQLite index of threads and their turns (one file under the state directory).

    Each call opens its own short connection, so the index is safe to use from
    worker threads and from several processes at once (WAL mode).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def ensure(self, thread_id: str, title: str = "") -> ThreadInfo:
        """The thread, created if it does not exist yet (its title is kept if it has one)."""
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO threads (thread_id, title, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(thread_id) DO UPDATE SET title = CASE WHEN threads.title = '' "
                "THEN excluded.title ELSE threads.title END",
                (thread_id, title[:TITLE_CHARS], now, now))
            row = db.execute("SELECT * FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
        return _info(row)

    def get(self, thread_id: str) -> ThreadInfo | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
        return _info(row) if row else None

    def list(self, limit: int = 50) -> list[ThreadInfo]:
        """The most recently used threads first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM threads ORDER BY updated_at DESC LIMIT ?",
                              (limit,)).fetchall()
        return [_info(r) for r in rows]

    def record(self, thread_id: str, message: str, result: TurnResult) -> None:
        """Store a finished turn and move the thread to the top of the list."""
        now = time.time()
        payload = result.model_dump_json()
        with self._connect() as db:
            db.execute(
                "INSERT INTO threads (thread_id, title, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(thread_id) DO NOTHING", (thread_id, message[:TITLE_CHARS], now, now))
            turn = db.execute("SELECT turns FROM threads WHERE thread_id = ?",
                              (thread_id,)).fetchone()[0]
            db.execute("INSERT INTO turns VALUES (?, ?, ?, ?, ?)",
                       (thread_id, turn, message, payload, now))
            db.execute(
                "UPDATE threads SET turns = turns + 1, updated_at = ?, title = CASE "
                "WHEN title = '' THEN ? ELSE title END WHERE thread_id = ?",
                (now, message[:TITLE_CHARS], thread_id))

    def turns(self, thread_id: str) -> list[RecordedTurn]:
        with self._connect() as db:
            rows = db.execute("SELECT turn, message, result, created_at FROM turns "
                              "WHERE thread_id = ? ORDER BY turn", (thread_id,)).fetchall()
        return [RecordedTurn(turn=t, message=m, result=TurnResult.model_validate_json(r),
                             created_at=c) for t, m, r, c in rows]

    def link(self, key: str, thread_id: str) -> None:
        """Remember that a client's transcript with this key is ``thread_id`` so far.

        Stateless protocols (the OpenAI chat API) resend the whole conversation
        each time; the key of what they send finds the thread to continue.
        """
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO conversation_keys VALUES (?, ?, ?)",
                       (key, thread_id, time.time()))

    def linked(self, key: str) -> str | None:
        """The thread a transcript key was linked to, if any."""
        with self._connect() as db:
            row = db.execute("SELECT thread_id FROM conversation_keys WHERE key = ?",
                             (key,)).fetchone()
        return row[0] if row else None

    async def arecord(self, thread_id: str, message: str, result: TurnResult) -> None:
        """:meth:`record` off the event loop (a write waits for the disk)."""
        await asyncio.to_thread(self.record, thread_id, message, result)


def _info(row: Any) -> ThreadInfo:
    thread_id, title, created_at, updated_at, turns = row
    return ThreadInfo(thread_id=thread_id, title=title, created_at=created_at,
                      updated_at=updated_at, turns=turns)


_INDEXES: dict[Path, ThreadIndex] = {}


def thread_index(state_dir: Path) -> ThreadIndex:
    """The index for a state directory, created once per process."""
    path = state_dir / "thread_index.sqlite"
    if path not in _INDEXES or not path.exists():
        _INDEXES[path] = ThreadIndex(path)
    return _INDEXES[path]
