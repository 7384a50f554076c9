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


# --------------------------------------------------------------------------- claims, not words
# Each case below is one of issue 13's failure modes of the vocabulary checks.

LOAD_TEST_JSON = (
    '{"tool": "load_test", "rate": 50.0, "planned_duration_s": 30.0, "throughput": 49.6, '
    '"latency_ms": {"p95": 231.4, "p99": 412.7}, "summary": "1500 requests; p95 231.4 ms"}')
LOAD_TEST_CALL = [{"name": "load_test", "args": {"url": "http://127.0.0.1:8000/orders",
                                                 "rate": 50, "duration": 30},
                   "ok": True, "duration_ms": 30000.0}]


def unsupported(draft: str, **kw: object) -> list[str]:
    return audit_figures(draft, data(draft, **kw)).unsupported


def test_numbers_in_tool_inputs_never_ground_a_result() -> None:
    kw = {"sources": [LOAD_TEST_JSON], "tool_calls": LOAD_TEST_CALL}
    assert unsupported("The orders query itself takes 50 ms per request.", **kw) == ["50 ms"]
    assert unsupported("30 % of requests went over budget.", **kw) == ["30 %"]
    # quoted as the input it was, it is fine
    assert unsupported("I drove the endpoint at 50 req/s; p95 was 231 ms.", **kw) == []


def test_derivations_of_measured_figures_are_grounded() -> None:
    measured = [{"name": "query_time", "value": 182.61, "unit": "ms"},
                {"name": "query_time_with_index", "value": 1.92, "unit": "ms"}]
    draft = ("The query takes 182.6 ms; with the index 1.92 ms, which saves 180.7 ms per call "
             "(95× faster, a 99 % cut).")
    assert unsupported(draft, measurements=measured) == []
    assert unsupported("That makes the endpoint 10× faster.", measurements=measured) == ["10×"]


def test_units_and_rounding_compare() -> None:
    assert unsupported("p95 is 0.23 s, or 231 ms, or 231.4 ms.") == []
    assert unsupported("p95 is 264.9 s.", measurements=[
        {"name": "p95_latency", "value": 264.9, "unit": "ms"}]) == ["264.9 s"]


def test_hedge_words_ground_nothing() -> None:
    assert unsupported("Under real load the p95 is more like 850 ms.") == ["850 ms"]
    assert unsupported("Indexes typically make these endpoints 40 % faster.") == ["40 %"]


def test_estimates_are_marked_in_their_own_clause_even_when_wrapped() -> None:
    assert unsupported("For the endpoint I only have an estimate: p95 should land around\n"
                       "60 ms once the scan is gone.") == []
    table = ("| Change | Expected result (estimates) |\n|---|---|\n"
             "| index | p95 55 ms |\n")
    assert unsupported(table) == []
    assert unsupported("| Change | Result |\n|---|---|\n| index | p95 55 ms |\n") == ["55 ms"]


def test_figures_quoted_from_the_user_are_grounded() -> None:
    question = "Our API p95 is around 850 ms at ~1,200 req/s; we want it under 300 ms."
    draft = "At 850 ms and 1,200 req/s over 6 pods (200 req/s per pod) you need a 2.8× cut."
    assert unsupported(draft, measurements=[], sources=[question + " We run 6 pods."]) == []


def test_whole_words_only() -> None:
    draft = ("## Recommendations\nAdd the index. The query takes 182.6 ms to execute, again "
             "and again. Effort: one migration.\n")
    result = check_impact(data(draft))
    assert result.status == "fail" and "quantify each recommendation" in result.feedback


def test_a_dismissed_practice_is_not_proposed() -> None:
    draft = ("No need for tracing here, and dashboards are overkill for this. Budget p95 < 200 "
             "ms, but we'll skip CI for this one.")
    mon = check_monitoring(data(draft))
    assert mon.status == "fail"
    assert "tracing" in mon.feedback and "dashboard" in mon.feedback
    assert "CI/CD" in check_regression(data(draft)).feedback
    dropped = "I'd drop the p95 budget from the nightly CI job; it's noise."
    assert "drops a performance budget" in check_regression(data(dropped)).feedback


def test_keyword_stuffing_does_not_pass() -> None:
    draft = ("Cache the author list in Redis. For production readiness add error handling, "
             "retries and timeouts, monitoring with tracing and dashboards, and performance "
             "budgets in your CI/CD pipeline.")
    results = {name: check(data(draft)) for name, check in CHECKS.items()}
    assert {n: r.status for n, r in results.items()} == dict.fromkeys(CHECKS, "fail")
    assert "invalidation" in results["implementation_quality"].feedback


def test_wrong_bottleneck_fails_baseline() -> None:
    draft = "p95 latency is 231 ms. The bottleneck is JSON serialisation; switch to orjson."
    result = check_baseline(data(draft))
    assert result.status == "fail" and "order_items" in result.feedback


