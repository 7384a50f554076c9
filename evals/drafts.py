"""The labeled draft corpus of ``tests/data/drafts/`` and how the checks score on it.

Each YAML file there is one draft answer, written the way models write them,
with the evidence it was written from (what the turn's tools measured and
found, the calls they made, the texts a figure may quote) and a label per
pre-response check: ``pass``, ``fail`` or ``not_applicable``, by the persona's
meaning of the check, not by what the code does today (the labeling rules are
in ``tests/data/drafts/README.md``).

:func:`load_corpus` validates every file and names the file that is wrong;
:func:`score` runs the checks of ``agent/checks/`` over each draft, with the
evidence handed over the way ``agent/graph.py`` does for a real turn, and
measures them like a classifier of ``fail``: true/false positives and
negatives, precision and recall per check, how ``not_applicable`` was labeled
and predicted, and which drafts were misjudged. Part of the corpus is held out
(``split: holdout``) so a rework can be tuned on one part and reported on the
other.

    python -m evals.drafts [--split tune|holdout] [--ids] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.persona import Persona
from agent.results import ToolCallRecord
from tools.base import Finding, Measurement

CHECK_NAMES: tuple[str, ...] = (
    "baseline_established",
    "impact_quantified",
    "monitoring_included",
    "implementation_quality",
    "regression_prevention",
)
CheckName = Literal[
    "baseline_established",
    "impact_quantified",
    "monitoring_included",
    "implementation_quality",
    "regression_prevention",
]
Label = Literal["pass", "fail", "not_applicable"]
Split = Literal["tune", "holdout"]

#: the corpus shipped with the tests
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "tests" / "data" / "drafts"


class CorpusError(ValueError):
    """A corpus file is missing, unreadable or does not match the schema; names the file."""


# --------------------------------------------------------------------------- the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvidenceMeasurement(Measurement):
    """A measurement as a tool emits it (``tools.base.Measurement``), no other keys."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _named(self) -> EvidenceMeasurement:
        if not self.name.strip() or not self.source.strip():
            raise ValueError("a measurement needs a name and the tool that measured it (source)")
        return self


class EvidenceFinding(Finding):
    """A finding as a tool emits it (``tools.base.Finding``), no other keys."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _described(self) -> EvidenceFinding:
        if not self.kind.strip() or not self.summary.strip():
            raise ValueError("a finding needs a kind and a summary")
        return self


class EvidenceToolCall(ToolCallRecord):
    """A tool call record as the TurnResult holds it, no other keys."""

    model_config = ConfigDict(extra="forbid")


class Evidence(_Strict):
    """What the draft was written from: the TurnResult's parts plus quotable texts."""

    measurements: list[EvidenceMeasurement] = Field(default_factory=list)
    findings: list[EvidenceFinding] = Field(default_factory=list)
    tool_calls: list[EvidenceToolCall] = Field(default_factory=list)
    #: texts a figure may quote besides the question: tool outputs, retrieved documents
    sources: list[str] = Field(default_factory=list)


class Labels(_Strict):
    """The expected status of each check, by the persona's meaning of it."""

    baseline_established: Label
    impact_quantified: Label
    monitoring_included: Label
    implementation_quality: Label
    regression_prevention: Label

    def items(self) -> list[tuple[str, Label]]:
        return [(name, getattr(self, name)) for name in CHECK_NAMES]


class DraftCase(_Strict):
    """One labeled draft."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    split: Split
    family: str = Field(pattern=r"^[a-z0-9_]+$", description="what kind of draft, e.g. keyword_stuffed")
    question: str = Field(min_length=1, description="the user's message")
    evidence: Evidence
    draft: str = Field(min_length=1, description="the answer, in Markdown")
    labels: Labels
    #: one line per failing check: what exactly makes it fail
    why: dict[CheckName, str] = Field(default_factory=dict)
    #: figures the draft states that nothing measured (cited by a ``why``), e.g. "850 ms"
    unmeasured: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> DraftCase:
        fails = {name for name, label in self.labels.items() if label == "fail"}
        if missing := sorted(fails - set(self.why)):
            raise ValueError(f"every fail needs a why; missing for {', '.join(missing)}")
        if extra := sorted(set(self.why) - fails):
            raise ValueError(f"why given for checks not labeled fail: {', '.join(extra)}")
        for name, line in self.why.items():
            if not line.strip() or "\n" in line.strip():
                raise ValueError(f"why of {name} must be one non-empty line")
        flat = " ".join(self.draft.split())
        for figure in self.unmeasured:
            if " ".join(figure.split()) not in flat:
                raise ValueError(f"unmeasured figure {figure!r} does not occur in the draft")
        return self

    def fails(self) -> list[str]:
        return [name for name, label in self.labels.items() if label == "fail"]


# --------------------------------------------------------------------------- loading


def load_case(path: Path) -> DraftCase:
    """One corpus file, validated; :class:`CorpusError` names the file on any problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CorpusError(f"{path}: cannot read the draft: {exc}") from exc
    if not isinstance(raw, dict):
        raise CorpusError(f"{path}: expected a mapping with id, split, family, question, "
                          f"evidence, draft, labels, why; got {type(raw).__name__}")
    try:
        case = DraftCase.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in exc.errors()[:8])
        raise CorpusError(f"{path}: {problems}") from exc
    if case.id != path.stem:
        raise CorpusError(f"{path}: id {case.id!r} must equal the file name ({path.stem!r})")
    return case


