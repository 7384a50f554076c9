"""Knowledge for grounding answers in named sources: playbooks and the user's documents.

The shipped playbooks (``prompts/knowledge/*.md``) and whatever the user
ingests (``perfagent kb ingest``) are chunked by heading, embedded offline
(all-MiniLM-L6-v2, int8 ONNX, no torch, no download) into chromadb, and
ranked by vector similarity, BM25 keywords, or both fused (the default, chosen
on a labeled question set). Every passage carries its source and heading so an
answer can name where a figure or pattern came from.

Importing this package is cheap: chromadb and onnxruntime load on the first
search (or on :func:`warm_up`), never at import, so ``perfagent --help`` and
``import agent.graph`` stay fast.

Modules: :mod:`.chunking` (passages by heading), :mod:`.keyword` (BM25),
:mod:`.embedding` (the offline chromadb embedding function), :mod:`.store`
(collections, ingest, rebuild), :mod:`.retrieval` (the three modes and fusion),
:mod:`.evaluation` (recall@k and MRR on a labeled question set).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.knowledge.chunking import Passage, chunk_file, chunk_markdown
from agent.knowledge.errors import EmbeddingModelMissing, KnowledgeError, StoreUnavailable
from agent.knowledge.keyword import KeywordIndex, words

if TYPE_CHECKING:
    from agent.knowledge.retrieval import Mode, Retriever
    from agent.knowledge.store import KnowledgeStore

__all__ = [
    "EmbeddingModelMissing", "KeywordIndex", "KnowledgeError", "Passage", "StoreUnavailable",
    "chunk_file", "chunk_markdown", "get_store", "retriever", "search", "warm_up", "words",
]

_retrievers: dict[tuple[str, str | None, int], Retriever] = {}
_lock = threading.Lock()


def retriever(state_dir: Path | None = None) -> Retriever:
    """The process's retriever for a state directory (default: the settings' one).

    One per store location, so tests (a state directory each) and a server
    (one for all its threads) both get a store opened once.
    """
    import os

    from agent.context import default_state_dir

    state = (state_dir or default_state_dir()).expanduser().resolve()
    host = os.environ.get("CHROMA_HOST") or None
    port = os.environ.get("CHROMA_PORT") or "8000"
    key = (str(state), host, int(port) if port.isdigit() else 0)
    with _lock:
        found = _retrievers.get(key)
        if found is None:
            from agent.knowledge.retrieval import Retriever
            from agent.knowledge.store import KnowledgeStore

            found = _retrievers[key] = Retriever(KnowledgeStore.from_environment(state))
        return found


def get_store(state_dir: Path | None = None) -> KnowledgeStore:
    """The knowledge store behind :func:`search` for a state directory."""
    return retriever(state_dir).store


def forget_stores() -> None:
    """Close every open store in this process (after a rebuild elsewhere, or in tests)."""
    with _lock:
        for found in _retrievers.values():
            found.store.close()
        _retrievers.clear()


def search(query: str, k: int = 3, mode: Mode | None = None, *,
           state_dir: Path | None = None) -> list[dict[str, Any]]:
    """Top ``k`` passages for ``query`` as dicts: source, heading, text, score, tags, kind.

    ``mode`` is ``vector``, ``keyword`` or ``hybrid``; by default the measured
    best (``PERFAGENT_KB_MODE`` overrides it). ``state_dir`` defaults to
    ``PERFAGENT_STATE_DIR`` or the user's data directory, as ``Settings`` does.
    Raises :class:`KnowledgeError` (with a code and a hint) when the store or
    the model is unusable.
    """
    from agent.telemetry import active_metrics

    metrics = active_metrics()
    started = time.perf_counter()
    hits = [hit.to_dict() for hit in retriever(state_dir).search(query, k, mode)]
    if metrics is not None:
        metrics.kb_seconds.observe(time.perf_counter() - started)
    return hits


def warm_up(state_dir: Path | None = None) -> threading.Thread:
    """Open the store and load the model in a background thread, off the hot path.

    A long-lived process (chat, server, MCP) calls this at start so its first
    question does not pay for the chromadb import and the model load. Errors
    are left for the first real search to report.
    """

    def run() -> None:
        # Errors are left for the first search that needs the store to report.
        with contextlib.suppress(Exception):
            retriever(state_dir).ready()

    thread = threading.Thread(target=run, name="knowledge-warm-up", daemon=True)
    thread.start()
    return thread
