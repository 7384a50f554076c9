"""The MCP server: the agent and its measurement tools for IDE assistants and other MCP clients.

What a client sees:

* ``ask_performance_engineer(question, thread_id?)`` runs one full turn (measure,
  check, answer) through :class:`agent.service.AgentService`; the answer is the
  text content and the TurnResult the structured content. Tool calls, tool
  progress and checks arrive as progress notifications while the turn runs.
* every measurement tool under its own name, with its pydantic input model's
  JSON Schema as input schema and its ToolResult as structured output; long
  measurements report progress. Tools that run code are left out when the
  settings forbid them.
* each persona of the library as a prompt holding its rendered system prompt.

Every failure a client can act on (bad arguments, a refused target, a failed
turn, all run slots busy) is a tool result with ``isError`` whose text is the
JSON object ``{"code", "message", "hint"}``, never a traceback.

Transports: :func:`serve_stdio` (``perfagent mcp``), :func:`serve_http`
(``perfagent mcp --http``) and :func:`mcp_asgi`, which the HTTP server uses to
serve MCP at ``/mcp`` inside its own app.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp_types import CallToolResult, TextContent
from pydantic import Field
from starlette.types import ASGIApp

from agent.context import Settings
from agent.results import RunEvent, TurnResult
from agent.run import TurnError, final_result
from agent.service import AgentService, RunsBusy
from agent.threads import EVERYONE, Viewer
from tools import ProgressCallback, ToolSpec, get_tool, tool_names
from tools.base import LOCAL, ServingRules

if TYPE_CHECKING:
    from agent.server.guards import HostPolicy

#: Where MCP answers over HTTP, standalone and inside the HTTP server alike.
MCP_PATH = "/mcp"

ASK_TOOL = "ask_performance_engineer"


def error_result(code: str, message: str, hint: str = "") -> CallToolResult:
    """A tool error a client (or its model) can act on: ``isError`` with code, message and hint."""
    payload = {"code": code, "message": message, "hint": hint}
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(payload))], is_error=True)


# --------------------------------------------------------------------------- the agent as a tool


def _progress_line(event: RunEvent) -> str | None:
    """What a turn's event says in one progress message; None for events not worth one."""
    data = event.data
    prefix = "sub-agent: " if data.get("depth") else ""
    if event.type == "tool_call":
        return f"{prefix}running {data['name']}"
    if event.type == "tool_progress":
        return f"{prefix}{data['text']}"
    if event.type == "tool_result":
        outcome = "done" if data["ok"] else f"failed ({data.get('error')})"
        return f"{prefix}{data['name']} {outcome} in {data['duration_ms'] / 1000:.1f} s"
    if event.type == "check":
        return f"{prefix}check {data['name']}: {data['status']}"
    if event.type == "revision":
        return f"{prefix}revising the draft (failed: {', '.join(data.get('failed', []))})"
    if event.type == "delegation":
        return f"delegated to {data.get('to')}"
    return None


async def _reporting(events: AsyncIterator[RunEvent], ctx: Context) -> AsyncIterator[RunEvent]:
    """Pass a turn's events through, telling the client about each step as it happens.

    A turn has no known length, so progress counts the steps reported so far:
    the value rises with every notification, as the protocol asks.
    """
    step = 0
    async with aclosing(events) as stream:
        async for event in stream:
            line = _progress_line(event)
            if line is not None:
                step += 1
                await ctx.report_progress(step, None, line)
            yield event


def _viewer(ctx: Context) -> Viewer:
    """Whose threads the calling client sees: over HTTP, what the key check decided for
    the request that carried the call; over stdio (the user's own process), every thread."""
    from agent.server.guards import viewer_of

    try:
        request = ctx.request_context.request
    except ValueError:  # no request context at all: not over HTTP
        return EVERYONE
    scope = getattr(request, "scope", None)
    return EVERYONE if scope is None else viewer_of(scope)


def _ask_tool(service: AgentService) -> Callable[..., Awaitable[CallToolResult]]:
    """The ask tool over ``service``; its signature is what the SDK turns into the input schema."""

    async def ask_performance_engineer(
        question: Annotated[str, Field(description="the performance question, e.g. 'Why is "
                                                   "examples/orders_workload.py slow?'")],
        thread_id: Annotated[str | None, Field(description="continue this thread (its earlier "
                                                           "turns are context); omit to start one")] = None,
        *,
        ctx: Context,
    ) -> Annotated[CallToolResult, TurnResult]:
        try:
            slot = service.reserve()
        except RunsBusy as exc:
            return error_result("busy", str(exc), "retry in a few seconds")
        events = service.stream(question, thread_id=thread_id, slot=slot, node_events=False,
                                viewer=_viewer(ctx))
        try:
            result = await final_result(_reporting(events, ctx))
        except TurnError as exc:
            return error_result(exc.code, exc.message, exc.hint)
        return CallToolResult(content=[TextContent(type="text", text=result.answer)],
                              structured_content=result.model_dump(mode="json"))

    return ask_performance_engineer


