"""Benchmark: the knowledge store's quality, ingest rate, embedding throughput and latency.

Prints figures measured in one run (nothing here passes or fails):

- retrieval quality per mode (vector, keyword, hybrid) on the labeled sets
  ``tests/data/kb_questions.yaml`` (developer questions) and
  ``tests/data/kb_finding_queries.yaml`` (the offline engine's terse lookups):
  recall@3, hit@3 and MRR, over a store of the shipped playbooks;
- embedding throughput (texts/s, tokens/s) with dynamic padding (batches sorted
  by length, padded to their longest) against fixed padding to 256 tokens;
- ingest rate (chunks/s, end to end: read, chunk, embed, write) of a synthetic
  5,000-chunk corpus, and of re-ingesting it unchanged;
- query latency p50/p95/p99 over 1,000 queries per mode on that collection
  (plus the playbooks), as ``knowledge_search`` and ``prepare`` call it;
- the first search in a fresh process, step by step (chromadb import and open,
  model load, BM25 build, first query), with and without ``warm_up``.

The synthetic corpus is made from the playbooks' sections: each copy names
another service, team and region, rescales the numbers and rotates the
paragraphs, so every chunk is distinct text on a realistic topic.

Run: ``python tests/bench/knowledge.py [--chunks 5000] [--queries 1000]``
(about 5 minutes on 2 cores, most of it embedding the corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SERVICES = ["orders", "billing", "search", "checkout", "catalog", "inventory", "payments",
            "shipping", "accounts", "pricing", "reviews", "notifications", "ledger", "auth"]
TEAMS = ["core", "platform", "growth", "storefront", "data", "sre", "mobile", "partners"]
REGIONS = ["eu-west-1", "us-east-1", "ap-southeast-2", "eu-central-1", "us-west-2"]
_NUMBER = re.compile(r"\b(\d{2,5})\b")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def synthetic_corpus(folder: Path, chunks: int, seed: int = 7) -> int:
    """Write Markdown runbooks with about ``chunks`` sections in total; returns the files."""
    from agent.knowledge.chunking import chunk_markdown
    from agent.knowledge.store import playbook_files

    sections = [p for f in playbook_files() for p in
                chunk_markdown(f.name, f.read_text(encoding="utf-8"))]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = files = 0
    while written < chunks:
        service, team, region = rng.choice(SERVICES), rng.choice(TEAMS), rng.choice(REGIONS)
        title = f"# {service.title()} service runbook ({team}, {region})"
        parts: list[str] = []
        for _ in range(20):
            passage = rng.choice(sections)
            paragraphs = passage.text.split("\n\n")
            turn = rng.randrange(len(paragraphs))
            body = "\n\n".join(paragraphs[turn:] + paragraphs[:turn])
            factor = rng.choice([0.5, 2, 3, 5, 10])
            body = _NUMBER.sub(lambda m, f=factor: str(int(int(m.group(1)) * f)), body)
            body = body.replace("orders", service).replace("authors", f"{service} items")
            topic = passage.heading.split(" / ")[-1]
            parts.append(f"## {topic} for {service} in {region}\n\n"
                         f"Incident notes of the {team} team, {service} service.\n\n{body}\n")
        # Trim the last file so the corpus has exactly ``chunks`` chunks.
        while parts:
            text = "\n".join([title, "", *parts])
            count = len(chunk_markdown("x.md", text))
            if written + count <= chunks:
                break
            parts.pop()
        if not parts:
            break
        (folder / f"runbook-{files:04d}-{service}.md").write_text(text, encoding="utf-8")
        written += count
        files += 1
    return files


def quality(state: Path) -> list[dict[str, Any]]:
    """Recall@3, hit@3 and MRR per mode and labeled set, on the shipped playbooks."""
    from agent import knowledge
    from agent.knowledge.evaluation import evaluate, load_questions

    retriever = knowledge.retriever(state)
    retriever.ready()
    rows = []
    for name in ("kb_questions.yaml", "kb_finding_queries.yaml"):
        questions = load_questions(REPO / "tests" / "data" / name)
        for mode in ("vector", "keyword", "hybrid"):
            scores = evaluate(lambda q, n, m=mode: retriever.search(q, n, m), questions,
                              mode=mode)
            rows.append({"set": name, **scores.to_dict()})
    return rows


def embedding_throughput(texts: list[str]) -> dict[str, float]:
    from agent.knowledge.embedding import BATCH_SIZE, MAX_SEQUENCE, encoder

    enc = encoder()
    tokens = sum(len(ids) for ids in enc.token_ids(texts))
    enc.encode(texts[:16])  # warm the session
    timings = {}
    for label, pad in (("dynamic", None), ("fixed", MAX_SEQUENCE)):
        started = time.perf_counter()
        enc.encode(texts, pad_to=pad)
        timings[label] = time.perf_counter() - started
    return {"texts": len(texts), "mean_tokens": tokens / len(texts), "batch_size": BATCH_SIZE,
            "dynamic_texts_per_s": len(texts) / timings["dynamic"],
            "dynamic_tokens_per_s": tokens / timings["dynamic"],
            "fixed_texts_per_s": len(texts) / timings["fixed"],
            "speedup": timings["fixed"] / timings["dynamic"]}


def latency(retriever: Any, queries: list[str], count: int) -> dict[str, dict[str, float]]:
    out = {}
    for mode in ("vector", "keyword", "hybrid"):
        retriever.search(queries[0], 3, mode)
        times = []
        for i in range(count):
            started = time.perf_counter()
            retriever.search(queries[i % len(queries)], 3, mode)
            times.append((time.perf_counter() - started) * 1000)
        out[mode] = {"p50": percentile(times, 50), "p95": percentile(times, 95),
                     "p99": percentile(times, 99), "mean": statistics.fmean(times)}
    return out


COLD_PROBE = """
import json, sys, time
t0 = time.perf_counter()
from agent import knowledge
if "--warm-up" in sys.argv:
    knowledge.warm_up().join()
    ready = time.perf_counter()
    knowledge.search("connection pool exhausted under load", 3)
    print(json.dumps({"warm_up_s": ready - t0,
                      "first_search_after_warm_up_ms": (time.perf_counter() - ready) * 1000}))
    raise SystemExit
