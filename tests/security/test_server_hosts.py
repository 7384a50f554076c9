"""The server answers only its own host names, and refuses changes asked by foreign web pages.

DNS rebinding: a web page on ``attacker.example`` points that name at 127.0.0.1
and makes the user's browser call the loopback server, which (without keys)
would create threads and run turns, profiling scripts and reading files. The
browser still names ``attacker.example`` in the Host header: every route must
answer such a request with 421 before doing anything. A page on another
origin that posts to the server is named by the browser in ``Origin``: every
route that changes something answers it with 403.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.bench import InstantModel
from agent.context import Settings
from agent.server.app import create_app
from agent.server.config import ServerConfig
from agent.service import AgentService
from tests.conftest import REPO
from tests.serving import free_port, served

ATTACKER = "attacker.example"
MCP_HEADERS = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "host-test", "version": "0"}}}


class CountingModel(InstantModel):
    """Answers at once, and counts the turns that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def generate(self, request: Any) -> Any:
        self.calls += 1
        return await super().generate(request)


@contextmanager
def server(config: ServerConfig | None = None) -> Iterator[tuple[str, int, CountingModel]]:
    """The app with an instant model on a loopback port: (base URL, port, model)."""
    model = CountingModel()
    service = AgentService(Settings(), model=model)
    with served(create_app(config or ServerConfig(), service=service)) as url:
        yield url, int(url.rsplit(":", 1)[1]), model


