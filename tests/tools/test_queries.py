"""explain_query on SQLite databases built by the tests (and PostgreSQL where installed)."""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.conftest import require_module
from tools import get_tool
from tools.base import ToolError
from tools.queries import QueryInput, query_shape, read_only_statement, run, suggest_index

ROWS = 25_000


def build(path: Path, *, index: bool) -> Path:
    """users(id, email, age, city) with ROWS rows; an index on email when asked."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, age INT, city TEXT)")
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?)",
                     ((i, f"user{i}@example.com", i % 90, f"city{i % 40}")
                      for i in range(ROWS)))
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INT, total REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                     ((i, i % ROWS, i * 0.25) for i in range(2 * ROWS)))
    conn.execute("CREATE TABLE tiny (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO tiny VALUES (?, ?)", ((i, str(i)) for i in range(50)))
    if index:
        conn.execute("CREATE INDEX idx_users_email ON users (email)")
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def plain_db(workspace: Path) -> Path:
    return build(workspace / "shop.db", index=False)


@pytest.fixture
def indexed_db(workspace: Path) -> Path:
    return build(workspace / "shop_indexed.db", index=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_spec_is_registered() -> None:
    spec = get_tool("explain_query")
    assert spec.runs_code is False
    props = spec.json_schema()["properties"]
    for name in ("database", "sql", "params", "measure_indexes", "repeat"):
        assert props[name].get("description"), name


async def test_full_scan_suggested_index_and_measured_speedup(plain_db: Path) -> None:
    before = digest(plain_db)
    sql = "SELECT id, age FROM users WHERE email = ?"
    result = await run(QueryInput(database="shop.db", sql=sql,
                                  params=["user12345@example.com"]))
    assert result.engine == "sqlite" and result.rows_returned == 1
    assert [r.detail for r in result.plan] == ["SCAN users"]
    assert "SCAN users" in result.plan_text
    scan = next(f for f in result.findings if f.kind == "full_scan")
    assert scan.severity == "high" and scan.location == "users"
    assert str(ROWS) in scan.summary and result.table_rows == {"users": ROWS}
    missing = next(f for f in result.findings if f.kind == "missing_index")
    suggestion = result.index_suggestions[0]
    assert suggestion.sql == "CREATE INDEX idx_users_email ON users (email)"
    assert suggestion.sql in missing.summary
    assert suggestion.measured and suggestion.used_by_planner
    assert any("USING INDEX idx_users_email" in d for d in suggestion.plan_after)
    assert suggestion.time_before_ms and suggestion.time_after_ms
    assert suggestion.speedup is not None and suggestion.speedup > 1
    assert suggestion.time_before_ms / suggestion.time_after_ms == pytest.approx(
        suggestion.speedup, rel=0.05)
    measured = {m.name: m for m in result.measurements}
    assert measured["query_time"].unit == "ms" and measured["query_time"].value > 0
    assert measured["query_time_with_index"].value == suggestion.time_after_ms
    assert measured["query_time"].source == "explain_query"
    assert "speedup" not in result.summary and "x)" in result.summary
    # the user's database was never written, and has no new index
    assert digest(plain_db) == before
    with sqlite3.connect(plain_db) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                            ).fetchone()[0] == 0
    assert list(plain_db.parent.glob("*-journal")) == []


async def test_indexed_database_has_no_scan(indexed_db: Path) -> None:
    result = await run(QueryInput(database=str(indexed_db),
                                  sql="SELECT id FROM users WHERE email = 'user7@example.com'"))
    assert result.plan[0].detail.startswith("SEARCH users USING")
    assert "idx_users_email" in result.plan[0].detail
    assert not [f for f in result.findings if f.kind in ("full_scan", "missing_index")]
    assert result.index_suggestions == []


async def test_temp_sort_and_order_by_index(plain_db: Path) -> None:
    result = await run(QueryInput(database="shop.db",
                                  sql="SELECT * FROM users WHERE city = 'city3' ORDER BY age"))
    kinds = {f.kind for f in result.findings}
    assert {"full_scan", "temp_sort", "missing_index"} <= kinds
    assert result.index_suggestions[0].columns == ["city", "age"]
    assert result.index_suggestions[0].speedup and result.index_suggestions[0].speedup > 1


async def test_small_table_scan_is_not_a_finding(plain_db: Path) -> None:
    result = await run(QueryInput(database="shop.db", sql="SELECT * FROM tiny WHERE name = 'x'"))
    assert [r.detail for r in result.plan] == ["SCAN tiny"]
    assert result.findings == []


async def test_placeholders_without_params_bind_nulls(plain_db: Path) -> None:
    result = await run(QueryInput(database="shop.db",
                                  sql="SELECT * FROM users WHERE email = :email AND age > ?1",
                                  measure_indexes=False))
    assert result.rows_returned == 0
    assert any("NULL" in note for note in result.notes)
    assert result.index_suggestions[0].measured is False  # asked not to measure


@pytest.mark.parametrize("sql", [
    "DELETE FROM users",
    "UPDATE users SET age = 1",
    "select 1; drop table users",
    "SELECT 1; SELECT 2",
    "WITH gone AS (DELETE FROM users RETURNING *) SELECT * FROM gone",
    "/* harmless */ INSERT INTO users (id) VALUES (0)",
    "-- just a comment\nDROP TABLE users",
    "REPLACE INTO users (id) VALUES (1)",
    "PRAGMA journal_mode = WAL",
    "ATTACH DATABASE 'other.db' AS other",
    "VACUUM",
    "CREATE TABLE t (x)",
    "ALTER TABLE users ADD COLUMN x",
    "EXPLAIN QUERY PLAN DELETE FROM users",
    "SELECT * INTO copy FROM users",
    "SELECT * FROM users FOR UPDATE",
    "SELECT load_extension('evil')",
    "SELECT pg_terminate_backend(42)",
])
async def test_writes_are_refused(plain_db: Path, sql: str) -> None:
    before = digest(plain_db)
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database="shop.db", sql=sql))
    assert err.value.code == "not_read_only"
    assert digest(plain_db) == before


@pytest.mark.parametrize("sql", [
    "select replace(email, 'a', 'b') from users where id = 1",
    "-- leading comment\nSELECT 1;",
    "SELECT ';' AS semi, 'DROP TABLE x' AS text",
    'SELECT "delete" FROM (SELECT 1 AS "delete")',
    "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
    "EXPLAIN QUERY PLAN SELECT 1",
    "VALUES (1), (2)",
])
async def test_reads_are_accepted(plain_db: Path, sql: str) -> None:
    result = await run(QueryInput(database="shop.db", sql=sql, repeat=1))
    assert result.ok and result.runs == 1


async def test_error_codes(workspace: Path, plain_db: Path) -> None:
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database="missing.db", sql="SELECT 1"))
    assert err.value.code == "not_found"
    (workspace / "notes.txt").write_text("this is not a database\n" * 10)
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database="notes.txt", sql="SELECT 1"))
    assert err.value.code == "invalid_database"
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database="shop.db", sql="SELECT nope FROM users"))
    assert err.value.code == "sql_error" and "no such column: nope" in err.value.message
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database="shop.db", sql="SELECT 'unterminated"))
    assert err.value.code == "sql_error"


async def test_query_timeout(plain_db: Path) -> None:
    slow = ("SELECT count(*) FROM users a, users b, users c "
            "WHERE a.age + b.age + c.age = -1")
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database="shop.db", sql=slow, timeout=0.3, repeat=1))
    assert err.value.code == "timeout"


def _shape_columns(sql: str, table: str, ref: str, cols: dict[str, list[str]]
                   ) -> list[list[str]]:
    shape = query_shape(read_only_statement(sql, "sqlite"))
    return [c for c, _ in suggest_index(shape, table, ref, lambda t: cols.get(t.lower(), []))]


def test_suggestion_columns_from_the_sql() -> None:
    cols = {"users": ["id", "email", "age", "city"], "orders": ["id", "user_id", "total"]}
    assert _shape_columns("SELECT * FROM users WHERE email = ? AND age > 3 ORDER BY city",
                          "users", "users", cols) == [["email", "age"], ["email", "city"]]
    assert _shape_columns("SELECT * FROM users u WHERE u.city IN ('a', 'b') ORDER BY u.age DESC",
                          "users", "u", cols) == [["city", "age"]]
    assert _shape_columns("SELECT * FROM users WHERE age BETWEEN 3 AND 9", "users", "users",
                          cols) == [["age"]]
    # joins: the scanned side gets its join column
    assert _shape_columns("SELECT * FROM users u JOIN orders o ON o.user_id = u.id "
                          "WHERE u.city = 'x'", "orders", "o", cols) == [["user_id"]]
    # nothing a plain index can serve: no suggestion
    assert _shape_columns("SELECT * FROM users WHERE lower(email) = 'x'", "users", "users",
                          cols) == []
    assert _shape_columns("SELECT * FROM users WHERE email = 'a' OR age = 3", "users", "users",
                          cols) == []
    assert _shape_columns("SELECT * FROM users WHERE age = 3 UNION SELECT * FROM users",
                          "users", "users", cols) == []


# --------------------------------------------------------------------------- PostgreSQL


async def test_postgres_without_psycopg_is_a_clear_error(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database="postgresql://u@127.0.0.1:5432/db", sql="SELECT 1"))
    assert err.value.code == "missing_dependency"
    assert "pip install 'psycopg[binary]'" in err.value.hint


async def test_postgres_remote_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("psycopg")
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database="postgresql://u:pw@10.1.2.3:5432/db", sql="SELECT 1"))
    assert err.value.code == "target_refused"


@pytest.fixture(scope="session")
def pg_users(pg_dsn: str) -> str:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS users")
        conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text, age int)")
        conn.execute("INSERT INTO users (email, age) SELECT 'user' || g || '@example.com', "
                     "g %% 90 FROM generate_series(1, %s) g", [ROWS])
        conn.execute("ANALYZE users")
    return pg_dsn


async def test_postgres_plan_findings_and_rolled_back_index(pg_users: str) -> None:
    import psycopg

    result = await run(QueryInput(database=pg_users,
                                  sql="SELECT * FROM users WHERE email = ?",
                                  params=["user77@example.com"]))
    assert result.engine == "postgresql" and result.rows_returned == 1
    assert result.plan_json["Plan"]["Node Type"] == "Seq Scan"
    kinds = {f.kind for f in result.findings}
    assert {"full_scan", "missing_index"} <= kinds
    suggestion = result.index_suggestions[0]
    assert suggestion.sql == "CREATE INDEX idx_users_email ON users (email)"
    assert suggestion.used_by_planner and suggestion.speedup and suggestion.speedup > 1
    assert {m.name for m in result.measurements} == {"query_time", "query_time_with_index"}
    with psycopg.connect(pg_users) as conn:  # the index was rolled back
        names = [r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'users'")]
    assert names == ["users_pkey"]


async def test_postgres_placeholders_get_a_generic_plan(pg_users: str) -> None:
    result = await run(QueryInput(database=pg_users, sql="SELECT * FROM users WHERE email = ?",
                                  measure_indexes=False))
    # with NULL bound, a custom plan would skip the table; the generic one scans it
    assert result.plan_json["Plan"]["Node Type"] == "Seq Scan"
    assert any("generic" in note for note in result.notes)


async def test_postgres_refuses_writes_even_through_functions(pg_users: str) -> None:
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database=pg_users, sql="DELETE FROM users"))
    assert err.value.code == "not_read_only"
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database=pg_users, sql="SELECT nextval('users_id_seq')"))
    assert err.value.code == "not_read_only"
    with pytest.raises(ToolError) as err:
        await run(QueryInput(database=pg_users, sql="SELECT * FROM missing_table"))
    assert err.value.code == "sql_error"
