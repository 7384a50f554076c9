"""What every check needs: the input, the question's kind, results and the cached analyses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.results import CheckResult


@dataclass
class CheckInput:
    """What a check may look at."""

    draft: str
    measurements: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    #: texts a cited figure may legitimately come from: tool results, the
    #: user's messages, retrieved knowledge, earlier baselines (the user's
    #: question first, as agent.graph and evals.drafts hand them over)
    sources: list[str] = field(default_factory=list)
    #: the persona's target values (200 for "< 200ms"), quotable without a measurement
    target_values: list[tuple[float, str]] = field(default_factory=list)
    #: the user's message when known; otherwise the first source is taken as the question
    question: str = ""

    @property
    def user_question(self) -> str:
        if self.question:
            return self.question
        return self.sources[0] if self.sources and not self.sources[0].lstrip().startswith(
            ("{", "[")) else ""


#: tools that look things up rather than measure the user's system
NON_MEASURING_TOOLS = {"knowledge_search", "delegate"}

_GENERAL_OPENING = re.compile(
    r"^\s*(?:why (?:is|are|does|do) (?!it\b|this\b|that\b)|does |is it true|are there|"
    r"give me an overview|describe|define)", re.I)
_OWN = re.compile(r"\b(?:our|my|we|we're|us|mine|ours)\b", re.I)
#: a definite system of theirs: "the checkout API", "this endpoint", "that query"
_THEIR_SYSTEM = re.compile(
    r"\b(?:the|this|that|these|those)\s+(?:[\w-]+\s+){0,2}(?:api|apis|endpoint|endpoints|"
    r"service|server|page|site|app|application|database|db|query|queries|job|worker|"
    r"cache|cluster|script|function|view|handler)\b", re.I)

_CONCEPT_OPENING = re.compile(
    r"^\s*(?:can you |could you |please )?(?:explain|what(?:'s| is| are| does)?|which|when|"
    r"how does|how do \w+ (?:compare|differ)|is |are |does |compare|difference)", re.I)


def is_conceptual(data: CheckInput) -> bool:
    """The user asks to explain or compare a concept or a tool, with no system to change.

    A question is conceptual when it opens as an explanation, a definition or a choice
    ("explain…", "what is…", "which load generator…", "how does…") and names no endpoint,
    URL or file of theirs, and no measuring tool ran; anything else is about their system.
    """
    if any(c.get("name") not in NON_MEASURING_TOOLS for c in data.tool_calls):
        return False
    question = data.user_question
    if not question:
        return False
    if re.search(r"https?://|\b(?:GET|POST|PUT|DELETE) /|(?<![\w/])/\w|\w\.(?:py|db|sql|js|ts)\b",
                 question):
        return False  # an endpoint, a URL or a file of theirs
    if _THEIR_SYSTEM.search(question):
        return False  # a question about a definite system of theirs, however it opens
    if _CONCEPT_OPENING.match(question):
        return True
    # a general question ("why is p99 so much worse than p95?", "should I use LRU or LFU?")
    # that speaks of no system of the user's
    return bool(_GENERAL_OPENING.match(question)) and not _OWN.search(question)


def result(name: str, problems: list[str], evidence: str) -> CheckResult:
    ok = not problems
    return CheckResult(name=name, status="pass" if ok else "fail", evidence=evidence,
                       feedback="" if ok else " ".join(problems))


def not_applicable(name: str, why: str) -> CheckResult:
    return CheckResult(name=name, status="not_applicable", evidence=why)


def quote(text: str, limit: int = 90) -> str:
    flat = " ".join(text.split())
    return f"“{flat[:limit]}{'…' if len(flat) > limit else ''}”"
