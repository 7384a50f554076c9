"""Fixtures: the targets an eval case measures, started before it and stopped after it.

Each kind starts something real in the case's own work folder or on a free
loopback port, and yields the values a case's input names as ``{name}``
placeholders:

=============  =============================================  =====================
kind           what runs                                      values
=============  =============================================  =====================
slow_service   the example shop service over a fresh database  url, database
shop_database  a fresh example shop database (small)           database
script         an examples/ script copied in, or inline source script
trace_file     an OTLP or Jaeger JSON export with a slow span  trace
http_server    a loopback HTTP server answering after a delay  url
redis          a throwaway redis-server                        redis_url
page           a static HTML page served on loopback           url
=============  =============================================  =====================

Options are validated when the suite loads (:func:`validate_fixture`), so a
typo fails before anything runs. Whatever a fixture started is stopped when
the case ends, also when the case times out or is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evals.model import Fixture
from evals.suites import SuiteError

T = TypeVar("T")

#: How long a redis-server may take to answer PING.
REDIS_STARTUP_S = 10.0


class FixtureError(SuiteError):
    """A fixture is misconfigured, unavailable here, or failed to start."""


def _repo_root() -> Path:
    from agent.demo import EXAMPLES_DIR

    return EXAMPLES_DIR.parent


# --------------------------------------------------------------------------- options


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShopOptions(_Options):
    """Size of the generated shop database (the demo's sizes make the service slow)."""

    customers: int = Field(400, ge=1)
    orders: int = Field(40_000, ge=1)


class ShopDatabaseOptions(ShopOptions):
    # Small by default: cases only need the planted missing index, not the volume.
    customers: int = Field(200, ge=1)
    orders: int = Field(10_000, ge=1)


class ScriptOptions(_Options):
    #: A file to copy, relative to the repository (e.g. examples/orders_workload.py).
    path: str | None = None
    #: Or the script's source, written as ``name``.
    source: str | None = None
    name: str = Field("script.py", pattern=r"^[\w.-]+\.py$")

    @model_validator(mode="after")
    def _one_source(self) -> ScriptOptions:
        if (self.path is None) == (self.source is None):
            raise ValueError("give exactly one of path (a file to copy) or source (inline code)")
        return self


class TraceFileOptions(_Options):
    format: Literal["otlp", "jaeger"] = "otlp"
    service: str = "orders-api"
    #: The span that dominates the request's critical path.
    slow_span: str = "SELECT orders"
    slow_ms: float = Field(180.0, gt=0)
    #: Identical 2 ms child spans after the slow one (an N+1 pattern when > 1).
    repeats: int = Field(0, ge=0, le=1000)


class HttpServerOptions(_Options):
    delay_ms: float = Field(20.0, ge=0, le=60_000)
    status: int = Field(200, ge=100, le=599)
    body: str = "ok"


class RedisOptions(_Options):
    #: Extra redis-server arguments, e.g. ["--maxmemory", "2mb"].
    args: list[str] = Field(default_factory=list)
    #: Commands run once it is up, e.g. ["SET a 1", "GET a", "GET nothing"].
    commands: list[str] = Field(default_factory=list)


DEFAULT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Orders</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>Your orders</h1>
<p>Twelve orders were placed this month; the newest ones are listed first.</p>
<ul><li>Order 1017: 3 items</li><li>Order 1016: 1 item</li><li>Order 1015: 2 items</li></ul>
</body></html>
"""


class PageOptions(_Options):
    html: str = DEFAULT_PAGE
    #: Further files served beside the page (name -> text), e.g. a stylesheet.
    files: dict[str, str] = Field(default_factory=dict)
    #: Delay before every response, to make the page measurably slow.
    delay_ms: float = Field(0.0, ge=0, le=60_000)


# --------------------------------------------------------------------------- helpers


async def _settled(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a worker thread. If the case is cancelled (its timeout) meanwhile,
    the call is still waited for before the cancellation goes on: a thread cannot be
    stopped, and one left running could start a process or write into a work folder
    after the runner has cleaned up."""
    task = asyncio.ensure_future(asyncio.to_thread(call, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


@contextlib.asynccontextmanager
async def _in_thread(cm: AbstractContextManager[T]) -> AsyncIterator[T]:
    """Enter and exit a blocking context manager in worker threads; whatever it started
    is stopped also when the case is cancelled while it was starting."""
    stack = ExitStack()
    try:
        value = await _settled(stack.enter_context, cm)
    except asyncio.CancelledError:
        await asyncio.to_thread(stack.close)
        raise
    try:
        yield value
    finally:
        await asyncio.to_thread(stack.close)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> AsyncIterator[str]:
    """A threaded HTTP server on a free loopback port; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="eval-fixture-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()


class _Quiet:
    """Mixin: keep request logs out of the eval's output."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def _fixed_handler(options: HttpServerOptions) -> type[http.server.BaseHTTPRequestHandler]:
    body = options.body.encode()

    class Handler(_Quiet, http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a load generator expects

        def do_GET(self) -> None:
            time.sleep(options.delay_ms / 1000)
            self.send_response(options.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

    return Handler


def _static_handler(folder: Path, delay_ms: float) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_Quiet, http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self) -> None:
            time.sleep(delay_ms / 1000)
            super().do_GET()

        def end_headers(self) -> None:
            self.send_header("Cache-Control", "no-store")  # every run measures a cold load
            super().end_headers()

    return Handler


def _shop(workdir: Path, options: ShopOptions) -> Path:
    from examples.shop import build_database

    return build_database(workdir / "shop.db", customers=options.customers,
                          orders=options.orders)


# --------------------------------------------------------------------------- kinds


@contextlib.asynccontextmanager
async def _slow_service(options: ShopOptions, workdir: Path) -> AsyncIterator[dict[str, str]]:
    from agent.demo import slow_service

    db = await _settled(_shop, workdir, options)
    async with _in_thread(slow_service(db)) as url:
        yield {"url": url, "database": str(db)}


@contextlib.asynccontextmanager
async def _shop_database(options: ShopOptions, workdir: Path) -> AsyncIterator[dict[str, str]]:
    db = await _settled(_shop, workdir, options)
    yield {"database": str(db)}


@contextlib.asynccontextmanager
async def _script(options: ScriptOptions, workdir: Path) -> AsyncIterator[dict[str, str]]:
    if options.source is not None:
        target = workdir / options.name
        target.write_text(options.source, encoding="utf-8")
    else:
        source = _repo_root() / str(options.path)
        if not source.is_file():
            raise FixtureError("fixture_failed", f"script {options.path} does not exist",
                               "give a path relative to the repository, e.g. "
                               "examples/orders_workload.py")
        target = workdir / source.name
        shutil.copyfile(source, target)
    yield {"script": str(target)}


def trace_document(options: TraceFileOptions) -> dict[str, Any]:
    """One request's trace: auth, the slow span, then ``repeats`` identical queries."""
    slow_end = 12.0 + options.slow_ms
    root_end = slow_end + 2.0 * options.repeats + 3.0
    root = "0000000000000001"
    spans: list[tuple[str, str | None, str, float, float]] = [
        (root, None, "GET /orders", 0.0, root_end),
        ("0000000000000002", root, "auth", 2.0, 10.0),
        ("0000000000000003", root, options.slow_span, 12.0, slow_end),
        *((f"{n + 16:016x}", root, "SELECT order_items", slow_end + 2.0 * n,
           slow_end + 2.0 * (n + 1)) for n in range(options.repeats)),
    ]
    trace_id, base_ns = "5b8efff798038103d269b633813fc60c", 1_767_225_600_000_000_000
    if options.format == "jaeger":
        return {"data": [{"traceID": trace_id, "processes": {"p1": {"serviceName": options.service}},
                          "spans": [{
                              "traceID": trace_id, "spanID": sid, "operationName": name,
                              "references": [{"refType": "CHILD_OF", "traceID": trace_id,
                                              "spanID": parent}] if parent else [],
                              "startTime": base_ns // 1000 + round(start * 1000),
                              "duration": round((end - start) * 1000), "processID": "p1",
                              "tags": []} for sid, parent, name, start, end in spans]}]}
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": options.service}}]},
        "scopeSpans": [{"scope": {"name": "perfagent-evals"}, "spans": [{
            "traceId": trace_id, "spanId": sid, "parentSpanId": parent or "", "name": name,
            "kind": 2, "startTimeUnixNano": str(base_ns + round(start * 1e6)),
            "endTimeUnixNano": str(base_ns + round(end * 1e6)), "attributes": [], "status": {},
        } for sid, parent, name, start, end in spans]}],
    }]}


@contextlib.asynccontextmanager
async def _trace_file(options: TraceFileOptions, workdir: Path) -> AsyncIterator[dict[str, str]]:
    path = workdir / f"{options.format}_trace.json"
    path.write_text(json.dumps(trace_document(options), indent=1), encoding="utf-8")
    yield {"trace": str(path)}


@contextlib.asynccontextmanager
async def _http_server(options: HttpServerOptions, workdir: Path) -> AsyncIterator[dict[str, str]]:
    async with _serve(_fixed_handler(options)) as base:
        yield {"url": base + "/"}


@contextlib.asynccontextmanager
async def _page(options: PageOptions, workdir: Path) -> AsyncIterator[dict[str, str]]:
    site = workdir / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "index.html").write_text(options.html, encoding="utf-8")
    for name, text in options.files.items():
        (site / Path(name).name).write_text(text, encoding="utf-8")
    async with _serve(_static_handler(site, options.delay_ms)) as base:
        yield {"url": base + "/index.html"}


