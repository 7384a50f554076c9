"""``perfagent eval``: run suites, re-score a saved run, compare two runs, keep a baseline.

Exit codes (shared with CI): 0 every case passed (or the pass rate reached
``--threshold``), 4 quality below the threshold (or, for ``compare``, a
regression with ``--fail-on-regression``), 5 some case could not run (an
infrastructure error), 1 a usage or structured error. Everything heavy is
imported inside the commands so ``perfagent --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from agent.models import ChatModel
    from evals.model import RunLog, RunSummary, Suite

eval_app = typer.Typer(
    help="Eval suites: run them against the agent, re-score, compare runs, keep a baseline.",
    no_args_is_help=True,
)

RUNS_DIR = Path("evals-runs")

JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
GraderOption = Annotated[str | None, typer.Option(
    "--grader-model", help="model that grades llm_rubric scorers (none: they are skipped)")]
ThresholdOption = Annotated[float, typer.Option(
    min=0.0, max=1.0, help="lowest pass rate that exits 0 (errors always exit 5)")]


def _fail(code: str, message: str, hint: str = "") -> NoReturn:
    from agent.cli import _fail as fail

    raise fail(code, message, hint)


def _console(stderr: bool = False) -> Console:
    from agent.cli import _console as console

    return console(stderr=stderr)


def _grader(spec: str | None, persona: str) -> ChatModel | None:
    if spec is None:
        return None
    from agent.models import ModelError, UnknownModelError, build_model
    from agent.persona import PersonaError, get_persona

    try:
        return build_model(spec, get_persona(persona))
    except UnknownModelError as exc:
        _fail("unknown_model", f"--grader-model: {exc}", "pass e.g. anthropic:<model>")
    except ModelError as exc:
        _fail("model_error", f"--grader-model: {exc}", exc.hint)
    except PersonaError as exc:
        _fail("persona_error", str(exc), "use a persona from `perfagent personas list`")


def _load(paths: list[Path]) -> list[Suite]:
    from evals.suites import SuiteError, load_suites

    try:
        return load_suites(paths)
    except SuiteError as exc:
        _fail(exc.code, exc.message, exc.hint)


def _read(path: Path) -> RunLog:
    from evals.report import ReportError, read_log

    try:
        return read_log(path)
    except ReportError as exc:
        _fail(exc.code, exc.message, exc.hint)


def _finish(log: RunLog, out: Path, threshold: float, as_json: bool) -> NoReturn:
    """Summarise, write the log and the reports, show the outcome, exit with its code."""
    from evals.metrics import summarize
    from evals.report import ReportError, write_reports
    from evals.runner import exit_code

    summary = summarize(log)
    try:
        paths = write_reports(log, summary, out)
    except ReportError as exc:
        _fail(exc.code, exc.message, exc.hint)
    if as_json:
        sys.stdout.write(summary.model_dump_json(indent=2) + "\n")
    else:
        _show(log, summary, paths, threshold)
    raise typer.Exit(exit_code(summary, threshold))


def _show(log: RunLog, summary: RunSummary, paths: dict[str, Path], threshold: float) -> None:
    from rich.table import Table

    from evals.report import epoch_reason, fmt_ms, fmt_percent

    console = _console()
    table = Table(title=f"eval run {log.run_id}", title_justify="left")
    table.add_column("case", overflow="fold")  # an id is worth two lines, never an ellipsis
    for column in ("status", "passed", "mean score", "reason"):
        table.add_column(column)
    reasons = {(r.suite, r.case_id): epoch_reason(r) for r in log.runs
               if r.status == "error" or r.passed is False}
    colours = {"pass": "green", "fail": "red", "error": "yellow", "flaky": "magenta"}
    for case in summary.per_case:
        colour = colours.get(case.status, "dim")
        table.add_row(f"{case.suite}/{case.case_id}", f"[{colour}]{case.status}[/]",
                      f"{case.passes}/{case.epochs}", f"{case.mean_score:.2f}",
                      reasons.get((case.suite, case.case_id), ""))
    console.print(table)
    for p in summary.principles:
        target = f"target {fmt_percent(p.target_percent, 0)}"
        if not p.applicable:
            console.print(f"  {p.name}: [dim]no case applied ({target})[/]")
            continue
        mark = "[green]met[/]" if p.met else "[red]missed[/]"
        console.print(f"  {p.name}: {fmt_percent(p.rate_percent)} of {p.applicable} "
                      f"case-epochs ({target}) {mark}")
    rate = None if summary.pass_rate is None else summary.pass_rate * 100
    console.print(f"[bold]{summary.passed} passed · {summary.failed} failed · {summary.errors} "
                  f"errors · {summary.skipped} skipped[/] · pass rate {fmt_percent(rate)} "
                  f"(threshold {fmt_percent(threshold * 100, 0)}) · {fmt_ms(log.duration_ms)}")
    console.print(f"[dim]reports: {paths['html']} · {paths['markdown']} · {paths['junit']} · "
                  f"{paths['log']}[/]")


@eval_app.command("run")
def run(
    suites: Annotated[list[Path], typer.Argument(help="suite YAML files")],
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="offline, anthropic:<model> or openai:<model>")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="runs of every case")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="case-epochs run at once")] = 1,
    out: Annotated[Path | None, typer.Option(
        help="folder for the log and reports (default evals-runs/<run id>)")] = None,
    timeout: Annotated[float | None, typer.Option(
        min=0.001, help="seconds per case for cases without their own timeout")] = None,
    retries: Annotated[int, typer.Option(min=0, help="retries after a retryable model error")] = 2,
    seed: Annotated[int, typer.Option(help="recorded with the run; seeds the runner's jitter")] = 0,
    grader_model: GraderOption = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="only cases with this tag (repeat for any of several)")] = None,
    threshold: ThresholdOption = 1.0,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="always call the model (the response cache is on by default)")] = False,
    persona: Annotated[str | None, typer.Option(
        help="persona for suites and cases that name none")] = None,
    as_json: JsonOption = False,
) -> None:
    """Run eval suites against the agent; write the log and reports; exit 0, 4 or 5."""
    import sqlite3

    from agent.cli import _settings
    from agent.models import ModelError, UnknownModelError
    from evals.model import RunConfig
    from evals.runner import run_suites
    from evals.suites import SuiteError

    loaded = _load(suites)
    settings = _settings(model, persona)
    config = RunConfig(model=settings.model, grader_model=grader_model, persona=settings.persona,
                       epochs=epochs, concurrency=concurrency, seed=seed, timeout=timeout,
                       retries=retries, cache=not no_cache, tags=tag or [])
    grader = _grader(grader_model, config.persona)
    try:
        log = asyncio.run(run_suites(loaded, config, grader=grader))
    except SuiteError as exc:
        _fail(exc.code, exc.message, exc.hint)
    except UnknownModelError as exc:
        _fail("unknown_model", str(exc), "pass --model offline")
    except ModelError as exc:
        _fail("model_error", str(exc), exc.hint)
    except (OSError, sqlite3.Error) as exc:
        _fail("run_failed", f"the run could not start: {exc}",
              "check that the state directory (PERFAGENT_STATE_DIR) and the temp folder are writable")
    _finish(log, out or RUNS_DIR / log.run_id, threshold, as_json)


def _with_suites(log: RunLog, suites: list[Suite]) -> RunLog:
    """``log`` judged by newer versions of its suites: each given suite replaces the one of
    the same name; runs of cases it no longer has are dropped (and said so)."""
    err = _console(stderr=True)
    given = {s.name: s for s in suites}
    for name in given.keys() - {s.name for s in log.suites}:
        err.print(f"[yellow]warning:[/] suite {name} is not in run {log.run_id}; ignored")
    kept_suites, runs = [], list(log.runs)
    for old in log.suites:
        new = given.get(old.name)
        if new is None:
            kept_suites.append(old)
            continue
        ran = {r.case_id for r in log.runs if r.suite == old.name}
        ids = {c.id for c in new.cases}
        for gone in sorted(ran - ids):
            err.print(f"[yellow]warning:[/] case {old.name}/{gone} is no longer in {new.path}; "
                      "its runs are dropped")
        runs = [r for r in runs if r.suite != old.name or r.case_id in ids]
        cases = [c for c in new.cases if c.id in ran]
        if cases:
            kept_suites.append(new.model_copy(update={"cases": cases}))
    return log.model_copy(update={"suites": kept_suites, "runs": runs})


@eval_app.command("rescore")
def rescore(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="a run folder or its log.json")],
    suite: Annotated[list[Path] | None, typer.Option(
        "--suite", help="newer suite file(s) whose scorers replace the recorded ones")] = None,
    out: Annotated[Path | None, typer.Option(
        help="folder for the re-scored log and reports (default evals-runs/<run id>-rescored)")
    ] = None,
    grader_model: GraderOption = None,
    threshold: ThresholdOption = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Score a saved run again, without running the agent (e.g. after changing scorers)."""
    from evals.scorers import score_case

    log = _read(run_path)
    if suite:
        log = _with_suites(log, _load(suite))
    grader = _grader(grader_model, log.config.persona)
    if grader_model:
        log.config = log.config.model_copy(update={"grader_model": grader_model})

    async def score_all() -> None:
        for r in log.runs:
            r.scores = await score_case(log.case(r.suite, r.case_id), r, grader=grader)

    asyncio.run(score_all())
    _finish(log, out or RUNS_DIR / f"{log.run_id}-rescored", threshold, as_json)


