"""Compare two eval runs: which cases got worse or better, and is the change real?

Cases are aligned by (suite, case_id) and case-epochs by (suite, case_id, epoch).

* A case's **pass rate** is its passing epochs over the epochs that were judged:
  passed, failed or errored (an error counts as not passing, so pass -> error is a
  regression; epochs whose every scorer skipped carry no verdict and are left out).
  A case whose pass rate went down is a regression, up an improvement.
* The **paired test** is an exact two-sided McNemar test over the aligned case-epochs
  judged in both runs: under "no change", a pair that changed outcome is as likely to
  have gone either way, so the count that went one way is Binomial(discordant, 1/2).
  It is computed exactly with :func:`math.comb` (no SciPy).
* The **mean score delta** over the same pairs (an epoch's score is the mean value
  of its scorers, 0 for an error) comes with its paired standard error.
* Principle compliance and check pass rates come from :func:`evals.metrics.summarize`
  of each log, shown side by side with their deltas.

Runs with different models, personas, seeds, epoch counts or suite files can be
compared (that is often the point), but the differences are listed as warnings.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from evals.model import CaseRun, ErrorInfo, RunLog, RunSummary
from evals.report import (
    case_reason,
    epoch_status,
    fmt_percent,
    fmt_when,
    group_runs,
    md_cell,
    md_code,
    md_fold,
    md_table,
    one_line,
    plural,
    run_error,
)

#: Rates closer than this are equal (floating-point noise, not a change).
_EPSILON = 1e-9


class RunRef(BaseModel):
    """Which run one side of a comparison is."""

    run_id: str
    created_at: float
    model: str
    persona: str
    seed: int
    epochs: int
    grader_model: str | None = None
    git_rev: str | None = None
    cases: int
    case_epochs: int
    #: Passing over judged case-epochs (errors excluded, as in the run's summary).
    pass_rate: float | None


class ScorerFlip(BaseModel):
    """One scorer of a changed case whose pass rate moved the same way as the case."""

    scorer: str
    type: str
    #: Passing epochs over the epochs this scorer judged; None when it never ran there.
    base_rate: float | None
    new_rate: float | None
    #: What the scorer said in the new run's first epoch where it did not pass (or passed).
    explanation: str = ""


class CaseChange(BaseModel):
    """One case present in both runs."""

    suite: str
    case_id: str
    kind: Literal["regression", "improvement", "unchanged"]
    base_passes: int
    base_judged: int
    base_errors: int
    new_passes: int
    new_judged: int
    new_errors: int
    base_pass_rate: float | None
    new_pass_rate: float | None
    flips: list[ScorerFlip] = Field(default_factory=list)
    #: The first error of the new run's epochs, if any.
    new_error: ErrorInfo | None = None
    #: Why the case does not pass in the new run, in one line ("" when it does).
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.case_id}"


class PairedTest(BaseModel):
    """The exact McNemar test and the mean score delta over aligned case-epochs."""

    method: str = "exact two-sided McNemar test (binomial on the discordant pairs)"
    #: Aligned case-epochs judged in both runs.
    pairs: int
    both_pass: int
    both_fail: int
    #: Passed in the base run only (got worse) and in the new run only (got better).
    base_only: int
    new_only: int
    p_value: float
    score_pairs: int
    mean_score_delta: float | None
    #: Standard error of that mean (sample standard deviation / sqrt(n)); None below 2 pairs.
    score_delta_stderr: float | None


class RateDelta(BaseModel):
    """One principle or check: its rate (in percent) in each run."""

    name: str
    target_percent: float | None = None
    base_percent: float | None
    new_percent: float | None
    delta_points: float | None
    base_met: bool | None = None
    new_met: bool | None = None


class Comparison(BaseModel):
    """Everything ``perfagent eval compare`` reports, as data (``--json`` prints it)."""

    base: RunRef
    new: RunRef
    regressions: list[CaseChange]
    improvements: list[CaseChange]
    unchanged: list[CaseChange]
    only_in_base: list[str]
    only_in_new: list[str]
    #: Case-epochs of shared cases that have no partner epoch in the other run.
    unpaired_epochs: int
    test: PairedTest
    principles: list[RateDelta]
    checks: list[RateDelta]
    #: Ways the two runs differ besides the agent's behaviour (model, persona, suites...).
    warnings: list[str]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def has_regression(self) -> bool:
        """Some case passes less often in the new run than in the base run."""
        return bool(self.regressions)


# --------------------------------------------------------------------------- statistics


def mcnemar_exact(base_only: int, new_only: int) -> float:
    """Two-sided exact McNemar p-value for ``base_only`` vs ``new_only`` discordant pairs.

    Under the null hypothesis each discordant pair went either way with probability
    1/2, so the p-value is twice the binomial tail at the smaller count (capped at 1).
    With no discordant pair there is no evidence of change: p = 1.
    """
    n = base_only + new_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(base_only, new_only) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_test(pairs: Sequence[tuple[CaseRun, CaseRun]]) -> PairedTest:
    """McNemar on the pass/not-pass outcomes of aligned (base, new) case-epochs,
    and the mean and standard error of the paired score differences."""
    from evals.metrics import epoch_score

    outcomes = [(epoch_status(b) == "pass", epoch_status(n) == "pass") for b, n in pairs
                if "skipped" not in (epoch_status(b), epoch_status(n))]
    base_only = sum(b and not n for b, n in outcomes)
    new_only = sum(n and not b for b, n in outcomes)
    deltas = [ns - bs for b, n in pairs
              if (bs := epoch_score(b)) is not None and (ns := epoch_score(n)) is not None]
    return PairedTest(
        pairs=len(outcomes), both_pass=sum(b and n for b, n in outcomes),
        both_fail=sum(not b and not n for b, n in outcomes), base_only=base_only, new_only=new_only,
        p_value=mcnemar_exact(base_only, new_only), score_pairs=len(deltas),
        mean_score_delta=statistics.fmean(deltas) if deltas else None,
        score_delta_stderr=statistics.stdev(deltas) / math.sqrt(len(deltas)) if len(deltas) > 1 else None,
    )


# --------------------------------------------------------------------------- cases


def _tally(runs: Sequence[CaseRun]) -> tuple[int, int, int, float | None]:
    """(passes, judged epochs, errors, pass rate) of one case's epochs."""
    statuses = [epoch_status(r) for r in runs]
    judged = len(statuses) - statuses.count("skipped")
    passes = statuses.count("pass")
    return passes, judged, statuses.count("error"), passes / judged if judged else None


