"""The labeled draft corpus (tests/data/drafts/) is complete, balanced and consistent.

These tests check the corpus, not the checks: the current checks' accuracy on it is
printed (``-s``) and recorded in tests/data/drafts/README.md, never asserted.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from evals.drafts import (
    CHECK_NAMES,
    DEFAULT_PATH,
    CorpusError,
    DraftCase,
    load_corpus,
    matches_measurement,
    parse_figure,
    render,
    score,
)
from tools import tool_names

AGENT_TOOLS = {*tool_names(), "knowledge_search", "delegate"}

#: the adversarial families issue 13 names, each of which the corpus must hold
REQUIRED_FAMILIES = {
    "keyword_stuffed", "negated_practice", "invented_figure_hedged", "input_coincidence",
    "derived_figure", "unit_conversion", "user_quoted_figure", "wrong_bottleneck",
    "untagged_broken_code", "mistagged_code", "cache_decorator", "cache_library",
    "cache_http_header", "cache_cdn", "bounded_staleness", "unbounded_staleness",
    "nothing_to_measure", "index_migration", "library_mentions_cache", "wrapped_estimate",
    "substring_words", "multiplier_unaudited",
}


@pytest.fixture(scope="module")
def corpus() -> list[DraftCase]:
    return load_corpus()


def test_corpus_loads_with_unique_ids(corpus: list[DraftCase]) -> None:
    ids = [c.id for c in corpus]
    assert len(ids) == len(set(ids))
    files = sorted(p.stem for p in DEFAULT_PATH.glob("*.yaml"))
    assert files == sorted(ids), "every file is one draft, named after its id"


def test_corpus_is_large_enough(corpus: list[DraftCase]) -> None:
    assert len(corpus) >= 160


def test_every_check_has_enough_fails_and_passes(corpus: list[DraftCase]) -> None:
    for name in CHECK_NAMES:
        counts = Counter(getattr(c.labels, name) for c in corpus)
        assert counts["fail"] >= 30, f"{name}: only {counts['fail']} fails"
        assert counts["pass"] >= 30, f"{name}: only {counts['pass']} passes"


def test_not_applicable_is_used_where_meaningful(corpus: list[DraftCase]) -> None:
    counts = {name: Counter(getattr(c.labels, name) for c in corpus)["not_applicable"]
              for name in CHECK_NAMES}
    assert all(n >= 5 for n in counts.values()), counts
    # questions with nothing to measure: baseline and impact not applicable when the draft
    # states no figure as a fact and recommends no optimisation
    concept = [c for c in corpus if c.family == "nothing_to_measure"]
    assert concept and all(c.labels.impact_quantified == "not_applicable" for c in concept)


def test_both_splits_hold_fails_of_every_check(corpus: list[DraftCase]) -> None:
    holdout = [c for c in corpus if c.split == "holdout"]
    assert 0.25 <= len(holdout) / len(corpus) <= 0.35, len(holdout)
    for split in ("tune", "holdout"):
        part = [c for c in corpus if c.split == split]
        for name in CHECK_NAMES:
            fails = sum(getattr(c.labels, name) == "fail" for c in part)
            assert fails >= 5, f"{split} has only {fails} fails of {name}"


def test_every_fail_says_why(corpus: list[DraftCase]) -> None:
    for case in corpus:
        fails = set(case.fails())
        assert set(case.why) == fails, case.id
        assert all(len(line.split()) >= 4 for line in case.why.values()), case.id


def test_families_cover_the_adversarial_cases(corpus: list[DraftCase]) -> None:
    families = Counter(c.family for c in corpus)
    assert set(families) >= REQUIRED_FAMILIES, REQUIRED_FAMILIES - set(families)
    assert sum(families[f] for f in ("good_table", "good_prose", "good_bullets", "good_long")) >= 10


def test_drafts_are_written_like_real_answers(corpus: list[DraftCase]) -> None:
    words = [len(c.draft.split()) for c in corpus]
    assert min(words) >= 80 and max(words) <= 1500
    assert max(words) >= 800, "some drafts must be long"
    table = [bool(re.search(r"^\|", c.draft, re.M)) for c in corpus]
    bullets = [bool(re.search(r"^\s*(?:[-*]|\d+\.) ", c.draft, re.M)) for c in corpus]
    headings = [bool(re.search(r"^#{1,4} ", c.draft, re.M)) for c in corpus]
    styles = {
        "table": sum(table),
        "bullets": sum(bullets),
        "headings": sum(headings),
        "code": sum("```" in c.draft for c in corpus),
        "plain prose": sum(not (t or b or h) for t, b, h in zip(table, bullets, headings, strict=True)),
    }
    assert all(n >= 10 for n in styles.values()), styles


def test_evidence_has_the_tools_shapes(corpus: list[DraftCase]) -> None:
    for case in corpus:
        ev = case.evidence
        called = {c.name for c in ev.tool_calls}
        assert called <= AGENT_TOOLS, (case.id, called - AGENT_TOOLS)
        for m in ev.measurements:
            assert m.name and m.unit is not None and m.source, (case.id, m)
            assert re.fullmatch(r"[a-z0-9_]+", m.name), (case.id, m.name)
            assert m.source in called, f"{case.id}: {m.name} measured by {m.source}, not called"
        for f in ev.findings:
            assert f.kind and f.severity and f.summary, (case.id, f)
            assert re.fullmatch(r"[a-z0-9_]+", f.kind), (case.id, f.kind)
        if ev.measurements or ev.findings:
            assert any(c.ok for c in ev.tool_calls), case.id
            assert ev.sources, f"{case.id}: the tools' outputs belong in sources"
        for call in ev.tool_calls:
            assert call.ok == (call.error is None), case.id


def test_unmeasured_figures_are_really_absent(corpus: list[DraftCase]) -> None:
    cited = 0
    for case in corpus:
        whys = " ".join(case.why.values())
        for figure in case.unmeasured:
            assert parse_figure(figure) is not None, (case.id, figure)
            number = re.match(r"[\d,.]+", figure.strip("~ ")).group(0)  # type: ignore[union-attr]
            assert number in whys, f"{case.id}: no why names the unmeasured figure {figure!r}"
            found = matches_measurement(figure, case.evidence.measurements)
            assert not found, f"{case.id}: {figure!r} is a measurement after all: {found}"
            cited += 1
        if case.labels.baseline_established == "fail" and case.family in (
                "invented_figure_hedged", "input_coincidence", "multiplier_unaudited"):
            assert case.unmeasured, f"{case.id}: say which figures are unmeasured"
    assert cited >= 25


def test_figures_compare_unit_aware() -> None:
    from tools.base import Measurement

    p95 = Measurement(name="p95_latency", value=231.4, unit="ms", source="load_test")
    assert parse_figure("0.23 s") == ("time", 230.0)
    assert matches_measurement("231.4 ms", [p95]) == [p95]
    assert matches_measurement("0.2314 s", [p95]) == [p95]
    assert not matches_measurement("231.4 s", [p95])
    assert not matches_measurement("231.4 %", [p95])
    assert parse_figure("50M rows") == ("count", 5e7)
    assert parse_figure("1,000 req/s") == ("rate", 1000.0)
    assert parse_figure("about") is None


def test_a_bad_file_fails_loudly_naming_it(tmp_path: Path) -> None:
    text = (DEFAULT_PATH / "orders-terse.yaml").read_text(encoding="utf-8")
    good = yaml.safe_load(text)
    (tmp_path / "orders-terse.yaml").write_text(yaml.safe_dump(good), encoding="utf-8")
    assert len(load_corpus(tmp_path)) == 1

    broken = dict(yaml.safe_load(text), id="broken-one")
    del broken["why"]["impact_quantified"]
    (tmp_path / "broken-one.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"broken-one\.yaml.*why"):
        load_corpus(tmp_path)

    (tmp_path / "broken-one.yaml").write_text(
        yaml.safe_dump(dict(good, id="broken-one", labels={**good["labels"],
                                                           "impact_quantified": "maybe"})),
        encoding="utf-8")
    with pytest.raises(CorpusError, match=r"broken-one\.yaml.*impact_quantified"):
        load_corpus(tmp_path)

    (tmp_path / "broken-one.yaml").write_text(yaml.safe_dump(dict(good, id="other-name")),
                                              encoding="utf-8")
    with pytest.raises(CorpusError, match=r"broken-one\.yaml.*file name"):
        load_corpus(tmp_path)

    (tmp_path / "broken-one.yaml").write_text("id: [unclosed", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"broken-one\.yaml"):
        load_corpus(tmp_path)


def test_scorer_measures_the_current_checks(corpus: list[DraftCase]) -> None:
    """Runs the checks as they are today and records how they do (not asserted)."""
    for split in ("tune", "holdout"):
        report = score(corpus, split)
        part = [c for c in corpus if c.split == split]
        assert report["cases"] == len(part)
        for name in CHECK_NAMES:
            row = report["checks"][name]
            assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == len(part)
            assert row["tp"] + row["fn"] == row["labels"]["fail"]
            assert len(row["false_positives"]) == row["fp"]
            assert len(row["false_negatives"]) == row["fn"]
        print()
        print(render(report))


#: precision and recall of ``fail`` the reworked checks reach on the TUNE split (issue 13),
#: minus a small margin; a regression below these fails CI. Holdout is printed, not asserted.
TUNE_FLOOR = {
    "baseline_established": (0.95, 0.92),
    "impact_quantified": (0.95, 0.84),
    "monitoring_included": (0.95, 0.95),
    "implementation_quality": (0.95, 0.95),
    "regression_prevention": (0.95, 0.95),
}


def test_reworked_checks_hold_their_tune_accuracy(corpus: list[DraftCase]) -> None:
    report = score(corpus, "tune")
    short = []
    for name, (precision, recall) in TUNE_FLOOR.items():
        row = report["checks"][name]
        if (row["precision"] or 0) < precision or (row["recall"] or 0) < recall:
            short.append(f"{name}: precision {row['precision']} (floor {precision}), recall "
                         f"{row['recall']} (floor {recall}); fp {row['false_positives']}, "
                         f"fn {row['false_negatives']}")
    assert not short, "\n".join(short)
    holdout = score(corpus, "holdout")
    print()
    print(render(report))
    print(render(holdout))  # reported apart, never tuned on, not asserted
