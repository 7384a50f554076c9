"""impact_quantified: estimated improvement? ROI analyzed?"""

from __future__ import annotations

import re
from functools import lru_cache

from agent.checks.code import language_of
from agent.checks.common import CheckInput, is_conceptual, not_applicable, quote, result
from agent.checks.figures import Figure, audit
from agent.checks.practices import change_proposals
from agent.checks.text import claims, fenced_blocks, sentences, words
from agent.results import CheckResult

NAME = "impact_quantified"

#: a figure in a sentence about a change's effect
GAIN_CONTEXT = words(
    r"faster|slower|speed-?up|reduc\w*|improv\w*|cut\w*|drops?|dropping|dropped|lower\w*|"
    r"sav\w*|gains?|fewer|less|shrinks?|removes?|halves?|halving|down to|down from|"
    r"from|to|→|->|instead of|takes? (?:it|p\d\d|the \w+) to|brings?|lands?|becomes?|"
    r"goes? (?:from|to)|went from|off|increas\w*|raises?|doubles?|boost\w*|"
    r"reach\w*|back under|down|stops?|eliminat\w*|skips?|avoids?|"
    r"improvement|speed-?ups?|wins?|better|quicker|shorter")
_ROI = words(
    r"effort|efforts|cost\w*|cheap\w*|expensive|roi|return|worth\w*|pays? off|payback|"
    r"priorit\w*|first move|first step|do (?:it|this) first|goes first|comes first|"
    r"one-liner|one line|(?:a |an |one |two |few )?(?:minutes?|hours?|hour|day|days|weeks?)"
    r"(?:'s|’s)? (?:of )?(?:work|effort|change|job)|an? (?:hour|day|afternoon|morning)|"
    r"trade-?offs?|insurance|quick win|low[- ]hanging|best return|biggest win|high[- ]impact|"
    r"negligible|minimal effort|tiny effort|small effort|trivial|single migration|"
    r"one migration|a migration for|config change|two-line|one-line|cheapest|stopgap|"
    r"second priority|top priority|biggest|largest gain|obvious first|best value|good value|"
    r"(?:a single|one|two|three|a few|ten|twenty|\d+) (?:statements?|migrations?|"
    r"lines?)(?: of (?:config|code))?|first and (?:probably )?only|try it first|"
    r"do (?:it|this|that) (?:first|now)|(?:first|next) thing|low[- ]effort|small change|"
    r"costs? (?:little|nothing|one|a|an)|headroom")


_EXPECTED = words(r"expect\w*|estimat\w*|projected|should|would|likely")


def _is_gain(fig: Figure) -> bool:
    """A grounded or estimated figure stating a change's effect, not a current value."""
    if fig.status not in ("grounded", "estimate", "target"):
        return False
    before = fig.clause[:fig.__dict__.get("_local", (0, 0))[0]]
    if fig.status == "target":
        return bool(_EXPECTED.search(fig.clause))
    if re.search(r"\b(?:takes?|took|is|was|were|are|at|runs?|ran|spends?|spent|of)\W*$",
                 before.strip()[-14:]) and not _EXPECTED.search(before):
        return False
    return bool(fig.family == "ratio" or GAIN_CONTEXT.search(fig.clause)
                or _EXPECTED.search(fig.clause))


def recommends_change(data: CheckInput) -> list[str]:
    """The changes the draft proposes: clauses in its prose, and code that changes things."""
    return list(_recommends_change(data.draft))


@lru_cache(maxsize=32)
def _recommends_change(draft: str) -> tuple[str, ...]:
    changes = change_proposals(draft)
    for block in fenced_blocks(draft):
        lang = language_of(block)
        if lang in ("python", "sql", "javascript") and not re.search(
                r"k6/http|locust|pytest|benchmark|opentelemetry|assertNumQueries|EXPLAIN\b",
                block.code, re.I):
            changes.append(f"code block {block.index + 1} ({lang})")
    return tuple(changes)


def check_impact(data: CheckInput) -> CheckResult:
    """Recommendations carry a quantified expected improvement and an ROI judgement."""
    if is_conceptual(data):
        return not_applicable(NAME, "a conceptual question: no change to quantify")
    changes = recommends_change(data)
    if not changes:
        return not_applicable(NAME, "the draft recommends no change to quantify")
    figures = audit(data)
    gains = [f for f in figures.figures if _is_gain(f)]
    unsupported_gains = [f for f in figures.figures if f.status == "unsupported" and (
        GAIN_CONTEXT.search(f.clause) or f.family == "ratio")]
    roi: list[str] = []
    for match in _ROI.finditer(claims(data.draft)):
        if match.group(0).lower() not in roi:
            roi.append(match.group(0).lower())
        if len(roi) >= 3:
            break
    if not gains:
        # a count change written without a unit: "the query count drops from ~101 to 2 (estimate)"
        for sentence in sentences(claims(data.draft)):
            if (re.search(r"\bfrom\s*~?\d[\d,.]*\s*(?:\w+\s*)?(?:to|→|->)\s*~?\d", sentence.text)
                    or re.search(r"\b(?:by|to) (?:roughly |about |around )?(?:half|a third|a "
                                 r"quarter|two thirds)|\bhalve\w*|\bdoubles?\b|\btwice\b|"
                                 r"\b\w+-fold\b", sentence.text, re.I)) \
                    and re.search(r"estimat|expect|measured|~|≈|should|would", sentence.text, re.I):
                gains_text = " ".join(sentence.text.split())
                break
        else:
            gains_text = ""
    else:
        gains_text = ""
    problems = []
    if not gains and not gains_text:
        if unsupported_gains:
            problems.append(
                f"quantify each recommendation's expected gain from evidence: the only gain "
                f"figure, {unsupported_gains[0].text} in "
                f"{quote(unsupported_gains[0].clause, 70)}, is unsupported: derive the "
                "expected gain from the measurements (e.g. 182.6 ms → 1.9 ms, −99 %) or mark "
                "it as an estimate with its basis.")
        else:
            problems.append(
                f"quantify each recommendation's expected gain: {quote(changes[0], 70)} "
                "carries none; state it in ms, %, × or req/s, derived from the measurements or "
                "marked as an estimate (e.g. 'p95 231 ms → ~60 ms (estimate)').")
    if not roi:
        problems.append("weigh the return against the effort (ROI): say what the change costs "
                        "(a migration, an hour, a day, a new instance) and whether it is "
                        "worth doing first.")
    evidence = ""
    if gains_text:
        evidence = f"quantified: {quote(gains_text, 80)}"
    if gains:
        evidence = f"quantified: {gains[0].text} in {quote(gains[0].clause, 80)}"
    if roi:
        evidence += ("; " if evidence else "") + "ROI terms: " + ", ".join(roi[:3])
    return result(NAME, problems, evidence)
