"""Network tools reach only the hosts they checked, at the addresses they checked.

Each test is an attack that worked before its fix: a PostgreSQL DSN whose
``hostaddr`` (or second host) sends libpq somewhere ``host`` never said, a name
that resolves to loopback for the check and elsewhere for the connection, and,
on a server bound to a public address, the host's own loopback services and
other users' command lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.toolbox import execute
from tests.security.rebinding import NOT_LOOPBACK, rebinding
from tools.base import ServingRules, ToolError, check_target_url, serving
from tools.caching import CacheStatsInput
from tools.caching import run_stats as cache_stats
from tools.queries import QueryInput
from tools.queries import run as explain_query

#: A public server's rules, code-running tools (and with them the workspace) off.
PUBLIC = ServingRules(public=True, workspace=False)


def _pg_port(dsn: str) -> int:
    import psycopg

    return int(psycopg.conninfo.conninfo_to_dict(dsn)["port"])


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("dsn", [
    # libpq connects to hostaddr; host only names the server for TLS and .pgpass
    "host=127.0.0.1 hostaddr={bad} port={port} user=postgres dbname=postgres",
    "postgresql://postgres@127.0.0.1:{port}/postgres?hostaddr={bad}",
    # several hosts: libpq tries the next when the first fails
    "host=127.0.0.1,{bad} port={unused},{port} user=postgres dbname=postgres",
    "postgresql://postgres@127.0.0.1:{unused},{bad}:{port}/postgres",
])
def test_every_address_libpq_would_use_is_checked(dsn: str, pg_dsn: str, unused_port: int) -> None:
    dsn = dsn.format(bad=NOT_LOOPBACK, port=_pg_port(pg_dsn), unused=unused_port)
    with pytest.raises(ToolError) as err:
        asyncio.run(explain_query(QueryInput(database=dsn, sql="SELECT 1")))
    assert err.value.code == "target_refused"
    assert NOT_LOOPBACK in err.value.message


def test_a_service_entry_is_refused(pg_dsn: str) -> None:
    """service= moves the target into a file the DSN does not show."""
    with pytest.raises(ToolError) as err:
        asyncio.run(explain_query(QueryInput(database="service=prod dbname=postgres",
                                             sql="SELECT 1")))
    assert err.value.code == "invalid_database" and "service" in err.value.message


def test_postgres_connects_to_the_checked_address(pg_dsn: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A name checked as loopback is connected to as checked, not resolved again by libpq."""
    answers = rebinding(monkeypatch, "pg.rebind.test")
    dsn = f"host=pg.rebind.test port={_pg_port(pg_dsn)} user=postgres dbname=postgres"
    result = asyncio.run(explain_query(QueryInput(database=dsn, sql="SELECT 1")))
    assert result.ok
    assert answers == ["127.0.0.1"]  # resolved once, by the check


# --------------------------------------------------------------------------- Redis


