"""The ``perfagent`` command line.

Every command that runs the agent goes through :mod:`agent.run`; this module
only parses arguments and renders events. Heavy modules (LangGraph, the
tools, SDKs) are imported inside the commands so ``perfagent --help`` starts
fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from agent.context import Settings
    from agent.results import RunEvent, TurnResult

app = typer.Typer(
    name="perfagent",
    help="The performance-engineer agent: measures before it answers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
personas_app = typer.Typer(help="List, show and validate persona files.", no_args_is_help=True)
app.add_typer(personas_app, name="personas")
baselines_app = typer.Typer(help="Measurements remembered across runs.", no_args_is_help=True)
app.add_typer(baselines_app, name="baselines")
budget_app = typer.Typer(help="Check measurements against performance budgets.",
                         no_args_is_help=True)
app.add_typer(budget_app, name="budget")
kb_app = typer.Typer(help="The knowledge base: ingest your documents, search, inspect, rebuild.",
                     no_args_is_help=True)
app.add_typer(kb_app, name="kb")
# The eval commands live beside the runner; the sub-app module imports only typer.
from evals.cli import eval_app  # noqa: E402

app.add_typer(eval_app, name="eval")

#: Exit codes: 1 a structured error, 3 a measured value outside its budget (or, for
#: ``perfagent check``, a failed check).
EXIT_ERROR = 1
EXIT_BUDGET = 3

ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="offline, anthropic:<model> or openai:<model>")]
ThreadOption = Annotated[str | None, typer.Option(
    "--thread", "-t", help="continue this thread id")]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
PersonaOption = Annotated[str | None, typer.Option(
    "--persona", help="persona name (default performance-engineer)")]


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fail(code: str, message: str, hint: str = "") -> typer.Exit:
    """Print a structured error to stderr and return the exit to raise."""
    err = _console(stderr=True)
    # No wrapping: an error line should stay one line for grep and for logs.
    err.print(f"[bold red]error[/] [dim]({code})[/]: {message}", soft_wrap=True)
    if hint:
        err.print(f"[yellow]what to do:[/] {hint}", soft_wrap=True)
    return typer.Exit(EXIT_ERROR)


def _settings(model: str | None, persona: str | None = None) -> Settings:
    from agent.context import Settings
    from agent.models import UnknownModelError, parse_spec

    settings = Settings().with_overrides(model=model, persona=persona)
    try:
        parse_spec(settings.model)
    except UnknownModelError as exc:
        raise _fail("unknown_model", str(exc), "pass --model offline") from None
    return settings


@app.callback()
def observability(
    trace_file: Annotated[Path | None, typer.Option(
        "--trace-file", envvar="PERFAGENT_TRACE_FILE",
        help="write OpenTelemetry spans of every turn to this file (OTLP JSON lines)")] = None,
    metrics_file: Annotated[Path | None, typer.Option(
        "--metrics-file", envvar="PERFAGENT_METRICS_FILE",
        help="write Prometheus metrics here at exit (node_exporter textfile format)")] = None,
) -> None:
    """Options for every command: traces and metrics of perfagent's own turns.

    Traces also go to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    """
    from agent.tracing import configure_tracing

    configure_tracing(trace_file)
    if metrics_file is not None:
        import atexit

        from agent.telemetry import enable_metrics, write_textfile

        enable_metrics()
        atexit.register(write_textfile, metrics_file)


# --------------------------------------------------------------------------- rendering


class EventView:
    """Shows a turn's events live: tool progress bars, checks, and (in chat) the answer
    as Markdown re-rendered while it streams.

    One rich ``Live`` display holds both the progress bars and the streaming
    answer, since rich allows a single live display at a time.
    """

    def __init__(self, console: Console, *, stream_text: bool) -> None:
        from rich.live import Live
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.stream_text = stream_text
        self.text = ""
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TimeElapsedColumn(), console=console)
        self.tasks: dict[str, Any] = {}
        self.live = Live(self, console=console, refresh_per_second=8, transient=True)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.markdown import Markdown

        parts: list[Any] = [self.progress.get_renderable()] if self.tasks else []
        if self.text:
            parts.append(Markdown(self.text))
        return Group(*parts)

    def __enter__(self) -> EventView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()
        if self.stream_text and self.text:
            from rich.markdown import Markdown

            self.console.print(Markdown(self.text))  # the streamed answer stays on screen

    def show(self, event: RunEvent) -> None:
        data = event.data
        depth = int(data.get("depth", 0) or 0)
        indent = "  " * depth
        if event.type == "tool_call":
            args = json.dumps(data["args"])[:90]
            self.tasks[data["id"]] = self.progress.add_task(
                f"{indent}[cyan]{data['name']}[/] {args}", total=1.0)
        elif event.type == "tool_progress" and data["id"] in self.tasks:
            self.progress.update(self.tasks[data["id"]], completed=data["fraction"])
        elif event.type == "tool_result":
            task = self.tasks.pop(data["id"], None)
            if task is not None:
                self.progress.remove_task(task)
            mark = "[green]✓[/]" if data["ok"] else "[red]✗[/]"
            error = f" [red]{data['error']}[/]" if data.get("error") else ""
            self.console.print(
                f"{indent}{mark} [cyan]{data['name']}[/] {data['duration_ms'] / 1000:.1f} s{error}")
        elif event.type == "check":
            colour = {"pass": "green", "fail": "red"}.get(data["status"], "dim")
            self.console.print(f"{indent}[{colour}]• {data['name']}: {data['status']}[/]")
        elif event.type == "revision":
            if not depth:
                self.text = ""  # the revised draft replaces the streamed one
            self.console.print(f"{indent}[yellow]↻ revising (failed: "
                               f"{', '.join(data['failed'])})[/]")
        elif event.type == "text_delta" and self.stream_text and not depth:
            self.text += data["text"]


def render_result(console: Console, result: TurnResult, *, answer: bool = True) -> None:
    """The answer as Markdown, then the checks and the measurements as tables."""
    from rich.markdown import Markdown
    from rich.table import Table

    if answer:
        console.print(Markdown(result.answer))
    checks = Table(title="Pre-response checks", title_justify="left")
    for column in ("check", "status", "evidence / feedback"):
        checks.add_column(column)
    for check in result.checks:
        colour = {"pass": "green", "fail": "red"}.get(check.status, "dim")
        checks.add_row(check.name, f"[{colour}]{check.status}[/]",
                       check.feedback or check.evidence)
    console.print(checks)
    if result.measurements:
        table = Table(title="Measurements", title_justify="left")
        for column in ("metric", "value", "budget", "status", "source", "target"):
            table.add_column(column)
        for m in result.measurements:
            status = {True: "[green]pass[/]", False: "[red]fail[/]"}.get(m.passed, "—")
            table.add_row(m.name, f"{m.value:,.2f} {m.unit}", m.budget or "—", status,
                          m.source, m.target[-60:])
        console.print(table)
    console.print(
        f"[dim]thread {result.thread_id} · {result.model} · {len(result.tool_calls)} tool "
        f"call(s) · {result.revisions} revision(s) · {result.timings_ms.total / 1000:.1f} s[/]")


async def _run(message: str, settings: Settings, thread: str | None, *, view: EventView | None,
               ) -> TurnResult:
    from contextlib import aclosing

    from agent.results import TurnResult
    from agent.run import stream_turn

    async with aclosing(stream_turn(message, thread_id=thread, settings=settings)) as events:
        async for event in events:
            if view is not None:
                view.show(event)
            if event.type == "final":
                return TurnResult.model_validate(event.data)
            if event.type == "error":
                raise _fail(event.data["code"], event.data["message"], event.data.get("hint", ""))
    raise _fail("internal_error", "the turn ended without a result")


# --------------------------------------------------------------------------- commands


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="what to ask the agent")],
    model: ModelOption = None,
    thread: ThreadOption = None,
    persona: PersonaOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask one question; print the answer, the five checks and the measurements."""
    settings = _settings(model, persona)
    if as_json:
        result = asyncio.run(_run(question, settings, thread, view=None))
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    console = _console()
    with EventView(_console(stderr=True), stream_text=False) as view:
        result = asyncio.run(_run(question, settings, thread, view=view))
    render_result(console, result)