def _scorer_rates(runs: Sequence[CaseRun]) -> dict[str, tuple[str, float | None]]:
    """Each scorer label's (type, pass rate over the epochs where it gave a verdict)."""
    verdicts: dict[str, tuple[str, list[bool]]] = {}
    for run in runs:
        for s in run.scores:
            entry = verdicts.setdefault(s.scorer, (s.type, []))
            if s.passed is not None:
                entry[1].append(s.passed)
    return {label: (kind, sum(v) / len(v) if v else None) for label, (kind, v) in verdicts.items()}


def _flips(base: Sequence[CaseRun], new: Sequence[CaseRun], worse: bool) -> list[ScorerFlip]:
    """The scorers whose pass rate moved the way the case did (down if ``worse``)."""
    before, after = _scorer_rates(base), _scorer_rates(new)
    flips = []
    for label, (kind, new_rate) in after.items():
        base_rate = before.get(label, (kind, None))[1]
        if new_rate is None:
            continue
        # A scorer the base run lacked counts as a change when it fails (or passes) now.
        reference = (1.0 if worse else 0.0) if base_rate is None else base_rate
        moved = new_rate < reference - _EPSILON if worse else new_rate > reference + _EPSILON
        if moved:
            said = next((s.explanation for r in new for s in r.scores
                         if s.scorer == label and s.passed is (not worse)), "")
            flips.append(ScorerFlip(scorer=label, type=kind, base_rate=base_rate, new_rate=new_rate,
                                    explanation=one_line(said)))
    return flips


def _case_change(base: Sequence[CaseRun], new: Sequence[CaseRun]) -> CaseChange:
    b_pass, b_judged, b_err, b_rate = _tally(base)
    n_pass, n_judged, n_err, n_rate = _tally(new)
    kind: Literal["regression", "improvement", "unchanged"] = "unchanged"
    if b_rate is not None and n_rate is not None:
        if n_rate < b_rate - _EPSILON:
            kind = "regression"
        elif n_rate > b_rate + _EPSILON:
            kind = "improvement"
    errored = next((r for r in new if r.status == "error"), None)
    return CaseChange(
        suite=new[0].suite, case_id=new[0].case_id, kind=kind,
        base_passes=b_pass, base_judged=b_judged, base_errors=b_err,
        new_passes=n_pass, new_judged=n_judged, new_errors=n_err,
        base_pass_rate=b_rate, new_pass_rate=n_rate,
        flips=_flips(base, new, worse=kind == "regression") if kind != "unchanged" else [],
        new_error=run_error(errored) if errored is not None else None,
        reason=case_reason(new),
    )


