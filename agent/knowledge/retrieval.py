"""Ranking passages for a question: vector, keyword (BM25), or both fused.

- ``vector``: cosine similarity of the question's embedding to the passages'
  (chromadb's HNSW index over both collections);
- ``keyword``: BM25 over the same passages, held in memory, built once per
  process and rebuilt when either collection's generation changes;
- ``hybrid``: weighted reciprocal rank fusion (RRF) of the two rankings: each
  passage scores ``sum(weight / (RRF_K + rank))`` over the lists it appears in.
  RRF needs no calibration between cosine and BM25 scores, which live on
  unrelated scales; a min-max weighted sum of the scores did no better.

Every mode then caps how many of the top ``k`` passages come from one file
(:func:`per_source_cap`), so a second source gets a say.

The default mode is chosen by measurement on the labeled question set
(``tests/data/kb_questions.yaml``, figures in ``tests/bench/knowledge.py``);
see :data:`DEFAULT_MODE`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

from agent.knowledge.chunking import Passage
from agent.knowledge.errors import KnowledgeError
from agent.knowledge.keyword import KeywordIndex
from agent.knowledge.store import KnowledgeStore

Mode = Literal["vector", "keyword", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)
#: Chosen on the labeled set (101 questions; tests/bench/knowledge.py prints the figures):
#: hybrid recall@3 0.92 and MRR 0.90, against 0.82 / 0.82 for vector and 0.89 / 0.88 for
#: keyword alone; on the offline engine's terse queries hybrid finds a right playbook in
#: the top 3 every time (vector 0.70, keyword 0.96).
DEFAULT_MODE: Mode = "hybrid"
#: The RRF constant from Cormack et al. (2009); it damps the weight of the very top ranks.
RRF_K = 60
#: The vector ranking's weight in the fusion (the keyword ranking's is 1). Below 1 the
#: keyword ranking wins ties: on terse jargon queries such as the offline engine's
#: "error span" or "cpu hotspot" the small embedding model is weakest (vector recall@3
#: 0.57 there against 0.86 for BM25), while on full questions every weight from 0.6
#: to 1.0 scored within one question of the others.
VECTOR_WEIGHT = 0.8
#: How deep each ranking is read before fusion (50 beat 10 and 30 on the labeled set).
CANDIDATES = 50
#: Seconds between checks whether another process changed the collections.
REFRESH_INTERVAL = 1.0


def default_mode() -> Mode:
    """``PERFAGENT_KB_MODE`` if set to a valid mode, else :data:`DEFAULT_MODE`."""
    chosen = os.environ.get("PERFAGENT_KB_MODE", "").strip().lower()
    if not chosen:
        return DEFAULT_MODE
    if chosen not in MODES:
        raise KnowledgeError("invalid_setting", f"PERFAGENT_KB_MODE={chosen!r} is not a mode",
                             f"use one of: {', '.join(MODES)}")
    return chosen  # type: ignore[return-value]


@dataclass(frozen=True)
class Hit:
    """One ranked passage and the score of the mode that ranked it."""

    score: float
    passage: Passage

    def to_dict(self) -> dict[str, Any]:
        p = self.passage
        return {"source": p.source, "heading": p.heading, "text": p.text,
                "score": round(self.score, 4), "tags": list(p.tags), "kind": p.kind}


def per_source_cap(k: int) -> int:
    """At most this many of the top ``k`` passages may come from one file: 2 of 3, 3 of 5.

    Three passages of one playbook answer one reading of a question; a second
    source covers another (on the labeled set recall@3 rose from 0.906 to 0.921).
    """
    return max(2, (k + 1) // 2)


def diversify(hits: list[Hit], k: int) -> list[Hit]:
    """The first ``k`` hits, skipping those past :func:`per_source_cap` for their file."""
    cap = per_source_cap(k)
    taken: dict[str, int] = {}
    out: list[Hit] = []
    for hit in hits:
        key = hit.passage.path or hit.passage.source
        if taken.get(key, 0) < cap:
            taken[key] = taken.get(key, 0) + 1
            out.append(hit)
            if len(out) == k:
                break
    return out


def fuse(rankings: list[tuple[float, list[Passage]]], k: int, rrf_k: int = RRF_K) -> list[Hit]:
    """Weighted reciprocal rank fusion of (weight, ranking) pairs; passages match by id."""
    scores: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for weight, ranking in rankings:
        for rank, passage in enumerate(ranking, start=1):
            scores[passage.id] = scores.get(passage.id, 0.0) + weight / (rrf_k + rank)
            first.setdefault(passage.id, passage)
    best = sorted(scores.items(), key=lambda item: -item[1])[:k]
    return [Hit(score, first[pid]) for pid, score in best]


class Retriever:
    """Search over one :class:`KnowledgeStore`, with its keyword index kept in step."""

    def __init__(self, store: KnowledgeStore) -> None:
        self.store = store
        self._keyword: KeywordIndex | None = None
        self._generation: tuple[str, str] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def ready(self) -> None:
        """Open the store, bring the playbooks up to date and load the model and the index.

        The first call in a process costs the chromadb import, the model load and,
        in a new store, embedding the playbooks; later calls cost nothing.
        """
        self.store.sync_playbooks()
        self.keyword_index()
        from agent.knowledge.embedding import encoder

        encoder()

    def keyword_index(self) -> KeywordIndex:
        """The BM25 index over every stored passage, rebuilt when the store changed."""
        with self._lock:
            now = time.monotonic()
            if self._keyword is not None and now - self._checked < REFRESH_INTERVAL:
                return self._keyword
            generation = self.store.generation()
            self._checked = now
            if self._keyword is None or generation != self._generation:
                self._keyword = KeywordIndex(self.store.passages())
                self._generation = generation
            return self._keyword

    def vector(self, query: str, n: int) -> list[Hit]:
        from agent.knowledge.embedding import encoder

        nearest = self.store.nearest(encoder().encode([query])[0], n)
        known = self.keyword_index().by_id
        missing = [i for _, i in nearest if i not in known]
        fetched = self.store.fetch(missing) if missing else {}
        return [Hit(score, known.get(i) or fetched[i]) for score, i in nearest
                if i in known or i in fetched]

    def keyword(self, query: str, n: int) -> list[Hit]:
        return [Hit(score, p) for score, p in self.keyword_index().search(query, n)]

    def search(self, query: str, k: int = 3, mode: Mode | None = None) -> list[Hit]:
        """The ``k`` best passages for ``query`` in ``mode`` (default :func:`default_mode`)."""
        mode = mode or default_mode()
        if mode not in MODES:
            raise KnowledgeError("invalid_arguments", f"unknown search mode {mode!r}",
                                 f"use one of: {', '.join(MODES)}")
        if not query.strip() or k <= 0:
            return []
        self.store.sync_playbooks()
        depth = max(CANDIDATES, 3 * k)
        if mode == "vector":
            ranked = self.vector(query, depth)
        elif mode == "keyword":
            ranked = self.keyword(query, depth)
        else:
            ranked = fuse([(VECTOR_WEIGHT, [h.passage for h in self.vector(query, depth)]),
                           (1.0, [h.passage for h in self.keyword(query, depth)])], 2 * depth)
        return diversify(ranked, k)
