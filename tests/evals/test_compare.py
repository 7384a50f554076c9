"""Comparing two runs: alignment, regressions and improvements, the exact McNemar test,
score deltas, principle and check deltas, and the Markdown for a pull request.

Logs are built by hand with the factory of :mod:`tests.evals.test_report`; the
p-values are checked against binomial sums worked out independently here.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from evals.compare import compare, comparison_markdown, mcnemar_exact
from evals.model import ErrorInfo, PrincipleCompliance, RunLog, RunSummary
from evals.report import read_log, write_log
from tests.evals.test_report import case_run, make_log, make_summary


def two_sided_binomial(k: int, n: int) -> float:
    """P(an outcome at least as unlikely as k of n under Binomial(n, 1/2)), by enumeration."""
    probability = [Fraction(math.comb(n, i), 2**n) for i in range(n + 1)]
    return float(sum(p for p in probability if p <= probability[k]))


@pytest.mark.parametrize(("base_only", "new_only", "expected"), [
    (0, 6, 0.03125),          # 2 * (1/2)^6
    (6, 0, 0.03125),
    (0, 0, 1.0),              # nothing changed: no evidence
    (1, 5, 0.21875),          # 2 * (1 + 6) / 64
    (3, 3, 1.0),              # balanced: capped at 1
    (2, 10, 0.03857421875),   # 2 * (1 + 12 + 66) / 4096
    (0, 1, 1.0),
])
def test_mcnemar_exact_matches_the_binomial(base_only: int, new_only: int, expected: float) -> None:
    assert mcnemar_exact(base_only, new_only) == pytest.approx(expected, abs=1e-15)
    assert mcnemar_exact(base_only, new_only) == pytest.approx(
        min(1.0, two_sided_binomial(min(base_only, new_only), base_only + new_only)))


def test_large_counts_stay_exact() -> None:
    # 2 * sum_{i<=40} C(200, i) / 2^200, far below float's smallest subnormal ratio of terms
    p = mcnemar_exact(40, 160)
    assert 0 < p < 1e-17
    assert p == pytest.approx(two_sided_binomial(40, 200), rel=1e-9)


def test_regressions_improvements_and_cases_only_in_one_run() -> None:
    base = make_log([case_run("a"), case_run("b", verdicts=[True, False]), case_run("c"), case_run("d")])
    new_a = case_run("a", verdicts=[True, False])
    new_a.scores[1].explanation = "expected 'p95' in the answer"
    new = make_log([new_a, case_run("b", verdicts=[True, True]), case_run("c"), case_run("e")],
                   run_id="run-b")
    c = compare(base, new)
    assert [x.key for x in c.regressions] == ["core/a"]
    assert [x.key for x in c.improvements] == ["core/b"]
    assert [x.key for x in c.unchanged] == ["core/c"]
    assert (c.only_in_base, c.only_in_new) == (["core/d"], ["core/e"])
    assert c.has_regression
    a = c.regressions[0]
    assert (a.base_pass_rate, a.new_pass_rate) == (1.0, 0.0)
    assert [(f.scorer, f.base_rate, f.new_rate, f.explanation) for f in a.flips] == [
        ("contains:s1", None, 0.0, "expected 'p95' in the answer")]  # the base run lacked s1
    b = c.improvements[0]
    assert [(f.scorer, f.base_rate, f.new_rate) for f in b.flips] == [("contains:s1", 0.0, 1.0)]
    assert (c.test.pairs, c.test.base_only, c.test.new_only, c.test.both_pass) == (3, 1, 1, 1)
    assert c.test.p_value == 1.0
    assert json.loads(c.model_dump_json())["has_regression"] is True
    assert c.warnings == []


def test_pass_to_error_is_a_regression_and_fail_to_error_is_not() -> None:
    boom = ErrorInfo(code="model_error", message="HTTP 529 overloaded", hint="retry later")
    base = make_log([case_run("a"), case_run("b", verdicts=[False])])
    new = make_log([case_run("a", error=boom), case_run("b", error=boom)])
    c = compare(base, new)
    assert [x.key for x in c.regressions] == ["core/a"]
    assert c.regressions[0].new_error == boom and c.regressions[0].flips == []
    assert c.regressions[0].reason == "error model_error: HTTP 529 overloaded"
    assert [x.key for x in c.unchanged] == ["core/b"]
    assert (c.test.base_only, c.test.both_fail) == (1, 1)
    assert "error model_error: HTTP 529 overloaded" in comparison_markdown(c)


def test_epochs_align_by_number_and_cases_by_pass_rate() -> None:
    base = make_log([case_run("a", epoch=e) for e in (1, 2, 3)], epochs=3)
    new = make_log([case_run("a", epoch=1), case_run("a", epoch=2, verdicts=[False])], epochs=2)
    c = compare(base, new)
    change = c.regressions[0]
    assert (change.base_passes, change.base_judged, change.new_passes, change.new_judged) == (3, 3, 1, 2)
    assert change.new_pass_rate == 0.5
    assert c.test.pairs == 2 and c.test.base_only == 1 and c.unpaired_epochs == 1
    assert "epochs differs: 3 (base) vs 2 (new)" in c.warnings
    assert any("1 case-epochs have no partner epoch" in w for w in c.warnings)


def test_skipped_epochs_carry_no_verdict() -> None:
    base = make_log([case_run("a", verdicts=[None]), case_run("b")])
    new = make_log([case_run("a", verdicts=[False]), case_run("b", verdicts=[None])])
    c = compare(base, new)
    assert not c.has_regression and {x.key for x in c.unchanged} == {"core/a", "core/b"}
    assert c.test.pairs == 0 and c.test.p_value == 1.0


def test_six_discordant_pairs_give_the_binomial_p_value() -> None:
    base = make_log([case_run(f"c{i}") for i in range(10)])
    new = make_log([case_run(f"c{i}", verdicts=[i >= 6]) for i in range(10)])
    c = compare(base, new)
    assert len(c.regressions) == 6
    assert (c.test.pairs, c.test.base_only, c.test.new_only, c.test.both_pass) == (10, 6, 0, 4)
    assert c.test.p_value == pytest.approx(2 * 0.5**6)
    md = comparison_markdown(c)
    assert "exact McNemar p = 0.03125 (6 case-epochs got worse, 0 better, of 10 paired)" in md
    assert "<details><summary><b>Regressions (6)</b></summary>" in md  # a long list folds


def test_mean_score_delta_and_its_paired_standard_error() -> None:
    base = make_log([case_run("a"), case_run("b"), case_run("c", verdicts=[True, True])])
    new = make_log([case_run("a", verdicts=[False]), case_run("b"),
                    case_run("c", verdicts=[True, False], values=[1.0, 0.0])])
    t = compare(base, new).test
    # deltas -1, 0, -0.5: mean -0.5, sample sd 0.5, SE 0.5 / sqrt(3)
    assert t.score_pairs == 3
    assert t.mean_score_delta == pytest.approx(-0.5)
    assert t.score_delta_stderr == pytest.approx(0.5 / math.sqrt(3))


def test_differences_between_the_runs_are_flagged() -> None:
    base = make_log([case_run("a")], model="offline", sha="aaa")
    new = make_log([case_run("a")], model="anthropic:claude-sonnet-4-5", persona="systems-architect",
                   seed=7, sha="bbb")
    c = compare(base, new)
    assert c.warnings[:3] == ["model differs: offline (base) vs anthropic:claude-sonnet-4-5 (new)",
                              "persona differs: performance-engineer (base) vs systems-architect (new)",
                              "seed differs: 0 (base) vs 7 (new)"]
    assert "suite files changed between the runs: core (cases or scorers may differ)" in c.warnings
    md = comparison_markdown(c)
    assert "> ⚠️ model differs: offline (base) vs anthropic:claude-sonnet-4-5 (new)" in md
    assert md.splitlines()[0] == "### ✅ perfagent eval compare: 0 regressions, 0 improvements"


def test_check_rates_come_from_the_real_summary() -> None:
    base = make_log([case_run(f"c{i}") for i in range(4)])
    new = make_log([case_run("c0", checks="fail"), *(case_run(f"c{i}") for i in range(1, 4))])
    c = compare(base, new)
    rates = {r.name: (r.base_percent, r.new_percent, r.delta_points) for r in c.checks}
    assert rates["impact_quantified"] == (100.0, 75.0, -25.0)
    assert [p.name for p in c.principles] == ["Baseline First", "User Impact", "Observability", "Scalability"]
    assert c.principles[1].delta_points == pytest.approx(-25.0)
    assert "| `impact_quantified` | 100.0 % | 75.0 % | -25.0 pts |" in comparison_markdown(c)


def test_principle_deltas_with_a_stub_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Principle rows as the metrics module reports them, stubbed to exact figures."""
    def fake(rate: float | None, met: bool | None, extra: bool) -> list[PrincipleCompliance]:
        rows = [PrincipleCompliance(name="Baseline First", target_percent=95, rule="r", applicable=20,
                                    compliant=0, rate_percent=rate, met=met)]
        if extra:
            rows.append(PrincipleCompliance(name="Frugality", target_percent=50, rule="r", applicable=1,
                                            compliant=1, rate_percent=100.0, met=True))
        return rows

    def summarize(log: RunLog) -> RunSummary:
        summary = make_summary(log)
        first = log.run_id == "run-a"
        summary.principles = fake(97.5 if first else 90.0, first, extra=not first)
        return summary

    monkeypatch.setattr("evals.metrics.summarize", summarize)
    c = compare(make_log([case_run("a")]), make_log([case_run("a")], run_id="run-b"))
    rows = {p.name: p for p in c.principles}
    assert rows["Baseline First"].delta_points == pytest.approx(-7.5)
    assert (rows["Baseline First"].base_met, rows["Baseline First"].new_met) == (True, False)
    assert (rows["Frugality"].base_percent, rows["Frugality"].new_percent) == (None, 100.0)
    md = comparison_markdown(c)
    assert "| Baseline First | 95 % | 97.5 % ✅ | 90.0 % ❌ | -7.5 pts |" in md
    assert "| Frugality | 50 % | – | 100.0 % ✅ | – |" in md