@app.command()
def chat(model: ModelOption = None, thread: ThreadOption = None,
         persona: PersonaOption = None) -> None:
    """Chat in the terminal; answers stream as they are written. /exit to leave."""
    from agent.knowledge import warm_up
    from agent.run import new_thread_id

    settings = _settings(model, persona)
    warm_up(settings.state_dir)  # the store and model load while the user types
    console = _console()
    thread_id = thread or new_thread_id()
    console.print(f"[bold]perfagent[/] · {settings.model} · thread [cyan]{thread_id}[/] "
                  f"(resume with --thread {thread_id}) · /exit to leave")
    while True:
        try:
            message = console.input("[bold green]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if not message:
            continue
        if message in ("/exit", "/quit"):
            break
        try:
            with EventView(console, stream_text=True) as view:
                result = asyncio.run(_run(message, settings, thread_id, view=view))
        except typer.Exit:
            continue  # the error was printed; the thread stays usable
        console.print()
        render_result(console, result, answer=False)


@app.command()
def demo(
    as_json: JsonOption = False,
    model: ModelOption = None,
) -> None:
    """Start the slow example service, ask the agent why it is slow, and show the answer."""
    from agent.demo import demo_question, prepare_demo, slow_service

    settings = _settings(model)
    console = _console(stderr=as_json)
    with console.status("building the example shop database…"):
        db = prepare_demo(settings)
    try:
        with slow_service(db) as url:
            question = demo_question(url, db)
            console.print(f"[bold]question:[/] {question}\n")
            with EventView(console, stream_text=False) as view:
                result = asyncio.run(_run(question, settings, None, view=view))
    except typer.Exit:
        raise
    except RuntimeError as exc:
        raise _fail("demo_failed", str(exc), "check that Python can bind a loopback port") from None
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        render_result(_console(), result)


def tool_flags(extra: list[str]) -> dict[str, Any]:
    """``--rate 50 --thresholds 'p(95)<200' --url=http://…`` -> a tool input mapping.

    Values are read as JSON when they parse (numbers, lists, objects, true) and
    as text otherwise; a flag given twice becomes a list; dashes in names become
    underscores. A flag with no value is ``true``.
    """
    values: dict[str, Any] = {}
    index = 0
    while index < len(extra):
        token = extra[index]
        if not token.startswith("--") or len(token) == 2:
            raise _fail("invalid_arguments", f"unexpected argument {token!r}",
                        "pass tool inputs as --name value, or as --args JSON")
        name, equals, raw = token[2:].partition("=")
        if not equals:
            following = extra[index + 1] if index + 1 < len(extra) else None
            if following is None or following.startswith("--"):
                raw = "true"
            else:
                raw = following
                index += 1
        index += 1
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        key = name.replace("-", "_")
        if key in values:
            previous = values[key]
            values[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            values[key] = value
    return values


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def measure(
    ctx: typer.Context,
    tool: Annotated[str | None, typer.Argument(help="tool name; omit to list the tools")] = None,
    args: Annotated[str, typer.Option("--args", help="the tool's input as JSON")] = "{}",
    schema: Annotated[bool, typer.Option("--schema", help="print the tool's input schema")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run one measurement tool directly: `perfagent measure load_test --url URL --rate 50`.

    Inputs come from --args JSON and/or --name value flags (flags win). Exits 3
    when a measurement breaks its budget, 1 on an error.
    """
    from pydantic import ValidationError

    from tools import ToolError, get_tool, tool_names

    if tool is None:
        from rich.table import Table

        table = Table("tool", "what it measures")
        for name in tool_names():
            table.add_row(name, get_tool(name).description.split(". ")[0])
        _console().print(table)
        return
    try:
        spec = get_tool(tool)
        if schema:
            sys.stdout.write(json.dumps(spec.json_schema(), indent=2) + "\n")
            return
        inputs = json.loads(args)
        if not isinstance(inputs, dict):
            raise _fail("invalid_json", "--args must be a JSON object")
        inputs.update(tool_flags(list(ctx.args)))
        inp = spec.input_model.model_validate(inputs)
    except ToolError as exc:
        raise _fail(exc.code, exc.message, exc.hint) from None
    except json.JSONDecodeError as exc:
        raise _fail("invalid_json", f"--args is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail("invalid_arguments",
                    f"{'.'.join(map(str, first['loc']))}: {first['msg']}",
                    f"see the inputs: perfagent measure {tool} --schema") from None

    console = _console(stderr=True)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(tool, total=1.0)
        try:
            result = asyncio.run(spec.run(inp, lambda f, text: progress.update(
                task, completed=f, description=f"{tool}: {text}")))
        except ToolError as exc:
            raise _fail(exc.code, exc.message, exc.hint) from None
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        out = _console()
        out.print(result.summary)
        for m in result.measurements:
            status = {True: " [green]pass[/]", False: " [red]fail[/]"}.get(m.passed, "")
            out.print(f"  {m.name}: {m.value:,.2f} {m.unit}"
                      f"{f' (budget {m.budget})' if m.budget else ''}{status}")
        for f in result.findings:
            out.print(f"  [yellow]{f.kind}[/] ({f.severity}) {f.location or ''}: {f.summary}")
    if any(m.passed is False for m in result.measurements):
        raise typer.Exit(EXIT_BUDGET)


@app.command("check")
def check_answer(
    draft: Annotated[Path, typer.Argument(help="the answer to judge (Markdown); - for stdin")],
    evidence: Annotated[Path | None, typer.Option(
        "--evidence", help="JSON: measurements, findings, tool_calls, sources; or a TurnResult")
    ] = None,
    persona: Annotated[str | None, typer.Option(
        "--persona", help="persona name or file (default performance-engineer)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Judge any answer, from any model, against a persona's pre-response checks.

    Exit 0 when no check fails, 3 when one does, 1 on bad input.
    """
    from agent.draft_check import (
        EvidenceError,
        PersonaError,
        check_draft,
        load_evidence,
        resolve_persona,
    )

    try:
        text = sys.stdin.read() if str(draft) == "-" else draft.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail("unreadable_draft", f"cannot read {draft}: {exc}",
                    "give a UTF-8 Markdown file, or - to read the draft from stdin") from None
    try:
        found = load_evidence(evidence) if evidence is not None else None
        chosen = resolve_persona(persona)
    except EvidenceError as exc:
        raise _fail("invalid_evidence", exc.message, exc.hint) from None
    except PersonaError as exc:
        raise _fail("unknown_persona", str(exc), "perfagent personas list") from None
    report = check_draft(text, found, chosen)
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        console = _console()
        marks = {"pass": "[green]pass[/]", "fail": "[red]fail[/]",
                 "not_applicable": "[dim]n/a[/]", "not_enforced": "[yellow]not enforced[/]"}
        for result in report.checks:
            console.print(f"{marks[result.status]}  [bold]{result.name}[/]: {result.evidence}",
                          soft_wrap=True)
            if result.feedback:
                console.print(f"      [yellow]fix:[/] {result.feedback}", soft_wrap=True)
    if not report.passed:
        raise typer.Exit(EXIT_BUDGET)


@personas_app.command("list")
def personas_list(as_json: JsonOption = False) -> None:
    """The shipped personas with their tools and delegation targets."""
    library = _library()
    if as_json:
        rows = [{"name": p.name, "version": p.version, "description": p.description,
                 "tools": p.tools, "delegates_to": [d.name for d in p.delegation]}
                for p in library.personas.values()]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table()
    for column in ("name", "version", "tools", "delegates to"):
        table.add_column(column)
    for p in library.personas.values():
        table.add_row(p.name, p.version, ", ".join(p.tools),
                      ", ".join(d.name for d in p.delegation))
    _console().print(table)


@personas_app.command("show")
def personas_show(name: str, as_json: JsonOption = False) -> None:
    """One persona, parsed: checks, targets as budgets, principles, checklist."""
    from agent.persona import PersonaError

    try:
        persona = _library().get(name)
    except PersonaError as exc:
        raise _fail("unknown_persona", exc.problem, "perfagent personas list") from None
    if as_json:
        sys.stdout.write(persona.model_dump_json(indent=2) + "\n")
        return
    console = _console()
    console.print(f"[bold]{persona.name}[/] {persona.version} — {persona.description}")
    console.print("\n[bold]Delegation[/]")
    for d in persona.delegation:
        console.print(f"  {d.name}: {d.when}")
    console.print("\n[bold]Checks[/]")
    for c in persona.checks:
        console.print(f"  {c.id}: " + " ".join(c.questions))
    console.print("\n[bold]Targets[/]")
    for t in persona.targets:
        console.print(f"  {t.metric}: {t.display}  ({t.measurement} {t.budget})")
    console.print("\n[bold]Principles[/]")
    for p in persona.principles:
        console.print(f"  {p.name}: {p.target_percent:g} %")
    console.print("\n[bold]Checklist[/]")
    for item in persona.checklist:
        console.print(f"  [ ] {item}")


@personas_app.command("validate")
def personas_validate(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="persona files or folders (default: the shipped personas)")] = None,
) -> None:
    """Parse and validate persona files; errors name the file, the line and the problem."""
    from agent.persona import (
        PersonaError,
        agent_tool_names,
        load_persona_file,
        personas_dir,
        validate_library,
    )

    files: list[Path] = []
    for path in paths or [personas_dir()]:
        files.extend(sorted(path.glob("*.md")) if path.is_dir() else [path])
    try:
        personas = [load_persona_file(f) for f in files]
        if not paths:
            validate_library(personas, agent_tool_names())
        else:
            # Files checked alone may delegate to the shipped personas.
            shipped = {p.name: p for p in _library().personas.values()}
            shipped.update({p.name: p for p in personas})
            validate_library(list(shipped.values()), agent_tool_names())
    except PersonaError as exc:
        raise _fail("invalid_persona", str(exc), "fix the file at that line") from None
    _console().print(f"[green]ok[/]: {len(files)} persona file(s) valid")


# --------------------------------------------------------------------------- budgets


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="fewer samples (about a minute)")] = (
        False),
    out: Annotated[Path | None, typer.Option(
        "--out", help="also write the measurements as JSON here (for `budget check`)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Benchmark perfagent itself: cold starts, graph overhead, knowledge base, server, memory.

    Figures are ratios to a peer or to a calibration workload measured in the same
    run; gate them with `perfagent budget check FILE --budgets .ci/perf-budgets.yaml`.
    """
    from agent.bench import run_benchmarks

    err = _console(stderr=True)
    with err.status("benchmarking…") as status:
        results = run_benchmarks(quick=quick,
                                 progress=lambda step: status.update(f"benchmarking: {step}…"))
    payload = json.dumps([m.model_dump(mode="json") for m in results], indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(payload + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(payload + "\n")
        return
    from rich.table import Table

    table = Table(title="perfagent bench (one run)", title_justify="left")
    table.add_column("benchmark")
    table.add_column("value", justify="right")
    for m in results:
        table.add_row(m.name, f"{m.value:,.3g} {m.unit}")
    _console().print(table)


# --------------------------------------------------------------------------- serving


AllowedHostOption = Annotated[list[str] | None, typer.Option(
    "--allowed-host", metavar="NAME[:PORT]",
    help="another host name the server answers to (repeatable; also PERFAGENT_SERVER_HOSTS): "
         "the name clients and browsers use to reach it, e.g. behind a proxy. Without a port, "
         "any port. Loopback names and the bound address are always answered")]


def _note_wildcard_hosts(config: Any) -> None:
    """Bound to every interface, the server answers only loopback names until told its
    public ones: say so, instead of leaving remote clients with a puzzling 421."""
    if config.binds_wildcard and not config.allowed_hosts:
        _console(stderr=True).print(
            f"[yellow]note:[/] bound to {config.host}, the server answers only "
            f"localhost/127.0.0.1:{config.port}; pass --allowed-host NAME for each name "
            "remote clients use (or set PERFAGENT_SERVER_HOSTS)", soft_wrap=True, markup=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind; non-loopback needs API keys")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    model: ModelOption = None,
    persona: PersonaOption = None,
    workers: Annotated[int | None, typer.Option(
        help="server processes; more than one needs PERFAGENT_DATABASE_URL (PostgreSQL)")] = None,
    allowed_host: AllowedHostOption = None,
) -> None:
    """Serve the HTTP API, the OpenAI-compatible endpoint, MCP at /mcp and the web chat page.

    With PERFAGENT_DATABASE_URL, threads live in PostgreSQL, and every process
    serving from it (its --workers, or servers on other hosts) shares them.
    The server answers only its own host names: loopback and the bound address
    with its port, plus each --allowed-host (a server bound to 0.0.0.0 needs its
    public names there).
    """
    from agent.server.config import ServerConfig, ServerConfigError
    from agent.storage import DatabaseUnavailable, check_database, database_url

    settings = _settings(model, persona)
    try:
        config = ServerConfig.from_env(host=host, port=port, workers=workers,
                                       allowed_hosts=tuple(allowed_host or ()))
        if (url := database_url()) is not None:
            check_database(url)  # refuse to start rather than fail every request
    except (ServerConfigError, DatabaseUnavailable) as exc:
        raise _fail(exc.code, exc.message, exc.hint) from None
    _note_wildcard_hosts(config)
    from agent.server.app import run_server

    run_server(config, settings)


@app.command()
def mcp(
    http: Annotated[bool, typer.Option("--http", help="serve Streamable HTTP instead of stdio")] = (
        False),
    host: Annotated[str, typer.Option(help="address to bind with --http")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port with --http")] = 8001,
    model: ModelOption = None,
    persona: PersonaOption = None,
    allowed_host: AllowedHostOption = None,
) -> None:
    """Run the MCP server: stdio by default (for IDE assistants), or Streamable HTTP."""
    from agent.server import mcp as mcp_server
    from agent.server.config import ServerConfigError

    settings = _settings(model, persona)
    try:
        if http:
            mcp_server.serve_http(settings, host=host, port=port,
                                  allowed_hosts=tuple(allowed_host or ()))
        else:
            mcp_server.serve_stdio(settings)
    except ServerConfigError as exc:
        raise _fail(exc.code, exc.message, exc.hint) from None


@app.command()
def acp(model: ModelOption = None, persona: PersonaOption = None) -> None:
    """Run as an Agent Client Protocol agent over stdio (Zed, JetBrains)."""
    from agent.server import acp as acp_agent

    try:
        acp_agent.serve_stdio(_settings(model, persona))
    except acp_agent.AcpStdioError as exc:
        raise _fail(exc.code, exc.message, exc.hint) from None


def _persona_budgets(name: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """(persona name, {measurement: comparison with unit}, {measurement: label})."""
    from agent.context import Settings
    from agent.persona import PersonaError

    chosen = name or Settings().persona
    try:
        persona = _library().get(chosen)
    except PersonaError as exc:
        raise _fail("unknown_persona", exc.problem, "perfagent personas list") from None
    labels = {t.measurement: t.metric for t in persona.targets}
    return persona.name, persona.budgets(), labels


@budget_app.command("check")
def budget_check(
    measurements_file: Annotated[Path, typer.Argument(
        help="JSON: a list of measurements, a tool result or a TurnResult (ask --json)")],
    budgets: Annotated[Path | None, typer.Option(
        "--budgets", "-b", help="YAML or TOML budget file (default: the persona's targets)")
    ] = None,
    persona: PersonaOption = None,
    tolerance: Annotated[float | None, typer.Option(
        "--tolerance", help="relative tolerance before a breach counts, e.g. 0.05; "
        "overrides the file's")] = None,
    as_json: JsonOption = False,
) -> None:
    """Check measured values against budgets. Exits 3 when a budget is breached.

    The files are read as given on the command line (a local user's own paths;
    the workspace rule guards the agent's tool calls, not the user's shell).
    """
    from tools.base import ToolError
    from tools.budgets import budgets_from_file, budgets_from_mapping, check, measurements_from_file

    if tolerance is not None and not 0 <= tolerance < 1:
        raise _fail("invalid_arguments", f"--tolerance {tolerance:g} is outside [0, 1)",
                    "give a fraction such as 0.05")
    try:
        measured = measurements_from_file(measurements_file)
        if budgets is not None:
            budget_set = budgets_from_file(budgets, tolerance=tolerance)
        else:
            name, table, _labels = _persona_budgets(persona)
            budget_set = budgets_from_mapping(table, source=f"persona {name}",
                                              tolerance=tolerance)
        result = check(measured, budget_set)
    except ToolError as exc:
        raise _fail(exc.code, exc.message, exc.hint) from None
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        from rich.table import Table

        console = _console()
        table = Table(title=f"Budgets ({result.budgets_source})", title_justify="left")
        for column in ("budget", "measured", "limit", "margin", "status"):
            table.add_column(column)
        table.add_column("target", overflow="fold")
        for row in result.rows:
            status = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]",
                      "missing": "[dim]unmeasured[/]",
                      "unit_mismatch": "[yellow]unit mismatch[/]"}[row.status]
            if row.tolerated:
                status += " [yellow](tolerance)[/]"
            measured_text = "—" if row.value is None else f"{row.value:,.4g} {row.unit}".rstrip()
            margin = "—" if row.margin is None else f"{row.margin:+.1f} %"
            table.add_row(row.budget_key, measured_text, row.budget, margin, status,
                          row.target[-60:])
        console.print(table)
        colour = "green" if result.all_passed else "red"
        console.print(f"[{colour}]{result.summary}[/]", soft_wrap=True)
    if not result.all_passed:
        raise typer.Exit(EXIT_BUDGET)


@budget_app.command("show")
def budget_show(persona: PersonaOption = None) -> None:
    """Print the persona's default budgets as a YAML budget file to start from."""
    name, table, labels = _persona_budgets(persona)
    # two spaces, key, ": ", the quoted comparison, then two spaces before the comment
    width = max((len(k) + len(v) for k, v in table.items()), default=0) + 8
    lines = [f"# Default budgets of persona {name} (its Targets table).",
             "# Save as perf-budgets.yaml, edit, then: "
             "perfagent budget check RESULT.json --budgets perf-budgets.yaml",
             "budgets:"]
    for key, comparison in table.items():
        entry = f"  {key}: {json.dumps(comparison)}"
        lines.append(f"{entry.ljust(width)}# {labels[key]}")
    lines.append("tolerance: 0".ljust(width) + "# relative tolerance before a breach counts, "
                 "e.g. 0.05")
    sys.stdout.write("\n".join(lines) + "\n")


@baselines_app.command("list")
def baselines_list(as_json: JsonOption = False) -> None:
    """Every measured target with its number of measurements and the latest time."""
    targets = _baselines("targets")
    if as_json:
        sys.stdout.write(json.dumps(targets, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table("target", "measurements", "metrics", "latest")
    for row in targets:
        table.add_row(row["target"], str(row["measurements"]), str(row["metrics"]), row["latest"])
    _console().print(table if targets else "no baselines yet: run `perfagent ask` or `demo`")


@baselines_app.command("show")
def baselines_show(
    target: Annotated[str, typer.Argument(help="a target or part of it (URL, path, query)")],
    metric: Annotated[str | None, typer.Option("--metric", help="only this metric")] = None,
    as_json: JsonOption = False,
) -> None:
    """The history of a target's measurements, oldest first."""
    history = _baselines("history", target, metric)
    if as_json:
        sys.stdout.write(json.dumps([b.model_dump() for b in history], indent=2) + "\n")
        return
    if not history:
        raise _fail("no_baselines", f"no measurements of a target containing {target!r}",
                    "perfagent baselines list shows the measured targets")
    from rich.table import Table

    table = Table("measured at", "metric", "value", "budget", "rev", "target")
    for b in history:
        table.add_row(b.measured_at, b.metric, f"{b.value:,.2f} {b.unit}", b.budget or "—",
                      b.git_rev or "—", b.target[-60:])
    _console().print(table)


def _baselines(method: str, *args: Any) -> Any:
    """Call a BaselineStore method; a broken store becomes a structured error."""
    from agent.baselines import BaselineStore, BaselineStoreError
    from agent.context import Settings

    try:
        return getattr(BaselineStore(Settings().state_dir), method)(*args)
    except BaselineStoreError as exc:
        raise _fail("baseline_store", str(exc), "move the file aside and run again") from None


# --------------------------------------------------------------------------- knowledge base


def _kb_call(action: Any) -> Any:
    """Run a knowledge-store action; its structured errors become CLI errors."""
    from agent.knowledge import KnowledgeError

    try:
        return action()
    except KnowledgeError as exc:
        raise _fail(exc.code, exc.message, exc.hint) from None


def _kb_ingest_with_progress(run: Any, label: str) -> Any:
    """Run an ingest-like call with a progress bar (passages written, passages/s) on stderr."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    now = time.perf_counter()
    phase = {"total": -1.0, "started": now, "last": now}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), console=_console(stderr=True),
                  transient=True) as bar:
        task = bar.add_task(label, total=None, rate="")

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if total != phase["total"]:  # a new phase (rebuild: playbooks, then documents)
                phase.update(total=total, started=phase["last"])
            phase["last"] = now
            rate = done / max(now - phase["started"], 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:,.1f} chunks/s")

        return _kb_call(lambda: run(progress))


def _kb_print_report(report: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        return
    console = _console()
    style = {"ingested": "green", "unchanged": "dim", "skipped": "yellow", "removed": "cyan"}
    for f in report.files:
        detail = f.reason if f.status in ("skipped", "removed") else (
            f"{f.chunks} chunk(s), {f.added} new, {f.removed} removed")
        console.print(f"[{style[f.status]}]{f.status:>9}[/] {f.path}: {detail}", soft_wrap=True)
    console.print(f"{report.chunks} chunk(s) in {len(report.files) - len(report.skipped)} "
                  f"file(s): {report.added} embedded, {report.removed} removed, "
                  f"{len(report.skipped)} file(s) skipped; {report.seconds:.1f} s, "
                  f"{report.chunks_per_second:,.1f} chunks/s", soft_wrap=True)


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[list[Path], typer.Argument(
        help="files or folders (walked) of Markdown, reStructuredText or other UTF-8 text")],
    as_json: JsonOption = False,
) -> None:
    """Add runbooks, postmortems and architecture docs; re-ingesting is idempotent.

    Changed files have their changed passages re-embedded, passages gone from a
    file are deleted, and files gone from an ingested folder are removed.
    Binary or unreadable files are reported and skipped; the others ingest.
    """
    from agent import knowledge

    store = _kb_call(knowledge.get_store)
    report = _kb_ingest_with_progress(lambda progress: store.ingest(paths, progress),
                                      "embedding")
    _kb_print_report(report, as_json)
    if report.files and all(f.status == "skipped" for f in report.files):
        raise _fail("nothing_ingested", "every path was skipped (see above)",
                    "give Markdown, reStructuredText or other UTF-8 text files")


@kb_app.command("search")
def kb_search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    k: Annotated[int, typer.Option("-k", help="how many passages", min=1, max=50)] = 5,
    mode: Annotated[str | None, typer.Option(
        "--mode", help="vector, keyword or hybrid (default: the measured best)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Search the playbooks and your ingested documents."""
    from agent import knowledge

    if mode is not None and mode not in ("vector", "keyword", "hybrid"):
        raise _fail("invalid_arguments", f"--mode {mode!r} is not a mode",
                    "use vector, keyword or hybrid")
    hits = _kb_call(lambda: knowledge.search(query, k, mode))  # type: ignore[arg-type]
    if as_json:
        sys.stdout.write(json.dumps(hits, indent=2) + "\n")
        return
    console = _console()
    if not hits:
        console.print("[dim]no passage matches[/]")
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(str(hit["text"]).split())
        console.print(f"[bold]{rank}.[/] [cyan]{hit['source']}[/] · {hit['heading']} "
                      f"[dim]({hit['kind']}, score {hit['score']})[/]", soft_wrap=True)
        console.print(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}", soft_wrap=True,
                      markup=False)


@kb_app.command("stats")
def kb_stats(as_json: JsonOption = False) -> None:
    """Where the store is, what it holds, and the sources `kb rebuild` re-reads."""
    from agent import knowledge

    def collect() -> dict[str, Any]:
        store = knowledge.get_store()
        store.sync_playbooks()
        return store.stats()

    info = _kb_call(collect)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    console = _console()
    console.print(f"store: {info['location']}" + (
        f" ({info['bytes'] / 1e6:,.1f} MB)" if "bytes" in info else ""), soft_wrap=True)
    console.print(f"model: {info['model']}")
    for name, counts in info["collections"].items():
        console.print(f"{name}: {counts['chunks']} chunk(s) from {counts['files']} file(s)")
    for source in info["sources"]:
        console.print(f"  source: {source}", soft_wrap=True)


@kb_app.command("forget")
def kb_forget(
    paths: Annotated[list[Path], typer.Argument(help="ingested files or folders to remove")],
) -> None:
    """Remove ingested documents (a file, or everything under a folder) from the store."""
    from agent import knowledge

    removed = _kb_call(lambda: knowledge.get_store().forget(paths))
    _console().print(f"removed {removed} chunk(s)")


@kb_app.command("rebuild")
def kb_rebuild(as_json: JsonOption = False) -> None:
    """Delete the store (also a corrupted one) and build it again.

    The shipped playbooks are embedded anew, then your documents are re-read
    from the files and folders you ingested (see `perfagent kb stats`).
    """
    from agent import knowledge

    store = _kb_call(knowledge.get_store)
    report = _kb_ingest_with_progress(store.rebuild, "rebuilding")
    if not as_json:
        _console().print(f"rebuilt {store.location}", soft_wrap=True)
    _kb_print_report(report, as_json)


def _library() -> Any:
    from agent.persona import PersonaError, persona_library

    try:
        return persona_library()
    except PersonaError as exc:
        raise _fail("invalid_persona", str(exc), "fix the file at that line") from None


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
