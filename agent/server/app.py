"""The HTTP server: threads and runs (JSON and SSE), the OpenAI-compatible endpoint,
MCP at ``/mcp``, metrics, and the web chat page.

Routes only translate HTTP to :class:`agent.service.AgentService` calls and
back; what a turn does lives in the core run API. Errors share one shape,
``{"error": {"code", "message", "hint"}}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware import Middleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.context import Settings
from agent.results import TurnResult
from agent.run import TurnError
from agent.server.config import ServerConfig
from agent.server.deps import (
    ApiError,
    ClaimedThread,
    CurrentViewer,
    ExistingThread,
    Lease,
    Service,
    error_responses,
    thread_not_found,
    turn_error,
)
from agent.server.guards import BearerAuth, BodyLimit, HostGuard, error_body
from agent.service import AgentService, ThreadHistory
from agent.threads import ThreadInfo

#: Longest question accepted; a longer one is almost surely a mistake (a pasted file).
MAX_MESSAGE_CHARS = 32_000
#: The model specs agent.models.parse_spec accepts, for the schema (it stays the judge).
MODEL_SPEC_PATTERN = r"^\s*(offline|anthropic(:.*)?|openai:.*\S.*)\s*$"
#: What a run can answer besides its result (a stream reports model failures as events).
RUN_ERRORS = (404, 409, 429, 500, 502, 503)


class RunRequest(BaseModel):
    """One user message to run as a turn of a thread."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS, pattern=r"\S",
                         description="the user's question or request (not blank)")
    model: str | None = Field(None, max_length=200, pattern=MODEL_SPEC_PATTERN,
                              description="offline, anthropic:<model> or openai:<model>; "
                                          "the server's default when omitted")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None:
            from agent.models import UnknownModelError, parse_spec

            try:
                parse_spec(value)
            except UnknownModelError as exc:
                raise ValueError(str(exc)) from None
        return value


