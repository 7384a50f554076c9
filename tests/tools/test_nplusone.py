"""detect_n_plus_one on real programs, a PostgreSQL server, query logs and trace exports."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import REPO
from tools.base import ToolError
from tools.nplusone import SPEC, NPlusOneInput, normalise_sql, run

DATA = Path(__file__).parent / "data"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def copy_data(workspace: Path, name: str) -> str:
    (workspace / name).write_bytes((DATA / name).read_bytes())
    return name


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("sql", "shape"), [
    ("select sku,quantity from order_items where order_id=17",
     "SELECT sku,quantity FROM order_items WHERE order_id=?"),
    ("SELECT * FROM t WHERE name = 'o''brien' AND id IN (1, 2,3) -- why",
     "SELECT * FROM t WHERE name = ? AND id IN (?)"),
    ("SELECT a FROM t WHERE x = $1 AND y = %s AND z = %(z)s AND w = :w AND v = ? AND c::int > -5",
     "SELECT a FROM t WHERE x = ? AND y = ? AND z = ? AND w = ? AND v = ? AND c::int > ?"),
    ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y');", "INSERT INTO t (a, b) VALUES (?)"),
    ("SELECT count(*) FROM t1 WHERE a = ANY(ARRAY[1, 2]) LIMIT 10",
     "SELECT count(*) FROM t1 WHERE a = ANY(ARRAY[?]) LIMIT ?"),
    ("SELECT $$x$$, $q$y$q$, E'z', 1.5e3, 0xff, a - 1 FROM t",
     "SELECT ?, ?, ?, ?, ?, a - ? FROM t"),
    ("SELECT \"Weird Col\" FROM \"T\" /* traceparent='00-ab-cd-01' */ WHERE  id\n=\t4",
     "SELECT \"Weird Col\" FROM \"T\" WHERE id = ?"),
])
def test_normalise_sql(sql: str, shape: str) -> None:
    assert normalise_sql(sql).display == shape


def test_shapes_compare_without_case_or_spacing() -> None:
    a = normalise_sql("SELECT name FROM users WHERE id IN (1,2,3)")
    b = normalise_sql("select  NAME from Users where ID in (?)")
    assert a.key == b.key and a.verb == "select"
    assert a.key != normalise_sql("SELECT name FROM users WHERE id = 1").key


# --------------------------------------------------------------------------- input


def test_spec_and_input() -> None:
    assert SPEC.name == "detect_n_plus_one" and SPEC.runs_code is True
    props = SPEC.json_schema()["properties"]
    for name in ("script", "args", "entry", "timeout", "query_log", "traces", "threshold"):
        assert props[name].get("description"), name
    with pytest.raises(ValidationError, match="exactly one"):
        NPlusOneInput()
    with pytest.raises(ValidationError, match="exactly one"):
        NPlusOneInput(script="a.py", query_log="q.log")
    with pytest.raises(ValidationError, match="entry only applies"):
        NPlusOneInput(traces="t.json", entry="handler")
    with pytest.raises(ValidationError):
        NPlusOneInput(script="a.py", surprise=True)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- scripts


async def test_orders_example_n_plus_one_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFAGENT_WORKSPACE", str(REPO))
    shop = REPO / "examples" / "shop.py"
    call_site = f"examples/shop.py:{line_of(shop, 'items = conn.execute(')}"
    assert call_site == "examples/shop.py:75"
    updates: list[tuple[float, str]] = []
    result = await run(NPlusOneInput(script="examples/orders_workload.py", entry="list_orders",
                                     args=["4"]), lambda f, t: updates.append((f, t)))
    assert result.requests == 4 and result.exit_code == 0
    assert result.queries_outside_entry == 3  # building the database: not a request
    top = result.repeated[0]
    assert top.shape == "SELECT sku, quantity FROM order_items WHERE order_id = ?"
    assert 35 <= top.count <= 40 and top.requests == 4
    assert top.call_site == call_site and top.function == "list_orders"
    assert top.per_query_ms is not None and top.per_query_ms > 0
    # the loop's elapsed time covers its queries and the Python between them
    assert top.worst_request_ms is not None and top.worst_request_elapsed_ms is not None
    assert top.worst_request_elapsed_ms >= top.worst_request_ms > 0
    finding = result.findings[0]
    assert (finding.kind, finding.location, finding.severity) == ("n_plus_one", call_site, "high")
    assert finding.evidence == f"{top.count}× {top.shape} in request {top.worst_request}"
    assert "taking" in finding.summary  # the per-request time, quoted by the offline writer
    measured = {m.name: m for m in result.measurements}
    assert measured["queries_total"].value == result.queries_total > 4 * 35
    assert measured["queries_per_request_max"].value == top.count + 1  # + the orders query
    assert measured["repeated_query_share"].unit == "%"
    assert 90 < measured["repeated_query_share"].value < 100
    assert measured["n_plus_one_count"].value == 1
    assert all(m.source == "detect_n_plus_one" and m.target.endswith("orders_workload.py")
               for m in measured.values())
    assert "served 4 requests" in result.stdout_tail
    assert "examples/shop.py:75" in result.summary and len(result.summary.splitlines()) <= 3
    assert updates[0][0] == 0.0 and updates[-1][0] == 1.0


APP = '''\
import sqlite3

ROUTES = {}


def route(path):
    def register(handler):
        ROUTES[path] = handler  # the registry keeps the original function
        return handler
    return register


def connect():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"u{i}") for i in range(1, 9)])
    return conn


@route("/users")
def list_users(conn, limit):
    ids = [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id LIMIT ?", (limit,))]
    cur = conn.cursor()
    return [cur.execute("SELECT name FROM users WHERE id = ?", (i,)).fetchone()[0] for i in ids]


class Reports:
    def totals(self, conn):
        return conn.execute("SELECT count(*), max(id) FROM users").fetchone()
'''


async def test_entry_through_a_registry_and_module_forms(workspace: Path) -> None:
    app = write(workspace, "app.py", APP)
    write(workspace, "serve.py", """\
        import app

        conn = app.connect()
        for limit in (3, 8, 6):
            app.ROUTES["/users"](conn, limit)
        for _ in range(2):
            app.Reports().totals(conn)
        """)
    site = f"app.py:{line_of(app, 'cur.execute(')}"
    for entry in ("list_users", "app:list_users"):
        result = await run(NPlusOneInput(script="serve.py", entry=entry))
        assert result.requests == 3, entry
        top = result.repeated[0]
        assert (top.count, top.requests, top.call_site) == (8, 2, site)  # the limit-3 call is below 5
        assert result.findings[0].severity == "medium"
        assert result.queries_outside_entry == 4  # create, insert batch, two reports
    # a method as the entry: each call is its own request, one query each, no N+1
    methods = await run(NPlusOneInput(script="serve.py", entry="Reports.totals"))
    assert (methods.requests, methods.queries_total, methods.findings) == (2, 2, [])
    # without an entry the run is one request: 17 lookups of one shape
    whole = await run(NPlusOneInput(script="serve.py", threshold=10))
    assert whole.requests == 1 and whole.repeated[0].count == 17
    assert whole.queries_total == 3 + 17 + 2 + 2  # executemany counts once


async def test_capture_keeps_the_drivers_behaviour(workspace: Path) -> None:
    # The script checks sqlite3's behaviour itself and fails (exit 1) if the wrappers change it.
    write(workspace, "drivers.py", """\
        import sqlite3
        import threading


        class AppConnection(sqlite3.Connection):
            tag = "app"


        class StrictCursor(sqlite3.Cursor):
            def execute(self, sql, params=None):
                # like Django's wrapper: "no parameters" differs from "empty parameters"
                assert params is None or params, "parameters were invented"
                return super().execute(sql) if params is None else super().execute(sql, params)


        def worker(path, n):
            conn = sqlite3.connect(path, factory=AppConnection, check_same_thread=False)
            assert isinstance(conn, AppConnection) and conn.tag == "app"
            conn.row_factory = sqlite3.Row
            for i in range(n):
                row = conn.execute("SELECT :v AS v", {"v": i}).fetchone()
                assert row["v"] == i
            cur = conn.cursor(StrictCursor)
            assert isinstance(cur, StrictCursor)
            assert cur.execute("SELECT 1").fetchone()[0] == 1
            conn.close()


        threads = [threading.Thread(target=worker, args=(":memory:", n)) for n in (5, 6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        """)
    result = await run(NPlusOneInput(script="drivers.py", entry="worker"))
    assert result.exit_code == 0 and result.requests == 2  # one per thread's call
    top = result.repeated[0]
    assert (top.shape, top.count, top.requests) == ("SELECT ? AS v", 6, 2)
    assert result.queries_total == 5 + 6 + 2


async def test_clean_program_has_no_finding(workspace: Path) -> None:
    write(workspace, "clean.py", """\
        import sqlite3


        def handle(conn, customer):
            return conn.execute(
                "SELECT o.id, i.sku FROM orders o JOIN items i ON i.order_id = o.id "
                "WHERE o.customer = ?", (customer,)).fetchall()


        conn = sqlite3.connect(":memory:")
        conn.executescript("CREATE TABLE orders (id INTEGER, customer INTEGER);"
                           "CREATE TABLE items (order_id INTEGER, sku TEXT);")
        for customer in range(30):
            handle(conn, customer)
        """)
    result = await run(NPlusOneInput(script="clean.py", entry="handle"))
    assert result.requests == 30 and result.queries_total == 30
    assert result.findings == [] and result.repeated == []
    measured = {m.name: m.value for m in result.measurements}
    assert measured == {"queries_total": 30, "queries_per_request_max": 1,
                        "repeated_query_share": 0, "n_plus_one_count": 0}
    assert "no query shape ran 5 or more times" in result.summary


async def test_wrong_entry_is_a_clear_error(workspace: Path) -> None:
    write(workspace, "app.py", APP)
    write(workspace, "serve.py", "import app\napp.list_users(app.connect(), 3)\n")
    with pytest.raises(ToolError) as err:
        await run(NPlusOneInput(script="serve.py", entry="list_user"))
    assert err.value.code == "entry_not_found"
    assert "list_users" in err.value.message  # the functions that did issue queries
    with pytest.raises(ToolError) as err:
        await run(NPlusOneInput(script="serve.py", entry="not a name!"))
    assert err.value.code == "invalid_entry"


async def test_crashing_script(workspace: Path) -> None:
    write(workspace, "boom.py", """\
        import sqlite3

        conn = sqlite3.connect(":memory:")
        conn.execute("SELECT * FROM missing_table")
        """)
    with pytest.raises(ToolError) as err:
        await run(NPlusOneInput(script="boom.py"))
    assert err.value.code == "script_failed"
    assert "exited with code 1" in err.value.message
    assert "no such table: missing_table" in err.value.message
    write(workspace, "three.py", "import sys\nprint('giving up', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(ToolError) as err:
        await run(NPlusOneInput(script="three.py"))
    assert "exited with code 3" in err.value.message and "giving up" in err.value.message


async def test_timeout_kills_the_script(workspace: Path) -> None:
    write(workspace, "hang.py", """\
        import sys, time
        print("stuck on a lock", file=sys.stderr, flush=True)
        time.sleep(60)
        """)
    started = time.monotonic()
    with pytest.raises(ToolError) as err:
        await run(NPlusOneInput(script="hang.py", timeout=1))
    assert time.monotonic() - started < 10
    assert err.value.code == "timeout" and "stuck on a lock" in err.value.message


async def test_paths_stay_in_the_workspace(workspace: Path,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(ToolError) as err:
        await run(NPlusOneInput(script="missing.py"))
    assert err.value.code == "not_found"
    outside = write(tmp_path_factory.mktemp("elsewhere"), "x.py", "print(1)\n")
    with pytest.raises(ToolError) as err:
        await run(NPlusOneInput(script=str(outside)))
    assert err.value.code == "path_outside_workspace"


async def test_psycopg_queries_are_captured(workspace: Path, pg_dsn: str) -> None:
    write(workspace, "pg_app.py", """\
        import asyncio, sys
        import psycopg


        def handler(conn, n):
            with conn.cursor() as cur:
                cur.execute("SELECT generate_series(1, %s)", (n,))
                ids = [row[0] for row in cur.fetchall()]
            return [conn.execute("SELECT %s::int * 2", (i,)).fetchone()[0] for i in ids]


        async def ahandler(aconn, n):
            async with aconn.cursor() as cur:
                for i in range(n):
                    await cur.execute("SELECT %s::int + 1", (i,))


        async def amain(dsn):
            async with await psycopg.AsyncConnection.connect(dsn) as aconn:
                await ahandler(aconn, 6)


        with psycopg.connect(sys.argv[1]) as conn:
            for n in (6, 7):
                handler(conn, n)
        asyncio.run(amain(sys.argv[1]))
        """)
    script = workspace / "pg_app.py"
    result = await run(NPlusOneInput(script="pg_app.py", args=[pg_dsn], entry="handler"))
    assert result.requests == 2 and result.queries_total == 2 + 13
    top = result.repeated[0]
    assert top.shape == "SELECT ?::int * ?" and top.count == 7 and top.requests == 2
    assert top.call_site == f"pg_app.py:{line_of(script, 'SELECT %s::int * 2')}"
    asynchronous = await run(NPlusOneInput(script="pg_app.py", args=[pg_dsn], entry="ahandler"))
    top = asynchronous.repeated[0]
    assert (asynchronous.requests, top.shape, top.count) == (1, "SELECT ?::int + ?", 6)
    assert top.call_site == f"pg_app.py:{line_of(script, 'SELECT %s::int + 1')}"


# --------------------------------------------------------------------------- logs and traces


async def test_postgres_log(workspace: Path) -> None:
    result = await run(NPlusOneInput(query_log=copy_data(workspace, "postgres.log")))
    assert result.source == "query_log"
    # parse/bind lines, DETAIL, ERROR/STATEMENT and checkpoints are not queries
    assert result.queries_total == 27
    by_shape = {r.shape: r for r in result.repeated}
    items = by_shape["SELECT sku, quantity FROM order_items WHERE order_id = ?"]
    assert (items.count, items.worst_request) == (7, "pid 4242")
    assert items.total_ms == pytest.approx(0.588)
    # sqlcommenter traceparent splits one backend's queries into two requests
    prices = by_shape["SELECT price FROM products WHERE id = ?"]
    assert (prices.count, prices.requests) == (5, 2)
    assert prices.worst_request == "4bf92f3577b34da6a3ce929d0e0e4736"
    # SET repeated six times is session management, not an N+1
    assert not any(r.shape.startswith("SET") for r in result.repeated)
    locations = {f.location for f in result.findings}
    assert locations == {"table order_items", "table products"}
    assert any("grouped per backend process" in note for note in result.notes)
    first_only = await run(NPlusOneInput(query_log="postgres.log", top=1))
    assert len(first_only.repeated) == 1 and len(first_only.findings) == 1
    assert next(m.value for m in first_only.measurements if m.name == "n_plus_one_count") == 2


async def test_postgres_log_multiline_statement_takes_its_duration(workspace: Path) -> None:
    name = copy_data(workspace, "postgres.log")
    result = await run(NPlusOneInput(query_log=name, threshold=2))
    multi = next(r for r in result.repeated if "o.total_cents" in r.shape)
    assert multi.shape == "SELECT o.id, o.total_cents FROM orders o WHERE o.customer_id = ?"
    # each statement took the "duration:" logged after it (log_duration)
    assert (multi.count, multi.total_ms) == (2, pytest.approx(0.5))


async def test_plain_query_log(workspace: Path) -> None:
    result = await run(NPlusOneInput(query_log=copy_data(workspace, "queries.log")))
    assert (result.requests, result.queries_total, result.queries_per_request_max) == (2, 9, 7)
    assert result.repeated_query_share == pytest.approx(66.67)
    top = result.repeated[0]
    assert (top.shape, top.count, top.worst_request) == (
        "SELECT title FROM books WHERE author_id = ?", 6, "req-1")
    assert top.total_ms is None and not result.timed  # a plain log carries no times
    assert result.findings[0].evidence == f"6× {top.shape} in request req-1"
    assert any("skipped" in note for note in result.notes)


async def test_unreadable_query_log(workspace: Path) -> None:
    write(workspace, "access.log", "GET / 200\nPOST /login 302\n")
    with pytest.raises(ToolError) as err:
        await run(NPlusOneInput(query_log="access.log"))
    assert err.value.code == "invalid_query_log" and "[request-id] SQL" in err.value.hint


async def test_otlp_traces(workspace: Path) -> None:
    result = await run(NPlusOneInput(traces=copy_data(workspace, "otlp_orders.json")))
    assert result.source == "traces" and result.requests == 2 and result.queries_total == 10
    top = result.repeated[0]
    assert (top.count, top.call_site, top.function) == (8, "app/orders.py:42", "list_orders")
    assert top.per_query_ms == pytest.approx(3.2)
    assert top.worst_request_elapsed_ms == pytest.approx(3.4 + 3.5 * 7 + 3.2 - 3.4)
    assert result.findings[0].evidence == (
        f"8× {top.shape} in request trace 5b8efff798038103d269b633813fc60c")


async def test_otlp_traces_without_code_attributes_point_at_the_parent_span(
        workspace: Path) -> None:
    def db_span(n: int) -> dict[str, object]:
        return {"traceId": "ab" * 16, "spanId": f"{n:016x}", "parentSpanId": "f" * 16,
                "name": "SELECT", "startTimeUnixNano": str(1000 + n * 10),
                "endTimeUnixNano": str(1005 + n * 10),
                "attributes": [{"key": "db.query.text",
                                "value": {"stringValue": f"SELECT * FROM carts WHERE id = {n}"}}]}

    spans = [{"traceId": "ab" * 16, "spanId": "f" * 16, "name": "GET /cart",
              "startTimeUnixNano": "1000", "endTimeUnixNano": "2000"}]
    spans += [db_span(n) for n in range(1, 6)]
    doc = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "cart"}}]},
        "scopeSpans": [{"spans": spans}]}]}
    (workspace / "cart.json").write_text(json.dumps(doc))
    result = await run(NPlusOneInput(traces="cart.json"))
    assert result.findings[0].location == "cart/GET /cart"
    with pytest.raises(ToolError) as err:
        (workspace / "bad.json").write_text("{nope")
        await run(NPlusOneInput(traces="bad.json"))
    assert err.value.code == "invalid_trace_file"
