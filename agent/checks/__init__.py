"""The five pre-response checks of the persona, as deterministic validators.

Each check reasons over the draft's *claims*, not its words, against what the turn
really did (measurements, findings, tool calls, the texts a figure may quote):

- :mod:`agent.checks.figures`: every quantitative claim, classified in its own clause
  (grounded, derived, estimate, target, setting, input, unsupported), unit-aware;
- :mod:`agent.checks.text`: code blocks, sentences, clauses and negation scope;
- :mod:`agent.checks.code`: each code block parsed by its language, and what it does
  (caching, expiry, network I/O, error handling);
- :mod:`agent.checks.practices`: proposals (a change, a cache, tracing, a dashboard, a
  budget, CI) as opposed to mentions or dismissals;
- one module per check: ``baseline``, ``impact``, ``monitoring``, ``implementation``,
  ``regression``.

No check calls a model; feedback names the exact claim or block and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agent.checks.baseline import check_baseline
from agent.checks.common import CheckInput, is_conceptual
from agent.checks.figures import FigureAudit, audit
from agent.checks.impact import check_impact
from agent.checks.implementation import check_implementation
from agent.checks.monitoring import check_monitoring
from agent.checks.regression import check_regression
from agent.checks.text import claims, code_blocks, prose
from agent.results import CheckResult

__all__ = [
    "CHECKS", "CheckInput", "FigureAudit", "audit_figures", "check_baseline", "check_impact",
    "check_implementation", "check_monitoring", "check_regression", "claims", "code_blocks",
    "is_conceptual", "prose", "revision_feedback",
]


def audit_figures(draft: str, data: CheckInput) -> FigureAudit:
    """Split ``draft``'s factual figures into grounded and unsupported (targets, settings,
    illustrations, quoted inputs and marked estimates are neither)."""
    probe = CheckInput(draft=draft, measurements=data.measurements, findings=data.findings,
                       tool_calls=data.tool_calls, sources=data.sources,
                       target_values=data.target_values, question=data.question)
    return audit(probe)


#: check name -> validator, in the persona's order
CHECKS: dict[str, Callable[[CheckInput], CheckResult]] = {
    "baseline_established": check_baseline,
    "impact_quantified": check_impact,
    "monitoring_included": check_monitoring,
    "implementation_quality": check_implementation,
    "regression_prevention": check_regression,
}


def revision_feedback(results: Iterable[CheckResult]) -> str:
    """The message that sends a failed draft back: one line per failed check."""
    lines = [f"- {r.name}: {r.feedback}" for r in results if r.status == "fail"]
    return (
        "Your draft failed these pre-response checks. Revise the whole answer so each "
        "passes; do not invent figures, measure them with a tool or label them as "
        "estimates.\n" + "\n".join(lines)
    )
