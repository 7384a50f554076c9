"""What an eval run leaves behind: the JSON run log and the reports made from it.

:func:`write_reports` writes four files into a run folder:

* ``log.json``: the versioned :class:`~evals.model.RunLog` (every trajectory), the
  source of truth that re-scoring, comparing and exporting read back with :func:`read_log`;
* ``junit.xml``: one test case per case-epoch, for CI test-result viewers;
* ``summary.md``: a compact Markdown summary sized for a pull-request comment;
* ``report.html``: one self-contained page (inline CSS, JS and SVG charts, no
  external URL) with a filterable case table that expands into each epoch's turns.

Every piece of recorded text (answers, tool arguments, explanations) is escaped for
its format: the agent's output is data, never markup.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import statistics
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from evals.model import (
    LOG_FORMAT,
    LOG_VERSION,
    CaseRun,
    ErrorInfo,
    RunLog,
    RunSummary,
    TurnRecord,
)

EpochStatus = Literal["pass", "fail", "error", "skipped"]

#: The file names :func:`write_reports` uses inside a run folder.
LOG_FILE = "log.json"
JUNIT_FILE = "junit.xml"
MARKDOWN_FILE = "summary.md"
HTML_FILE = "report.html"

#: Past this many rows a Markdown list folds into a <details> block.
_FOLD_AFTER = 5
#: Longest one-line reason shown in Markdown and JUnit messages.
_REASON_CHARS = 160


class ReportError(Exception):
    """A run log cannot be read or a report cannot be written.

    ``code`` is stable snake_case; ``hint`` says what to do next.
    """

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


# --------------------------------------------------------------------------- the log


def write_log(log: RunLog, path: Path) -> Path:
    """Write ``log`` as pretty UTF-8 JSON, atomically (a reader never sees half a log)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, log.model_dump_json(indent=2))
    except OSError as exc:
        raise ReportError("log_write_failed", f"cannot write the run log {path}: {exc}",
                          "check that the folder is writable and the disk is not full") from None
    return path


def read_log(path: Path) -> RunLog:
    """Read a run log from a run folder (its ``log.json``) or from the file itself.

    The format name and version are checked before the fields, so a foreign JSON
    file or a log from a newer perfagent fails with a message that says so rather
    than a list of missing fields.
    """
    path = Path(path)
    file = path / LOG_FILE if path.is_dir() else path
    if not file.is_file():
        where = f"{path} has no {LOG_FILE}" if path.is_dir() else f"{path} does not exist"
        raise ReportError("log_not_found", f"no run log: {where}",
                          "pass a run folder written by `perfagent eval run` or its log.json")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError("log_unreadable", f"cannot read the run log {file}: {exc}",
                          "the file is damaged or not JSON; re-run the suites") from None
    if not isinstance(data, dict) or data.get("format") != LOG_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ReportError("log_foreign_format",
                          f"{file} is not a perfagent eval log (format: {found!r}, "
                          f"expected {LOG_FORMAT!r})",
                          "pass the log.json of a run folder written by `perfagent eval run`")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ReportError("log_bad_version", f"{file} has no valid version (found {version!r})",
                          "the file was edited or damaged; re-run the suites")
    if version > LOG_VERSION:
        raise ReportError("log_version_newer",
                          f"{file} is log version {version}; this perfagent reads up to "
                          f"version {LOG_VERSION}",
                          "upgrade perfagent to read it (pip install -U perfagent)")
    try:
        return RunLog.model_validate(data)
    except ValidationError as exc:
        first = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise ReportError("log_invalid", f"{file} is not a valid run log: {first}",
                          "the file was edited or damaged; re-run the suites") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through a temporary file, so that a reader (or a
    crash) never sees half a file."""
    # A fresh name beside the target, created with the usual permissions (mkstemp's
    # 0600 would leave reports unreadable to a CI artifact uploader running as another user).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_reports(log: RunLog, summary: RunSummary, out_dir: Path) -> dict[str, Path]:
    """Write the log and the three reports into ``out_dir``.

    Returns the paths by kind: ``log``, ``junit``, ``markdown``, ``html``.
    """
    out_dir = Path(out_dir)
    paths = {"log": write_log(log, out_dir / LOG_FILE)}
    texts = {
        "junit": (JUNIT_FILE, junit_xml(log)),
        "markdown": (MARKDOWN_FILE, summary_markdown(log, summary)),
        "html": (HTML_FILE, html_report(log, summary)),
    }
    for kind, (name, text) in texts.items():
        target = out_dir / name
        try:
            write_text_atomic(target, text)
        except OSError as exc:
            raise ReportError("report_write_failed", f"cannot write {target}: {exc}",
                              "check that the folder is writable and the disk is not full") from None
        paths[kind] = target
    return paths


# --------------------------------------------------------------------------- shared facts


def epoch_status(run: CaseRun) -> EpochStatus:
    """One case-epoch's outcome: an error is not a failure, and all-skipped is neither."""
    if run.status == "error":
        return "error"
    verdict = run.passed
    if verdict is None:
        return "skipped"
    return "pass" if verdict else "fail"


