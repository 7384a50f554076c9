"""load_test resolves the target's name once, checks it, and connects only there.

A name resolved twice can answer differently the second time (DNS rebinding):
loopback for the check, somewhere else for the connection. Here the test's
resolver (tests.security.rebinding) answers "rebind.test" with 127.0.0.1 on
the first lookup and with another address, where nothing listens, on every
later one, so a client that looks the name up again sends its requests there
and they fail. Every request must instead be answered by the loopback server,
which counts them.

The Locust workers are other processes: the monkeypatched resolver does not
reach them, and in them "rebind.test" does not resolve at all. They succeed
only by connecting to the address the check pinned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import tools.loadtest
from tests.security.rebinding import rebinding
from tools.loadtest import LoadTestInput, run

#: A name only the test's resolver knows (in this process; Locust workers cannot resolve it).
REBIND = "rebind.test"


class CountingServer:
    """An HTTP/1.1 keep-alive server on 127.0.0.1 that counts the requests it answers.

    Every answer has ``status`` (and ``location`` as its Location header, when given).
    """

    def __init__(self, status: int = 200, location: str | None = None) -> None:
        self.requests = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with lock:
                    owner.requests += 1
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = answer

            def log_message(self, format: str, *args: Any) -> None:
                return None  # quiet: the counts are what the tests read

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_server() -> Iterator[Callable[..., CountingServer]]:
    """Start counting servers: ``counting_server(status=302, location=URL)``."""
    servers: list[CountingServer] = []

    def start(status: int = 200, location: str | None = None) -> CountingServer:
        servers.append(CountingServer(status, location))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """"rebind.test" is 127.0.0.1 on its first lookup, another address on every later one.

    Returns the answers given, one per lookup of that name.
    """
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    return rebinding(monkeypatch, REBIND)


@pytest.mark.parametrize("model", [{"rate": 50, "duration": 1}, {"vus": 2, "duration": 0.5}],
                         ids=["open", "closed"])
async def test_builtin_engine_connects_only_to_the_checked_address(
        counting_server: Callable[..., CountingServer], rebinding_dns: list[str],
        model: dict[str, float]) -> None:
    server = counting_server()
    result = await run(LoadTestInput(url=f"http://{REBIND}:{server.port}/", timeout=2, **model))
    assert result.requests > 20 and result.errors == 0, result.summary
    assert result.status_counts == {"200": result.requests}
    # every request (and the probe) answered by the loopback server
    assert server.requests == result.requests + 1
    assert rebinding_dns == ["127.0.0.1"]  # the check's lookup, and no other


async def test_locust_workers_connect_only_to_the_checked_address(
        counting_server: Callable[..., CountingServer], rebinding_dns: list[str]) -> None:
    server = counting_server()
    result = await run(LoadTestInput(url=f"http://{REBIND}:{server.port}/x", rate=10,
                                     duration=1, timeout=2, engine="locust", workers=1))
    assert result.engine == "locust" and result.requests >= 5, result.summary
    assert result.errors == 0 and result.status_counts == {"200": result.requests}
    assert server.requests == result.requests + 1  # the workers' requests and the probe
    assert rebinding_dns == ["127.0.0.1"]


async def test_without_the_pin_locust_workers_cannot_reach_the_name(
        counting_server: Callable[..., CountingServer], rebinding_dns: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the test above: the workers' success comes from the pin alone."""
    real = tools.loadtest.locust_scenario

    def unpinned(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**real(*args, **kwargs), "pin": None}

    monkeypatch.setattr(tools.loadtest, "locust_scenario", unpinned)
    server = counting_server()
    result = await run(LoadTestInput(url=f"http://{REBIND}:{server.port}/", rate=10,
                                     duration=1, timeout=2, engine="locust", workers=1))
    assert result.requests > 0 and result.errors == result.requests
    assert result.status_counts == {} and result.error_kinds
    assert server.requests == 1  # the probe; no worker request arrived
