"""The tools a persona's agent may call, and how one call is executed.

Measurement tools come from the ``tools`` registry, filtered by the persona's
``tools`` list; ``knowledge_search`` and ``delegate`` are the agent's own.
Executing a call never raises: a failure becomes a structured error the
model can read and act on, and a ``ToolCallRecord`` with ``ok=False``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from agent.context import Settings
from agent.models.base import ToolSchema
from agent.persona import Persona
from tools import ToolError, get_tool, tool_names
from tools.base import LOCAL, ServingRules, serving

#: Runs a delegation: (target persona, task) -> (answer, extra record fields).
DelegateRunner = Callable[[str, str], Awaitable[dict[str, Any]]]


class KnowledgeSearchInput(BaseModel):
    query: str = Field(description="what to look up in the performance playbooks")
    k: int = Field(default=3, ge=1, le=10, description="how many passages to return")


class DelegateInput(BaseModel):
    to: str = Field(description="name of the sub-agent, from the delegation table")
    task: str = Field(description="what the sub-agent should do, self-contained")


@dataclass
class ToolOutcome:
    """One executed call: the text the model reads, and what the state records."""

    content: str
    record: dict[str, Any]
    measurements: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    delegation: dict[str, Any] | None = None
    ok: bool = True


def serving_rules(settings: Settings) -> ServingRules:
    """The rules tool calls run under with these settings: a public server's narrower
    network reach, and the workspace closed wherever code-running tools are off."""
    return ServingRules(public=settings.public_server, workspace=settings.allow_code_tools)


def tool_schemas(persona: Persona, *, allow_code_tools: bool, can_delegate: bool) -> list[ToolSchema]:
    """What the model sees: the persona's tools that exist and are allowed here."""
    wanted = persona.tools or [*tool_names(), "knowledge_search", "delegate"]
    schemas: list[ToolSchema] = []
    for name in wanted:
        if name == "knowledge_search":
            schemas.append(ToolSchema(
                name=name,
                description="Search the performance-engineering playbooks (patterns, fixes, "
                "snippets) and return the most relevant passages with their source.",
                parameters=KnowledgeSearchInput.model_json_schema(),
            ))
        elif name == "delegate":
            if not can_delegate or not persona.delegation:
                continue
            table = "; ".join(f"{d.name}: {d.when}" for d in persona.delegation)
            parameters = DelegateInput.model_json_schema()
            parameters["properties"]["to"]["enum"] = [d.name for d in persona.delegation]
            schemas.append(ToolSchema(
                name=name,
                description=f"Hand a sub-task to a specialist sub-agent. When: {table}.",
                parameters=parameters,
            ))
        elif name in tool_names():
            spec = get_tool(name)
            if spec.runs_code and not allow_code_tools:
                continue
            schemas.append(ToolSchema(name=name, description=spec.description,
                                      parameters=spec.json_schema()))
    return schemas


def _error(name: str, args: dict[str, Any], started: float, code: str, message: str,
           hint: str) -> ToolOutcome:
    payload = {"ok": False, "error": {"code": code, "message": message, "hint": hint}}
    return ToolOutcome(
        content=json.dumps(payload),
        record={"name": name, "args": args, "ok": False,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "error": f"{code}: {message}"},
        ok=False,
    )


async def execute(
    name: str,
    args: dict[str, Any],
    *,
    allowed: set[str],
    delegate: DelegateRunner | None = None,
    search: Callable[[str, int], list[dict[str, Any]]] | None = None,
    progress: Callable[[float, str], None] | None = None,
    rules: ServingRules = LOCAL,
) -> ToolOutcome:
    """Run one tool call; every failure comes back as a structured error, never a raise.

    ``delegate`` and ``search`` back the agent-only tools; a caller that runs
    measurement tools alone (the MCP server) leaves them out. ``rules`` says
    what a server lets the call reach (see :func:`serving_rules`)."""
    started = time.perf_counter()
    if name not in allowed or (name == "delegate" and delegate is None) or (
            name == "knowledge_search" and search is None):
        return _error(name, args, started, "tool_not_available",
                      f"{name} is not available to this agent",
                      f"use one of: {', '.join(sorted(allowed))}")
    try:
        if name == "knowledge_search":
            query = KnowledgeSearchInput.model_validate(args)
            passages = search(query.query, query.k)
            content = json.dumps({"ok": True, "passages": passages})
            return ToolOutcome(content=content, record=_record(name, args, started))
        if name == "delegate":
            request = DelegateInput.model_validate(args)
            outcome = await delegate(request.to, request.task)
            delegation = {"to": request.to, "task": request.task, "answer": outcome["answer"]}
            return ToolOutcome(
                content=json.dumps({"ok": True, **outcome}),
                record=_record(name, args, started),
                delegation=delegation,
                measurements=outcome.get("measurements", []),
                findings=outcome.get("findings", []),
            )
        spec = get_tool(name)
        inp = spec.input_model.model_validate(args)
        with serving(rules):
            result = await spec.run(inp, progress)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()[:5]
        )
        return _error(name, args, started, "invalid_arguments", problems,
                      "fix the arguments to match the tool's schema")
    except ToolError as exc:
        return _error(name, args, started, exc.code, exc.message, exc.hint)
    except Exception as exc:  # a tool bug must not kill the turn; report it as data
        return _error(name, args, started, "tool_crashed", f"{type(exc).__name__}: {exc}",
                      "this is a perfagent bug; the other tools' results still stand")
    data = result.model_dump(mode="json")
    return ToolOutcome(
        content=json.dumps(data),
        record=_record(name, args, started),
        measurements=data.get("measurements", []),
        findings=data.get("findings", []),
    )


def _record(name: str, args: dict[str, Any], started: float) -> dict[str, Any]:
    return {"name": name, "args": args, "ok": True,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1), "error": None}