def test_markdown_lists_every_part(tmp_path: Path) -> None:
    base = make_log([case_run("a"), case_run("b", verdicts=[False]), case_run("gone")])
    new_a = case_run("a", verdicts=[False])
    new_a.scores[0].explanation = "answer lacks | p95 <b>"
    new = make_log([new_a, case_run("b"), case_run("fresh")], run_id="run-b")
    # Through the files, as `perfagent eval compare BASE NEW` reads them.
    c = compare(read_log(write_log(base, tmp_path / "base" / "log.json")),
                read_log(write_log(new, tmp_path / "new" / "log.json")))
    md = comparison_markdown(c)
    lines = md.splitlines()
    assert lines[0] == "### ❌ perfagent eval compare: 1 regression, 1 improvement"
    assert lines[2].startswith("base `run-a` (model `offline`, 2025-10-09 08:53:20 UTC) → new `run-b`")
    assert "Pass rate 66.7 % → 66.7 %" in md
    assert ("| `core/a` | 1/1 pass | 0/1 pass | `contains:s0` 100% → 0%: answer lacks \\| p95 &lt;b&gt; |"
            in md)
    assert "| `core/b` | 0/1 pass | 1/1 pass | `contains:s0` 0% → 100%: s0 found |" in md
    assert "**Only in base (1)**\n\n- `core/gone`" in md
    assert "**Only in new (1)**\n\n- `core/fresh`" in md
    assert md.rstrip().endswith("0 cases unchanged.")
    assert len(md) < 2500


def test_scorer_labels_show_verbatim_in_code_spans() -> None:
    """Inside a code span GitHub prints `<` as is, so labels are not entity-escaped there."""
    base, new = case_run("a"), case_run("a", verdicts=[False])
    for run in (base, new):
        run.scores[0].scorer = "tool_used:profile_python>=2<=2|x"
    md = comparison_markdown(compare(make_log([base]), make_log([new])))
    assert "`tool_used:profile_python>=2<=2\\|x` 100% → 0%" in md
