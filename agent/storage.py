"""Where threads live when several server processes share them: PostgreSQL.

By default a thread's checkpoints and the thread index are SQLite files under
the state directory, which one process uses at a time. With
``PERFAGENT_DATABASE_URL=postgresql://…`` both move to PostgreSQL, and so do
the two rules a server enforces about running turns, so that they hold across
every worker and every host that shares the database:

* the run cap: ``max_concurrent_runs`` numbered slots, each a session-level
  advisory lock, so a turn holds one slot wherever it runs;
* one turn per thread: an advisory lock keyed by the thread id.

Both locks are held on a connection dedicated to the run. A process that dies
(even by ``kill -9``) drops its connection, and PostgreSQL releases its locks
at once: no stale claim outlives its owner, and no heartbeat is needed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from agent.run import TurnError

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

#: The environment variable that switches persistence to PostgreSQL.
DATABASE_URL_ENV = "PERFAGENT_DATABASE_URL"
#: Seconds to wait for a connection before the database counts as unavailable.
CONNECT_TIMEOUT_S = 5.0
#: First keys of the two-key advisory locks (ASCII "pfrs" and "pfth"): one space
#: for run slots, one for threads, apart from any other lock user of the database.
_SLOT_LOCKS = 0x70667273
_THREAD_LOCKS = 0x70667468
#: Serializes schema creation: concurrent CREATE ... IF NOT EXISTS can still collide.
_SCHEMA_LOCK = 0x70667363


class DatabaseUnavailable(TurnError):
    """PostgreSQL cannot be reached (or stopped answering); the turn or request fails."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            "database_unavailable", f"cannot use the database at {redact(url)}: {detail}",
            f"check that PostgreSQL is running and that {DATABASE_URL_ENV} is right; threads "
            "already stored are intact and the next request reconnects")


def database_url() -> str | None:
    """The PostgreSQL URL from the environment, or None for the SQLite default."""
    return os.environ.get(DATABASE_URL_ENV, "").strip() or None


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + netloc))


def as_database_error(exc: BaseException, url: str | None = None) -> DatabaseUnavailable | None:
    """``exc`` as :class:`DatabaseUnavailable` when it is a lost or refused connection.

    Only a connection problem counts: a constraint violation is a bug, not an
    outage. psycopg is checked only if it was imported (the SQLite path never is).
    """
    if isinstance(exc, DatabaseUnavailable):
        return exc
    psycopg, pool = sys.modules.get("psycopg"), sys.modules.get("psycopg_pool")
    lost = ((psycopg is not None and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError))
            or (pool is not None and isinstance(exc, pool.PoolTimeout)))
    if not lost:
        return None
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return DatabaseUnavailable(url or database_url() or "postgresql://", first_line)


@contextmanager
def database_errors(url: str | None = None) -> Iterator[None]:
    """Re-raise connection failures inside the block as :class:`DatabaseUnavailable`."""
    try:
        yield
    except Exception as exc:
        error = as_database_error(exc, url)
        if error is None:
            raise
        raise error from exc


def check_database(url: str) -> None:
    """Connect once, now: a server refuses to start on a database it cannot reach."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
    except psycopg.Error as exc:
        raise DatabaseUnavailable(url, str(exc).strip().splitlines()[0]) from None


def ensure_schema(conn: Connection[Any], schema: str) -> None:
    """Create tables once, with the other processes that start at the same time waiting."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(schema)  # type: ignore[arg-type]  # static DDL


_POOLS: dict[tuple[str, str], ConnectionPool] = {}


def sync_pool(url: str, purpose: str, *, max_size: int) -> ConnectionPool:
    """A process-wide pool of autocommit connections for one purpose.

    Purposes are kept apart because run claims hold their connection for a
    whole turn and must not starve quick index queries. A connection is checked
    before it is handed out, so a database that restarted costs no failed request.
    """
    key = (url, purpose)
    if key not in _POOLS:
        from psycopg_pool import ConnectionPool

        _POOLS[key] = ConnectionPool(
            url, min_size=0, max_size=max_size, timeout=CONNECT_TIMEOUT_S, open=True,
            name=f"perfagent-{purpose}", kwargs={"autocommit": True, "connect_timeout":
                                                 int(CONNECT_TIMEOUT_S)},
            check=ConnectionPool.check_connection, reset=_unlock_all)
    return _POOLS[key]


def _unlock_all(conn: Connection[Any]) -> None:
    # Session advisory locks survive a rollback; a pooled connection must not keep them.
    conn.execute("SELECT pg_advisory_unlock_all()")


@asynccontextmanager
async def open_postgres_checkpointer(url: str) -> AsyncIterator[Any]:
    """LangGraph's PostgreSQL checkpointer over a connection pool, tables created if needed."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

    # The keyword arguments are the ones AsyncPostgresSaver.from_conn_string uses.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=8, timeout=CONNECT_TIMEOUT_S, open=False,
        name="perfagent-checkpoints", check=AsyncConnectionPool.check_connection,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row,
                "connect_timeout": int(CONNECT_TIMEOUT_S)})
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except PoolTimeout as exc:
        await pool.close()
        raise DatabaseUnavailable(url, _pool_failure(exc)) from None
    try:
        saver = AsyncPostgresSaver(pool)
        with database_errors(url):
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
                try:
                    await saver.setup()
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
        yield saver
    finally:
        await pool.close()


def _pool_failure(exc: Exception) -> str:
    # psycopg_pool puts the last connection error in the message's second part.
    text = str(exc).strip()
    return text.split(" - ", 1)[-1].splitlines()[0] if text else "no connection"


class PostgresRunClaims:
    """The run cap and the one-turn-per-thread rule, shared through advisory locks."""

    def __init__(self, url: str, limit: int) -> None:
        self.url = url
        self.limit = limit
        # One connection per running turn, plus one for counting.
        self._pool = sync_pool(url, "claims", max_size=limit + 1)

    def take(self) -> PostgresClaim | None:
        """A run slot, or None when ``limit`` turns already run across all processes."""
        with database_errors(self.url):
            conn = self._pool.getconn()
        claim = PostgresClaim(self, conn)
        try:
            with database_errors(self.url):
                for slot in range(self.limit):
                    if conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                    (_SLOT_LOCKS, slot)).fetchone()[0]:  # type: ignore[index]
                        return claim
        except BaseException:
            claim.release()
            raise
        claim.release()
        return None

    def active(self) -> int:
        """Turns running now in every process that shares the database."""
        with database_errors(self.url), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = %s::bigint::oid AND objsubid = 2 AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())",
                (_SLOT_LOCKS,)).fetchone()
        return int(row[0]) if row else 0


class PostgresClaim:
    """One held run slot and, once bound, its thread; both end with its connection."""

    def __init__(self, claims: PostgresRunClaims, conn: Connection[Any]) -> None:
        self._claims = claims
        self._conn: Connection[Any] | None = conn

    def claim_thread(self, thread_id: str) -> bool:
        """Take the thread's lock; False while a turn runs on it anywhere."""
        assert self._conn is not None, "claim used after release"
        with database_errors(self._claims.url):
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                     (_THREAD_LOCKS, thread_id)).fetchone()
        return bool(row and row[0])

    def release(self) -> None:
        """Give the connection back; the pool's reset drops the locks (or the connection)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._claims._pool.putconn(conn)