# --------------------------------------------------------------------------- rates


#: One principle or check of a summary: (name, target percent, rate percent, met).
_Rate = tuple[str, float | None, float | None, bool | None]


def _rate_deltas(base: list[_Rate], new: list[_Rate]) -> list[RateDelta]:
    """Align (name, target, rate, met) rows by name: the base run's order, then new names."""
    before = {row[0]: row for row in base}
    after = {row[0]: row for row in new}
    rows = []
    for name in [*before, *(n for n in after if n not in before)]:
        _, b_target, b_rate, b_met = before.get(name, (name, None, None, None))
        _, n_target, n_rate, n_met = after.get(name, (name, None, None, None))
        rows.append(RateDelta(
            name=name, target_percent=n_target if n_target is not None else b_target,
            base_percent=b_rate, new_percent=n_rate,
            delta_points=n_rate - b_rate if b_rate is not None and n_rate is not None else None,
            base_met=b_met, new_met=n_met))
    return rows


def _principle_rows(summary: RunSummary) -> list[_Rate]:
    return [(p.name, p.target_percent, p.rate_percent, p.met) for p in summary.principles]


def _check_rows(summary: RunSummary) -> list[_Rate]:
    return [(c.name, None, c.rate_percent, None) for c in summary.checks]


# --------------------------------------------------------------------------- the comparison


def _ref(log: RunLog, summary: RunSummary) -> RunRef:
    cfg = log.config
    return RunRef(run_id=log.run_id, created_at=log.created_at, model=cfg.model, persona=cfg.persona,
                  seed=cfg.seed, epochs=cfg.epochs, grader_model=cfg.grader_model, git_rev=log.git_rev,
                  cases=summary.cases, case_epochs=summary.case_epochs, pass_rate=summary.pass_rate)


def _warnings(base: RunLog, new: RunLog) -> list[str]:
    notes = []
    for field_name, label in [("model", "model"), ("persona", "persona"), ("grader_model", "grader model"),
                              ("seed", "seed"), ("epochs", "epochs")]:
        b, n = getattr(base.config, field_name), getattr(new.config, field_name)
        if b != n:
            notes.append(f"{label} differs: {b} (base) vs {n} (new)")
    base_sha = {s.name: s.sha256 for s in base.suites if s.sha256}
    changed = sorted(s.name for s in new.suites if s.sha256 and base_sha.get(s.name, s.sha256) != s.sha256)
    if changed:
        notes.append(f"suite files changed between the runs: {', '.join(changed)} "
                     "(cases or scorers may differ)")
    return notes


def compare(base: RunLog, new: RunLog) -> Comparison:
    """Align two runs and say what changed, how much, and how likely it is to be chance."""
    from evals.metrics import summarize

    base_cases, new_cases = group_runs(base.runs), group_runs(new.runs)
    changes = [_case_change(base_cases[key], runs) for key, runs in new_cases.items() if key in base_cases]
    pairs = []
    unpaired = 0
    for key, runs in new_cases.items():
        if key not in base_cases:
            continue
        by_epoch = {r.epoch: r for r in base_cases[key]}
        matched = [(by_epoch[r.epoch], r) for r in runs if r.epoch in by_epoch]
        pairs += matched
        unpaired += len(runs) + len(by_epoch) - 2 * len(matched)
    base_summary, new_summary = summarize(base), summarize(new)
    warnings = _warnings(base, new)
    if unpaired:
        warnings.append(f"{unpaired} case-epochs have no partner epoch in the other run "
                        "(different --epochs): the paired test leaves them out")
    return Comparison(
        base=_ref(base, base_summary), new=_ref(new, new_summary),
        regressions=[c for c in changes if c.kind == "regression"],
        improvements=[c for c in changes if c.kind == "improvement"],
        unchanged=[c for c in changes if c.kind == "unchanged"],
        only_in_base=[f"{s}/{c}" for s, c in base_cases if (s, c) not in new_cases],
        only_in_new=[f"{s}/{c}" for s, c in new_cases if (s, c) not in base_cases],
        unpaired_epochs=unpaired,
        test=paired_test(pairs),
        principles=_rate_deltas(_principle_rows(base_summary), _principle_rows(new_summary)),
        checks=_rate_deltas(_check_rows(base_summary), _check_rows(new_summary)),
        warnings=warnings,
    )