@eval_app.command("compare")
def compare(
    base: Annotated[Path, typer.Argument(help="the earlier run (folder or log.json)")],
    new: Annotated[Path, typer.Argument(help="the later run (folder or log.json)")],
    fail_on_regression: Annotated[bool, typer.Option(
        "--fail-on-regression", help="exit 4 when any case regressed")] = False,
    markdown: Annotated[Path | None, typer.Option(
        help="also write the comparison as Markdown to this file")] = None,
    as_json: JsonOption = False,
) -> None:
    """Align two runs case by case: regressions, improvements and a paired significance test."""
    from evals import compare as comparing
    from evals.runner import EXIT_QUALITY

    comparison = comparing.compare(_read(base), _read(new))
    text = comparing.comparison_markdown(comparison)
    if markdown is not None:
        try:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            markdown.write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail("write_failed", f"cannot write {markdown}: {exc}", "check the folder")
    if as_json:
        sys.stdout.write(comparison.model_dump_json(indent=2) + "\n")
    else:
        from rich.markdown import Markdown

        _console().print(Markdown(text))
    if fail_on_regression and comparison.regressions:
        raise typer.Exit(EXIT_QUALITY)


@eval_app.command("baseline")
def baseline(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="a run folder or its log.json")],
    to: Annotated[Path, typer.Option("--to", help="where the baseline log lives (a file)")],
) -> None:
    """Make a run the committed baseline: the only command that changes one."""
    import shutil

    from evals import compare as comparing
    from evals.report import LOG_FILE, ReportError, read_log

    new = _read(run_path)
    source = run_path / LOG_FILE if run_path.is_dir() else run_path
    target = to / LOG_FILE if to.is_dir() else to
    previous = None
    if target.exists():
        try:
            previous = read_log(target)
        except ReportError as exc:
            _console(stderr=True).print(f"[yellow]warning:[/] the previous baseline {target} is "
                                        f"unreadable ({exc.message}); replacing it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    except OSError as exc:
        _fail("write_failed", f"cannot write {target}: {exc}", "check the folder")
    console = _console()
    if previous is None:
        console.print(f"baseline {target} created from run {new.run_id} "
                      f"({len(new.runs)} case-epochs)")
        return
    c = comparing.compare(previous, new)
    console.print(f"baseline {target} updated: run {previous.run_id} -> {new.run_id}: "
                  f"{len(c.regressions)} regressed, {len(c.improvements)} improved, "
                  f"{len(c.unchanged)} unchanged, {len(c.only_in_new)} new, "
                  f"{len(c.only_in_base)} removed")


@eval_app.command("export-inspect")
def export_inspect(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="a run folder or its log.json")],
    to: Annotated[Path, typer.Option("--to", help="the inspect_ai log to write (a .json file)")],
) -> None:
    """Write a run as an inspect_ai eval log, to open it in `inspect view`."""
    from evals.inspect_export import export_inspect as export
    from evals.report import ReportError

    log = _read(run_path)
    try:
        path = export(log, to)
    except ReportError as exc:
        _fail(exc.code, exc.message, exc.hint)
    _console().print(f"wrote {path} ({len(log.runs)} samples)")