class NewThread(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field("", max_length=200, description="shown in thread lists")


class ThreadList(BaseModel):
    threads: list[ThreadInfo]


class Health(BaseModel):
    status: str
    model: str
    persona: str
    active_runs: int
    max_concurrent_runs: int


def create_app(config: ServerConfig | None = None, settings: Settings | None = None, *,
               service: AgentService | None = None) -> FastAPI:
    """The server's ASGI app. ``service`` is for tests that inject a scripted model;
    by default one is built from ``settings`` and opened for the app's lifetime."""
    config = config or ServerConfig()
    agent_settings = config.agent_settings(settings or Settings())
    service = service or AgentService(agent_settings,
                                      max_concurrent_runs=config.max_concurrent_runs)
    from agent.server.mcp import mcp_asgi
    from agent.telemetry import enable_metrics

    metrics = enable_metrics()
    hosts = config.host_policy()
    mcp_endpoint, mcp_sessions = mcp_asgi(service, host=config.host, hosts=hosts)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(service)
            await stack.enter_async_context(mcp_sessions)
            yield

    middleware = [Middleware(BearerAuth, keys=config.api_keys, admin_keys=config.admin_keys,
                             open_paths=("/", "/healthz", "/favicon.ico"),
                             open_prefixes=("/static/",)),
                  Middleware(BodyLimit, max_bytes=config.max_body_bytes)]
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # Before the key check, so a preflight is answered without a key.
        middleware.insert(0, Middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type", "mcp-session-id",
                           "mcp-protocol-version"]))
    # Outermost: a request for another host name (DNS rebinding) or a change asked by a
    # foreign web page is answered by nothing else.
    middleware.insert(0, Middleware(HostGuard, policy=hosts))
    app = FastAPI(title="perfagent", version=_version(), lifespan=lifespan,
                  middleware=middleware,
                  responses=error_responses(400, 401, 403, 413, 421, 422, 503),
                  description="The performance-engineer agent: it measures before it answers.")
    app.state.service = service
    app.state.config = config
    _install_error_handlers(app)
    _install_database_handler(app)

    # Routes that only read or write the thread index or the run claims are plain
    # functions: FastAPI runs them off the event loop, where a database round trip
    # (PostgreSQL) cannot stall the streams of running turns.
    @app.get("/healthz", tags=["ops"])
    def healthz(service: Service) -> Health:
        """Liveness, with the run cap's current use."""
        return Health(status="ok", model=service.settings.model, persona=service.settings.persona,
                      active_runs=service.active_runs,
                      max_concurrent_runs=service.max_concurrent_runs)

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus text format: turn latency, tool durations, checks, tokens."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/threads", tags=["threads"])
    def list_threads(service: Service, viewer: CurrentViewer) -> ThreadList:
        """Threads, most recently used first: with API keys, the ones this key created."""
        return ThreadList(threads=service.threads(viewer=viewer))

    @app.post("/v1/threads", tags=["threads"])
    def create_thread(service: Service, viewer: CurrentViewer,
                      body: NewThread | None = None) -> ThreadInfo:
        """A new, empty thread (with API keys, this key's own)."""
        return service.create_thread(body.title if body else "", viewer)

    @app.get("/v1/threads/{thread_id}", tags=["threads"],
             responses=error_responses(404))
    async def get_thread(thread_id: ExistingThread, service: Service,
                         viewer: CurrentViewer) -> ThreadHistory:
        """The thread's messages and the TurnResult of each past turn."""
        history = await service.history(thread_id, viewer)
        if history is None:  # deleted between the check and the read
            raise thread_not_found(thread_id)
        return history

    @app.post("/v1/threads/{thread_id}/runs", tags=["runs"],
              responses=error_responses(*RUN_ERRORS))
    async def run(thread_id: ClaimedThread, body: RunRequest, service: Service,
                  lease: Lease, viewer: CurrentViewer) -> TurnResult:
        """Run one turn and answer with its TurnResult."""
        try:
            return await service.run(body.message, thread_id=thread_id, model=body.model,
                                     slot=lease.slot, viewer=viewer)
        except TurnError as exc:
            raise turn_error(exc) from None

    @app.post("/v1/threads/{thread_id}/runs/stream", tags=["runs"],
              response_class=EventSourceResponse,
              responses=error_responses(404, 409, 429))
    async def run_stream(thread_id: ClaimedThread, body: RunRequest, service: Service,
                         lease: Lease, viewer: CurrentViewer) -> AsyncIterator[ServerSentEvent]:
        """Run one turn and stream its events: ``event:`` is the type, ``data:`` its JSON.

        The last event is ``final`` (the TurnResult) or ``error``. Closing the
        connection cancels the turn, and with it any tool process it started.
        """
        events = lease.track(service.stream(body.message, thread_id=thread_id,
                                            model=body.model, slot=lease.slot, viewer=viewer))
        number = 0
        async for event in events:
            number += 1
            yield ServerSentEvent(event=event.type, data=event.data, id=str(number))

    from agent.server.openai_compat import openai_router

    app.include_router(openai_router())
    # A route, not a mount: a mount would answer /mcp itself with a redirect.
    app.add_route("/mcp", mcp_endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False)
    _mount_page(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.hint), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                  for e in exc.errors()]
        names = ", ".join(f["field"] for f in fields[:5])
        return JSONResponse(error_body("invalid_request", f"invalid request: {names}",
                                       "fix the named fields (see GET /openapi.json)",
                                       fields=fields), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or {404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error")
        hint = getattr(exc, "hint", "see GET /docs for the routes")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method the path has, not only its first route's
            headers["Allow"] = ", ".join(_methods_of(request.app, request.url.path))
        return JSONResponse(error_body(code, str(exc.detail), hint),
                            status_code=exc.status_code, headers=headers)


def _install_database_handler(app: FastAPI) -> None:
    """A shared database that is down answers 503 (the server stays up and reconnects)."""
    from agent.server.deps import RETRY_AFTER_S
    from agent.storage import DatabaseUnavailable

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.hint), status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})


def _methods_of(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    for route in app.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= route_methods
    return sorted(methods - {"HEAD"})


def _mount_page(app: FastAPI) -> None:
    """The web chat page: one HTML file and its assets, no build step."""
    from fastapi.staticfiles import StaticFiles

    web = resources.files("agent.server") / "web"

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(web / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(web)), name="static")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("perfagent")
    except PackageNotFoundError:
        return "0+unknown"


def app_from_env() -> FastAPI:
    """The app as each worker of ``perfagent serve --workers N`` builds it (an import
    string factory for uvicorn): configuration and settings from the environment,
    which the serve command fills in (:meth:`ServerConfig.worker_env`)."""
    return create_app(ServerConfig.from_env(), Settings())


def run_server(config: ServerConfig, settings: Settings) -> None:
    """Serve until interrupted (``perfagent serve``).

    One worker serves the app built here. Several are separate processes that
    uvicorn starts from :func:`app_from_env`; they share threads and run claims
    through PostgreSQL, and their metrics through prometheus_client's
    multiprocess mode (a temporary folder that lives as long as the server).
    """
    import os
    import tempfile

    import uvicorn

    if config.workers == 1:
        uvicorn.run(create_app(config, settings), host=config.host, port=config.port,
                    log_level="info", access_log=False)
        return
    from agent.telemetry import MULTIPROC_DIR_ENV

    with tempfile.TemporaryDirectory(prefix="perfagent-metrics-") as metrics_dir:
        os.environ.update(config.worker_env(settings))
        os.environ[MULTIPROC_DIR_ENV] = metrics_dir
        uvicorn.run("agent.server.app:app_from_env", factory=True, workers=config.workers,
                    host=config.host, port=config.port, log_level="info", access_log=False)
