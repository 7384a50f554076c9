"""The eval runner: every case of the selected suites, ``epochs`` times, through the agent.

Each case-epoch gets a fresh thread, its fixture (started in its own work
folder and stopped afterwards), and its turns run one after another through
:func:`agent.run.stream_turn`, the same core API every surface uses. What is
recorded per case-epoch (:class:`~evals.model.CaseRun`): each turn's events
(all but text deltas), its TurnResult and duration, then the thread's whole
message list read back from the checkpointer, then the scores.

Errors and failures are kept apart. A failure is a scorer saying no; an
error is a case that could not run to the end: its fixture would not start,
it ran past its timeout, the model kept failing after the retries, or
something broke inside. Errors get no scores, an :class:`ErrorInfo`, and
their own exit code (:data:`EXIT_INFRA`).

Retries: a turn that fails because the model call failed in a retryable way
(rate limit, overload, timeout) makes the whole case-epoch start again on a
new thread after an exponential backoff, up to ``config.retries`` times;
``CaseRun.attempts`` counts the tries. The per-case timeout covers the whole
case-epoch: fixture start, every attempt and the backoffs.

While the run lasts, ``PERFAGENT_WORKSPACE`` names the repository (so cases
may name ``examples/...``) and the run's work folder (where fixtures put
their files); the previous value is restored afterwards. Threads and
baselines go to the configured state directory; eval threads are kept out
of the thread index, so they do not crowd ``perfagent``'s thread list.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.model import (
    Case,
    CaseRun,
    ErrorInfo,
    RunConfig,
    RunLog,
    RunSummary,
    Suite,
    TurnRecord,
)
from evals.suites import SuiteError, select

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage

    from agent.context import Settings
    from agent.models import ChatModel, ModelError, ModelRequest
    from evals.cache import CachedModel

#: Exit codes of ``perfagent eval``: every case passed; the pass rate is below the
#: threshold; some case could not run (1 is a usage error, 3 a budget breach elsewhere).
EXIT_OK = 0
EXIT_QUALITY = 4
EXIT_INFRA = 5

#: Backoff before retry n is RETRY_BASE_S * 2**(n-1), capped, with jitter.
RETRY_BASE_S = 0.5
RETRY_MAX_S = 8.0


def exit_code(summary: RunSummary, threshold: float) -> int:
    """What CI sees: infrastructure errors first, then quality below ``threshold``.

    A run in which nothing could be judged (every scorer skipped) is not a
    pass: it exits :data:`EXIT_QUALITY` too.
    """
    if summary.errors:
        return EXIT_INFRA
    if summary.pass_rate is None or summary.pass_rate < threshold:
        return EXIT_QUALITY
    return EXIT_OK


class DraftModel:
    """Answers every call with the same text and asks for no tools.

    A case's ``draft`` runs through this model, so the five checks judge a
    known answer: how a suite shows a check rejecting what it should.
    """

    spec = "draft"

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, request: ModelRequest) -> AIMessage:
        from langchain_core.messages import AIMessage

        if request.on_text:
            request.on_text(self.text)
        return AIMessage(content=self.text)


class _Watched:
    """Passes calls through and remembers the last :class:`ModelError`.

    A failed turn's error event carries only ``model_error``; whether trying
    again can help (``retryable``) is known only to the exception.
    """

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.error: ModelError | None = None

    async def generate(self, request: ModelRequest) -> AIMessage:
        from agent.models import ModelError

        try:
            return await self.inner.generate(request)
        except ModelError as exc:
            self.error = exc
            raise


async def thread_messages(saver: Any, thread_id: str) -> list[dict[str, Any]]:
    """Every message of a thread (user, assistant, tool, revision feedback), oldest first,
    as :func:`evals.cache.message_record` dicts; [] for an unknown thread."""
    from evals.cache import message_record

    found = await saver.aget_tuple({"configurable": {"thread_id": thread_id}})
    if found is None:
        return []
    return [message_record(m) for m in found.checkpoint["channel_values"].get("messages", [])]


def new_run_id() -> str:
    """Sortable by time, unique across machines: ``20260321-142501-3f9a1c``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("perfagent")
    except PackageNotFoundError:
        return ""