def _resp(command: str) -> bytes:
    """A command in the Redis protocol (an array of bulk strings)."""
    import shlex

    parts = [p.encode() for p in shlex.split(command)]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


async def _redis_ready(port: int, process: asyncio.subprocess.Process, commands: list[str]) -> None:
    """Wait until the server answers, then run ``commands`` (their replies are not checked)."""
    deadline = time.monotonic() + REDIS_STARTUP_S
    while True:
        if process.returncode is not None:
            raise FixtureError("fixture_failed", f"redis-server exited with {process.returncode}",
                               "check the redis fixture's args")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise FixtureError("fixture_failed", "redis-server did not start within "
                                   f"{REDIS_STARTUP_S:.0f} s", "check the redis fixture's args"
                                   ) from None
            await asyncio.sleep(0.05)
            continue
        try:
            writer.write(b"".join(_resp(c) for c in [*commands, "PING"]))
            await writer.drain()
            received = b""
            while not received.endswith(b"+PONG\r\n"):
                chunk = await asyncio.wait_for(reader.read(65536), REDIS_STARTUP_S)
                if not chunk:
                    raise FixtureError("fixture_failed", "redis-server closed the connection",
                                       "check the redis fixture's commands")
                received += chunk
            return
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def _redis(options: RedisOptions, workdir: Path) -> AsyncIterator[dict[str, str]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FixtureError("fixture_unavailable", "redis-server is not installed here",
                           "install it (e.g. apt-get install redis-server), or leave the "
                           "redis cases out with --tag")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--daemonize", "no", *options.args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await _redis_ready(port, process, options.commands)
        yield {"redis_url": f"redis://127.0.0.1:{port}/0"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class FixtureKind:
    options: type[BaseModel]
    #: The placeholders it fills.
    values: tuple[str, ...]
    start: Callable[[Any, Path], AbstractAsyncContextManager[dict[str, str]]]


KINDS: dict[str, FixtureKind] = {
    "slow_service": FixtureKind(ShopOptions, ("url", "database"), _slow_service),
    "shop_database": FixtureKind(ShopDatabaseOptions, ("database",), _shop_database),
    "script": FixtureKind(ScriptOptions, ("script",), _script),
    "trace_file": FixtureKind(TraceFileOptions, ("trace",), _trace_file),
    "http_server": FixtureKind(HttpServerOptions, ("url",), _http_server),
    "redis": FixtureKind(RedisOptions, ("redis_url",), _redis),
    "page": FixtureKind(PageOptions, ("url",), _page),
}


def validate_fixture(fixture: Fixture) -> BaseModel:
    """The fixture's options, parsed; :class:`FixtureError` for an unknown kind or bad option."""
    kind = KINDS.get(fixture.kind)
    if kind is None:
        raise FixtureError("unknown_fixture", f"unknown fixture kind {fixture.kind!r}",
                           f"use one of: {', '.join(KINDS)}")
    try:
        return kind.options.model_validate(fixture.options)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "options"
        raise FixtureError("fixture_invalid", f"{fixture.kind} option {where}: {first['msg']}",
                           f"the {fixture.kind} options are: "
                           f"{', '.join(kind.options.model_fields)}") from None


@contextlib.asynccontextmanager
async def start_fixture(fixture: Fixture, workdir: Path) -> AsyncIterator[dict[str, str]]:
    """Start ``fixture`` with ``workdir`` as its folder; yield its placeholder values;
    stop it on exit. A failure to start is a :class:`FixtureError`."""
    options = validate_fixture(fixture)
    workdir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        try:
            values = await stack.enter_async_context(KINDS[fixture.kind].start(options, workdir))
        except FixtureError:
            raise
        except (OSError, RuntimeError, sqlite3.Error) as exc:
            raise FixtureError("fixture_failed", f"the {fixture.kind} fixture did not start: "
                               f"{exc}", "check that loopback ports can be bound and the work "
                               "folder is writable") from None
        yield values


def substitute(text: str, values: dict[str, str], kind: str) -> str:
    """``text`` with its ``{name}`` placeholders filled from a fixture's values."""
    try:
        return text.format_map(values)
    except KeyError as exc:
        raise FixtureError(
            "fixture_value_missing",
            f"{{{exc.args[0]}}} is not a value of the {kind} fixture "
            f"(it provides: {', '.join(values)})",
            "use one of those names, or write literal braces as {{ and }}") from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise FixtureError("input_template_invalid", f"{text[:80]!r}: {exc}",
                           "write literal braces as {{ and }}") from None
