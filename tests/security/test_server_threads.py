"""With API keys, a thread belongs to the key that created it.

Another key can neither list it, read it, continue it (runs, streams, the
OpenAI endpoint's thread header or its transcript mapping, MCP's
``thread_id``) nor learn that it exists or that a turn runs on it: every
answer is the one for a thread that does not exist. An admin key sees all;
a server without keys is unchanged (everyone sees everything).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage

from agent.bench import InstantModel
from agent.context import Settings
from agent.models.base import ModelRequest
from agent.server.app import create_app
from agent.server.config import ServerConfig
from agent.service import AgentService
from tests.serving import served

KEYS = ("key-alice", "key-bob")
ADMIN = "key-admin"
NOWHERE = "no-such-thread"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class HeldModel(InstantModel):
    """Answers at once, except while the test holds the gate closed (then it waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    async def generate(self, request: ModelRequest) -> AIMessage:
        self.entered.set()
        await asyncio.to_thread(self.open.wait, 30)
        return await super().generate(request)


@contextmanager
def keyed_server(*, admin: bool = False, model: Any = None,
                 keys: tuple[str, ...] = KEYS) -> Iterator[httpx.Client]:
    config = ServerConfig(api_keys=keys, admin_keys=(ADMIN,) if admin else ())
    service = AgentService(Settings(), model=model or InstantModel())
    with served(create_app(config, service=service)) as url, \
            httpx.Client(base_url=url, timeout=180) as client:
        yield client


def new_thread(client: httpx.Client, key: str | None) -> str:
    response = client.post("/v1/threads", json={}, headers=auth(key) if key else {})
    assert response.status_code == 200, response.text
    return response.json()["thread_id"]


def listed(client: httpx.Client, key: str | None) -> set[str]:
    response = client.get("/v1/threads", headers=auth(key) if key else {})
    assert response.status_code == 200, response.text
    return {t["thread_id"] for t in response.json()["threads"]}


def attempts(client: httpx.Client, key: str, thread_id: str) -> dict[str, httpx.Response]:
    """Every way to read or continue a thread by its id, as ``key``."""
    run = {"message": "what is slow here?"}
    headers = auth(key)
    return {
        "read": client.get(f"/v1/threads/{thread_id}", headers=headers),
        "run": client.post(f"/v1/threads/{thread_id}/runs", json=run, headers=headers),
        "stream": client.post(f"/v1/threads/{thread_id}/runs/stream", json=run, headers=headers),
        "chat": client.post("/v1/chat/completions", headers={**headers,
                            "X-Perfagent-Thread": thread_id}, json={
            "model": "perfagent", "messages": [{"role": "user", "content": "and now?"}]}),
    }


def assert_like_a_missing_thread(client: httpx.Client, key: str, thread_id: str) -> None:
    """Each attempt on ``thread_id`` answers exactly what the same attempt on a thread that
    does not exist answers: 404 thread_not_found, the same body but for the id."""
    foreign, missing = attempts(client, key, thread_id), attempts(client, key, NOWHERE)
    for kind, response in foreign.items():
        assert response.status_code == 404, (kind, response.status_code, response.text[:300])
        assert response.json()["error"]["code"] == "thread_not_found", kind
        assert response.text.replace(thread_id, NOWHERE) == missing[kind].text, kind
        assert response.headers.get("x-perfagent-thread") is None, kind


def turns_of(client: httpx.Client, key: str, thread_id: str) -> int:
    response = client.get(f"/v1/threads/{thread_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["thread"]["turns"]


def test_a_key_lists_only_its_own_threads() -> None:
    with keyed_server() as client:
        alice, bob = new_thread(client, KEYS[0]), new_thread(client, KEYS[1])
        assert listed(client, KEYS[0]) == {alice}
        assert listed(client, KEYS[1]) == {bob}


def test_a_key_cannot_read_or_continue_another_keys_thread() -> None:
    with keyed_server() as client:
        alice = new_thread(client, KEYS[0])
        ran = client.post(f"/v1/threads/{alice}/runs", json={"message": "secret question"},
                          headers=auth(KEYS[0]))
        assert ran.status_code == 200
        assert_like_a_missing_thread(client, KEYS[1], alice)
        assert turns_of(client, KEYS[0], alice) == 1  # nothing ran on it
        # Its owner still reads and continues it.
        for kind, response in attempts(client, KEYS[0], alice).items():
            assert response.status_code == 200, (kind, response.text[:300])


def test_a_busy_foreign_thread_does_not_say_it_is_busy() -> None:
    model = HeldModel()
    with keyed_server(model=model) as client:
        alice = new_thread(client, KEYS[0])
        model.open.clear()
        running = threading.Thread(target=lambda: client.post(
            f"/v1/threads/{alice}/runs", json={"message": "first"}, headers=auth(KEYS[0])))
        running.start()
        try:
            assert model.entered.wait(180)
            assert_like_a_missing_thread(client, KEYS[1], alice)
            busy = client.post(f"/v1/threads/{alice}/runs", json={"message": "again"},
                               headers=auth(KEYS[0]))
            assert busy.status_code == 409  # its owner is told
        finally:
            model.open.set()
            running.join(30)


def test_a_resent_conversation_does_not_continue_another_keys_thread() -> None:
    """The OpenAI endpoint maps a resent transcript to its thread: the same transcript
    sent with another key starts that key's own thread."""
    with keyed_server() as client:
        question = [{"role": "user", "content": "How do I find an N+1?"}]
        first = client.post("/v1/chat/completions", headers=auth(KEYS[0]),
                            json={"model": "perfagent", "messages": question})
        assert first.status_code == 200, first.text
        alice = first.headers["x-perfagent-thread"]
        follow_up = [*question, {"role": "assistant",
                                 "content": first.json()["choices"][0]["message"]["content"]},
                     {"role": "user", "content": "And what did I ask before?"}]
        bob = client.post("/v1/chat/completions", headers=auth(KEYS[1]),
                          json={"model": "perfagent", "messages": follow_up})
        assert bob.status_code == 200, bob.text
        assert bob.headers["x-perfagent-thread"] != alice
        assert turns_of(client, KEYS[0], alice) == 1
        # Alice's own resend continues her thread, even after Bob sent the same transcript.
        again = client.post("/v1/chat/completions", headers=auth(KEYS[0]),
                            json={"model": "perfagent", "messages": follow_up})
        assert again.headers["x-perfagent-thread"] == alice
        assert turns_of(client, KEYS[0], alice) == 2


@asynccontextmanager
async def mcp_client(url: str, key: str) -> AsyncIterator[Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=auth(key), timeout=180) as http, \
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
        yield client


async def test_mcp_ask_cannot_continue_another_keys_thread() -> None:
    import json

    config = ServerConfig(api_keys=KEYS)
    service = AgentService(Settings(), model=InstantModel())
    with served(create_app(config, service=service)) as url:
        async with mcp_client(url, KEYS[0]) as alice_client:
            first = await alice_client.call_tool("ask_performance_engineer",
                                                 {"question": "what is p95?"})
            assert not first.is_error, first.content
            alice = first.structured_content["thread_id"]  # type: ignore[index]
        async with mcp_client(url, KEYS[1]) as bob_client:
            answers = {}
            for thread_id in (alice, NOWHERE):
                result = await bob_client.call_tool("ask_performance_engineer", {
                    "question": "what did they ask?", "thread_id": thread_id})
                assert result.is_error, result.content
                answers[thread_id] = json.loads(result.content[0].text)  # type: ignore[union-attr]
            assert answers[alice]["code"] == "thread_not_found"
            assert json.dumps(answers[alice]).replace(alice, NOWHERE) == json.dumps(
                answers[NOWHERE])
        async with mcp_client(url, KEYS[0]) as alice_client:
            again = await alice_client.call_tool("ask_performance_engineer", {
                "question": "and p99?", "thread_id": alice})
            assert not again.is_error, again.content
        with httpx.Client(base_url=url) as http:
            assert listed(http, KEYS[1]) == set()
            assert turns_of(http, KEYS[0], alice) == 2


def test_an_admin_key_sees_and_continues_every_thread() -> None:
    with keyed_server(admin=True) as client:
        alice, bob = new_thread(client, KEYS[0]), new_thread(client, KEYS[1])
        mine = new_thread(client, ADMIN)
        assert listed(client, ADMIN) == {alice, bob, mine}
        for kind, response in attempts(client, ADMIN, alice).items():
            assert response.status_code == 200, (kind, response.text[:300])
        assert turns_of(client, KEYS[0], alice) == 3  # run, stream and chat
        assert mine not in listed(client, KEYS[0])


async def test_terminal_threads_have_no_owner_and_only_an_admin_sees_them(
        isolated_state: Path) -> None:
    from agent.run import new_thread_id, run_turn

    cli_thread = new_thread_id()
    await run_turn("what is p95?", thread_id=cli_thread, settings=Settings(),
                   model=InstantModel())
    with keyed_server(admin=True) as client:
        assert cli_thread not in listed(client, KEYS[0])
        assert_like_a_missing_thread(client, KEYS[0], cli_thread)
        assert cli_thread in listed(client, ADMIN)
        assert turns_of(client, ADMIN, cli_thread) == 1
    with served(create_app(ServerConfig())) as url, httpx.Client(base_url=url) as client:
        assert cli_thread in listed(client, None)


def test_without_keys_everyone_sees_every_thread_as_before() -> None:
    service = AgentService(Settings(), model=InstantModel())
    with served(create_app(ServerConfig(), service=service)) as url, \
            httpx.Client(base_url=url, timeout=180) as client:
        first, second = new_thread(client, None), new_thread(client, None)
        assert listed(client, None) == {first, second}
        # A key sent to a server without keys changes nothing.
        assert listed(client, "anything") == {first, second}
        ran = client.post(f"/v1/threads/{first}/runs", json={"message": "hi"},
                          headers=auth("anything"))
        assert ran.status_code == 200


def test_the_index_stores_a_digest_of_the_key_never_the_key(isolated_state: Path) -> None:
    from agent.threads import owner_id

    with keyed_server() as client:
        alice = new_thread(client, KEYS[0])
        client.post(f"/v1/threads/{alice}/runs", json={"message": "hi"}, headers=auth(KEYS[0]))
        listed_row = client.get("/v1/threads", headers=auth(KEYS[0])).json()["threads"][0]
        assert "owner" not in listed_row  # nothing about owners is served
    path = isolated_state / "thread_index.sqlite"
    with sqlite3.connect(path) as db:
        owner = db.execute("SELECT owner FROM threads WHERE thread_id = ?", (alice,)).fetchone()
    assert owner == (owner_id(KEYS[0]),) and KEYS[0] not in owner[0]
    stored = b"".join(p.read_bytes() for p in isolated_state.rglob("*") if p.is_file())
    assert KEYS[0].encode() not in stored


def test_an_index_from_before_owners_gets_the_column(tmp_path: Path) -> None:
    """A SQLite index written by an earlier version: its threads become owner-less."""
    from agent.threads import NOBODY, SqliteThreadIndex, Viewer

    path = tmp_path / "old" / "thread_index.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE threads (thread_id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '',
                created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
                turns INTEGER NOT NULL DEFAULT 0);
            INSERT INTO threads VALUES ('old-thread', 'old', 1.0, 1.0, 0);""")
    index = SqliteThreadIndex(path)
    SqliteThreadIndex(path)  # opening it again is harmless
    old = index.get("old-thread")
    assert old is not None and old.owner is None
    alice = Viewer.for_key(KEYS[0])
    assert [t.thread_id for t in index.list(viewer=alice)] == []
    assert index.list(viewer=NOBODY) == []
    index.ensure("new-thread", "new", owner=alice.owner)
    assert [t.thread_id for t in index.list(viewer=alice)] == ["new-thread"]
    assert {t.thread_id for t in index.list()} == {"old-thread", "new-thread"}


def test_keys_from_the_environment_and_admin_keys_alone_are_keys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_API_KEYS", raising=False)
    monkeypatch.setenv("PERFAGENT_ADMIN_KEYS", ADMIN)
    config = ServerConfig.from_env(host="0.0.0.0")  # an admin key is a key
    assert config.admin_keys == (ADMIN,) and config.api_keys == ()
    with served(create_app(config)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/v1/threads").status_code == 401
        assert client.get("/v1/threads", headers=auth(ADMIN)).status_code == 200