@contextlib.contextmanager
def _workspace(*roots: Path) -> Iterator[None]:
    previous = os.environ.get("PERFAGENT_WORKSPACE")
    os.environ["PERFAGENT_WORKSPACE"] = os.pathsep.join(str(r) for r in roots)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PERFAGENT_WORKSPACE", None)
        else:
            os.environ["PERFAGENT_WORKSPACE"] = previous


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[CaseRun], None]]:
    """A progress bar on stderr; yields the callback that counts a finished case-epoch."""
    if not enabled:
        yield lambda run: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    tally = {"pass": 0, "fail": 0, "error": 0}
    with Progress(TextColumn("[bold]eval[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[tally]}"), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("eval", total=total, tally="")

        def done(run: CaseRun) -> None:
            outcome = {True: "pass", False: "fail"}.get(run.passed) if run.status == "ok" else "error"
            if outcome:
                tally[outcome] += 1
            bar.update(task, advance=1, tally=f"[green]✓ {tally['pass']}[/] [red]✗ {tally['fail']}"
                       f"[/] [yellow]! {tally['error']}[/]")

        yield done


@dataclass
class _Run:
    """What every case-epoch of one run shares."""

    config: RunConfig
    settings: Settings
    saver: Any
    work_root: Path
    #: One model per persona, built once (None when a model was injected).
    models: dict[str, ChatModel]
    injected: ChatModel | None
    use_cache: bool
    grader: ChatModel | None

    def model_for(self, persona: str, draft: str | None, epoch: int,
                  ) -> tuple[ChatModel, CachedModel | None]:
        if draft is not None:
            return DraftModel(draft), None
        inner = self.injected or self.models[persona]
        if not self.use_cache:
            return inner, None
        from evals.cache import CACHE_FILE, CachedModel

        cached = CachedModel(inner, self.settings.state_dir / CACHE_FILE, epoch)
        return cached, cached


def _persona_of(suite: Suite, case: Case, config: RunConfig) -> str:
    return case.persona or suite.persona or config.persona


def _build_models(suites: list[Suite], config: RunConfig) -> dict[str, ChatModel]:
    """The model of each persona the cases use; unknown personas fail before anything runs."""
    from agent.models import build_model
    from agent.persona import PersonaError, get_persona

    models: dict[str, ChatModel] = {}
    for suite in suites:
        for case in suite.cases:
            name = _persona_of(suite, case, config)
            if name in models or case.draft is not None:
                continue
            try:
                persona = get_persona(name)
            except PersonaError as exc:
                raise SuiteError("unknown_persona", f'{suite.path or suite.name}: case "{case.id}": '
                                 f"{exc}", "use a persona from `perfagent personas list`") from None
            models[name] = build_model(config.model, persona)
    return models


async def run_suites(suites: list[Suite], config: RunConfig, *, progress: bool = True,
                     model: ChatModel | None = None, grader: ChatModel | None = None) -> RunLog:
    """Run every case of ``suites`` (those tagged with any of ``config.tags`` when given)
    ``config.epochs`` times and return the scored run log.

    ``model`` replaces the model built from ``config.model`` for every case
    without a draft (tests and benchmarks inject scripted models so);
    ``grader`` is the model ``llm_rubric`` scorers ask. Raises
    :class:`SuiteError` when no case is selected or a persona is unknown, and
    the model's own errors when it cannot be built (no API key).
    """
    from agent.baselines import git_revision
    from agent.context import Settings
    from agent.demo import EXAMPLES_DIR
    from agent.run import open_checkpointer

    selected = select(suites, config.tags)
    if not selected:
        raise SuiteError("no_cases", f"no case is tagged {' or '.join(config.tags)}",
                         "check --tag against the tags in the suite files")
    models = {} if model is not None else _build_models(selected, config)
    spec = model.spec if model is not None else config.model
    # The offline engine is deterministic and free: caching it would only cost disk.
    use_cache = config.cache and spec != "offline"
    repo = EXAMPLES_DIR.parent
    log = RunLog(run_id=new_run_id(), created_at=time.time(), perfagent_version=_version(),
                 git_rev=git_revision(str(repo)), config=config.model_copy(update={"cache": use_cache}),
                 suites=selected)
    jobs = [(suite, case, epoch) for suite in selected for case in suite.cases
            for epoch in range(1, config.epochs + 1)]
    settings = Settings(model=config.model, persona=config.persona)
    gate = asyncio.Semaphore(max(1, config.concurrency))
    started = time.perf_counter()
    work_root = Path(tempfile.mkdtemp(prefix="perfagent-eval-"))
    try:
        async with open_checkpointer(settings) as saver:
            with _workspace(repo, work_root), _progress(len(jobs), progress) as done:
                shared = _Run(config=config, settings=settings, saver=saver, work_root=work_root,
                              models=models, injected=model, use_cache=use_cache, grader=grader)

                async def one(suite: Suite, case: Case, epoch: int) -> CaseRun:
                    async with gate:
                        run = await _run_case(shared, suite, case, epoch)
                    done(run)
                    return run

                log.runs = list(await asyncio.gather(*(one(*job) for job in jobs)))
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    log.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    return log


async def _run_case(shared: _Run, suite: Suite, case: Case, epoch: int) -> CaseRun:
    """One epoch of one case, scored; never raises (problems become ``status="error"``)."""
    from evals.scorers import score_case

    run = CaseRun(suite=suite.name, case_id=case.id, epoch=epoch, tags=case.tags, status="ok",
                  attempts=0, started_at=time.time())
    started = time.perf_counter()
    limit = case.timeout or shared.config.timeout or suite.timeout
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            await _attempts(shared, suite, case, epoch, run)
    except TimeoutError as exc:
        if not deadline.expired():
            _mark_error(run, _internal(exc))
        else:
            _mark_error(run, ErrorInfo(code="timeout", message=f"the case did not finish within {limit:g} s",
                                 hint="raise the case's timeout (or --timeout) if it needs longer"))
    except SuiteError as exc:  # fixtures and placeholders
        _mark_error(run, exc.info())
    except Exception as exc:  # a bug must cost one case, not the run
        _mark_error(run, _internal(exc))
    if run.thread_id:
        try:
            run.messages = await thread_messages(shared.saver, run.thread_id)
        except Exception as exc:
            _mark_error(run, _internal(exc))
    run.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    run.scores = await score_case(case, run, grader=shared.grader)  # [] for an error
    return run


def _internal(exc: BaseException) -> ErrorInfo:
    return ErrorInfo(code="internal_error", message=f"{type(exc).__name__}: {exc}",
                     hint="this is a perfagent bug; the other cases are unaffected")


def _mark_error(run: CaseRun, error: ErrorInfo) -> None:
    run.status = "error"
    run.error = error
    last = run.turns[-1] if run.turns else None
    if last is not None and last.result is None and last.error is None:
        last.error = error  # the turn that was under way


async def _attempts(shared: _Run, suite: Suite, case: Case, epoch: int, run: CaseRun) -> None:
    """Start the fixture, then run the turns, again on a new thread after a retryable
    model failure."""
    from agent.run import new_thread_id
    from evals.fixtures import start_fixture, substitute

    workdir = shared.work_root / f"{suite.name}.{case.id}.{epoch}"
    workdir.mkdir(parents=True)
    fixture = (start_fixture(case.fixture, workdir) if case.fixture is not None
               else contextlib.nullcontext(None))
    # Any randomness of the runner (the backoff jitter) is seeded per case-epoch.
    rng = random.Random(f"{shared.config.seed}:{suite.name}:{case.id}:{epoch}")
    persona = _persona_of(suite, case, shared.config)
    # Each case-epoch remembers baselines of its own: a later turn of the case still
    # sees its earlier turns' numbers, but no other case or run does.
    settings = shared.settings.with_overrides(persona=persona, baselines_dir=workdir)
    kind = case.fixture.kind if case.fixture is not None else ""
    async with fixture as values:
        def filled(text: str) -> str:
            return text if values is None else substitute(text, values, kind)

        inputs = [filled(text) for text in case.input]
        draft = filled(case.draft) if case.draft is not None else None
        for attempt in range(1, shared.config.retries + 2):
            run.attempts = attempt
            model, cache = shared.model_for(persona, draft, epoch)
            watched = _Watched(model)
            run.thread_id = new_thread_id()
            run.turns = []
            error = await _turns(shared, settings, watched, inputs, run)
            if error is None:
                run.cached = cache is not None and cache.hits > 0 and cache.misses == 0
                return
            retryable = error.code == "model_error" and bool(watched.error and watched.error.retryable)
            if not retryable or attempt > shared.config.retries:
                _mark_error(run, error)
                return
            await asyncio.sleep(min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1))
                                * (0.5 + rng.random() / 2))


async def _turns(shared: _Run, settings: Settings, model: ChatModel, inputs: list[str],
                 run: CaseRun) -> ErrorInfo | None:
    """Run the turns in order on ``run.thread_id``; the first failed turn's error, or None."""
    from agent.results import TurnResult
    from agent.run import stream_turn

    for text in inputs:
        record = TurnRecord(input=text)
        run.turns.append(record)
        started = time.perf_counter()
        try:
            events = stream_turn(text, thread_id=run.thread_id, settings=settings,
                                 checkpointer=shared.saver, model=model, record=False)
            async with aclosing(events) as stream:
                async for event in stream:
                    if event.type == "text_delta":
                        continue
                    record.events.append(event.model_dump(mode="json"))
                    if event.type == "final":
                        record.result = TurnResult.model_validate(event.data)
                    elif event.type == "error":
                        record.error = ErrorInfo(**event.data)
        finally:
            record.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if record.error is not None:
            return record.error
        if record.result is None:
            record.error = ErrorInfo(code="internal_error", message="the turn ended without a result",
                                     hint="this is a perfagent bug")
            return record.error
    return None