def run_error(run: CaseRun) -> ErrorInfo:
    """The error of an errored case-epoch: the case's own, else its first failed turn's."""
    if run.error is not None:
        return run.error
    for turn in run.turns:
        if turn.error is not None:
            return turn.error
    return ErrorInfo(code="unknown_error", message="the case ended in an error without details",
                     hint="look at the case's events in log.json")


def group_runs(runs: Iterable[CaseRun]) -> dict[tuple[str, str], list[CaseRun]]:
    """Case-epochs by (suite, case_id), in first-seen order, each list sorted by epoch."""
    grouped: dict[tuple[str, str], list[CaseRun]] = {}
    for run in runs:
        grouped.setdefault((run.suite, run.case_id), []).append(run)
    for epochs in grouped.values():
        epochs.sort(key=lambda r: r.epoch)
    return grouped


def one_line(text: str, limit: int = _REASON_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def epoch_reason(run: CaseRun) -> str:
    """Why a case-epoch did not pass, in one line ("" when it passed)."""
    status = epoch_status(run)
    if status == "error":
        err = run_error(run)
        return one_line(f"error {err.code}: {err.message}")
    if status == "skipped":
        reasons = sorted({s.skipped_reason or "skipped" for s in run.scores}) or ["no scorer ran"]
        return one_line("every scorer skipped: " + "; ".join(reasons))
    if status == "fail":
        failed = [s for s in run.scores if s.passed is False]
        return one_line("; ".join(f"{s.scorer}: {s.explanation or 'failed'}" for s in failed))
    return ""


def case_reason(runs: Sequence[CaseRun]) -> str:
    """Why a case did not pass, from its first epoch that did not."""
    for run in runs:
        reason = epoch_reason(run)
        if reason:
            return reason
    return ""


def plural(count: int, word: str) -> str:
    """``count word`` with an English plural ``s`` when count is not 1."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def fmt_percent(value: float | None, digits: int = 1) -> str:
    """A percentage (already in percent) for people; an en dash when there is none."""
    return "–" if value is None else f"{value:.{digits}f} %"


def fmt_ms(value: float | None) -> str:
    """A duration in milliseconds, shown in ms below a second and in seconds above."""
    if value is None:
        return "–"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def fmt_when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------- JUnit XML

# XML 1.0 cannot carry most control characters, which tool output (ANSI colour codes,
# NULs) may contain; they become U+FFFD so the file stays parseable.
_XML_ILLEGAL = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _XML_ILLEGAL.sub("\ufffd", text)


def junit_xml(log: RunLog) -> str:
    """The run as JUnit XML: one ``<testsuite>`` per suite, one ``<testcase>`` per case-epoch.

    A failed case-epoch carries ``<failure>`` with each failed scorer's explanation,
    an errored one ``<error>`` with its code, message and hint, and one whose every
    scorer skipped ``<skipped>`` with the reasons. Counts sit on each ``<testsuite>``.
    """
    root = ET.Element("testsuites", name=f"perfagent eval {log.run_id}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
    by_suite: dict[str, list[CaseRun]] = {s.name: [] for s in log.suites}
    for run in log.runs:
        by_suite.setdefault(run.suite, []).append(run)
    paths = {s.name: s for s in log.suites}
    for index, (suite_name, runs) in enumerate(by_suite.items()):
        statuses = [epoch_status(r) for r in runs]
        seconds = sum(r.duration_ms for r in runs) / 1000
        suite_el = ET.SubElement(root, "testsuite", {
            "name": suite_name, "tests": str(len(runs)),
            "failures": str(statuses.count("fail")), "errors": str(statuses.count("error")),
            "skipped": str(statuses.count("skipped")), "time": f"{seconds:.3f}",
            "timestamp": datetime.fromtimestamp(log.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "id": str(index),
        })
        props = {
            "run_id": log.run_id, "model": log.config.model, "persona": log.config.persona,
            "seed": str(log.config.seed), "epochs": str(log.config.epochs),
            "grader_model": log.config.grader_model or "", "git_rev": log.git_rev or "",
            "perfagent_version": log.perfagent_version,
        }
        if suite_name in paths:
            props |= {"suite_path": paths[suite_name].path, "suite_sha256": paths[suite_name].sha256}
        props_el = ET.SubElement(suite_el, "properties")
        for key, value in props.items():
            ET.SubElement(props_el, "property", name=key, value=_xml_text(value))
        for run, status in zip(runs, statuses, strict=True):
            _junit_case(suite_el, run, status)
        totals["tests"] += len(runs)
        totals["failures"] += statuses.count("fail")
        totals["errors"] += statuses.count("error")
        totals["time"] += seconds
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", str(totals["errors"]))
    root.set("time", f"{totals['time']:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _junit_case(parent: ET.Element, run: CaseRun, status: EpochStatus) -> None:
    case_el = ET.SubElement(parent, "testcase", name=f"{run.case_id}[epoch {run.epoch}]",
                            classname=run.suite, time=f"{run.duration_ms / 1000:.3f}")
    if status == "error":
        err = run_error(run)
        body = err.message + (f"\nhint: {err.hint}" if err.hint else "")
        el = ET.SubElement(case_el, "error", type=_xml_text(err.code),
                           message=_xml_text(one_line(err.message)))
        el.text = _xml_text(body)
    elif status == "skipped":
        ET.SubElement(case_el, "skipped", message=_xml_text(epoch_reason(run)))
    elif status == "fail":
        failed = [s for s in run.scores if s.passed is False]
        lines = [f"FAILED {s.scorer} ({s.type}): {s.explanation or 'failed'}" for s in failed]
        lines += [f"skipped {s.scorer} ({s.type}): {s.skipped_reason}"
                  for s in run.scores if s.passed is None]
        el = ET.SubElement(case_el, "failure", type="scorers",
                           message=_xml_text(f"{len(failed)} of {len(run.scores)} scorers failed: "
                                             + one_line(failed[0].scorer if failed else "")))
        el.text = _xml_text("\n".join(lines))
    if run.final is not None and run.final.answer:
        ET.SubElement(case_el, "system-out").text = _xml_text(run.final.answer)


# --------------------------------------------------------------------------- Markdown


def md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes and tags neutralised."""
    return one_line(text, 10_000).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def md_code(text: str) -> str:
    """Text as an inline code span (inside one, GitHub shows ``<`` and ``&`` literally, so
    only pipes, which would split a table cell, and backticks need care)."""
    return "`" + one_line(text, 10_000).replace("`", "'").replace("|", "\\|") + "`"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A GitHub table; ``align`` holds one of ``l``/``r``/``c`` per column (default left).

    Cells are written as given: pass recorded text through :func:`md_cell` first.
    """
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    rule = [marks[align[i]] if i < len(align) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def md_fold(title: str, body: str, count: int) -> str:
    """``body`` under a heading, folded into <details> when it lists many items."""
    if count <= _FOLD_AFTER:
        return f"**{title}**\n\n{body}"
    return f"<details><summary><b>{title}</b></summary>\n\n{body}\n\n</details>"


def _mark(met: bool | None) -> str:
    return "–" if met is None else ("✅ met" if met else "❌ missed")


def summary_markdown(log: RunLog, summary: RunSummary) -> str:
    """A compact Markdown summary of a run for a pull-request comment."""
    grouped = group_runs(log.runs)
    cfg = log.config
    scored = summary.passed + summary.failed
    rate = None if summary.pass_rate is None else summary.pass_rate * 100
    icon = "✅" if summary.failed == 0 and summary.errors == 0 and scored else (
        "⚠️" if summary.failed == 0 else "❌")
    parts = [
        f"### {icon} perfagent eval: {summary.passed}/{scored} passed ({fmt_percent(rate)})",
        f"{plural(summary.cases, 'case')} × {plural(cfg.epochs, 'epoch')} = "
        f"{plural(summary.case_epochs, 'case-epoch')} · **{summary.failed} failed** · "
        f"**{plural(summary.errors, 'error')}** · {summary.skipped} skipped",
        f"model {md_code(cfg.model)} · persona {md_code(cfg.persona)} · seed {cfg.seed} · "
        f"grader {md_code(cfg.grader_model or 'none')} · run {md_code(log.run_id)}"
        + (f" · git {md_code(log.git_rev)}" if log.git_rev else ""),
    ]
    if summary.principles:
        rows = [(md_cell(p.name), f"{fmt_percent(p.rate_percent)} ({p.compliant}/{p.applicable})",
                 fmt_percent(p.target_percent, 0), _mark(p.met)) for p in summary.principles]
        parts.append(md_table(["Principle", "Compliance", "Target", ""], rows, "lrrc"))
    if summary.checks:
        rows = [(md_code(c.name), fmt_percent(c.rate_percent), str(c.passed), str(c.failed),
                 str(c.not_applicable)) for c in summary.checks]
        parts.append(md_table(["Check", "Pass rate", "Pass", "Fail", "N/A"], rows, "lrrrr"))
    failing = [c for c in summary.per_case if c.status in ("fail", "error")]
    if failing:
        items = "\n".join(f"- {md_code(f'{c.suite}/{c.case_id}')} ({c.status}): "
                          f"{md_cell(case_reason(grouped.get((c.suite, c.case_id), [])))}"
                          for c in failing)
        parts.append(md_fold(f"Failing cases ({len(failing)})", items, len(failing)))
    flaky = [c for c in summary.per_case if c.flaky]
    if flaky:
        items = "\n".join(f"- {md_code(f'{c.suite}/{c.case_id}')}: passed {c.passes} of {c.epochs} epochs; "
                          f"{md_cell(case_reason(grouped.get((c.suite, c.case_id), [])))}"
                          for c in flaky)
        parts.append(md_fold(f"Flaky cases ({len(flaky)})", items, len(flaky)))
    parts.append(
        f"Latency p50 {fmt_ms(summary.latency_p50_ms)} · p95 {fmt_ms(summary.latency_p95_ms)} · "
        f"tokens {summary.input_tokens:,} in / {summary.output_tokens:,} out "
        f"({summary.cache_read_tokens:,} cache read) · {summary.llm_calls:,} LLM calls · "
        f"wall time {fmt_ms(log.duration_ms)}")
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- HTML


class Html(str):
    """Markup built here; every other string is escaped on its way into the page."""


def esc(value: Any) -> Html:
    """``value`` as HTML: built markup as it is, anything else escaped text."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def _attrs(attrs: dict[str, Any]) -> str:
    # ``class_`` stands for ``class`` and ``data_x`` for ``data-x``; None or False drops
    # an attribute, True writes it bare.
    names = {k: k.rstrip("_").replace("_", "-") for k in attrs}
    return "".join(f" {names[k]}" if v is True else f' {names[k]}="{esc(v)}"'
                   for k, v in attrs.items() if v is not None and v is not False)


def _tag(element: str, content: Any = "", /, **attrs: Any) -> Html:
    return Html(f"<{element}{_attrs(attrs)}>{esc(content)}</{element}>")


def _void(element: str, /, **attrs: Any) -> Html:
    """An element without content or end tag (``input``, ``meta``)."""
    return Html(f"<{element}{_attrs(attrs)}>")


def _join(parts: Iterable[Any]) -> Html:
    return Html("".join(esc(p) for p in parts))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], class_: str = "") -> Html:
    head = _tag("tr", _join(_tag("th", h) for h in headers))
    body = _join(_tag("tr", _join(_tag("td", c) for c in row)) for row in rows)
    return _tag("table", _join([_tag("thead", head), _tag("tbody", body)]), class_=class_ or None)


