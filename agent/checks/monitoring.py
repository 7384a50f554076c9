"""monitoring_included: distributed tracing recommended? dashboards specified?"""

from __future__ import annotations

from agent.checks.common import CheckInput, is_conceptual, not_applicable, quote, result
from agent.checks.practices import dashboard_proposals, tracing_proposals
from agent.results import CheckResult

NAME = "monitoring_included"


def check_monitoring(data: CheckInput) -> CheckResult:
    """Distributed tracing recommended concretely and a dashboard specified by its metrics."""
    if is_conceptual(data):
        return not_applicable(NAME, "a conceptual question: no system to monitor")
    tracing = tracing_proposals(data.draft)
    dashboards = dashboard_proposals(data.draft)
    problems = []
    if not tracing:
        problems.append("recommend distributed tracing concretely: OpenTelemetry spans around "
                        "the slow operation (name it), exported to Jaeger or Tempo; a dismissed "
                        "or generic mention does not count.")
    if not dashboards:
        problems.append("specify the dashboard by what it shows (e.g. a Grafana panel of p95 "
                        "latency and error rate per route); 'some dashboards' does not count.")
    evidence = "; ".join(x for x in (
        f"tracing: {quote(tracing[0], 60)}" if tracing else "",
        f"dashboard: {quote(dashboards[0], 60)}" if dashboards else "") if x)
    return result(NAME, problems, evidence)