def test_redis_connects_to_the_checked_address(redis_server: Callable[..., int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    port = redis_server()
    answers = rebinding(monkeypatch, "redis.rebind.test")
    result = asyncio.run(cache_stats(CacheStatsInput(url=f"redis://redis.rebind.test:{port}/0",
                                                     timeout=2)))
    assert result.ok
    assert answers == ["127.0.0.1"]


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("url", ["http://a[b@127.0.0.1:8000/", "http://127.0.0.1:99999/",
                                 "http://[::1/", "ftp://127.0.0.1/", "http:///x"])
def test_a_malformed_url_is_a_structured_error(url: str) -> None:
    with pytest.raises(ToolError) as err:
        check_target_url(url)
    assert err.value.code == "invalid_url" and err.value.hint


# --------------------------------------------------------------------------- a public server


def test_a_public_server_reaches_only_listed_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    assert check_target_url("http://127.0.0.1:8080/").address == "127.0.0.1"  # loopback server
    with serving(PUBLIC):
        for url in ("http://127.0.0.1:8080/", "http://localhost:8080/", "http://[::1]:8080/",
                    "http://169.254.169.254/latest/meta-data/", "http://0.0.0.0:8080/"):
            with pytest.raises(ToolError) as err:
                check_target_url(url)
            assert err.value.code == "target_refused"
            assert "PERFAGENT_ALLOWED_HOSTS" in err.value.hint
        monkeypatch.setenv("PERFAGENT_ALLOWED_HOSTS", "127.0.0.1:8080,app.test")
        assert check_target_url("http://127.0.0.1:8080/").address == "127.0.0.1"
        with pytest.raises(ToolError):  # the listing names one port, not the host's services
            check_target_url("http://127.0.0.1:5432/")
        # A listed name that resolves to the host's own loopback does not open it.
        rebinding(monkeypatch, "app.test", first="127.0.0.1", later="127.0.0.1")
        with pytest.raises(ToolError) as err:
            check_target_url("http://app.test:9000/")
        assert err.value.code == "target_refused"


def test_a_public_server_turn_refuses_loopback_load_tests(
        http_target: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    url = http_target("fast")
    args = {"url": url, "rate": 5, "duration": 0.2}
    public = asyncio.run(execute("load_test", args, allowed={"load_test"}, rules=PUBLIC))
    assert not public.ok
    assert json.loads(public.content)["error"]["code"] == "target_refused"
    local = asyncio.run(execute("load_test", args, allowed={"load_test"}))
    assert local.ok, local.content


def test_a_public_server_hides_other_processes_command_lines(tmp_path: Path) -> None:
    secret = "--password=hunter2-" + os.urandom(4).hex()
    other = subprocess.Popen([sys.executable, "-c", "while True: pass", secret])
    try:
        args = {"interval": 0.5, "top": 50}
        shown = asyncio.run(execute("system_snapshot", args, allowed={"system_snapshot"}))
        hidden = asyncio.run(execute("system_snapshot", args, allowed={"system_snapshot"},
                                     rules=PUBLIC))
    finally:
        other.kill()
        other.wait()
    assert shown.ok and hidden.ok
    assert secret in shown.content  # the busy process is listed with its arguments
    assert secret not in hidden.content
    procs = json.loads(hidden.content)["processes"]
    assert any(p["pid"] == other.pid for p in procs)  # still listed, by name


# --------------------------------------------------------------------------- SQLite in WAL mode


def test_explain_leaves_nothing_beside_a_wal_database(workspace: Path) -> None:
    path = workspace / "wal.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (a INTEGER, b TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, str(i)) for i in range(3000)])
    db.close()
    assert sorted(p.name for p in workspace.iterdir()) == ["wal.db"]
    result = asyncio.run(explain_query(QueryInput(database=str(path),
                                                  sql="SELECT * FROM t WHERE a = 7")))
    assert result.ok
    assert result.index_suggestions  # measured on a copy, not on this file
    assert sorted(p.name for p in workspace.iterdir()) == ["wal.db"]


def test_explain_reads_a_wal_database_a_writer_holds_open(workspace: Path) -> None:
    """With a writer at work, its -wal holds rows the main file lacks: they are read."""
    path = workspace / "busy.db"
    writer = sqlite3.connect(path)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("CREATE TABLE t (a INTEGER)")
        writer.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
        writer.commit()
        result = asyncio.run(explain_query(QueryInput(database=str(path),
                                                      sql="SELECT * FROM t")))
        assert result.ok
        assert result.rows_returned == 50
    finally:
        writer.close()


@pytest.mark.parametrize(("tool", "args"), [
    ("explain_query", {"database": "shop.db", "sql": "SELECT 1"}),
    ("analyze_traces", {"path": "trace.json"}),
    ("simulate_cache", {"access_log": "access.log"}),
    ("check_budgets", {"measurements": "results.json", "budgets": {"p95_latency": "<200"}}),
    ("load_test", {"url": "http://127.0.0.1:9/", "rate": 10, "duration": 0.5,
                   "plot_path": "index.html"}),
])
def test_a_server_without_code_tools_keeps_the_workspace_closed(
        tool: str, args: dict[str, object], workspace: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a SQLite file or a trace is reading the server's files: a server that
    keeps code-running tools off keeps these closed too (and writes no plot)."""
    monkeypatch.setenv("PERFAGENT_ALLOWED_HOSTS", "127.0.0.1:9")
    for name in ("shop.db", "trace.json", "access.log", "results.json"):
        (workspace / name).write_text("x")
    for rules in (PUBLIC, ServingRules(public=False, workspace=False)):
        outcome = asyncio.run(execute(tool, args, allowed={tool}, rules=rules))
        assert json.loads(outcome.content)["error"]["code"] == "workspace_closed"
    assert not (workspace / "index.html").exists()


def test_a_public_server_runs_every_tool_call_under_its_rules(tmp_path: Path) -> None:
    """The graph and MCP's measurement tools both take the rules from the server's settings."""
    from agent.context import Settings
    from agent.server.config import ServerConfig
    from agent.server.mcp import measurement_tools

    base = Settings(state_dir=tmp_path)
    public = ServerConfig(host="0.0.0.0", api_keys=("k",), allow_code_tools=False)
    local = ServerConfig(host="127.0.0.1")
    assert public.agent_settings(base).public_server
    assert not local.agent_settings(base).public_server
    tools = measurement_tools(public.agent_settings(base))
    assert tools and all(t.rules == PUBLIC for t in tools)
    assert {t.name for t in tools}.isdisjoint({"profile_python", "detect_n_plus_one"})
    assert all(t.rules == ServingRules() for t in measurement_tools(local.agent_settings(base)))


@pytest.mark.parametrize(("url", "pinned"), [
    ("redis://cache.test:6379/0", True),
    ("rediss://cache.test:6380/0?ssl_cert_reqs=none", True),
    # TLS that verifies the name keeps it: the certificate is what binds the address.
    ("rediss://cache.test:6380/0", False),
])
def test_redis_pins_the_address_unless_tls_verifies_the_name(url: str, pinned: bool) -> None:
    import redis

    from tools.caching import RedisTarget, pin_address

    client = redis.Redis.from_url(url)
    pin_address(client, RedisTarget(url=url, display=url, host="cache.test", db=0,
                                    address="127.0.0.1"))
    host = client.connection_pool.connection_kwargs["host"]
    assert host == ("127.0.0.1" if pinned else "cache.test")