def _pre(text: str) -> Html:
    return _tag("pre", text)


def _badge(status: str) -> Html:
    return _tag("span", status, class_=f"badge {status}")


# ---- charts: inline SVG, coloured by CSS classes so they follow the light/dark theme


@dataclass
class _Bar:
    label: str
    #: (fraction of the full width, CSS class, tooltip) drawn left to right.
    segments: list[tuple[float, str, str]]
    value_text: str
    #: A target drawn as a vertical line at this fraction of the width.
    marker: float | None = None
    marker_text: str = ""


@dataclass
class _Layout:
    label_w: int = 190
    bar_w: int = 320
    value_w: int = 110
    row_h: int = 26
    top: int = 8
    axis_h: int = 22
    ticks: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])


def _hbar_chart(title: str, bars: Sequence[_Bar], tick_label: str = "{:.0%}") -> Html:
    """Horizontal bars (optionally stacked), one row per item, with optional target lines."""
    if not bars:
        return _tag("p", f"{title}: no data", class_="muted")
    lay = _Layout()
    width = lay.label_w + lay.bar_w + lay.value_w
    height = lay.top + len(bars) * lay.row_h + lay.axis_h
    x0 = lay.label_w
    parts: list[Html] = []
    for tick in lay.ticks:
        x = x0 + tick * lay.bar_w
        bottom = height - lay.axis_h
        parts.append(Html(f'<line class="grid" x1="{x:.1f}" y1="{lay.top}" x2="{x:.1f}" y2="{bottom}"/>'))
        parts.append(_tag("text", tick_label.format(tick), x=f"{x:.1f}", y=str(height - 6),
                          class_="tick", text_anchor="middle"))
    for i, bar in enumerate(bars):
        y = lay.top + i * lay.row_h
        parts.append(_tag("text", one_line(bar.label, 28), x=str(x0 - 8), y=str(y + 17),
                          class_="label", text_anchor="end"))
        x = float(x0)
        for fraction, css, tip in bar.segments:
            w = max(0.0, min(fraction, 1.0)) * lay.bar_w
            parts.append(_tag("rect", _tag("title", tip), x=f"{x:.1f}", y=str(y + 5), width=f"{w:.1f}",
                              height=str(lay.row_h - 10), class_=css))
            x += w
        if bar.marker is not None:
            mx = x0 + bar.marker * lay.bar_w
            parts.append(_tag("line", _tag("title", bar.marker_text), x1=f"{mx:.1f}", y1=str(y + 1),
                              x2=f"{mx:.1f}", y2=str(y + lay.row_h - 1), class_="target"))
        parts.append(_tag("text", bar.value_text, x=str(x0 + lay.bar_w + 8), y=str(y + 17),
                          class_="value"))
    svg = _tag("svg", _join(parts), viewBox=f"0 0 {width} {height}", role="img", aria_label=title,
               class_="chart")
    return _tag("figure", _join([_tag("figcaption", title), svg]))


