"""The five checks on drafts written the way a real LLM writes them, good and bad."""

from __future__ import annotations

from agent.checks import (
    CHECKS,
    CheckInput,
    audit_figures,
    check_baseline,
    check_impact,
    check_implementation,
    check_monitoring,
    check_regression,
    revision_feedback,
)

MEASURED = [
    {"name": "p95_latency", "value": 231.4, "unit": "ms", "source": "load_test"},
    {"name": "throughput", "value": 9.8, "unit": "req/s", "source": "load_test"},
]
FINDINGS = [{"kind": "missing_index", "severity": "high", "summary": "full scan of order_items",
             "location": "order_items"}]
TARGETS = [(200.0, "ms"), (2.5, "s"), (80.0, "%")]

GOOD = """\
I load tested `/orders` at 10 req/s: p95 latency is **231 ms** (throughput 9.8 req/s),
above the 200 ms target. EXPLAIN shows a full scan of `order_items` because
`order_id` has no index.

## Recommendations
1. **Add an index on `order_items(order_id)`.** Expected to cut p95 by roughly 60 %
   (estimate: the scan is most of each request). Effort: one migration, so the ROI is high.
2. **Cache the order list in Redis** with a 5-minute TTL and invalidate the key on every
   order update (event-based invalidation).

```python
import json
import redis

r = redis.Redis(socket_timeout=0.05)

def cached_orders(customer_id, load):
    key = f"orders:{customer_id}"
    try:
        hit = r.get(key)
        if hit is not None:
            return json.loads(hit)
    except redis.RedisError:
        pass  # fall back to the database
    value = load(customer_id)
    r.setex(key, 300, json.dumps(value))
    return value
```

## Monitoring
Add OpenTelemetry spans around the handler and each query, exported to Jaeger, and a
Grafana dashboard with p95 latency per route.

## Regression prevention
Set a performance budget of p95 < 200 ms and run the k6 load test in the CI pipeline on
every pull request; the threshold `p(95)<200` fails the build.
"""


def data(draft: str, **kw: object) -> CheckInput:
    base = {"measurements": MEASURED, "findings": FINDINGS, "sources": [],
            "target_values": TARGETS}
    base.update(kw)
    return CheckInput(draft=draft, **base)  # type: ignore[arg-type]


def test_good_llm_draft_passes_all_five() -> None:
    results = {name: check(data(GOOD)) for name, check in CHECKS.items()}
    assert {n: r.status for n, r in results.items()} == dict.fromkeys(CHECKS, "pass")
    assert "231 ms" in results["baseline_established"].evidence


def test_invented_figures_fail_baseline() -> None:
    draft = GOOD.replace("p95 latency is **231 ms**", "p95 latency is **480 ms**")
    draft += "\nThe database currently handles 1,200 req/s at 65 % CPU.\n"
    result = check_baseline(data(draft))
    assert result.status == "fail"
    assert "480 ms" in result.feedback and "1,200 req/s" in result.feedback
    assert "65 %" in result.feedback


def test_figures_framed_as_targets_or_estimates_are_not_claims() -> None:
    audit = audit_figures(
        "We measured 231 ms. The target is 200 ms; we expect roughly 90 ms after the fix.",
        data(""))
    assert audit.grounded == ["231 ms"]
    assert audit.unsupported == []


def test_seconds_and_milliseconds_compare() -> None:
    audit = audit_figures("p95 was 0.23 s under load.", data(""))
    assert audit.grounded == ["0.23 s"]


def test_thousands_separators_read_as_one_number() -> None:
    measured = [{"name": "p95_latency", "value": 1085.48, "unit": "ms"}]
    audit = audit_figures("p95 is 1,085.48 ms; p99 was 1,300.2 ms.", data("", measurements=measured))
    assert audit.grounded == ["1,085.48 ms"]
    assert audit.unsupported == ["1,300.2 ms"]


