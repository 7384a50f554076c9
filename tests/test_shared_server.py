"""Several ``perfagent serve`` processes sharing one PostgreSQL, as an operator runs them.

Real server subprocesses on loopback ports, a real throwaway PostgreSQL
cluster, real ``kill -9`` and a real database shutdown in the middle of a turn.
A turn stays in flight for a few seconds by profiling a script that sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require_module, unavailable
from tests.tools.conftest import _pg_bin, _stop, free_port

REPO = Path(__file__).resolve().parents[1]
#: How long the profiled script sleeps: long enough to act while its turn runs.
SLEEP_S = 6
SLOW_QUESTION = "profile sleepy.py"
QUICK_QUESTION = "what is p99 latency"


class PgServer:
    """A throwaway PostgreSQL cluster that a test can stop and start again on the same port."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir, self.data, self.sockets = bindir, root / "data", root / "sock"
        self.sockets.mkdir()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            if shutil.which("runuser") is None:
                unavailable("running as root without runuser")
            self.prefix = ["runuser", "-u", "postgres", "--"]
            for folder in (root, self.sockets):
                try:
                    shutil.chown(folder, "postgres")
                except LookupError:
                    unavailable("running as root and there is no postgres account")
        subprocess.run([*self.prefix, str(bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                        "-U", "postgres", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=60)
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import psycopg

        self.process = subprocess.Popen(
            [*self.prefix, str(self.bindir / "postgres"), "-D", str(self.data), "-k",
             str(self.sockets), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    unavailable("the throwaway PostgreSQL server did not start")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process, self.data)
            self.process = None


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    require_module("psycopg")
    require_module("psycopg_pool")
    require_module("langgraph.checkpoint.postgres")
    bindir = _pg_bin()
    if bindir is None or not (bindir / "initdb").exists():
        unavailable("PostgreSQL server binaries are not installed")
    # Not under pytest's tmp folder: as root that is private to root.
    root = Path(tempfile.mkdtemp(prefix="perfagent-pg-"))
    server = PgServer(bindir, root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    with pg_server() as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace with a script whose profile takes ``SLEEP_S`` seconds."""
    folder = tmp_path / "workspace"
    folder.mkdir()
    (folder / "sleepy.py").write_text(
        f"import time\n\n\ndef main():\n    time.sleep({SLEEP_S})\n\n\nmain()\n")
    return folder


class Server:
    """One ``perfagent serve`` subprocess and an HTTP client for it."""

    def __init__(self, database: str, workspace: Path, *args: str, max_runs: int = 4,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PERFAGENT_DATABASE_URL": database,
               "PERFAGENT_WORKSPACE": str(workspace), "PERFAGENT_MAX_RUNS": str(max_runs),
               **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--port", str(self.port), *args],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/healthz").status_code == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"perfagent serve did not start: {self.stderr()}")
            time.sleep(0.2)

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read()[-3000:]

    def thread(self) -> str:
        return self.client.post("/v1/threads", json={}).json()["thread_id"]

    def run(self, thread_id: str, message: str) -> httpx.Response:
        return self.client.post(f"/v1/threads/{thread_id}/runs", json={"message": message})

    def history(self, thread_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/threads/{thread_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        self.client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


@pytest.fixture
def servers(postgres: PgServer, workspace: Path) -> Iterator[Any]:
    """``servers(*args, max_runs=N)`` starts a server on the shared database; all stop after."""
    started: list[Server] = []

    def start(*args: str, max_runs: int = 4, database: str | None = None,
              env: dict[str, str] | None = None) -> Server:
        started.append(Server(database or postgres.dsn, workspace, *args, max_runs=max_runs,
                              env=env))
        return started[-1]

    yield start
    for server in started:
        server.close()


class SlowTurn:
    """A streamed turn that profiles the sleeping script; the constructor returns once its
    tool is running, and :meth:`events` drains the rest."""

    def __init__(self, server: Server, thread_id: str) -> None:
        self._stream = server.client.stream(
            "POST", f"/v1/threads/{thread_id}/runs/stream", json={"message": SLOW_QUESTION})
        self.response = self._stream.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self._lines = self.response.iter_lines()
        self.seen = self._until("tool_call")

    def _until(self, wanted: str | None) -> list[tuple[str, dict[str, Any]]]:
        seen: list[tuple[str, dict[str, Any]]] = []
        event = ""
        for line in self._lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                seen.append((event, json.loads(line[6:])))
                if event == wanted or event in ("final", "error"):
                    break
        return seen

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        rest = self._until(None)
        self._stream.__exit__(None, None, None)
        return self.seen + rest


def contents(history: dict[str, Any]) -> list[str]:
    return [m["content"] for m in history["messages"] if m["role"] == "user"]


def test_a_thread_started_on_one_server_continues_on_another(servers: Any) -> None:
    first, second = servers(), servers()
    thread_id = first.thread()
    assert first.run(thread_id, QUICK_QUESTION).status_code == 200
    assert thread_id in [t["thread_id"] for t in second.client.get("/v1/threads").json()["threads"]]
    answered = second.run(thread_id, "and what is p50?")
    assert answered.status_code == 200, answered.text
    for server in (first, second):
        history = server.history(thread_id)
        assert history["thread"]["turns"] == 2
        assert contents(history) == [QUICK_QUESTION, "and what is p50?"]
        assert [t["turn"] for t in history["turns"]] == [0, 1]


@pytest.mark.slow
def test_run_cap_and_thread_claim_hold_across_servers_and_a_kill_frees_them(servers: Any) -> None:
    first, second = servers(max_runs=2), servers(max_runs=2)
    busy, other, third = first.thread(), first.thread(), first.thread()
    assert first.run(busy, QUICK_QUESTION).status_code == 200
    running = SlowTurn(first, busy)
    refused = second.run(busy, "a second turn at once")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "thread_busy"
    also_running = SlowTurn(second, other)
    for server in (first, second):
        assert server.client.get("/healthz").json()["active_runs"] == 2
        capped = server.run(third, QUICK_QUESTION)
        assert capped.status_code == 429 and capped.json()["error"]["code"] == "too_many_runs"

    # kill -9 the server in the middle of the thread's turn: its claims die with it.
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    with contextlib.suppress(httpx.TransportError):
        assert running.events()[-1][0] not in ("final", "error"), "the turn ended before the kill"
    deadline = time.monotonic() + 10
    while (resumed := second.run(busy, "after the crash")).status_code == 409:
        assert time.monotonic() < deadline, "the killed server's claim never went away"
        time.sleep(0.2)
    assert resumed.status_code == 200, resumed.text
    assert also_running.events()[-1][0] == "final"
    history = second.history(busy)
    assert contents(history) == [QUICK_QUESTION, "after the crash"]
    assert history["thread"]["turns"] == 2


@pytest.mark.slow
def test_workers_share_the_thread_claim_and_metrics(servers: Any) -> None:
    server = servers("--workers", "2")
    thread_id = server.thread()
    running = SlowTurn(server, thread_id)
    # Fresh connections are spread over both workers; every one sees the claim.
    for _ in range(6):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            refused = client.post(f"/v1/threads/{thread_id}/runs", json={"message": "again"})
            assert refused.status_code == 409, refused.text
            assert client.get("/healthz").json()["active_runs"] == 1
            metrics = client.get("/metrics").text
            assert "perfagent_runs_in_progress 1.0" in metrics
    assert running.events()[-1][0] == "final"
    assert server.history(thread_id)["thread"]["turns"] == 1


def test_unreachable_database_is_a_clear_error_at_start(tmp_path: Path) -> None:
    require_module("psycopg")
    nowhere = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/postgres"
    env = {**os.environ, "PERFAGENT_DATABASE_URL": nowhere}
    for args in (["serve", "--port", str(free_port())], ["ask", "hi", "--model", "offline"]):
        done = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                              text=True, timeout=60, env=env, cwd=REPO)
        assert done.returncode == 1, done.stderr
        assert "database_unavailable" in done.stderr and "Traceback" not in done.stderr
        assert "secret" not in done.stderr  # the password stays out of messages
        assert "PERFAGENT_DATABASE_URL" in done.stderr  # the hint names the setting
    env.pop("PERFAGENT_DATABASE_URL")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--workers", "2"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert done.returncode == 1 and "workers_need_database" in done.stderr


@pytest.mark.slow
def test_database_outage_fails_the_run_and_the_server_recovers(servers: Any) -> None:
    with pg_server() as database:
        server = servers(database=database.dsn)
        thread_id = server.thread()
        assert server.run(thread_id, QUICK_QUESTION).status_code == 200
        running = SlowTurn(server, thread_id)
        database.stop()
        events = running.events()
        assert events[-1][0] == "error"
        assert events[-1][1]["code"] == "database_unavailable", events[-1]
        down = server.client.get(f"/v1/threads/{thread_id}")
        assert down.status_code == 503 and down.json()["error"]["code"] == "database_unavailable"
        database.start()
        again = server.run(thread_id, "and now?")
        assert again.status_code == 200, again.text
        history = server.history(thread_id)
        assert contents(history) == [QUICK_QUESTION, "and now?"]


def test_threads_belong_to_their_key_across_servers_and_old_tables_gain_owners(
        postgres: PgServer, servers: Any) -> None:
    """With API keys, a key sees only its own threads on every server sharing the database;
    an admin key sees all. A threads table from before owners gets its column, and its
    threads (like the terminal's) belong to no key."""
    import psycopg

    with psycopg.connect(postgres.dsn, autocommit=True) as admin_conn:
        admin_conn.execute("CREATE DATABASE owners")
    database = postgres.dsn.rsplit("/", 1)[0] + "/owners"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE threads (thread_id TEXT PRIMARY KEY, title TEXT NOT NULL "
                     "DEFAULT '', created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE "
                     "PRECISION NOT NULL, turns INTEGER NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO threads VALUES ('old-thread', 'old', 1.0, 1.0, 0)")
    keys = {"PERFAGENT_API_KEYS": "key-alice,key-bob", "PERFAGENT_ADMIN_KEYS": "key-admin"}
    first, second = servers(database=database, env=keys), servers(database=database, env=keys)
    alice, bob, admin = ({"Authorization": f"Bearer key-{who}"} for who in
                         ("alice", "bob", "admin"))

    thread_id = first.client.post("/v1/threads", json={}, headers=alice).json()["thread_id"]
    answered = first.client.post(f"/v1/threads/{thread_id}/runs",
                                 json={"message": QUICK_QUESTION}, headers=alice)
    assert answered.status_code == 200, answered.text

    def ids(server: Server, headers: dict[str, str]) -> set[str]:
        response = server.client.get("/v1/threads", headers=headers)
        assert response.status_code == 200, response.text
        return {t["thread_id"] for t in response.json()["threads"]}

    assert ids(second, alice) == {thread_id}
    assert ids(second, bob) == set()
    assert ids(second, admin) == {thread_id, "old-thread"}
    for target in (thread_id, "old-thread"):
        for method, path, body in (("GET", "", None), ("POST", "/runs", {"message": "hi"})):
            foreign = second.client.request(method, f"/v1/threads/{target}{path}", json=body,
                                             headers=bob)
            missing = second.client.request(method, f"/v1/threads/nope{path}", json=body,
                                            headers=bob)
            assert foreign.status_code == 404, (target, path, foreign.text)
            assert foreign.text.replace(target, "nope") == missing.text
    continued = second.client.post(f"/v1/threads/{thread_id}/runs",
                                   json={"message": "and p50?"}, headers=alice)
    assert continued.status_code == 200, continued.text
    by_admin = second.client.post(f"/v1/threads/{thread_id}/runs",
                                  json={"message": "and p99?"}, headers=admin)
    assert by_admin.status_code == 200, by_admin.text
    assert second.client.get(f"/v1/threads/{thread_id}",
                             headers=alice).json()["thread"]["turns"] == 3
    from agent.threads import owner_id

    with psycopg.connect(database) as conn:
        owners = dict(conn.execute("SELECT thread_id, owner FROM threads").fetchall())
    assert owners == {thread_id: owner_id("key-alice"), "old-thread": None}