def route_requests(thread_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """One request of each kind the server answers: (method, path, httpx keyword arguments)."""
    run = {"json": {"message": "Why is examples/orders_workload.py slow?"}}
    return [
        ("GET", "/healthz", {}),
        ("GET", "/metrics", {}),
        ("GET", "/", {}),
        ("GET", "/static/app.js", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/v1/threads", {}),
        ("POST", "/v1/threads", {"json": {}}),
        ("GET", f"/v1/threads/{thread_id}", {}),
        ("POST", f"/v1/threads/{thread_id}/runs", run),
        ("POST", f"/v1/threads/{thread_id}/runs/stream", run),
        ("GET", "/v1/models", {}),
        ("POST", "/v1/chat/completions", {"json": {
            "model": "perfagent", "messages": [{"role": "user", "content": "profile it"}]}}),
        ("POST", "/mcp", {"json": INITIALIZE, "headers": MCP_HEADERS}),
    ]


def mcp_result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC result of an MCP answer, sent as JSON or as one SSE event."""
    if response.headers["content-type"].startswith("application/json"):
        return response.json()["result"]
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return json.loads(data[-1])["result"]


def assert_refused(response: httpx.Response, status: int, code: str, hint_names: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert hint_names in error["hint"]


def foreign_hosts(port: int) -> list[str]:
    return [ATTACKER, f"{ATTACKER}:{port}", f"127.0.0.1.{ATTACKER}:{port}",
            f"localhost:{port}.{ATTACKER}", f"127.0.0.1:{port}@{ATTACKER}",
            "localhost",  # no port means port 80, which is not this server's
            f"127.0.0.1:{port + 1}", f"localhost.:{port}", ""]


def test_a_foreign_host_is_421_on_every_route_and_nothing_runs() -> None:
    with server() as (url, port, model), httpx.Client(base_url=url, timeout=180) as client:
        thread_id = client.post("/v1/threads", json={}).json()["thread_id"]
        for method, path, kwargs in route_requests(thread_id):
            for host in (ATTACKER, f"{ATTACKER}:{port}"):
                headers = {**kwargs.get("headers", {}), "Host": host}
                response = client.request(method, path, **{**kwargs, "headers": headers})
                assert_refused(response, 421, "host_not_allowed", "--allowed-host")
        # Nothing the attacker sent was acted on: no turn, no new thread.
        assert model.calls == 0
        listed = client.get("/v1/threads").json()["threads"]
        assert [t["thread_id"] for t in listed] == [thread_id] and listed[0]["turns"] == 0


def test_look_alike_hosts_are_refused_and_own_names_answered() -> None:
    with server() as (url, port, _), httpx.Client(base_url=url, timeout=30) as client:
        for host in foreign_hosts(port):
            response = client.get("/v1/threads", headers={"Host": host})
            assert_refused(response, 421, "host_not_allowed", "--allowed-host")
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}",
                     f"[::1]:{port}"):
            assert client.get("/v1/threads", headers={"Host": host}).status_code == 200, host
            assert client.post("/v1/threads", json={}, headers={"Host": host}).status_code == 200


def test_allowed_hosts_from_the_option_and_the_environment_are_answered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFAGENT_SERVER_HOSTS", "other.example:9000")
    config = ServerConfig.from_env(allowed_hosts=("perf.example.com",))
    with server(config) as (url, port, model), httpx.Client(base_url=url, timeout=180) as client:
        for host in ("perf.example.com", "perf.example.com:443", f"perf.example.com:{port}",
                     "other.example:9000", f"127.0.0.1:{port}"):
            thread = client.post("/v1/threads", json={}, headers={"Host": host})
            assert thread.status_code == 200, host
        ran = client.post(f"/v1/threads/{thread.json()['thread_id']}/runs",
                          json={"message": "hello"}, headers={"Host": "perf.example.com"})
        assert ran.status_code == 200 and model.calls >= 1
        for host in ("other.example", "other.example:9001", "sub.perf.example.com", ATTACKER):
            assert_refused(client.get("/healthz", headers={"Host": host}), 421,
                           "host_not_allowed", "--allowed-host")


def test_the_bound_address_is_an_own_name_but_a_wildcard_is_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with server(ServerConfig(host="127.0.0.2")) as (url, port, _), \
            httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz", headers={"Host": f"127.0.0.2:{port}"}).status_code == 200
    monkeypatch.setenv("PERFAGENT_API_KEYS", "k")
    public = ServerConfig.from_env(host="0.0.0.0")
    with server(public) as (url, port, _), httpx.Client(base_url=url, timeout=30) as client:
        assert_refused(client.get("/healthz", headers={"Host": f"0.0.0.0:{port}"}), 421,
                       "host_not_allowed", "--allowed-host")
        assert client.get("/healthz", headers={"Host": f"localhost:{port}"}).status_code == 200


FOREIGN_ORIGINS = ["https://attacker.example", "null", "http://localhost:9999"]


def test_a_foreign_origin_cannot_change_anything() -> None:
    """A page elsewhere (or on another local port) posts to the server: 403, nothing runs."""
    with server() as (url, _, model), httpx.Client(base_url=url, timeout=180) as client:
        thread_id = client.post("/v1/threads", json={}).json()["thread_id"]
        changing = [r for r in route_requests(thread_id) if r[0] != "GET"]
        assert {path for _, path, _ in changing} >= {"/v1/threads", "/v1/chat/completions", "/mcp"}
        for origin in FOREIGN_ORIGINS:
            for method, path, kwargs in changing:
                headers = {**kwargs.get("headers", {}), "Origin": origin}
                response = client.request(method, path, **{**kwargs, "headers": headers})
                assert_refused(response, 403, "origin_not_allowed", "PERFAGENT_CORS_ORIGINS")
        assert model.calls == 0
        assert len(client.get("/v1/threads").json()["threads"]) == 1
        # Reading is not refused (the browser keeps a foreign page from reading the answer).
        assert client.get("/v1/threads", headers={"Origin": FOREIGN_ORIGINS[0]}).status_code == 200


def test_own_origin_configured_origins_and_no_origin_pass() -> None:
    config = ServerConfig(cors_origins=("http://ide.local:3000",))
    with server(config) as (url, port, model), httpx.Client(base_url=url, timeout=180) as client:
        for headers in ({}, {"Origin": url}, {"Origin": "http://ide.local:3000"},
                        {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}):
            created = client.post("/v1/threads", json={}, headers=headers)
            assert created.status_code == 200, (headers, created.text)
            thread_id = created.json()["thread_id"]
            ran = client.post(f"/v1/threads/{thread_id}/runs", json={"message": "hi"},
                              headers=headers)
            assert ran.status_code == 200, ran.text
            mcp = client.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers})
            assert mcp.status_code == 200, mcp.text
            assert mcp_result(mcp)["serverInfo"]["name"] == "perfagent"
        assert model.calls >= 4
        # The configured origin still gets its CORS answer.
        preflight = client.options("/v1/threads", headers={
            "Origin": "http://ide.local:3000", "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "http://ide.local:3000"


def test_the_schema_documents_421_and_403() -> None:
    schema = create_app(ServerConfig()).openapi()
    for path, method in (("/v1/threads", "post"), ("/v1/threads/{thread_id}/runs", "post"),
                         ("/v1/chat/completions", "post"), ("/healthz", "get")):
        responses = schema["paths"][path][method]["responses"]
        for status in ("421", "403"):
            assert status in responses, (path, status)
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse")


async def test_mcp_sdk_check_uses_the_same_hosts_without_the_app_guard() -> None:
    """mcp_asgi mounted on its own (no HostGuard in front): the SDK's own check answers
    the allowed host names and refuses others and foreign origins."""
    from fastapi import FastAPI

    from agent.server.guards import HostPolicy
    from agent.server.mcp import MCP_PATH, mcp_asgi

    service = AgentService(Settings(), model=InstantModel())
    endpoint, sessions = mcp_asgi(service, hosts=HostPolicy(allowed=("perf.example.com",)))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        async with service, sessions:
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_route(MCP_PATH, endpoint, methods=["GET", "POST", "DELETE"])
    with served(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        allowed = client.post(MCP_PATH, json=INITIALIZE,
                              headers={**MCP_HEADERS, "Host": "perf.example.com"})
        assert allowed.status_code == 200, allowed.text
        own_page = client.post(MCP_PATH, json=INITIALIZE, headers={
            **MCP_HEADERS, "Host": "perf.example.com", "Origin": "https://perf.example.com"})
        assert own_page.status_code == 200, own_page.text
        refused = client.post(MCP_PATH, json=INITIALIZE, headers={**MCP_HEADERS, "Host": ATTACKER})
        assert refused.status_code == 421
        foreign = client.post(MCP_PATH, json=INITIALIZE,
                              headers={**MCP_HEADERS, "Origin": "https://attacker.example"})
        assert foreign.status_code == 403


# --------------------------------------------------------------------------- the real commands


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFAGENT_")}
    keep = ("PERFAGENT_STATE_DIR", "PERFAGENT_EMBEDDING_CACHE")
    return {**env, **{k: os.environ[k] for k in keep if k in os.environ}, **extra}


@contextmanager
def command(args: list[str], port: int, probe: str, **env: str) -> Iterator[str]:
    """A perfagent server command on ``port``, until the block ends; yields its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *args], cwd=REPO,
                            env=_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                httpx.get(f"{url}{probe}", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_perfagent_serve_takes_allowed_hosts_from_its_option(tmp_path: Path) -> None:
    port = free_port()
    args = ["serve", "--port", str(port), "--allowed-host", "perf.example.com",
            "--allowed-host", "203.0.113.7:8443"]
    with command(args, port, "/healthz", PERFAGENT_SERVER_HOSTS="env.example") as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        for host in ("perf.example.com", "203.0.113.7:8443", "env.example", f"localhost:{port}"):
            assert client.get("/v1/threads", headers={"Host": host}).status_code == 200, host
        for host in (ATTACKER, "203.0.113.7:8444"):
            assert_refused(client.get("/v1/threads", headers={"Host": host}), 421,
                           "host_not_allowed", "--allowed-host")
        assert_refused(client.post("/v1/threads", json={}, headers={"Origin": "null"}), 403,
                       "origin_not_allowed", "PERFAGENT_CORS_ORIGINS")


def test_perfagent_serve_refuses_a_malformed_allowed_host() -> None:
    done = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--port",
                           str(free_port()), "--allowed-host", "https://perf.example.com/"],
                          capture_output=True, text=True, timeout=180, cwd=REPO, env=_env())
    assert done.returncode == 1, done.stderr
    assert "invalid_setting" in done.stderr and "Traceback" not in done.stderr


def test_perfagent_mcp_http_answers_only_its_hosts() -> None:
    port = free_port()
    args = ["mcp", "--http", "--port", str(port), "--allowed-host", "perf.example.com"]
    with command(args, port, "/mcp") as url, httpx.Client(base_url=url, timeout=30) as client:
        refused = client.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Host": ATTACKER})
        assert_refused(refused, 421, "host_not_allowed", "--allowed-host")
        page = client.post("/mcp", json=INITIALIZE,
                           headers={**MCP_HEADERS, "Origin": "http://localhost:9999"})
        assert_refused(page, 403, "origin_not_allowed", "PERFAGENT_CORS_ORIGINS")
        for host in ("perf.example.com", f"127.0.0.1:{port}"):
            answered = client.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Host": host})
            assert answered.status_code == 200, (host, answered.text)
            assert mcp_result(answered)["serverInfo"]["name"] == "perfagent"
