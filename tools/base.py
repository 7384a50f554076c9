"""Shared vocabulary of every measurement tool.

Each tool is an async function taking a pydantic input model and returning a
pydantic result that derives from :class:`ToolResult`. Results carry
``measurements`` and ``findings`` in the shapes of the public ``TurnResult``,
so the agent, its checks, the evals and the CLI all read one vocabulary.

Tools never raise raw exceptions at their callers: anything that goes wrong
is a :class:`ToolError` with a machine-readable ``code``, a message and a hint
saying what to do next. This module imports nothing heavy.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["info", "low", "medium", "high", "critical"]

#: Called by long-running tools with (fraction done 0..1, short status text).
ProgressCallback = Callable[[float, str], None]


class Measurement(BaseModel):
    """One number a tool really measured."""

    name: str = Field(description="snake_case metric name, e.g. p95_latency")
    value: float
    unit: str = Field(description="ms, s, req/s, %, count, bytes, ...")
    source: str = Field(description="the tool that measured it")
    target: str = Field(default="", description="what was measured: URL, script, query")
    budget: str | None = Field(default=None, description='comparison such as "<200"')
    passed: bool | None = Field(default=None, description="value within budget, if any")


class Finding(BaseModel):
    """A problem a tool observed, with where it lives when known."""

    kind: str = Field(description="snake_case kind, e.g. missing_index, n_plus_one")
    severity: Severity = "medium"
    summary: str
    location: str | None = Field(default=None, description="file:line, table, URL or span")
    evidence: str | None = None


class ToolResult(BaseModel):
    """Base of every tool result."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    ok: bool = True
    summary: str = ""
    measurements: list[Measurement] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)


class ToolErrorInfo(BaseModel):
    """The structured form of a :class:`ToolError`, safe to show a model or a user."""

    code: str
    message: str
    hint: str = ""


class ToolError(Exception):
    """A tool failed in a way its caller can act on.

    ``code`` is stable snake_case (``target_refused``, ``timeout``, ...),
    ``hint`` says what to do next.
    """

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def info(self) -> ToolErrorInfo:
        return ToolErrorInfo(code=self.code, message=self.message, hint=self.hint)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool: its name, what it is for, its typed input and its runner."""

    name: str
    description: str
    input_model: type[BaseModel]
    result_model: type[ToolResult]
    run: Callable[..., Awaitable[ToolResult]]
    #: Tools that execute user code or read user files; a server bound to a
    #: public address keeps them off unless its operator turns them on.
    runs_code: bool = False

    def json_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()


# --------------------------------------------------------------------------- budgets

_BUDGET = re.compile(r"^\s*(<=|>=|<|>|==)\s*(-?\d+(?:\.\d+)?)\s*$")


def parse_budget(budget: str) -> tuple[str, float]:
    """Split ``"<200"`` into ``("<", 200.0)``; raise ToolError when malformed."""
    match = _BUDGET.match(budget)
    if not match:
        raise ToolError(
            "invalid_budget",
            f"budget {budget!r} is not a comparison",
            'write it as an operator and a number, e.g. "<200" or ">=0.8"',
        )
    return match.group(1), float(match.group(2))


def within_budget(value: float, budget: str) -> bool:
    """True when ``value`` satisfies ``budget`` (e.g. 180, "<200" -> True)."""
    op, limit = parse_budget(budget)
    return {
        "<": value < limit,
        "<=": value <= limit,
        ">": value > limit,
        ">=": value >= limit,
        "==": value == limit,
    }[op]


# --------------------------------------------------------------------------- safety

def workspace_roots() -> list[Path]:
    """The folders tools may read or run code from.

    ``PERFAGENT_WORKSPACE`` holds one or more folders separated by the
    platform's path separator; the default is the current directory.
    """
    raw = os.environ.get("PERFAGENT_WORKSPACE", "")
    roots = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    return roots or [Path.cwd().resolve()]


def resolve_in_workspace(path: str | os.PathLike[str], *, must_exist: bool = True) -> Path:
    """Resolve ``path`` and make sure it lies inside a workspace root.

    Relative paths are taken from the first root. Raises ToolError
    (``path_outside_workspace`` or ``not_found``) otherwise.
    """
    roots = workspace_roots()
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    resolved = candidate.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ToolError(
            "path_outside_workspace",
            f"{path} is outside the workspace ({os.pathsep.join(map(str, roots))})",
            "move the file into the workspace or add its folder to PERFAGENT_WORKSPACE",
        )
    if must_exist and not resolved.exists():
        raise ToolError("not_found", f"{path} does not exist", "check the path and try again")
    return resolved


def allowed_hosts() -> set[str]:
    """Hosts other than loopback that the operator allowed for network tools."""
    raw = os.environ.get("PERFAGENT_ALLOWED_HOSTS", "")
    return {h.strip().lower() for h in raw.split(",") if h.strip()}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_target_url(url: str) -> str:
    """Refuse any URL whose host is neither loopback nor explicitly allowed.

    Returns the host. Load tests must never leave the machine unless the
    operator named the host in ``PERFAGENT_ALLOWED_HOSTS``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(
            "invalid_url",
            f"{url!r} is not an http(s) URL",
            "give a full URL such as http://127.0.0.1:8000/items",
        )
    host = parts.hostname.lower()
    if host in allowed_hosts() or _is_loopback(host):
        return host
    raise ToolError(
        "target_refused",
        f"{host} is not a loopback address and is not in the allowed hosts",
        "load tests target loopback only; to allow this host set "
        f"PERFAGENT_ALLOWED_HOSTS={host}",
    )


def tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` lines of ``text``: enough of stderr to act on."""
    return "\n".join(text.rstrip().splitlines()[-lines:])
