"""Retrieval quality on a labeled question set: recall@k, hit@k and MRR per mode.

The labeled set is a YAML list of ``{question: str, expected: [playbook file
names]}`` (``tests/data/kb_questions.yaml``). A passage counts for a question
when its source file is one of the expected ones:

- recall@k: the share of a question's expected files found among the sources
  of the top ``k`` passages, averaged over questions;
- hit@k: the share of questions with at least one expected file in the top ``k``;
- MRR: the mean of ``1 / rank`` of the first passage from an expected file
  (0 when none is in the top :data:`MRR_DEPTH`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.knowledge.retrieval import Hit

#: How deep a ranking is read for MRR.
MRR_DEPTH = 10


@dataclass(frozen=True)
class Question:
    """One labeled question and the playbook files that answer it."""

    question: str
    expected: tuple[str, ...]


@dataclass
class Scores:
    """Quality of one ranking function over a question set."""

    mode: str
    k: int
    recall: float
    hit: float
    mrr: float
    questions: int
    misses: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, f"recall@{self.k}": round(self.recall, 3),
                f"hit@{self.k}": round(self.hit, 3), "mrr": round(self.mrr, 3),
                "questions": self.questions}


def load_questions(path: Path) -> list[Question]:
    """Read and check a labeled set; a malformed entry fails with its position."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{question, expected}} entries")
    questions = []
    for n, item in enumerate(data, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise ValueError(f"{path}: entry {n} has no question")
        expected = item.get("expected")
        if isinstance(expected, str):
            expected = [expected]
        if not expected or not all(isinstance(e, str) for e in expected):
            raise ValueError(f"{path}: entry {n} has no expected playbook")
        questions.append(Question(item["question"], tuple(expected)))
    return questions


def evaluate(rank: Callable[[str, int], list[Hit]], questions: list[Question], *,
             mode: str = "", k: int = 3) -> Scores:
    """Score a ranking function (question, k) -> hits on the labeled questions.

    It is asked twice per question, for the top ``k`` (recall, hit) and for the
    top :data:`MRR_DEPTH` (MRR), as a caller would ask it.
    """
    recall = hit = mrr = 0.0
    misses: list[dict[str, Any]] = []
    for q in questions:
        top = {h.passage.source for h in rank(q.question, k)}
        ranked = [h.passage.source for h in rank(q.question, MRR_DEPTH)]
        found = sum(1 for e in q.expected if e in top)
        recall += found / len(q.expected)
        hit += 1.0 if found else 0.0
        first = next((i for i, s in enumerate(ranked, start=1) if s in q.expected), None)
        mrr += 1.0 / first if first else 0.0
        if found < len(q.expected):
            misses.append({"question": q.question, "expected": list(q.expected),
                           "top": sorted(top)})
    n = max(len(questions), 1)
    return Scores(mode=mode, k=k, recall=recall / n, hit=hit / n, mrr=mrr / n,
                  questions=len(questions), misses=misses)
