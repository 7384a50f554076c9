"""Playbook retrieval for grounding answers in named sources.

The shipped playbooks (``prompts/knowledge/*.md``) are chunked by heading and
ranked with BM25 over their words. This keyword index is small, exact and
instant to build, so ``prepare`` can ground every turn without loading an
embedding model; every passage carries its source file and heading so the
answer can name where a figure or pattern came from.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from prompts import knowledge_dir

_WORD = re.compile(r"[a-z0-9][a-z0-9+_-]*")
_STOP = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from",
    "how", "i", "in", "is", "it", "it's", "its", "my", "of", "on", "or", "our", "should",
    "that", "the", "this", "to", "was", "we", "what", "when", "where", "which", "why",
    "with", "you", "your",
})


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


@dataclass(frozen=True)
class Passage:
    source: str
    heading: str
    text: str
    tags: tuple[str, ...] = ()


def _front_matter(text: str) -> tuple[dict[str, object], str]:
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end == -1:
        return {}, text
    import yaml

    meta = yaml.safe_load(text[4:end]) or {}
    return (meta if isinstance(meta, dict) else {}), text[end + 4:]


def chunk_markdown(source: str, text: str) -> list[Passage]:
    """One passage per ``##`` section (the title section included), tags from front matter."""
    meta, body = _front_matter(text)
    tags = tuple(str(t) for t in meta.get("tags", []) or [])  # type: ignore[union-attr]
    title = str(meta.get("title", "")) or next(
        (line[2:].strip() for line in body.splitlines() if line.startswith("# ")), source
    )
    passages: list[Passage] = []
    heading, lines = title, []
    for line in body.splitlines():
        if line.startswith("## "):
            if "".join(lines).strip():
                passages.append(Passage(source, heading, "\n".join(lines).strip(), tags))
            heading, lines = f"{title} / {line[3:].strip()}", []
        else:
            lines.append(line)
    if "".join(lines).strip():
        passages.append(Passage(source, heading, "\n".join(lines).strip(), tags))
    return passages


class KeywordIndex:
    """BM25 over passages (k1=1.5, b=0.75); headings and tags count double."""

    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self.docs = [
            Counter(words(p.text) + 2 * words(p.heading) + 2 * words(" ".join(p.tags)))
            for p in passages
        ]
        self.avg_len = sum(sum(d.values()) for d in self.docs) / max(len(self.docs), 1)
        frequency: Counter[str] = Counter()
        for doc in self.docs:
            frequency.update(doc.keys())
        n = len(self.docs)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in frequency.items()}

    def search(self, query: str, k: int = 3) -> list[tuple[float, Passage]]:
        terms = words(query)
        scored = []
        for doc, passage in zip(self.docs, self.passages, strict=True):
            length = sum(doc.values())
            score = 0.0
            for term in terms:
                tf = doc.get(term, 0)
                if tf:
                    score += self.idf[term] * tf * 2.5 / (
                        tf + 1.5 * (0.25 + 0.75 * length / self.avg_len))
            if score > 0:
                scored.append((score, passage))
        scored.sort(key=lambda item: item[0], reverse=True)
        return scored[:k]


@cache
def default_index(folder: str | None = None) -> KeywordIndex:
    """The index over the shipped playbooks, built once per process."""
    root = Path(folder) if folder else knowledge_dir()
    passages: list[Passage] = []
    for path in sorted(root.glob("*.md")):
        passages.extend(chunk_markdown(path.name, path.read_text(encoding="utf-8")))
    return KeywordIndex(passages)


def search(query: str, k: int = 3) -> list[dict[str, object]]:
    """Top ``k`` passages for ``query`` as plain dicts (source, heading, text, score)."""
    return [
        {"source": p.source, "heading": p.heading, "text": p.text, "score": round(s, 3),
         "tags": list(p.tags)}
        for s, p in default_index().search(query, k)
    ]
