"""The thread index: which threads exist, their titles, and the TurnResult of each turn.

The LangGraph checkpointer keeps a thread's messages and state, but it cannot
list threads cheaply or tell an unknown thread from an empty one, and it does
not keep past TurnResults. This small index beside it does: every surface
records its turns here through :mod:`agent.run`, so a thread started in the
terminal shows up in the web page's thread list. It is a SQLite file by
default and PostgreSQL tables with ``PERFAGENT_DATABASE_URL``, so that server
processes sharing one database list and continue each other's threads.

Each thread may have an owner: a one-way id of the API key that created it
(:func:`owner_id`; the key itself is never stored). A :class:`Viewer` says
whose threads a caller may see and continue: everyone's on a server without
keys (and from the terminal), only its own for an API key, all for an admin
key. Threads started in the terminal have no owner.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, PrivateAttr

from agent.context import Settings
from agent.results import TurnResult

#: Columns in the order :func:`_info` reads them.
_SELECT_THREAD = "SELECT thread_id, title, created_at, updated_at, turns, owner FROM threads"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS turns (
    thread_id TEXT NOT NULL,
    turn INTEGER NOT NULL,
    message TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (thread_id, turn)
);
CREATE INDEX IF NOT EXISTS threads_by_update ON threads (updated_at DESC);
CREATE TABLE IF NOT EXISTS conversation_keys (
    key TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
"""
#: Run after :data:`_SCHEMA` once ``threads`` has its ``owner`` column (tables created
#: before threads had owners get it added first: see each index's migration).
_OWNER_INDEX = "CREATE INDEX IF NOT EXISTS threads_by_owner ON threads (owner, updated_at DESC);"
#: PostgreSQL adds a missing column in one idempotent statement.
_PG_MIGRATION = "ALTER TABLE threads ADD COLUMN IF NOT EXISTS owner TEXT;\n" + _OWNER_INDEX

#: How much of the first message becomes the thread's title.
TITLE_CHARS = 80


