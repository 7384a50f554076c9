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

import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
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
    if not _RULES.get().workspace:
        raise ToolError(
            "workspace_closed",
            f"this server does not let requests read or write files ({path})",
            "ask the operator, who can set PERFAGENT_ALLOW_CODE_TOOLS=true on the server; "
            "network targets (URLs, PostgreSQL DSNs, Redis) still work")
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
    """Hosts the operator allowed for network tools (``PERFAGENT_ALLOWED_HOSTS``).

    Entries are comma-separated names or addresses, each optionally with a
    port (``10.0.0.5``, ``staging.internal:8080``, ``[::1]:6379``).
    """
    raw = os.environ.get("PERFAGENT_ALLOWED_HOSTS", "")
    return {h.strip().lower() for h in raw.split(",") if h.strip()}


@dataclass(frozen=True)
class ServingRules:
    """What the current tool call may reach beyond its own arguments' checks.

    ``public``: the call serves a server bound to a public address. There, the
    services listening on the host's own loopback (admin consoles, databases)
    are not the public's to reach unless listed, and other users' processes are
    not theirs to read. ``workspace``: the call may read and write files in the
    workspace; a server that keeps code-running tools off keeps it closed too,
    since reading a SQLite file or a trace file is reading the server's files.
    """

    public: bool = False
    workspace: bool = True


#: The rules of a local run: loopback reachable, the workspace open.
LOCAL = ServingRules()
_RULES: ContextVar[ServingRules] = ContextVar("perfagent_serving_rules", default=LOCAL)


@contextlib.contextmanager
def serving(rules: ServingRules) -> Iterator[None]:
    """Run the tools called within this block under ``rules``."""
    token = _RULES.set(rules)
    try:
        yield
    finally:
        _RULES.reset(token)


def on_public_server() -> bool:
    """Whether the current tool call serves a server bound to a public address."""
    return _RULES.get().public


@dataclass(frozen=True)
class Target:
    """A network target that passed the check, with the addresses it was checked at.

    Clients connect to ``addresses`` and never resolve ``host`` again: a name
    resolved twice can answer differently the second time (DNS rebinding) and
    send the connection somewhere the check never saw.
    """

    host: str
    port: int | None
    addresses: tuple[str, ...]

    @property
    def address(self) -> str:
        """The address to connect to (the first the name resolved to)."""
        return self.addresses[0]


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int | None) -> tuple[str, ...]:
    """Every address ``host`` resolves to, in resolver order (empty when it does not)."""
    if _literal(host) is not None:
        return (str(_literal(host)),)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ()
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]).split("%", 1)[0], None)
    return tuple(seen)


def _local_only(address: str) -> bool:
    """Addresses that reach this machine or its link: loopback, any, link-local."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    return ip.is_loopback or ip.is_unspecified or ip.is_link_local


def _listed(names: set[str], allowed: set[str], port: int | None) -> bool:
    for name in names:
        if name in allowed:
            return True
        if port is not None:
            shown = f"[{name}]" if ":" in name else name
            if f"{shown}:{port}" in allowed:
                return True
    return False


def check_target_host(host: str, port: int | None = None, *,
                      what: str = "network tools") -> Target:
    """Check ``host`` (and ``port``) against the target policy and resolve it once.

    Allowed: a host whose every address is loopback (unless a public server
    turned that off), or one the operator listed in ``PERFAGENT_ALLOWED_HOSTS``.
    Raises ToolError ``target_refused`` otherwise, naming the setting to change.
    """
    host = host.strip().lower().strip("[]")
    if not host:
        raise ToolError("invalid_url", "the target names no host",
                        "give a host such as 127.0.0.1")
    allowed = allowed_hosts()
    addresses = _resolve(host, port)
    listed_name = _listed({host}, allowed, port)
    loopback_ok = not on_public_server()
    shown = f"[{host}]" if ":" in host else host
    entry = f"{shown}:{port}" if port is not None else shown
    if not addresses:
        if listed_name:
            raise ToolError("target_unresolvable", f"{host} does not resolve",
                            "check the name, or list its address instead")
        raise ToolError("target_refused",
                        f"{host} is not a loopback address and is not in the allowed hosts "
                        "(it does not resolve here)", f"{what} target loopback only; to allow "
                        f"this host set PERFAGENT_ALLOWED_HOSTS={entry}")
    local = [a for a in addresses if _local_only(a)]
    if loopback_ok:
        if listed_name or all(ipaddress.ip_address(a).is_loopback for a in addresses):
            return Target(host, port, addresses)
        raise ToolError("target_refused",
                        f"{host} is not a loopback address and is not in the allowed hosts",
                        f"{what} target loopback only; to allow this host set "
                        f"PERFAGENT_ALLOWED_HOSTS={entry}")
    # A public server: only listed hosts, and a listed name that resolves to this
    # machine's own loopback (or link-local, e.g. a cloud metadata service) is
    # refused unless that address itself is listed.
    if listed_name and (not local or _listed(set(local), allowed, port)):
        return Target(host, port, addresses)
    if _listed(set(addresses), allowed, port) and len(addresses) == 1:
        return Target(host, port, addresses)
    raise ToolError("target_refused",
                    f"{host} is not in this server's allowed hosts",
                    "a server bound to a public address reaches only the hosts its operator "
                    f"lists; to allow this one set PERFAGENT_ALLOWED_HOSTS={entry} on the server")


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; ToolError ``invalid_url`` when it is not one."""
    bad = ToolError("invalid_url", f"{url!r} is not a valid http(s) URL",
                    "give a full URL such as http://127.0.0.1:8000/items")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not host:
        raise bad
    return parts.scheme, host.lower(), port or (443 if parts.scheme == "https" else 80)


def check_target_url(url: str, *, what: str = "load tests") -> Target:
    """Refuse any URL whose host is neither loopback nor explicitly allowed.

    Returns the checked target; connect to its ``addresses``. Load tests never
    leave the machine unless the operator named the host in
    ``PERFAGENT_ALLOWED_HOSTS``.
    """
    _scheme, host, port = split_url(url)
    return check_target_host(host, port, what=what)


def tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` lines of ``text``: enough of stderr to act on."""
    return "\n".join(text.rstrip().splitlines()[-lines:])