def _principles_chart(summary: RunSummary) -> Html:
    bars = []
    for p in summary.principles:
        css = "na" if p.met is None else ("pass" if p.met else "fail")
        rate = (p.rate_percent or 0.0) / 100
        bars.append(_Bar(
            label=p.name, value_text=f"{fmt_percent(p.rate_percent)} / {p.target_percent:.0f} %",
            segments=[(rate, css, f"{p.name}: {p.compliant} of {p.applicable} compliant ({p.rule})")],
            marker=p.target_percent / 100, marker_text=f"target {p.target_percent:.0f} %"))
    return _hbar_chart("Principle compliance (line: target)", bars)


def _checks_chart(summary: RunSummary) -> Html:
    bars = [_Bar(label=c.name, value_text=fmt_percent(c.rate_percent),
                 segments=[((c.rate_percent or 0.0) / 100, "pass" if c.rate_percent is not None else "na",
                            f"{c.passed} pass, {c.failed} fail, {c.not_applicable} not applicable")])
            for c in summary.checks]
    return _hbar_chart("Pre-response checks: pass rate in final answers", bars)


def _scorers_chart(summary: RunSummary) -> Html:
    bars = []
    for s in summary.scorers:
        total = s.passed + s.failed + s.skipped
        if not total:
            continue
        bars.append(_Bar(label=s.type, value_text=f"{s.passed}/{s.failed}/{s.skipped}", segments=[
            (s.passed / total, "pass", f"{s.passed} passed"),
            (s.failed / total, "fail", f"{s.failed} failed"),
            (s.skipped / total, "na", f"{s.skipped} skipped"),
        ]))
    return _hbar_chart("Scorers: passed / failed / skipped", bars)


