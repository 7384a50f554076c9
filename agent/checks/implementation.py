"""implementation_quality: production-ready with error handling? caching includes invalidation?"""

from __future__ import annotations

import ast
import re
from functools import lru_cache

from agent.checks.code import BlockReport, analyse, parse_block
from agent.checks.common import CheckInput, is_conceptual, not_applicable, quote, result
from agent.checks.impact import recommends_change
from agent.checks.practices import (
    CACHE_TERM,
    bounded_invalidation,
    cache_proposals,
    unbounded_staleness,
)
from agent.checks.text import claims, fenced_blocks, proposed_mentions, words
from agent.results import CheckResult

NAME = "implementation_quality"

_HANDLING_PROSE = words(r"try/except|try-except|except\w*|fallback|fall back|falls back|"
                        r"circuit[- ]breaker|on failure|if (?:redis|the cache|the queue|it) "
                        r"(?:is )?(?:down|fails|unavailable)|degrade\w*|retry with|retries with|"
                        r"catch\w*")
_PURE_BODY = re.compile(r"\b(objects|query|execute|session|select|fetch|requests|httpx|redis|"
                        r"open|cursor|db|get_\w+_from|load_\w+|SELECT)\b")


@lru_cache(maxsize=256)
def _pure_memo(block_code: str) -> bool:
    """Every cached function of the block computes from its arguments only."""
    try:
        tree = ast.parse(block_code)
    except SyntaxError:
        return False
    cached = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
              and any("cache" in ast.unparse(d) or "memo" in ast.unparse(d)
                      for d in n.decorator_list)]
    return bool(cached) and not any(_PURE_BODY.search(ast.unparse(f)) for f in cached)


def _hazards(data: CheckInput, reports: list[BlockReport], blocks: list) -> list[str]:
    out = []
    sources = " ".join(data.sources)
    for report, block in zip(reports, blocks, strict=True):
        code = block.code
        if report.language == "sql" and re.search(r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\b", code, re.I) \
                and not re.search(r"\bCONCURRENTLY\b", code, re.I) \
                and re.search(r'"engine":\s*"postgres', sources):
            rows = [int(x) for x in re.findall(r"(\d{6,})\s*rows|\"table_rows\":\s*\{[^}]*?(\d{6,})",
                                               sources) for x in x if x]
            if rows and max(rows) >= 1_000_000:
                out.append(f"code block {block.index + 1}: a plain CREATE INDEX locks writes on a "
                           f"{max(rows):,}-row PostgreSQL table for the whole build; use CREATE "
                           "INDEX CONCURRENTLY (outside a transaction).")
        if re.search(r"retr(y|ies)|Retry\(|tenacity|backoff|attempt", code, re.I) and re.search(
                r"\.post\(|method=['\"]POST|charge", code, re.I) and not re.search(
                r"idempoten", code, re.I):
            out.append(f"code block {block.index + 1}: retries a POST without an idempotency "
                       "key; a retry after a timeout can repeat the side effect (send an "
                       "Idempotency-Key).")
        if re.search(r"Cache-Control['\"]?\s*[:=,]\s*['\"]?[^'\"\n]*\bpublic\b", code, re.I) and \
                re.search(r"customer|user|account|session|/me\b|current_user|order", code, re.I):
            out.append(f"code block {block.index + 1}: 'Cache-Control: public' on per-user data "
                       "lets shared caches serve one user's response to another; use private.")
        for arg in re.findall(r"select_related\(([^)]*)\)", code):
            names = re.findall(r"['\"](\w+)['\"]", arg)
            plural = [n for n in names if n.endswith("s") and not n.endswith(("ss", "us"))]
            if plural:
                out.append(f"code block {block.index + 1}: select_related({plural[0]!r}) cannot "
                           "follow a reverse foreign key or many-to-many relation (Django raises "
                           "FieldError); use prefetch_related for it.")
    return out


def check_implementation(data: CheckInput) -> CheckResult:
    """Production-ready: code that parses, error handling where it does I/O, caching with
    concrete invalidation, and no known production hazard."""
    blocks = fenced_blocks(data.draft)
    changes = recommends_change(data) if not is_conceptual(data) else []
    caches_prose = cache_proposals(data.draft)
    if not blocks and not changes and not caches_prose:
        return not_applicable(NAME, "no code and no change proposed")
    problems: list[str] = []
    reports: list[BlockReport] = []
    for block in blocks:
        language, problem = parse_block(block)
        if problem:
            tag = block.tag or f"untagged, read as {language}"
            problems.append(f"code block {block.index + 1} ({tag}): {problem}.")
        reports.append(analyse(block, language))
    prose = claims(data.draft)
    # ---- caching and invalidation
    code_caches = [c for r in reports for c in r.caches]
    pure = all(_pure_memo(b.code) for b, r in zip(blocks, reports, strict=True) if r.caches) \
        and code_caches and not caches_prose
    cache_named = code_caches or caches_prose
    cache_context = bool(cache_named) or bool(CACHE_TERM.search(prose)) or any(
        c.get("name") in ("cache_stats", "simulate_cache") for c in data.tool_calls)
    stale = unbounded_staleness(prose) if cache_context else []
    if not cache_named and stale and not bounded_invalidation(prose):
        problems.append(f"caching is proposed without invalidation: the draft accepts unbounded "
                        f"staleness ({stale[0]!r}); give cached "
                        "entries a TTL or invalidate them on write.")
    if cache_named and not pure:
        bounded = [b for r in reports for b in r.bounded] + bounded_invalidation(prose)
        unbounded = [u for r in reports for u in r.unbounded] + stale
        if not bounded:
            what = code_caches[0] if code_caches else quote(caches_prose[0], 70)
            why = f" ({', '.join(unbounded[:2])})" if unbounded else ""
            problems.append(
                f"caching is proposed without invalidation: the cache {what} has no concrete "
                f"invalidation{why}; give entries a TTL or "
                "max-age, delete or update them on write, version the keys/URLs, or purge on "
                "an event.")
    # ---- error handling where the code does network I/O
    for report in reports:
        if report.io and not report.handled and not report.__dict__.get("test"):
            # the prose may state how a failure is handled ("falls back to the database")
            stated, _ = proposed_mentions(prose, _HANDLING_PROSE)
            if stated:
                continue
            problems.append(
                f"add error handling to the proposed implementation: code block "
                f"{report.index + 1} calls {report.io[0]!s} with no handling of its failure or "
                "slowness; add a timeout and a try/except with a fallback (e.g. "
                "read from the database when the cache is down).")
    problems += _hazards(data, reports, blocks)
    evidence = (f"{len(blocks)} code block(s) parse" if blocks else "prose implementation")
    if cache_named and not problems:
        evidence += "; caching with invalidation" if not pure else "; memoises a pure function"
    return result(NAME, problems, evidence)