# --------------------------------------------------------------------------- measurement tools


@asynccontextmanager
async def _progress_forwarder(ctx: Context) -> AsyncIterator[ProgressCallback]:
    """A tool progress callback that becomes MCP progress notifications.

    Tools call their callback synchronously; the notifications are sent by a
    task beside the tool, in order. Only rising fractions are sent, since the
    protocol wants every notification's progress above the one before.
    """
    send, receive = anyio.create_memory_object_stream[tuple[float, str]](math.inf)

    async def forward() -> None:
        sent = -1.0
        async with receive:
            async for fraction, text in receive:
                if fraction > sent:
                    sent = fraction
                    await ctx.report_progress(fraction, 1.0, text)

    async with anyio.create_task_group() as group:
        group.start_soon(forward)
        with send:
            yield lambda fraction, text: send.send_nowait((fraction, text))


class MeasurementTool(Tool):
    """One measurement tool, validated and run by the agent's own tool executor.

    The arguments go to :func:`agent.toolbox.execute` untouched rather than
    through the SDK's validation, so a bad argument comes back in the same
    structured form (``invalid_arguments`` with the failing fields) as any
    other tool error, and a crash never leaks a traceback.
    """

    #: What the server lets a call reach (a public server's narrower rules).
    rules: ServingRules = LOCAL

    @classmethod
    def from_spec(cls, spec: ToolSpec, rules: ServingRules = LOCAL) -> MeasurementTool:
        return cls(
            rules=rules,
            fn=spec.run,
            name=spec.name,
            description=spec.description,
            parameters=spec.json_schema(),
            fn_metadata=FuncMetadata(
                arg_model=ArgModelBase,
                output_schema=spec.result_model.model_json_schema(mode="serialization")),
            is_async=True,
        )

    async def run(self, arguments: dict[str, Any], context: Context[Any, Any],
                  convert_result: bool = False) -> CallToolResult:
        from agent.toolbox import execute

        async with _progress_forwarder(context) as progress:
            outcome = await execute(self.name, arguments, allowed={self.name},
                                    progress=progress, rules=self.rules)
        data = json.loads(outcome.content)
        if not outcome.ok:
            return error_result(**data["error"])
        return CallToolResult(content=[TextContent(type="text", text=outcome.content)],
                              structured_content=data)


def measurement_tools(settings: Settings) -> list[MeasurementTool]:
    """The measurement tools these settings allow: code-running ones only with allow_code_tools."""
    from agent.toolbox import serving_rules

    rules = serving_rules(settings)
    specs = [get_tool(name) for name in tool_names()]
    return [MeasurementTool.from_spec(spec, rules) for spec in specs
            if settings.allow_code_tools or not spec.runs_code]


# --------------------------------------------------------------------------- the server


def _persona_prompt(name: str, description: str, title: str) -> Prompt:
    from agent.graph import system_prompt

    def render() -> str:
        return system_prompt(name)

    return Prompt.from_function(render, name=name, title=title, description=description)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("perfagent")
    except PackageNotFoundError:
        return ""


def _warm_knowledge(service: AgentService) -> Callable[[MCPServer], AbstractAsyncContextManager[None]]:
    """A server lifespan that loads the playbook store in the background as the server starts,
    so the first question does not wait for it. On stdio it runs once the transport owns
    stdout, so nothing the loading prints can reach the protocol stream."""

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        from agent.knowledge import warm_up

        warm_up(service.settings.state_dir)
        yield

    return lifespan


def build_mcp_server(service: AgentService) -> MCPServer:
    """The MCP server over ``service``.

    ``service`` may be built but not yet entered: the tools use it only while
    handling calls, so the caller enters it (``async with service``) for as long
    as the server runs. Which tools exist follows ``service.settings``
    (``allow_code_tools``); the ask tool runs turns with the service's persona.
    Raises :class:`agent.server.config.ServerConfigError` when that persona (or
    the persona library) cannot be loaded: the server cannot start without it.
    """
    from agent.persona import PersonaError, get_persona, persona_library
    from agent.server.config import ServerConfigError

    try:
        persona = get_persona(service.settings.persona)
        personas = persona_library().personas.values()
    except PersonaError as exc:
        raise ServerConfigError("persona_error", str(exc), "see the known personas with "
                                "`perfagent personas list`; check files with `perfagent personas "
                                "validate`") from None
    server: MCPServer = MCPServer(
        name="perfagent",
        title="perfagent",
        version=_version(),
        instructions=(
            f"{persona.title}: measures before it answers. Call {ASK_TOOL} for a full answer "
            "(it measures, then checks its draft five ways), or a measurement tool directly for "
            "raw numbers. Each result carries its measurements as structured content."),
        tools=measurement_tools(service.settings),
        lifespan=_warm_knowledge(service),
        log_level="WARNING",
    )
    server.add_tool(
        _ask_tool(service), name=ASK_TOOL, title=f"Ask the {persona.title}",
        description=(
            f"Ask the {persona.title} ({persona.description}). It measures before it answers: "
            "profiles scripts, load-tests loopback URLs, explains queries, and so on, then checks "
            "its answer (baseline, impact, monitoring, implementation, regression prevention). "
            "Returns the answer and the whole TurnResult (measurements, findings, checks, tool "
            "calls). Pass the returned thread_id to ask a follow-up in the same thread."),
    )
    for each in personas:
        server.add_prompt(_persona_prompt(each.name, each.description, each.title))
    return server


