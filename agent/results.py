"""The public result shapes: ``TurnResult`` (what ``ask --json`` prints and the API
returns), its parts, and the run events a streaming turn emits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.base import Finding, Measurement

CheckStatus = Literal["pass", "fail", "not_applicable"]


class CheckResult(BaseModel):
    """One of the five pre-response checks over a draft."""

    name: str
    status: CheckStatus
    evidence: str = ""
    feedback: str = ""


class ToolCallRecord(BaseModel):
    name: str
    args: dict[str, Any]
    ok: bool
    duration_ms: float
    error: str | None = None


class Delegation(BaseModel):
    to: str
    task: str
    answer: str


class Usage(BaseModel):
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class Timings(BaseModel):
    total: float = 0.0
    nodes: dict[str, float] = Field(default_factory=dict)


class TurnResult(BaseModel):
    """Everything one turn produced. The keys are a public contract: extend, never rename."""

    thread_id: str
    model: str
    persona: str
    answer: str
    checks: list[CheckResult]
    tool_calls: list[ToolCallRecord]
    delegations: list[Delegation]
    measurements: list[Measurement]
    findings: list[Finding]
    revisions: int
    usage: Usage
    timings_ms: Timings


RunEventType = Literal[
    "run_start", "node_start", "node_end", "tool_call", "tool_progress", "tool_result", "check",
    "text_delta", "delegation", "revision", "final", "error",
]


class RunEvent(BaseModel):
    """One thing that happened during a turn, in order; ``final`` carries the TurnResult."""

    type: RunEventType
    data: dict[str, Any] = Field(default_factory=dict)