def owner_id(key: str) -> str:
    """The id a thread's owner is stored under: a one-way digest of its API key.

    Stable across processes and restarts (servers sharing a database agree on
    it) and never the key itself: the index can be read without revealing a key.
    """
    return hashlib.sha256(b"perfagent-thread-owner\0" + key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Viewer:
    """Who is asking, as far as threads go: the owner new threads get, and which
    threads may be seen and continued."""

    #: Given to the threads this viewer creates (None: no owner).
    owner: str | None = None
    #: Sees and continues every thread (no keys, the terminal, an admin key).
    sees_all: bool = True

    def can_see(self, info: ThreadInfo) -> bool:
        return self.sees_all or (self.owner is not None and info.owner == self.owner)

    @classmethod
    def for_key(cls, key: str, *, admin: bool = False) -> Viewer:
        """The viewer an API key (or an admin key) makes."""
        return cls(owner=owner_id(key), sees_all=admin)


#: Everyone sees everything: a server without keys, the terminal, stdio protocols.
EVERYONE = Viewer()
#: Sees nothing and owns nothing: a keyed server's request that carried no key.
NOBODY = Viewer(owner=None, sees_all=False)


class ThreadInfo(BaseModel):
    """A thread as listed: id, title (its first question), timestamps and number of turns."""

    thread_id: str
    title: str
    created_at: float
    updated_at: float
    turns: int
    # Private: kept out of every answer and of the API schema.
    _owner: str | None = PrivateAttr(None)

    @property
    def owner(self) -> str | None:
        """The owner id of the key that created the thread (:func:`owner_id`), if any."""
        return self._owner


class RecordedTurn(BaseModel):
    """One finished turn: the user's message and the TurnResult it produced."""

    turn: int
    message: str
    result: TurnResult
    created_at: float


class ThreadIndex:
    """The index of threads and their turns; :func:`thread_index` picks where it lives.

    The queries are shared: they are written with ``?`` placeholders and in the
    SQL that SQLite and PostgreSQL both accept. A subclass only says how to get
    a connection (:meth:`_connect`) and how to spell its placeholders.
    Each call uses its own short transaction, so the index is safe to use from
    worker threads and from several processes at once.
    """

    def _connect(self) -> AbstractContextManager[Any]:
        """A connection in a transaction that commits when the block ends."""
        raise NotImplementedError

    def _sql(self, query: str) -> str:
        return query

    def _run(self, db: Any, query: str, params: tuple[Any, ...] = ()) -> Any:
        return db.execute(self._sql(query), params)

    def ensure(self, thread_id: str, title: str = "", owner: str | None = None) -> ThreadInfo:
        """The thread, created (owned by ``owner``) if it does not exist yet. An existing
        thread keeps its owner, and its title if it has one."""
        now = time.time()
        with self._connect() as db:
            self._run(
                db,
                "INSERT INTO threads (thread_id, title, created_at, updated_at, owner) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(thread_id) DO UPDATE SET title = CASE WHEN threads.title = '' "
                "THEN excluded.title ELSE threads.title END",
                (thread_id, title[:TITLE_CHARS], now, now, owner))
            row = self._run(db, f"{_SELECT_THREAD} WHERE thread_id = ?", (thread_id,)).fetchone()
        return _info(row)

    def get(self, thread_id: str) -> ThreadInfo | None:
        with self._connect() as db:
            row = self._run(db, f"{_SELECT_THREAD} WHERE thread_id = ?", (thread_id,)).fetchone()
        return _info(row) if row else None

    def list(self, limit: int = 50, viewer: Viewer = EVERYONE) -> list[ThreadInfo]:
        """The most recently used threads ``viewer`` may see, first."""
        with self._connect() as db:
            if viewer.sees_all:
                rows = self._run(db, f"{_SELECT_THREAD} ORDER BY updated_at DESC LIMIT ?",
                                 (limit,)).fetchall()
            elif viewer.owner is None:
                rows = []
            else:
                rows = self._run(db, f"{_SELECT_THREAD} WHERE owner = ? "
                                     "ORDER BY updated_at DESC LIMIT ?",
                                 (viewer.owner, limit)).fetchall()
        return [_info(r) for r in rows]

    def record(self, thread_id: str, message: str, result: TurnResult) -> None:
        """Store a finished turn and move the thread to the top of the list.

        The turn number comes from the UPDATE that counts it, so two processes
        recording turns of one thread at once still number them apart.
        """
        now = time.time()
        payload = result.model_dump_json()
        with self._connect() as db:
            self._run(
                db,
                "INSERT INTO threads (thread_id, title, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(thread_id) DO NOTHING", (thread_id, message[:TITLE_CHARS], now, now))
            turn = self._run(
                db,
                "UPDATE threads SET turns = turns + 1, updated_at = ?, title = CASE "
                "WHEN title = '' THEN ? ELSE title END WHERE thread_id = ? RETURNING turns - 1",
                (now, message[:TITLE_CHARS], thread_id)).fetchone()[0]
            self._run(db, "INSERT INTO turns (thread_id, turn, message, result, created_at) "
                          "VALUES (?, ?, ?, ?, ?)", (thread_id, turn, message, payload, now))

    def turns(self, thread_id: str) -> list[RecordedTurn]:
        with self._connect() as db:
            rows = self._run(db, "SELECT turn, message, result, created_at FROM turns "
                                 "WHERE thread_id = ? ORDER BY turn", (thread_id,)).fetchall()
        return [RecordedTurn(turn=t, message=m, result=TurnResult.model_validate_json(r),
                             created_at=c) for t, m, r, c in rows]

    def link(self, key: str, thread_id: str) -> None:
        """Remember that a client's transcript with this key is ``thread_id`` so far.

        Stateless protocols (the OpenAI chat API) resend the whole conversation
        each time; the key of what they send finds the thread to continue.
        """
        with self._connect() as db:
            self._run(db, "INSERT INTO conversation_keys (key, thread_id, created_at) "
                          "VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                          "thread_id = excluded.thread_id, created_at = excluded.created_at",
                      (key, thread_id, time.time()))

    def linked(self, key: str) -> str | None:
        """The thread a transcript key was linked to, if any."""
        with self._connect() as db:
            row = self._run(db, "SELECT thread_id FROM conversation_keys WHERE key = ?",
                            (key,)).fetchone()
        return row[0] if row else None

    async def arecord(self, thread_id: str, message: str, result: TurnResult) -> None:
        """:meth:`record` off the event loop (a write waits for the disk)."""
        await asyncio.to_thread(self.record, thread_id, message, result)


class SqliteThreadIndex(ThreadIndex):
    """The index in one SQLite file under the state directory (WAL mode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._open()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._migrate(db)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring a file written by an earlier version up to date: threads get owners."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(threads)")}
        with db:
            if "owner" not in columns:
                # Two processes may both see it missing; the loser's error is harmless.
                try:
                    db.execute("ALTER TABLE threads ADD COLUMN owner TEXT")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):
                        raise
            db.execute(_OWNER_INDEX)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(self._open()) as db, db:
            yield db


class PostgresThreadIndex(ThreadIndex):
    """The index in PostgreSQL, shared by every process that uses the same database.

    The tables are created on first use rather than at construction, so that
    building a service does not need the database up yet. Lost connections are
    raised as :class:`agent.storage.DatabaseUnavailable`.
    """

    def __init__(self, url: str) -> None:
        from agent.storage import sync_pool

        self.url = url
        self._pool = sync_pool(url, "index", max_size=4)
        self._ready = False

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s")

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        from agent.storage import database_errors, ensure_schema

        with database_errors(self.url), self._pool.connection() as db:
            if not self._ready:
                ensure_schema(db, _SCHEMA + _PG_MIGRATION)
                self._ready = True
            with db.transaction():
                yield db


def _info(row: Any) -> ThreadInfo:
    thread_id, title, created_at, updated_at, turns, owner = row
    info = ThreadInfo(thread_id=thread_id, title=title, created_at=created_at,
                      updated_at=updated_at, turns=turns)
    info._owner = owner
    return info


_INDEXES: dict[Path | str, ThreadIndex] = {}


def thread_index(where: Settings | Path) -> ThreadIndex:
    """The one place that decides where threads are indexed, created once per process.

    Given settings: PostgreSQL when ``PERFAGENT_DATABASE_URL`` is set, else the
    SQLite file under their state directory. Given a state directory: its SQLite file.
    """
    if not isinstance(where, Path):
        from agent.storage import database_url

        url = database_url()
        if url is not None:
            if url not in _INDEXES:
                _INDEXES[url] = PostgresThreadIndex(url)
            return _INDEXES[url]
        where = where.state_dir
    path = where / "thread_index.sqlite"
    if path not in _INDEXES or not path.exists():
        _INDEXES[path] = SqliteThreadIndex(path)
    return _INDEXES[path]
