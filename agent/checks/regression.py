"""regression_prevention: performance budgets established? automated testing in CI/CD?"""

from __future__ import annotations

import re

from agent.checks.common import CheckInput, is_conceptual, not_applicable, quote, result
from agent.checks.practices import budget_proposals, ci_proposals
from agent.checks.text import claims, fenced_blocks, proposed_mentions, prose, without_references, words
from agent.results import CheckResult

NAME = "regression_prevention"

_BUDGET_WORD = words(r"budgets?|thresholds?")
_DROP = words(r"drop|dropping|remove|removing|delete|deleting|disable|disabling|relax|loosen|"
              r"get rid of|turn off")
_CODE_BUDGET = re.compile(r"thresholds\s*[:=]|p\(\d\d\)\s*<|max_p\d\d|budget|"
                          r"maxNumericValue|assertNumQueries|max_queries|assert .*<\s*\d|"
                          r"[\"'][<>]=?\s*\d", re.I)


def check_regression(data: CheckInput) -> CheckResult:
    """A concrete budget (metric and limit) kept or set, checked automatically in CI/CD."""
    if is_conceptual(data):
        return not_applicable(NAME, "a conceptual question: nothing to guard")
    text = without_references(prose(data.draft))
    budgets = budget_proposals(text)
    _, dropped = proposed_mentions(claims(data.draft), _BUDGET_WORD)
    dropped = [c for c in dropped if _DROP.search(c)]
    ci = ci_proposals(data.draft)
    for block in fenced_blocks(data.draft):
        if _CODE_BUDGET.search(block.code):
            budgets.append(f"code block {block.index + 1}")
        if re.search(r"^\s*(jobs|on|stages|pipeline)\s*:", block.code, re.M):
            ci.append(f"code block {block.index + 1} (a CI workflow)")
    problems = []
    if dropped:
        problems.append(f"the draft drops a performance budget ({quote(dropped[0], 70)}): keep it "
                        "enforced (adjust the test or the limit) instead of removing it.")
    elif not budgets:
        problems.append("set performance budgets: a metric and a limit (e.g. p95 < 200 ms, "
                        "LCP ≤ 2.5 s, ≤ 2 queries per request); 'budgets' with no number do "
                        "not count.")
    if not ci:
        problems.append("run the budget check automatically in CI/CD (a pipeline or nightly "
                        "job that fails the build on a breach); a manual or dismissed check "
                        "does not count.")
    evidence = "; ".join(x for x in (
        f"budget: {quote(budgets[0], 60)}" if budgets else "",
        f"CI: {quote(ci[0], 60)}" if ci else "") if x)
    return result(NAME, problems, evidence)
