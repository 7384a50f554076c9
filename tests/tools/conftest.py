"""Real targets for the measurement-tool tests, all on loopback and bounded in time.

* ``http_target``: starts ``http_target.py`` (fast, fixed delay, periodic stall)
  in its own process and returns its URL;
* ``workspace``: a temp folder set as ``PERFAGENT_WORKSPACE``;
* ``pg_dsn``: a throwaway PostgreSQL cluster (initdb in a temp folder, a free
  loopback port), only where the binaries and psycopg are installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_module, unavailable

HERE = Path(__file__).parent


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    """A loopback port with no listener: connecting to it is refused."""
    return free_port()


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder that the tools accept as the workspace."""
    monkeypatch.setenv("PERFAGENT_WORKSPACE", str(tmp_path))
    return tmp_path


@pytest.fixture
def http_target() -> Iterator[Callable[..., str]]:
    """Start test HTTP servers: ``http_target("delay", "--delay", "0.02") -> URL``."""
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str, *args: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "http_target.py"), mode, *args],
            stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 10
        line = ""
        while time.monotonic() < deadline and not line:
            line = proc.stdout.readline().strip()
        assert line.isdigit(), f"test server did not start: {line!r}"
        return f"http://127.0.0.1:{line}/"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=5)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL server on a loopback port; skipped where unavailable."""
    require_module("psycopg")
    bindir = _pg_bin()
    if bindir is None or not (bindir / "initdb").exists():
        unavailable("PostgreSQL server binaries are not installed")
    # Not under pytest's tmp folder: as root that is private, and the server
    # then runs as the postgres account, which must reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="perfagent-pg-"))
    try:
        yield from _pg_cluster(bindir, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _pg_cluster(bindir: Path, root: Path) -> Iterator[str]:
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    # initdb and postgres refuse to run as root: use the postgres account then.
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            unavailable("running as root without runuser")
        prefix = ["runuser", "-u", "postgres", "--"]
        try:
            shutil.chown(root, "postgres")
            shutil.chown(sockets, "postgres")
        except LookupError:
            unavailable("running as root and there is no postgres account")
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    server = subprocess.Popen(
        [*prefix, str(bindir / "postgres"), "-D", str(data), "-k", str(sockets), "-p",
         str(port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    import psycopg

    deadline = time.monotonic() + 20
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or server.poll() is not None:
                _stop(server, data)
                unavailable("the throwaway PostgreSQL server did not start")
            time.sleep(0.2)
    try:
        yield dsn
    finally:
        _stop(server, data)


def _stop(server: subprocess.Popen[bytes], data: Path) -> None:
    """Shut our cluster down fast: SIGINT to its postmaster, SIGKILL if it lingers.

    The postmaster's pid comes from its pid file, because runuser (used when
    running as root) does not pass SIGINT on.
    """
    postmaster: int | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
    for sig in (signal.SIGINT, signal.SIGKILL):
        if postmaster is not None:
            with contextlib.suppress(OSError):
                os.kill(postmaster, sig)
        try:
            server.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            server.kill()