# --------------------------------------------------------------------------- Markdown


def _count(passes: int, judged: int, errors: int) -> str:
    text = f"{passes}/{judged} pass" if judged else "no verdict"
    return text + (f" ({plural(errors, 'error')})" if errors else "")


def _fraction(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.0%}"


def _what_changed(change: CaseChange) -> str:
    parts = [f"{md_code(f.scorer)} {_fraction(f.base_rate)} → {_fraction(f.new_rate)}"
             + (f": {md_cell(f.explanation)}" if f.explanation else "") for f in change.flips]
    if change.kind == "regression" and change.new_error is not None:
        parts.insert(0, md_cell(f"error {change.new_error.code}: {one_line(change.new_error.message, 100)}"))
    return "; ".join(parts) or "–"


def _case_table(changes: list[CaseChange]) -> str:
    rows = [(md_code(c.key), _count(c.base_passes, c.base_judged, c.base_errors),
             _count(c.new_passes, c.new_judged, c.new_errors), _what_changed(c)) for c in changes]
    return md_table(["Case", "Base", "New", "What changed"], rows)


def _points(delta: float | None) -> str:
    return "–" if delta is None else f"{delta:+.1f} pts"


def _met(met: bool | None) -> str:
    return "" if met is None else (" ✅" if met else " ❌")


def comparison_markdown(c: Comparison) -> str:
    """The comparison for a pull-request comment: headline, changed cases, rates."""
    regressed, improved = len(c.regressions), len(c.improvements)
    icon = "❌" if c.has_regression else "✅"
    head = (f"### {icon} perfagent eval compare: {plural(regressed, 'regression')}, "
            f"{plural(improved, 'improvement')}")
    t = c.test
    b_rate = None if c.base.pass_rate is None else c.base.pass_rate * 100
    n_rate = None if c.new.pass_rate is None else c.new.pass_rate * 100
    score = ("" if t.mean_score_delta is None else
             f" · mean score Δ {t.mean_score_delta:+.3f}"
             + (f" ± {t.score_delta_stderr:.3f} (SE)" if t.score_delta_stderr is not None else ""))
    parts = [
        head,
        f"base {md_code(c.base.run_id)} (model {md_code(c.base.model)}, {fmt_when(c.base.created_at)}) → "
        f"new {md_code(c.new.run_id)} (model {md_code(c.new.model)}, {fmt_when(c.new.created_at)})",
        f"Pass rate {fmt_percent(b_rate)} → {fmt_percent(n_rate)} · exact McNemar p = {t.p_value:.4g} "
        f"({t.base_only} case-epochs got worse, {t.new_only} better, of {t.pairs} paired)" + score,
    ]
    if c.warnings:
        parts.append("\n".join(f"> ⚠️ {md_cell(w)}" for w in c.warnings))
    if c.regressions:
        parts.append(md_fold(f"Regressions ({regressed})", _case_table(c.regressions), regressed))
    if c.improvements:
        parts.append(md_fold(f"Improvements ({improved})", _case_table(c.improvements), improved))
    moved = [p for p in c.principles if p.delta_points or p.base_met != p.new_met]
    if moved:
        rows = [(md_cell(p.name), fmt_percent(p.target_percent, 0),
                 fmt_percent(p.base_percent) + _met(p.base_met), fmt_percent(p.new_percent) + _met(p.new_met),
                 _points(p.delta_points)) for p in c.principles]
        table = md_table(["Principle", "Target", "Base", "New", "Δ"], rows, "lrrrr")
        parts.append(f"**Principles**\n\n{table}")
    if any(r.delta_points for r in c.checks):
        rows = [(md_code(r.name), fmt_percent(r.base_percent), fmt_percent(r.new_percent),
                 _points(r.delta_points)) for r in c.checks]
        parts.append("**Checks**\n\n" + md_table(["Check", "Base", "New", "Δ"], rows, "lrrr"))
    for title, keys in [("Only in base", c.only_in_base), ("Only in new", c.only_in_new)]:
        if keys:
            parts.append(md_fold(f"{title} ({len(keys)})", "\n".join(f"- {md_code(k)}" for k in keys),
                                 len(keys)))
    parts.append(f"{plural(len(c.unchanged), 'case')} unchanged.")
    return "\n\n".join(parts) + "\n"
