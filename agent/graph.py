"""The LangGraph agent: prepare, the agent <-> tools loop, five parallel checks, gate,
revise, finalize.

```
prepare -> agent <-> tools
             └─ draft -> check_* (five, in parallel) -> gate -> finalize
                                                         └─ revise -> agent
```

The graph's shape is the same for every persona; what differs per run (the
persona, its model, its tools, the settings) travels in :class:`RunContext`,
LangGraph's run-scoped context, so one compiled graph serves every thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent import knowledge
from agent.baselines import BaselineStore, BaselineStoreError, git_revision
from agent.checks import CHECKS, CheckInput, revision_feedback
from agent.context import Settings, default_model
from agent.knowledge import KnowledgeError
from agent.models import ChatModel, ModelRequest, ToolSchema, build_model
from agent.models.offline import REVISION_SENDER
from agent.persona import Persona, get_persona
from agent.results import CheckResult
from agent.state import RESET, AgentState
from agent.targets import named_targets
from agent.toolbox import DelegateRunner, execute, serving_rules, tool_schemas
from prompts import render
from tools import tool_names

CHECK_NODES = {name: f"check_{name}" for name in CHECKS}
#: Tools whose numbers depend on having the machine to themselves.
MEASUREMENT_TOOLS = frozenset(tool_names())


@dataclass
class RunContext:
    """Everything a run needs besides its state; not checkpointed."""

    settings: Settings
    persona: Persona
    model: ChatModel
    system_prompt: str
    tools: list[ToolSchema]
    delegate: DelegateRunner
    depth: int = 0
    thread_id: str | None = None
    #: emit node_start/node_end events (streaming surfaces show them; a plain
    #: run_turn has no listener, and each event costs a trip through the stream)
    node_events: bool = True

    @property
    def allowed_tools(self) -> set[str]:
        return {t.name for t in self.tools}


@cache
def system_prompt(persona_name: str) -> str:
    """The persona's rendered system prompt; rendered once per process and persona."""
    return render("system.md.j2", persona=get_persona(persona_name))


@cache
def _tool_schemas(persona_name: str, allow_code_tools: bool, can_delegate: bool) -> list[ToolSchema]:
    """JSON Schemas cost milliseconds to generate, so each persona's list is built once."""
    return tool_schemas(get_persona(persona_name), allow_code_tools=allow_code_tools,
                        can_delegate=can_delegate)


def make_context(settings: Settings, persona_name: str, *, depth: int = 0,
                 model: ChatModel | None = None, node_events: bool = True,
                 thread_id: str | None = None) -> RunContext:
    """Resolve persona, model, tools and the delegation runner for one run."""
    from agent.delegation import delegate_runner

    persona = get_persona(persona_name)
    return RunContext(
        settings=settings,
        persona=persona,
        model=model or build_model(settings.model, persona),
        system_prompt=system_prompt(persona_name),
        tools=_tool_schemas(persona_name, settings.allow_code_tools,
                            depth < settings.max_delegation_depth),
        delegate=delegate_runner(settings, depth, [d.name for d in persona.delegation]),
        depth=depth,
        node_events=node_events,
        thread_id=thread_id,
    )


@dataclass
class ServerContext:
    """What a LangGraph server (``langgraph dev``, Studio) may set per run; everything
    else comes from the environment, as for the CLI."""

    model: str = field(default_factory=default_model)
    persona: str = "performance-engineer"


@cache
def _server_context(model: str, persona: str) -> RunContext:
    return make_context(Settings(model=model, persona=persona), persona)


def context_from_settings(given: ServerContext | dict[str, Any] | None) -> RunContext:
    """The run context for a graph run that was not started by perfagent's run API."""
    if isinstance(given, dict):
        given = ServerContext(**{k: v for k, v in given.items() if k in ("model", "persona")})
    given = given or ServerContext()
    return _server_context(given.model, given.persona)


# --------------------------------------------------------------------------- node helpers

Node = Callable[[AgentState, Runtime[RunContext]], Awaitable[dict[str, Any]]]