def load_corpus(path: str | Path | None = None) -> list[DraftCase]:
    """Every draft of the corpus folder (default: ``tests/data/drafts``), sorted by id.

    Raises :class:`CorpusError` naming the file when one is invalid, and when two
    files share an id or the folder holds no draft.
    """
    folder = Path(path) if path is not None else DEFAULT_PATH
    if not folder.is_dir():
        raise CorpusError(f"{folder}: not a folder of drafts")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        raise CorpusError(f"{folder}: no draft files (*.yaml)")
    cases: list[DraftCase] = []
    seen: dict[str, Path] = {}
    for file in files:
        case = load_case(file)
        if case.id in seen:
            raise CorpusError(f"{file}: id {case.id!r} is also used by {seen[case.id]}")
        seen[case.id] = file
        cases.append(case)
    return sorted(cases, key=lambda c: c.id)


# --------------------------------------------------------------------------- figures

_FIGURE = re.compile(
    r"^\s*~?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)\s*(?P<mult>[kKM])?\s*"
    r"(?P<unit>.*?)\s*$")
_UNITS: dict[str, tuple[str, float]] = {
    "µs": ("time", 0.001), "us": ("time", 0.001),
    "ms": ("time", 1.0), "millisecond": ("time", 1.0), "milliseconds": ("time", 1.0),
    "s": ("time", 1000.0), "sec": ("time", 1000.0), "second": ("time", 1000.0),
    "seconds": ("time", 1000.0),
    "%": ("percent", 1.0), "percent": ("percent", 1.0),
    "×": ("ratio", 1.0), "x": ("ratio", 1.0), "times": ("ratio", 1.0),
    "req/s": ("rate", 1.0), "rps": ("rate", 1.0), "requests/s": ("rate", 1.0),
    "ops/s": ("rate", 1.0), "qps": ("rate", 1.0),
    "b": ("bytes", 1.0), "bytes": ("bytes", 1.0), "kb": ("bytes", 1e3), "kib": ("bytes", 1024.0),
    "mb": ("bytes", 1e6), "mib": ("bytes", 1024.0**2), "gb": ("bytes", 1e9),
    "gib": ("bytes", 1024.0**3),
    "": ("count", 1.0), "count": ("count", 1.0), "rows": ("count", 1.0), "row": ("count", 1.0),
    "queries": ("count", 1.0), "entries": ("count", 1.0), "keys": ("count", 1.0),
}


def parse_figure(text: str) -> tuple[str, float] | None:
    """``"850 ms"`` -> ``("time", 850.0)``; ``"0.23 s"`` -> ``("time", 230.0)``;
    ``"50M rows"`` -> ``("count", 5e7)``; None when the text is not a figure."""
    match = _FIGURE.match(text)
    if not match:
        return None
    value = float(match.group("num").replace(",", ""))
    value *= {"k": 1e3, "K": 1e3, "M": 1e6}.get(match.group("mult") or "", 1.0)
    unit = match.group("unit").strip().lower()
    if unit not in _UNITS:
        return None
    family, factor = _UNITS[unit]
    return family, value * factor


def measurement_figure(m: Measurement) -> tuple[str, float] | None:
    """A measurement's value in the units :func:`parse_figure` uses."""
    unit = m.unit.strip().lower()
    if unit in ("1/s", "load/core", "% of one core", "entries"):
        family, factor = {"1/s": ("rate", 1.0), "load/core": ("ratio", 1.0),
                          "% of one core": ("percent", 1.0), "entries": ("count", 1.0)}[unit]
    elif unit in _UNITS:
        family, factor = _UNITS[unit]
    else:
        return None
    return family, m.value * factor


def matches_measurement(figure: str, measurements: Iterable[Measurement],
                        tolerance: float = 0.01) -> list[Measurement]:
    """The measurements ``figure`` could be a (rounded, unit-converted) quote of."""
    parsed = parse_figure(figure)
    if parsed is None:
        raise ValueError(f"{figure!r} is not a figure (a number and a unit)")
    family, value = parsed
    found = []
    for m in measurements:
        other = measurement_figure(m)
        if other is None or other[0] != family:
            continue
        if abs(other[1] - value) <= max(tolerance * max(abs(value), abs(other[1])), 1e-9):
            found.append(m)
    return found


# --------------------------------------------------------------------------- scoring