# --------------------------------------------------------------------------- transports


def _log_to_stderr() -> None:
    """Logs go to stderr: on stdio, stdout carries the protocol and nothing else."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_stdio(settings: Settings) -> None:
    """Serve MCP over stdin/stdout until the client closes stdin (blocking)."""
    _log_to_stderr()
    service = AgentService(settings)
    server = build_mcp_server(service)

    async def main() -> None:
        async with service:
            await server.run_stdio_async()

    # Ctrl-C in a terminal is a normal way to stop a stdio server, not an error.
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(main)


def mcp_asgi(service: AgentService, *, host: str = "127.0.0.1", hosts: HostPolicy | None = None,
             ) -> tuple[ASGIApp, AbstractAsyncContextManager[None]]:
    """MCP over Streamable HTTP as an ASGI endpoint, and the context that must run around it.

    Wiring it into an app (the standalone server below does exactly this)::

        endpoint, sessions = mcp_asgi(service, host=config.host)
        app.add_route("/mcp", endpoint)  # an exact path; every method (POST, GET, DELETE)

        # in the app's lifespan, with the service entered first:
        async with service, sessions:
            yield

    A route rather than ``app.mount("/mcp", ...)``: a mount only matches
    ``/mcp/...`` and would redirect ``/mcp`` itself. ``sessions`` runs the
    session manager (its task group holds every MCP session) and can be
    entered once.

    ``hosts`` is the server's :class:`agent.server.guards.HostPolicy` (by default
    the one of a server bound to ``host``); the SDK's own DNS-rebinding check is
    given the same host names and origins, so it refuses what the app's
    :class:`agent.server.guards.HostGuard` refuses (Host: 421, Origin: 403),
    also where the endpoint is mounted without that guard. The SDK cannot tell
    ports apart for the loopback names; HostGuard, in front, does.
    """
    from mcp.server.transport_security import TransportSecuritySettings

    from agent.server.guards import HostPolicy

    hosts = hosts or HostPolicy(bind_host=host)
    allowed_hosts, allowed_origins = hosts.sdk_patterns()
    security = TransportSecuritySettings(
        # "*" in the CORS origins admits every browser origin, which the SDK's list cannot
        # say; the Host check is then HostGuard's alone.
        enable_dns_rebinding_protection="*" not in hosts.cors_origins,
        allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)
    server = build_mcp_server(service)
    server.streamable_http_app(streamable_http_path=MCP_PATH, host=host,
                               transport_security=security)
    return StreamableHTTPASGIApp(server.session_manager), server.session_manager.run()


def serve_http(settings: Settings, host: str, port: int,
               allowed_hosts: Sequence[str] = ()) -> None:
    """Serve MCP over Streamable HTTP at ``http://host:port/mcp`` (blocking).

    The same rules as the HTTP server apply: any address but loopback needs
    ``PERFAGENT_API_KEYS`` (raises :class:`agent.server.config.ServerConfigError`
    otherwise) and keeps code-running tools off unless the operator turns them on;
    only the server's own host names are answered (``allowed_hosts`` and
    ``PERFAGENT_SERVER_HOSTS`` add to loopback and the bound address), and a
    foreign browser Origin is refused; with keys, a key continues only its own threads.
    """
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    from agent.server.config import ServerConfig
    from agent.server.guards import BearerAuth, BodyLimit, HostGuard

    config = ServerConfig.from_env(host=host, port=port, allowed_hosts=tuple(allowed_hosts))
    _log_to_stderr()
    service = AgentService(config.agent_settings(settings),
                           max_concurrent_runs=config.max_concurrent_runs)
    hosts = config.host_policy()
    endpoint, sessions = mcp_asgi(service, host=host, hosts=hosts)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with service, sessions:
            yield

    app = Starlette(routes=[Route(MCP_PATH, endpoint)], lifespan=lifespan)
    guarded = HostGuard(BearerAuth(BodyLimit(app, config.max_body_bytes), config.api_keys,
                                   admin_keys=config.admin_keys), hosts)
    uvicorn.run(guarded, host=host, port=port, access_log=False)