r = knowledge.retriever()
t1 = time.perf_counter(); r.store.client()
t2 = time.perf_counter(); r.store.sync_playbooks()
t3 = time.perf_counter()
from agent.knowledge.embedding import encoder
encoder()
t4 = time.perf_counter(); r.keyword_index()
t5 = time.perf_counter(); r.search("connection pool exhausted under load", 3)
t6 = time.perf_counter(); r.search("cache stampede after a deploy", 3)
t7 = time.perf_counter()
print(json.dumps({"import_agent_knowledge_ms": (t1 - t0) * 1000,
                  "chromadb_import_and_open_ms": (t2 - t1) * 1000,
                  "playbook_check_ms": (t3 - t2) * 1000, "model_load_ms": (t4 - t3) * 1000,
                  "bm25_build_ms": (t5 - t4) * 1000, "first_query_ms": (t6 - t5) * 1000,
                  "second_query_ms": (t7 - t6) * 1000, "total_first_search_s": t6 - t0}))
"""


def cold_start(state: Path, warm_up: bool) -> dict[str, float]:
    env = {**os.environ, "PERFAGENT_STATE_DIR": str(state)}
    done = subprocess.run([sys.executable, "-c", COLD_PROBE, *(["--warm-up"] if warm_up else [])],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    os.environ.pop("PERFAGENT_EMBEDDING_CACHE", None)  # measure real embedding work
    os.environ.pop("CHROMA_HOST", None)
    print(f"knowledge store benchmark: {os.cpu_count()} CPU(s), chunks={args.chunks}, "
          f"queries={args.queries} per mode")

    from agent import knowledge
    from agent.knowledge.embedding import encoder
    from agent.knowledge.evaluation import load_questions
    from agent.knowledge.retrieval import DEFAULT_MODE
    from agent.knowledge.store import MEMO, KnowledgeStore, playbook_files

    with tempfile.TemporaryDirectory(prefix="perfagent-kb-bench-") as tmp:
        root = Path(tmp)

        # -- playbook store: first build, then quality
        store = KnowledgeStore(root / "quality")
        started = time.perf_counter()
        store.sync_playbooks()
        build = time.perf_counter() - started
        count = store.collection("playbooks").count()
        print(f"\nplaybooks: {len(playbook_files())} files -> {count} chunks; first build "
              f"(chromadb import, model load, embed, write) {build:.1f} s")
        store.close()
        print(f"\nretrieval quality (top 3; MRR over the top 10); default mode: {DEFAULT_MODE}")
        for row in quality(root / "quality"):
            print(f"  {row['set']:24s} {row['mode']:8s} recall@3 {row['recall@3']:.3f}  "
                  f"hit@3 {row['hit@3']:.3f}  MRR {row['mrr']:.3f}  (n={row['questions']})")
        knowledge.forget_stores()

        # -- embedding throughput on real-sized chunks
        corpus = root / "corpus"
        files = synthetic_corpus(corpus, args.chunks)
        from agent.knowledge.chunking import chunk_file

        sample = [p.embedding_text() for f in sorted(corpus.glob("*.md"))[:30]
                  for p in chunk_file(f.name, f.read_text(encoding="utf-8"))][:500]
        tp = embedding_throughput(sample)
        print(f"\nembedding ({tp['texts']} chunks, mean {tp['mean_tokens']:.0f} tokens, batch "
              f"{tp['batch_size']}): dynamic padding {tp['dynamic_texts_per_s']:.1f} texts/s "
              f"({tp['dynamic_tokens_per_s']:,.0f} tokens/s); fixed padding to 256 "
              f"{tp['fixed_texts_per_s']:.1f} texts/s; dynamic is {tp['speedup']:.2f}x faster")

        # -- ingest the synthetic corpus
        MEMO.vectors.clear()
        state = root / "big"
        big = knowledge.retriever(state)
        big.store.sync_playbooks()
        report = big.store.ingest([corpus])
        size = sum(f.stat().st_size for f in big.store.path.rglob("*") if f.is_file())
        print(f"\ningest: {files} files, {report.chunks} chunks in {report.seconds:.1f} s = "
              f"{report.chunks_per_second:.1f} chunks/s (read, chunk, embed, write); store "
              f"{size / 1e6:.0f} MB")
        again = big.store.ingest([corpus])
        print(f"re-ingest unchanged: {again.added} embedded, {again.removed} removed in "
              f"{again.seconds:.2f} s ({again.chunks / again.seconds:,.0f} chunks/s checked)")

        # -- query latency on the big collection
        questions = [q.question for name in ("kb_questions.yaml", "kb_finding_queries.yaml")
                     for q in load_questions(REPO / "tests" / "data" / name)]
        rng = random.Random(3)
        queries = [f"{q} ({rng.choice(SERVICES)} service)" if i % 2 else q
                   for i, q in enumerate(questions * (args.queries // len(questions) + 1))]
        big.ready()
        encoder()
        total = big.store.collection("documents").count() + big.store.collection(
            "playbooks").count()
        print(f"\nquery latency, top 3, {args.queries} queries per mode over {total} chunks (ms):")
        for mode, row in latency(big, queries, args.queries).items():
            print(f"  {mode:8s} p50 {row['p50']:6.2f}  p95 {row['p95']:6.2f}  p99 "
                  f"{row['p99']:6.2f}  mean {row['mean']:6.2f}")
        knowledge.forget_stores()

        # -- cold start in a fresh process, on the existing big store
        cold = cold_start(state, warm_up=False)
        print("\nfirst search in a fresh process (existing store of "
              f"{total} chunks): {cold['total_first_search_s']:.2f} s")
        for key in ("import_agent_knowledge_ms", "chromadb_import_and_open_ms",
                    "playbook_check_ms", "model_load_ms", "bm25_build_ms", "first_query_ms",
                    "second_query_ms"):
            print(f"  {key:28s} {cold[key]:8.1f}")
        warm = cold_start(state, warm_up=True)
        print(f"with warm_up() at process start: warm-up {warm['warm_up_s']:.2f} s in the "
              f"background, then the first search took "
              f"{warm['first_search_after_warm_up_ms']:.1f} ms")


if __name__ == "__main__":
    main()