def test_code_blocks_are_parsed_by_their_language() -> None:
    untagged_broken = "## Fix\nAdd this:\n\n```\ndef f(x)\n    return x\n```\n"
    result = check_implementation(data(untagged_broken))
    assert result.status == "fail" and "untagged, read as python" in result.feedback
    mistagged = "## Fix\n\n```bash\nimport re\n\ndef f(x):\n    return re.sub('a', 'b', x)\n```\n"
    assert check_implementation(data(mistagged)).status == "fail"
    sql = "## Fix\n\n```\nCREATE INDEX idx_orders_customer ON orders (customer_id);\n```\n"
    assert check_implementation(data(sql)).status == "pass"  # DDL needs no error handling
    broken_sql = "## Fix\n\n```sql\nSELECT id FROM orders WHERE (customer_id = 1;\n```\n"
    result = check_implementation(data(broken_sql))
    assert result.status == "fail" and "sql block does not parse" in result.feedback
    json_as_yaml = "## Fix\n\n```yaml\n{\"ci\": {\"runs\": 3}}\n```\n"
    assert check_implementation(data(json_as_yaml)).status == "pass"


def test_caching_is_recognised_in_code_and_invalidation_must_be_concrete() -> None:
    memo_db = ("## Fix\n\n```python\nfrom functools import lru_cache\n\n\n@lru_cache(maxsize=5000)\n"
               "def get_product(product_id):\n    return db.fetch_product(product_id)\n```\n")
    result = check_implementation(data(memo_db))
    assert result.status == "fail" and "@lru_cache on get_product()" in result.feedback
    pure = ("## Fix\n\n```python\nfrom functools import cache\n\n\n@cache\n"
            "def slug(name: str) -> str:\n    return name.strip().lower()\n```\n")
    assert check_implementation(data(pure)).status == "pass"
    stale = ("## Fix\nCache the product list in Redis so reads skip Postgres; a stale entry is "
             "fine for a catalogue. On a Redis error fall back to the database.\n")
    result = check_implementation(data(stale))
    assert result.status == "fail" and "stale" in result.feedback
    header = "## Fix\nSend `Cache-Control: public` on every HTML response.\n"
    assert check_implementation(data(header)).status == "fail"
    bounded = ("## Fix\nCache the product list in Redis with a 300 s TTL and delete the key on "
               "every product update; on a Redis error fall back to the database.\n")
    assert check_implementation(data(bounded)).status == "pass"


def test_a_library_that_caches_is_not_a_proposal() -> None:
    draft = ("## Fix\nAdd the index (one migration). SQLAlchemy already caches the compiled "
             "statement, so nothing else is needed.\n")
    assert check_implementation(data(draft)).status == "pass"


def test_conceptual_questions_are_not_applicable() -> None:
    draft = ("p95 is the latency 95 % of requests stay under; p99 covers 99 %. An SLO usually "
             "uses p95 or p99 depending on how many calls a page makes.")
    concept = data(draft, measurements=[], findings=[],
                   sources=["What's the difference between p95 and p99 latency?"])
    statuses = {name: check(concept).status for name, check in CHECKS.items()}
    assert statuses == dict.fromkeys(CHECKS, "not_applicable")


def test_feedback_names_the_claim_and_the_fix() -> None:
    draft = GOOD.replace("(throughput 9.8 req/s)", "(throughput 9.8 req/s, CPU at 65 %)")
    feedback = check_baseline(data(draft)).feedback
    assert "65 %" in feedback and "CPU at 65 %" in feedback and "estimate" in feedback


def test_five_checks_take_under_20_ms_on_a_2000_word_draft() -> None:
    """The checks run on every draft: time them on a long one (median of several runs)."""
    import time

    sections = GOOD.split("## Monitoring")[0]
    draft = "\n\n".join(sections.replace("231 ms", f"{231 + (i % 2) * 0.4:g} ms")
                        for i in range(16))
    draft += "\n\n## Monitoring" + GOOD.split("## Monitoring")[1]
    assert len(draft.split()) >= 2000
    timings = []
    for run in range(7):
        probe = data(draft + f"\n\nRun {run}.")
        started = time.perf_counter()
        for check in CHECKS.values():
            check(probe)
        timings.append((time.perf_counter() - started) * 1000)
    median = sorted(timings)[len(timings) // 2]
    print(f"\nfive checks, {len(draft.split())}-word draft: median {median:.1f} ms")
    assert median < 20 * 3, median  # goal 20 ms; generous on a loaded CI box


def test_a_question_about_a_definite_system_is_not_conceptual() -> None:
    """'Is the checkout API fast enough?' asks about their system, whatever its opening:
    an unmeasured verdict fails baseline instead of passing as not applicable."""
    from agent.checks import CHECKS, CheckInput

    data = CheckInput(draft="It is fast enough, trust me.",
                      question="Is the checkout API fast enough?")
    assert CHECKS["baseline_established"](data).status == "fail"
    general = CheckInput(draft="p95 is the latency 95 % of requests stay under.",
                         question="What is p95 latency?")
    assert CHECKS["baseline_established"](general).status == "not_applicable"