def predict(case: DraftCase, persona: Persona | None = None) -> dict[str, str]:
    """The status each check gives the draft, through the same entry as ``perfagent check``
    (:func:`agent.draft_check.check_draft`): what is measured here is what users run.

    As a real turn does, the user's message is quotable, first among the sources.
    """
    from agent.draft_check import Evidence as CheckEvidence
    from agent.draft_check import check_draft

    ev = case.evidence
    evidence = CheckEvidence(
        measurements=[m.model_dump() for m in ev.measurements],
        findings=[f.model_dump() for f in ev.findings],
        tool_calls=[c.model_dump() for c in ev.tool_calls],
        sources=[case.question, *ev.sources], question=case.question)
    report = check_draft(case.draft, evidence, persona)
    return {r.name: r.status for r in report.checks}


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 3) if den else None


def score(cases: Sequence[DraftCase], split: Split | None = None, *,
          persona: Persona | None = None) -> dict[str, Any]:
    """Run the current checks over ``cases`` (optionally one split) and measure them.

    Per check, ``fail`` is the positive class: ``tp`` drafts labeled and judged
    fail, ``fp`` judged fail but labeled pass or not applicable, ``fn`` labeled
    fail but judged otherwise, ``tn`` neither. ``precision``/``recall`` are None
    when undefined. ``not_applicable`` counts how often it was labeled,
    predicted, and both; ``status_mismatches`` lists drafts where pass and
    not_applicable were confused (neither side fail).
    """
    chosen = [c for c in cases if split is None or c.split == split]
    if persona is None:
        from agent.draft_check import resolve_persona

        persona = resolve_persona(None)  # once, not per draft
    checks: dict[str, dict[str, Any]] = {
        name: {"tp": 0, "fp": 0, "fn": 0, "tn": 0,
               "labels": {"pass": 0, "fail": 0, "not_applicable": 0},
               "predicted": {"pass": 0, "fail": 0, "not_applicable": 0},
               "not_applicable": {"labeled": 0, "predicted": 0, "agreed": 0},
               "false_positives": [], "false_negatives": [], "status_mismatches": []}
        for name in CHECK_NAMES
    }
    started = time.perf_counter()
    for case in chosen:
        predicted = predict(case, persona)
        for name, label in case.labels.items():
            row, got = checks[name], predicted[name]
            row["labels"][label] += 1
            row["predicted"][got] = row["predicted"].get(got, 0) + 1
            na = row["not_applicable"]
            na["labeled"] += label == "not_applicable"
            na["predicted"] += got == "not_applicable"
            na["agreed"] += label == got == "not_applicable"
            if label == "fail" and got == "fail":
                row["tp"] += 1
            elif got == "fail":
                row["fp"] += 1
                row["false_positives"].append(case.id)
            elif label == "fail":
                row["fn"] += 1
                row["false_negatives"].append(case.id)
            else:
                row["tn"] += 1
                if label != got:
                    row["status_mismatches"].append(case.id)
    elapsed = time.perf_counter() - started
    for row in checks.values():
        row["precision"] = _ratio(row["tp"], row["tp"] + row["fp"])
        row["recall"] = _ratio(row["tp"], row["tp"] + row["fn"])
    return {
        "split": split or "all",
        "cases": len(chosen),
        "ms_per_draft": round(1000 * elapsed / len(chosen), 3) if chosen else None,
        "checks": checks,
    }


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render(report: dict[str, Any], *, ids: bool = False) -> str:
    """The report as a plain-text table (and the misjudged ids when asked)."""
    head = (f"{'check':24} {'fail/pass/n.a.':>15} {'tp':>4} {'fp':>4} {'fn':>4} {'tn':>4} "
            f"{'precision':>9} {'recall':>7}  n.a. labeled/predicted/agreed")
    lines = [f"split: {report['split']}, {report['cases']} drafts, "
             f"{report['ms_per_draft']} ms per draft (five checks)", head, "-" * len(head)]
    for name, row in report["checks"].items():
        lab = row["labels"]
        na = row["not_applicable"]
        lines.append(
            f"{name:24} {lab['fail']:>5}/{lab['pass']:>4}/{lab['not_applicable']:>4} "
            f"{row['tp']:>4} {row['fp']:>4} {row['fn']:>4} {row['tn']:>4} "
            f"{_fmt(row['precision']):>9} {_fmt(row['recall']):>7}  "
            f"{na['labeled']}/{na['predicted']}/{na['agreed']}")
    if ids:
        for name, row in report["checks"].items():
            for key in ("false_positives", "false_negatives", "status_mismatches"):
                if row[key]:
                    lines.append(f"{name} {key}: {', '.join(row[key])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.drafts",
        description="Score the current pre-response checks on the labeled draft corpus.")
    parser.add_argument("--split", choices=["tune", "holdout"], default=None,
                        help="score one split only (default: the whole corpus)")
    parser.add_argument("--path", default=None, help="corpus folder (default: tests/data/drafts)")
    parser.add_argument("--ids", action="store_true", help="list the misjudged drafts")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        cases = load_corpus(args.path)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = score(cases, args.split)
    print(json.dumps(report, indent=2) if args.json else render(report, ids=args.ids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