def test_measurements_not_cited_fail() -> None:
    draft = "Your API is slow. Add an index and some caching with a TTL."
    result = check_baseline(data(draft))
    assert result.status == "fail"
    assert "p95_latency=231.4 ms" in result.feedback


def test_unnamed_bottleneck_fails() -> None:
    draft = "p95 latency is 231 ms. Consider scaling out with more replicas."
    result = check_baseline(data(draft))
    assert result.status == "fail"
    assert "missing_index at order_items" in result.feedback


def test_no_measurement_needs_a_plan() -> None:
    vague = "Performance is probably fine; optimize when needed."
    assert check_baseline(data(vague, measurements=[], findings=[])).status == "fail"
    plan = ("First run a load test against /orders and record p95 latency and throughput, "
            "then profile the handler with py-spy.")
    result = check_baseline(data(plan, measurements=[], findings=[]))
    assert result.status == "pass"
    assert "measurement plan" in result.evidence


def test_impact_requires_numbers_and_roi() -> None:
    vague = "## Recommendations\n- Add an index; it will be much faster.\n"
    result = check_impact(data(vague))
    assert result.status == "fail"
    assert "quantify" in result.feedback and "ROI" in result.feedback
    numbers_only = "## Recommendations\n- Add an index: ~60 % lower p95.\n"
    assert "ROI" in check_impact(data(numbers_only)).feedback
    report_only = "p95 latency is 231 ms at 10 req/s."
    assert check_impact(data(report_only)).status == "not_applicable"


def test_monitoring_needs_tracing_and_dashboards() -> None:
    only_metrics = "Track p95 in Grafana dashboards."
    result = check_monitoring(data(only_metrics))
    assert result.status == "fail" and "tracing" in result.feedback
    only_tracing = "Instrument with OpenTelemetry."
    result = check_monitoring(data(only_tracing))
    assert result.status == "fail" and "dashboard" in result.feedback


def test_code_that_does_not_parse_fails() -> None:
    broken = GOOD.replace("def cached_orders(customer_id, load):",
                          "def cached_orders(customer_id, load)")
    result = check_implementation(data(broken))
    assert result.status == "fail"
    assert "python block does not parse" in result.feedback


def test_cache_without_invalidation_fails() -> None:
    draft = ("## Recommendations\nCache the order list in Redis so repeated reads skip the "
             "database. Wrap calls in try/except with a fallback to the database.\n")
    result = check_implementation(data(draft))
    assert result.status == "fail"
    assert "invalidation" in result.feedback


def test_io_code_without_error_handling_fails() -> None:
    draft = ("## Recommendations\nBatch the lookups.\n\n```python\nimport redis\n"
             "r = redis.Redis()\nvalue = r.get('k')\n```\n")
    result = check_implementation(data(draft))
    assert result.status == "fail"
    assert "error handling" in result.feedback


def test_regression_needs_budget_and_ci() -> None:
    result = check_regression(data("Set a performance budget of p95 < 200 ms."))
    assert result.status == "fail" and "CI" in result.feedback
    result = check_regression(data("Run the load test in GitHub Actions."))
    assert result.status == "fail" and "budget" in result.feedback


def test_revision_feedback_lists_failed_checks_only() -> None:
    results = [check_monitoring(data("nothing")), check_regression(data(GOOD))]
    text = revision_feedback(results)
    assert "monitoring_included" in text
    assert "regression_prevention" not in text


def test_citing_a_caching_playbook_is_not_proposing_a_cache() -> None:
    draft = ("## Recommendations\nAdd the index; wrap it in a retry with a timeout.\n\n"
             "## Sources\n- `redis-cache-aside.md` — Redis cache-aside\n")
    assert check_implementation(data(draft)).status == "pass"


def test_a_list_of_sources_is_not_a_recommendation() -> None:
    draft = ("Run a load test first and record p95 latency.\n\n## Sources\n"
             "- `batching.md` — Batching / Fix: batch the writes\n")
    assert check_impact(data(draft, measurements=[], findings=[])).status == "not_applicable"