def _duration_chart(runs: Sequence[CaseRun]) -> Html:
    """A histogram of case-epoch durations, each bin stacked by outcome."""
    title = "Case-epoch durations"
    if not runs:
        return _tag("p", f"{title}: no data", class_="muted")
    seconds = [r.duration_ms / 1000 for r in runs]
    low, high = min(seconds), max(seconds)
    n_bins = max(1, min(12, math.ceil(math.sqrt(len(runs)))))
    step = (high - low) / n_bins or 1.0
    order: list[EpochStatus] = ["pass", "fail", "error", "skipped"]
    bins = [dict.fromkeys(order, 0) for _ in range(n_bins)]
    for run, s in zip(runs, seconds, strict=True):
        bins[min(int((s - low) / step), n_bins - 1)][epoch_status(run)] += 1
    tallest = max(sum(b.values()) for b in bins)
    left, bottom, plot_h, bin_w = 40, 160, 140, 460 / n_bins
    parts: list[Html] = [Html(f'<line class="grid" x1="{left}" y1="{bottom}" x2="{left + 460}" '
                              f'y2="{bottom}"/>'),
                         _tag("text", str(tallest), x=str(left - 6), y="24", class_="tick",
                              text_anchor="end"),
                         _tag("text", "0", x=str(left - 6), y=str(bottom), class_="tick", text_anchor="end")]
    for i, counts in enumerate(bins):
        x, y = left + i * bin_w, float(bottom)
        lo, hi = low + i * step, low + (i + 1) * step
        for status in order:
            h = counts[status] / tallest * plot_h
            if counts[status]:
                y -= h
                css = "na" if status == "skipped" else status
                parts.append(_tag("rect", _tag("title", f"{lo:.2f}–{hi:.2f} s: {counts[status]} {status}"),
                                  x=f"{x + 1:.1f}", y=f"{y:.1f}", width=f"{bin_w - 2:.1f}",
                                  height=f"{h:.1f}", class_=css))
        if i % max(1, n_bins // 6) == 0:
            parts.append(_tag("text", f"{lo:.1f}", x=f"{x:.1f}", y=str(bottom + 16), class_="tick",
                              text_anchor="middle"))
    parts.append(_tag("text", f"{high:.1f} s", x=str(left + 460), y=str(bottom + 16), class_="tick",
                      text_anchor="middle"))
    svg = _tag("svg", _join(parts), viewBox="0 0 520 182", role="img", aria_label=title, class_="chart")
    return _tag("figure", _join([_tag("figcaption", f"{title} (seconds; colour: outcome)"), svg]))


# ---- the drill-down


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _turn_html(number: int, turn: TurnRecord) -> Html:
    result = turn.result
    parts: list[Any] = [_tag("h5", f"Turn {number} · {fmt_ms(turn.duration_ms)}"),
                        _tag("div", "Input", class_="k"), _pre(turn.input)]
    if turn.error is not None:
        parts.append(_error_html(turn.error))
    if result is None:
        return _tag("section", _join(parts), class_="turn")
    parts += [_tag("div", f"Answer (revisions: {result.revisions})", class_="k"),
              _pre(result.answer or "(empty)")]
    if result.checks:
        parts.append(_table(["Check", "Status", "Evidence", "Feedback"],
                            [(c.name, _badge(c.status), c.evidence, c.feedback) for c in result.checks]))
    if result.tool_calls:
        parts.append(_table(["Tool", "Arguments", "OK", "Duration", "Error"],
                            [(t.name, _tag("code", _json(t.args)), _badge("pass" if t.ok else "fail"),
                              fmt_ms(t.duration_ms), t.error or "") for t in result.tool_calls]))
    if result.delegations:
        parts.append(_table(["Delegated to", "Task", "Answer"],
                            [(d.to, d.task, _pre(d.answer)) for d in result.delegations]))
    if result.measurements:
        parts.append(_table(["Measurement", "Value", "Source", "Target", "Budget", "Within"],
                            [(m.name, f"{m.value:g} {m.unit}", m.source, m.target, m.budget or "",
                              "–" if m.passed is None else ("yes" if m.passed else "no"))
                             for m in result.measurements]))
    if result.findings:
        parts.append(_table(["Finding", "Severity", "Summary", "Location", "Evidence"],
                            [(f.kind, f.severity, f.summary, f.location or "", f.evidence or "")
                             for f in result.findings]))
    usage = result.usage
    parts.append(_tag("p", f"{usage.llm_calls} LLM calls · {usage.input_tokens} in / "
                           f"{usage.output_tokens} out tokens · nodes: "
                      + ", ".join(f"{k} {fmt_ms(v)}" for k, v in result.timings_ms.nodes.items()),
                      class_="muted"))
    return _tag("section", _join(parts), class_="turn")


def _error_html(err: ErrorInfo) -> Html:
    return _tag("div", _join([_tag("b", f"error {err.code}: "), err.message,
                              _tag("div", f"hint: {err.hint}") if err.hint else ""]), class_="error")


def message_text(message: dict[str, Any]) -> str:
    """The text of a recorded thread message: its string content, the text blocks of
    block content (Anthropic style), else the content as JSON."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
        if texts:
            return "\n".join(texts)
    return _json(content)


def _message_html(message: dict[str, Any]) -> Html:
    """One thread message: who, the text, and the tool calls it made or answers."""
    who = str(message.get("role", "message")) + (f" ({message['name']})" if message.get("name") else "")
    if message.get("tool_call_id"):
        who += f" · answers {message['tool_call_id']}" + (
            f" · {message['status']}" if message.get("status") else "")
    parts: list[Any] = [_tag("b", who)]
    text = message_text(message)
    if text:
        parts.append(_pre(text))
    for call in message.get("tool_calls") or []:
        signature = f"{call.get('name')}({_json(call.get('args'))})"
        parts.append(_tag("div", _join(["calls ", _tag("code", signature), f" · id {call.get('id')}"])))
    return _tag("div", _join(parts), class_="message")


def _epoch_html(run: CaseRun) -> Html:
    status = epoch_status(run)
    head = _join([f"Epoch {run.epoch} ", _badge(status),
                  f" · {fmt_ms(run.duration_ms)} · attempts {run.attempts}",
                  " · from cache" if run.cached else "",
                  f" · thread {run.thread_id}" if run.thread_id else ""])
    parts: list[Any] = [_tag("h4", head)]
    if status == "error":
        parts.append(_error_html(run_error(run)))
    if run.scores:
        parts.append(_table(
            ["Scorer", "Type", "Value", "Verdict", "Explanation"],
            [(s.scorer, s.type, f"{s.value:.2f}",
              _badge("skipped" if s.passed is None else ("pass" if s.passed else "fail")),
              s.skipped_reason if s.passed is None else s.explanation) for s in run.scores],
            class_="scores"))
    parts += [_turn_html(i, t) for i, t in enumerate(run.turns, 1)]
    if run.messages:
        items = _join(_message_html(m) for m in run.messages)
        parts.append(_tag("details", _join([_tag("summary", f"Thread messages ({len(run.messages)})"),
                                            items])))
    return _tag("div", _join(parts), class_=f"epoch {status}")


def _case_rows(log: RunLog, summary: RunSummary) -> tuple[Html, list[str]]:
    from evals.metrics import summarize_case

    summaries = {(c.suite, c.case_id): c for c in summary.per_case}
    tags: set[str] = set()
    bodies = []
    for key, runs in group_runs(log.runs).items():
        suite, case_id = key
        # A summary made from another log may lack a case: reduce its epochs here.
        cs = summaries.get(key) or summarize_case(runs, log.config.epochs)
        try:
            case = log.case(suite, case_id)
            description, inputs = case.description, case.input
        except KeyError:
            description, inputs = "", [t.input for t in runs[0].turns]
        tags.update(cs.tags)
        search = " ".join([suite, case_id, description, *inputs, *cs.tags]).lower()
        mean_ms = statistics.fmean(r.duration_ms for r in runs)
        toggle = _tag("button", "▸", type="button", class_="toggle", aria_label=f"show {case_id}")
        head = _tag("tr", _join([
            _tag("td", toggle), _tag("td", suite), _tag("td", _tag("b", case_id)),
            _tag("td", _badge(cs.status)),
            _tag("td", f"{cs.passes}/{cs.failures}/{cs.errors}", title="passes/failures/errors",
                 class_="num"),
            _tag("td", f"{cs.mean_score:.2f} ± {cs.stderr:.2f}", class_="num"),
            _tag("td", fmt_ms(mean_ms), class_="num"),
            _tag("td", " ".join(cs.tags)), _tag("td", case_reason(runs), class_="reason"),
        ]), class_="head")
        detail_parts: list[Any] = [_tag("p", description) if description else "",
                                   _tag("p", f"pass@k {cs.pass_at_k:.2f} · pass^k {cs.pass_hat_k:.2f}"
                                        + (" · flaky" if cs.flaky else ""), class_="muted")]
        detail_parts += [_epoch_html(r) for r in runs]
        detail = _tag("tr", _tag("td", _join(detail_parts), colspan="9"), class_="detail", hidden=True)
        bodies.append(_tag("tbody", _join([head, detail]), class_="case", data_status=cs.status,
                           data_tags="|" + "|".join(cs.tags) + "|", data_search=search))
    return _join(bodies), sorted(tags)


def _cards(log: RunLog, summary: RunSummary) -> Html:
    rate = None if summary.pass_rate is None else summary.pass_rate * 100
    cards = [
        ("Pass rate", fmt_percent(rate), f"{summary.passed} of {summary.passed + summary.failed} scored"),
        ("Failed", str(summary.failed), "case-epochs"),
        ("Errors", str(summary.errors), "infrastructure, not quality"),
        ("Skipped", str(summary.skipped), "every scorer skipped"),
        ("Cases", str(summary.cases), f"{summary.case_epochs} case-epochs"),
        ("Latency p50 / p95", f"{fmt_ms(summary.latency_p50_ms)} / {fmt_ms(summary.latency_p95_ms)}",
         f"wall time {fmt_ms(log.duration_ms)}"),
        ("Tokens", f"{summary.input_tokens:,} / {summary.output_tokens:,}",
         f"in / out · {summary.llm_calls} LLM calls"),
    ]
    return _tag("div", _join(
        _tag("div", _join([_tag("div", label, class_="k"), _tag("div", value, class_="v"),
                           _tag("div", note, class_="muted")]), class_="card")
        for label, value, note in cards), class_="cards")


_CSS = """
:root{--bg:#fff;--fg:#1b1f24;--muted:#5b6470;--line:#d8dee4;--panel:#f6f8fa;--pass:#1a7f37;
--fail:#cf222e;--error:#9a6700;--na:#8c959f;--target:#0550ae}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9198a1;--line:#30363d;
--panel:#161b22;--pass:#3fb950;--fail:#f85149;--error:#d29922;--na:#6e7681;--target:#79c0ff}}
*{box-sizing:border-box}body{margin:0;padding:1.5rem;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif}h1{font-size:1.4rem;margin:0 0 .25rem}
.muted{color:var(--muted)}.k{color:var(--muted);font-size:.8rem;text-transform:uppercase;letter-spacing:.04em}
.cards{display:flex;flex-wrap:wrap;gap:.75rem;margin:1rem 0}.card{background:var(--panel);
border:1px solid var(--line);border-radius:8px;padding:.6rem .9rem;min-width:9rem}.card .v{font-size:1.35rem;
font-weight:600}.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(430px,1fr));gap:1rem;
align-items:start}
figure{margin:0;background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:.6rem}
figcaption{font-weight:600;margin-bottom:.3rem}svg.chart{width:100%;height:auto}
svg text{fill:var(--fg);font-size:11px}svg .tick{fill:var(--muted);font-size:10px}
svg .grid{stroke:var(--line);stroke-width:1}svg .target{stroke:var(--target);stroke-width:3}
rect.pass{fill:var(--pass)}rect.fail{fill:var(--fail)}rect.error{fill:var(--error)}rect.na{fill:var(--na)}
.filters{display:flex;flex-wrap:wrap;gap:.6rem;align-items:center;margin:1.2rem 0 .6rem}
input,select,button{font:inherit;color:var(--fg);background:var(--panel);border:1px solid var(--line);
border-radius:6px;padding:.25rem .5rem}table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{border-bottom:1px solid var(--line);padding:.3rem .45rem;text-align:left;vertical-align:top}
th{font-size:.8rem;color:var(--muted)}tr.head{cursor:pointer}tr.head:hover{background:var(--panel)}
tr.head.open .toggle{transform:rotate(90deg)}.toggle{border:0;background:none;padding:0 .2rem}
td.reason{color:var(--muted);max-width:28rem}td.num{white-space:nowrap}.message{margin:.4rem 0}
tr.detail>td{background:var(--panel);padding:.8rem}
pre{white-space:pre-wrap;word-break:break-word;background:var(--bg);border:1px solid var(--line);
border-radius:6px;padding:.5rem;margin:.2rem 0 .5rem;max-height:28rem;overflow:auto}
code{font-size:.85em;word-break:break-all}.epoch{border-left:4px solid var(--na);padding-left:.8rem;
margin:.8rem 0}.epoch.pass{border-color:var(--pass)}.epoch.fail{border-color:var(--fail)}
.epoch.error{border-color:var(--error)}.turn{margin:.5rem 0 .5rem .5rem}h4,h5{margin:.4rem 0}
.badge{display:inline-block;white-space:nowrap;border-radius:999px;padding:0 .5rem;font-size:.78rem;
color:#fff;
background:var(--na)}.badge.pass{background:var(--pass)}.badge.fail{background:var(--fail)}
.badge.error,.badge.flaky{background:var(--error)}.error{border:1px solid var(--error);border-radius:6px;
padding:.4rem .6rem;margin:.3rem 0}
"""

_JS = """
(function () {
  var q = document.getElementById('q'), st = document.getElementById('status'),
      tg = document.getElementById('tag'), shown = document.getElementById('shown');
  var cases = Array.prototype.slice.call(document.querySelectorAll('tbody.case'));
  function apply() {
    var text = q.value.trim().toLowerCase(), n = 0;
    cases.forEach(function (b) {
      var ok = (!st.value || b.dataset.status === st.value) &&
               (!tg.value || b.dataset.tags.indexOf('|' + tg.value + '|') >= 0) &&
               (!text || b.dataset.search.indexOf(text) >= 0);
      b.hidden = !ok; if (ok) n++;
    });
    shown.textContent = n;
  }
  function toggle(head, open) {
    var detail = head.nextElementSibling;
    detail.hidden = !open; head.classList.toggle('open', open);
    head.querySelector('.toggle').setAttribute('aria-expanded', String(open));
  }
  [q, st, tg].forEach(function (el) { el.addEventListener('input', apply); });
  document.querySelectorAll('tr.head').forEach(function (head) {
    head.addEventListener('click', function () { toggle(head, head.nextElementSibling.hidden); });
  });
  document.getElementById('expand').addEventListener('click', function () {
    cases.forEach(function (b) { if (!b.hidden) toggle(b.querySelector('tr.head'), true); });
  });
  document.getElementById('collapse').addEventListener('click', function () {
    cases.forEach(function (b) { toggle(b.querySelector('tr.head'), false); });
  });
})();
"""


def html_report(log: RunLog, summary: RunSummary) -> str:
    """The run as one self-contained HTML page: figures, charts and a drill-down case table."""
    cfg = log.config
    rows, tags = _case_rows(log, summary)
    statuses = ["pass", "fail", "error", "flaky", "skipped"]
    filters = _tag("div", _join([
        _void("input", id="q", type="search", placeholder="search id, input, tag…", aria_label="search"),
        _tag("select", _join([_tag("option", "any status", value="")]
                             + [_tag("option", s, value=s) for s in statuses]), id="status",
             aria_label="status"),
        _tag("select", _join([_tag("option", "any tag", value="")]
                             + [_tag("option", t, value=t) for t in tags]), id="tag", aria_label="tag"),
        _tag("button", "expand all", id="expand", type="button"),
        _tag("button", "collapse all", id="collapse", type="button"),
        _tag("span", _join([_tag("span", str(len(summary.per_case) or len(group_runs(log.runs))), id="shown"),
                            " cases shown"]), class_="muted"),
    ]), class_="filters")
    header = ["", "Suite", "Case", "Status", "P/F/E", "Mean score", "Mean time", "Tags", "Why not passing"]
    table = _tag("table", _join([_tag("thead", _tag("tr", _join(_tag("th", h) for h in header))), rows]),
                 class_="cases")
    meta = (f"model {cfg.model} · persona {cfg.persona} · seed {cfg.seed} · {cfg.epochs} epoch(s) · "
            f"grader {cfg.grader_model or 'none'} · concurrency {cfg.concurrency} · run {log.run_id} · "
            f"{fmt_when(log.created_at)}" + (f" · git {log.git_rev}" if log.git_rev else "")
            + (f" · perfagent {log.perfagent_version}" if log.perfagent_version else ""))
    suites = ", ".join(f"{s.name} ({len(s.cases)} cases)" for s in log.suites)
    body = _join([
        _tag("h1", f"perfagent eval · {log.run_id}"), _tag("div", meta, class_="muted"),
        _tag("div", f"suites: {suites}", class_="muted"), _cards(log, summary),
        _tag("div", _join([_principles_chart(summary), _checks_chart(summary), _scorers_chart(summary),
                           _duration_chart(log.runs)]), class_="charts"),
        _tag("h2", "Cases"), filters, table,
        _tag("p", "Every event of every turn is in log.json beside this page.", class_="muted"),
    ])
    return ("<!doctype html>\n" + _tag("html", _join([
        _tag("head", _join([_void("meta", charset="utf-8"),
                            _void("meta", name="viewport", content="width=device-width, initial-scale=1"),
                            _void("meta", name="color-scheme", content="light dark"),
                            _tag("title", f"perfagent eval {log.run_id}"), _tag("style", Html(_CSS))])),
        _tag("body", _join([body, _tag("script", Html(_JS))])),
    ]), lang="en") + "\n")