def timed(name: str, node: Node) -> Node:
    """Wrap a node: emit node_start/node_end events and record its time in ``timings``."""

    async def wrapper(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        if not isinstance(runtime.context, RunContext):  # run by a LangGraph server
            runtime = runtime.override(context=context_from_settings(runtime.context))
        emit = runtime.stream_writer if runtime.context.node_events else None
        depth = runtime.context.depth
        if emit:
            emit({"type": "node_start", "data": {"node": name, "depth": depth}})
        started = time.perf_counter()
        update = await node(state, runtime)
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        timings = dict(update.get("timings", {}))
        timings[name] = timings.get(name, 0) + elapsed
        update["timings"] = timings
        if emit:
            data: dict[str, Any] = {"node": name, "depth": depth, "ms": elapsed}
            if "usage" in update:  # a model call: its tokens, for tracing and metrics
                data["usage"] = update["usage"]
            emit({"type": "node_end", "data": data})
        return update

    wrapper.__name__ = name
    return wrapper


def last_user_text(messages: list[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage) and message.name != REVISION_SENDER:
            return str(message.content)
    return ""


def draft_of(state: AgentState) -> str:
    """The latest assistant text: the draft under check."""
    for message in reversed(state.get("messages", [])):
        if isinstance(message, AIMessage) and not message.tool_calls:
            return message.text if hasattr(message, "text") else str(message.content)
    return ""


def _usage(message: AIMessage) -> dict[str, float]:
    meta = message.usage_metadata or {}
    details = meta.get("input_token_details") or {}
    return {
        "llm_calls": 0 if meta.get("total_tokens", 0) == 0 and not meta.get(
            "input_tokens") else 1,
        "input_tokens": meta.get("input_tokens", 0),
        "output_tokens": meta.get("output_tokens", 0),
        "cache_read_tokens": details.get("cache_read", 0) or 0,
        "cache_write_tokens": details.get("cache_creation", 0) or 0,
    }


def _turn_context(passages: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> str:
    """Per-turn system text: playbook passages and earlier baselines, kept out of the
    cached persona prompt."""
    parts = []
    if passages:
        parts.append("Relevant playbook passages (cite the source when you use them):\n\n"
                     + "\n\n".join(f"## {p['heading']} ({p['source']})\n{p['text']}"
                                    for p in passages))
    if earlier:
        parts.append("Earlier baselines of the targets in this question (report how the new "
                     "measurements compare):\n" + "\n".join(
                         f"- {b['metric']} of {b['target']}: {b['value']:g} {b['unit']} on "
                         f"{b['measured_at'][:10]}" + (f" (rev {b['git_rev']})" if b.get("git_rev")
                                                     else "") for b in earlier))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- nodes

async def prepare(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Start a turn: reset per-turn fields, ground it in the playbooks, and recall the
    earlier baselines of the targets the question names."""
    messages = state.get("messages", [])
    question = last_user_text(messages)
    passages, earlier = await asyncio.to_thread(_recall, question, runtime.context.settings)
    return {
        "turn_start": max(len(messages) - 1, 0),
        "persona": runtime.context.persona.name,
        "depth": runtime.context.depth,
        "measurements": RESET, "findings": RESET, "tool_calls": RESET,
        "delegations": RESET, "checks": RESET, "usage": RESET, "timings": RESET,
        "knowledge": passages, "baselines": earlier, "steps": 0, "revisions": 0, "answer": "",
    }


def _recall(question: str, settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not question:
        return [], []
    names = named_targets(question)
    # A broken store must not block measuring: the turn goes on without it, and
    # `perfagent baselines` / `perfagent kb stats` report the problem with its fix.
    try:
        earlier = BaselineStore(settings.baselines_root).latest_for(names) if names else []
    except BaselineStoreError:
        earlier = []
    try:
        passages = knowledge.search(question, 3, state_dir=settings.state_dir)
    except KnowledgeError:
        passages = []
    return passages, [b.model_dump() for b in earlier]


async def agent(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One model call. On the last allowed step the model gets no tools and must answer."""
    ctx = runtime.context
    steps = state.get("steps", 0)
    emit = runtime.stream_writer
    out_of_steps = steps >= ctx.settings.max_steps
    request = ModelRequest(
        system=ctx.system_prompt,
        messages=state.get("messages", []),
        tools=() if out_of_steps else ctx.tools,
        context=_turn_context(state.get("knowledge", []), state.get("baselines", [])),
        on_text=lambda text: emit({"type": "text_delta",
                                   "data": {"text": text, "depth": ctx.depth}}),
        metadata={"knowledge": state.get("knowledge", []), "persona": ctx.persona.name,
                  "baselines": state.get("baselines", [])},
    )
    message = await ctx.model.generate(request)
    if out_of_steps and message.tool_calls:
        # A model that still asks for tools past the budget gets its text kept, calls dropped.
        message = AIMessage(content=message.content, usage_metadata=message.usage_metadata)
    return {"messages": [message], "steps": steps + 1, "usage": _usage(message)}


async def tools(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Run the requested tool calls concurrently and record what they measured."""
    ctx = runtime.context
    emit = runtime.stream_writer
    calls = state["messages"][-1].tool_calls  # type: ignore[union-attr]

    async def run_one(call: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        emit({"type": "tool_call", "data": {"id": call["id"], "name": call["name"],
                                            "args": call["args"], "depth": ctx.depth}})

        def progress(fraction: float, text: str) -> None:
            emit({"type": "tool_progress", "data": {"id": call["id"], "fraction": fraction,
                                                    "text": text}})

        outcome = await execute(call["name"], dict(call["args"]), allowed=ctx.allowed_tools,
                                delegate=ctx.delegate, search=knowledge.search,
                                progress=progress, rules=serving_rules(ctx.settings))
        emit({"type": "tool_result", "data": {**outcome.record, "id": call["id"],
                                              "depth": ctx.depth}})
        return call, outcome

    # Measurements run one after another so one cannot distort another on shared
    # cores (a profile burning a core inflates a concurrent load test's latencies);
    # lookups and delegations have nothing to distort and run concurrently.
    requested = [dict(c) for c in calls]
    for call in requested:
        call["args"] = with_defaults(call["name"], dict(call["args"]), ctx.persona, state)
    measured = [c for c in requested if c["name"] in MEASUREMENT_TOOLS]
    others = [c for c in requested if c["name"] not in MEASUREMENT_TOOLS]

    async def run_measurements() -> list[tuple[dict[str, Any], Any]]:
        return [await run_one(c) for c in measured]

    sequential, concurrent = await asyncio.gather(
        run_measurements(), asyncio.gather(*(run_one(c) for c in others)))
    order = {id(c): i for i, c in enumerate(requested)}
    results = sorted([*sequential, *concurrent], key=lambda r: order[id(r[0])])
    return {
        "messages": [
            ToolMessage(content=o.content, tool_call_id=str(c["id"]), name=c["name"],
                        status="success" if o.ok else "error")
            for c, o in results
        ],
        "tool_calls": [o.record for _, o in results],
        "measurements": [m for _, o in results for m in o.measurements],
        "findings": [f for _, o in results for f in o.findings],
        "delegations": [o.delegation for _, o in results if o.delegation],
    }


def with_defaults(name: str, args: dict[str, Any], persona: Persona,
                  state: AgentState) -> dict[str, Any]:
    """Fill what the persona knows and the tool cannot: ``check_budgets`` defaults to
    the persona's targets (with their units) and to this turn's measurements."""
    if name == "check_budgets":
        if not args.get("budgets"):
            args["budgets"] = persona.budgets()
        if not args.get("measurements"):
            args["measurements"] = state.get("measurements", [])
    return args


def check_input(state: AgentState, persona: Persona) -> CheckInput:
    """What the checks see: the draft, the turn's evidence, and the texts figures may cite."""
    sources = [
        str(m.content) for m in state.get("messages", [])
        if isinstance(m, ToolMessage)
        or (isinstance(m, HumanMessage) and m.name != REVISION_SENDER)
    ]
    sources += [p["text"] for p in state.get("knowledge", [])]
    sources += [f"{b['value']} {b['unit']}" for b in state.get("baselines", [])]
    return CheckInput(
        question=last_user_text(state.get("messages", [])),
        draft=draft_of(state),
        measurements=state.get("measurements", []),
        findings=state.get("findings", []),
        tool_calls=state.get("tool_calls", []),
        sources=sources,
        target_values=[(t.value, t.unit) for t in persona.targets],
    )


def make_check_node(name: str) -> Node:
    validator = CHECKS[name]

    async def check(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        result: CheckResult = validator(check_input(state, ctx.persona))
        runtime.stream_writer({"type": "check", "data": {**result.model_dump(),
                                                         "depth": ctx.depth}})
        return {"checks": {name: result.model_dump()}}

    return check


async def gate(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Joins the five checks; the routing decision is :func:`route_gate`."""
    return {}


async def revise(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Send the draft back with each failed check's feedback."""
    results = [CheckResult(**c) for c in state.get("checks", {}).values()]
    feedback = revision_feedback(results)
    runtime.stream_writer({"type": "revision", "data": {
        "revision": state.get("revisions", 0) + 1,
        "failed": [r.name for r in results if r.status == "fail"],
        "depth": runtime.context.depth}})
    return {
        "messages": [HumanMessage(content=feedback, name=REVISION_SENDER)],
        "revisions": state.get("revisions", 0) + 1,
    }


async def finalize(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Fix the answer (a check still failing after the revision budget is said openly)
    and remember this turn's measurements as baselines for the next."""
    ctx = runtime.context
    answer = draft_of(state)
    failed = [c for c in state.get("checks", {}).values() if c["status"] == "fail"]
    if failed:
        notes = "\n".join(f"> - **{c['name']}**: {c['feedback']}" for c in failed)
        answer += (
            "\n\n> **Unresolved pre-response checks** (after "
            f"{state.get('revisions', 0)} revision(s)):\n{notes}\n"
        )
    measurements = state.get("measurements", [])
    if measurements and ctx.depth == 0:  # a sub-agent's numbers reach the parent's state
        await asyncio.to_thread(_remember, measurements, ctx)
    return {"answer": answer}


def _remember(measurements: list[dict[str, Any]], ctx: RunContext) -> None:
    from tools.base import workspace_roots

    with contextlib.suppress(BaselineStoreError):  # reported by `perfagent baselines`
        BaselineStore(ctx.settings.baselines_root).record(
            measurements, thread_id=ctx.thread_id,
            git_rev=git_revision(str(workspace_roots()[0])))


# --------------------------------------------------------------------------- routing

def route_agent(state: AgentState) -> str | list[str]:
    last = state["messages"][-1]
    if isinstance(last, AIMessage) and last.tool_calls:
        return "tools"
    return list(CHECK_NODES.values())


def route_gate(state: AgentState, runtime: Runtime[RunContext]) -> str:
    failed = any(c["status"] == "fail" for c in state.get("checks", {}).values())
    settings = (runtime.context.settings if isinstance(runtime.context, RunContext)
                else context_from_settings(runtime.context).settings)
    if failed and state.get("revisions", 0) < settings.max_revisions:
        return "revise"
    return "finalize"


def build_graph(checkpointer: Any = None, context_schema: type = RunContext) -> Any:
    """Compile the agent graph. ``checkpointer=False`` runs it without persistence
    (sub-agents); ``None`` with no parent means no persistence either.
    ``context_schema=ServerContext`` is the graph a LangGraph server runs (see
    ``langgraph.json``): it builds each run's context from the environment."""
    graph = StateGraph(AgentState, context_schema=context_schema)
    graph.add_node("prepare", timed("prepare", prepare))
    graph.add_node("agent", timed("agent", agent))
    graph.add_node("tools", timed("tools", tools))
    for name, node_name in CHECK_NODES.items():
        graph.add_node(node_name, timed(node_name, make_check_node(name)))
    graph.add_node("gate", timed("gate", gate))
    graph.add_node("revise", timed("revise", revise))
    graph.add_node("finalize", timed("finalize", finalize))

    graph.add_edge(START, "prepare")
    graph.add_edge("prepare", "agent")
    graph.add_conditional_edges("agent", route_agent, ["tools", *CHECK_NODES.values()])
    graph.add_edge("tools", "agent")
    graph.add_edge(list(CHECK_NODES.values()), "gate")
    graph.add_conditional_edges("gate", route_gate, ["revise", "finalize"])
    graph.add_edge("revise", "agent")
    graph.add_edge("finalize", END)
    return graph.compile(checkpointer=checkpointer, name="perfagent")
