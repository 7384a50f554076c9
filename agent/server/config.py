"""Server settings: where it listens and what it lets in, each overridable from the environment.

The safety rule: a server bound to anything but loopback must have API keys,
and keeps code-running tools off unless its operator turns them on, so that
an API key never becomes remote code execution on the host.

Whatever it binds, a server answers only requests that name it in their Host
header (its loopback names and bound address with its port, plus the
``--allowed-host`` / ``PERFAGENT_SERVER_HOSTS`` names) and refuses changes asked
by foreign browser pages: see :class:`agent.server.guards.HostPolicy`. A server
bound to a wildcard address (``0.0.0.0``) answers its loopback names only until
its public names are given that way.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.context import Settings

if TYPE_CHECKING:
    from agent.server.guards import HostPolicy

#: Requests larger than this are refused with 413 (1 MiB is far beyond any question).
DEFAULT_MAX_BODY_BYTES = 1_048_576
#: Where ``perfagent serve --workers N`` tells its worker processes the address to
#: bind (each builds its app with :meth:`ServerConfig.from_env`).
HOST_ENV, PORT_ENV, WORKERS_ENV = "PERFAGENT_HOST", "PERFAGENT_PORT", "PERFAGENT_WORKERS"


class ServerConfigError(Exception):
    """The server cannot start with this configuration; ``hint`` says how to fix it."""

    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


def _allowed_hosts(given: tuple[str, ...]) -> tuple[str, ...]:
    """The server's extra host names: ``PERFAGENT_SERVER_HOSTS`` and ``--allowed-host``
    values, each checked, without repeats."""
    from agent.server.guards import SERVER_HOSTS_ENV, HostPolicy

    names = tuple(dict.fromkeys(v.strip() for v in (*_env_list(SERVER_HOSTS_ENV), *given)
                                if v.strip()))
    for name in names:
        try:
            HostPolicy(allowed=(name,))
        except ValueError:
            raise ServerConfigError(
                "invalid_setting", f"--allowed-host {name!r} is not a host name",
                "give a name or address, optionally with a port: perf.example.com, "
                f"perf.example.com:8443, 192.0.2.10 or [2001:db8::1]:8000 (--allowed-host or "
                f"{SERVER_HOSTS_ENV})") from None
    return names


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def _env_flag(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServerConfigError("invalid_setting", f"{name}={raw!r} is not an integer",
                                f"set {name} to a positive whole number") from None
    if value < 1:
        raise ServerConfigError("invalid_setting", f"{name}={raw!r} must be at least 1",
                                f"set {name} to a positive whole number")
    return value


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP server runs. Build it with :meth:`from_env` to apply the environment."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: Bearer keys accepted (``PERFAGENT_API_KEYS``, comma-separated). Empty: no auth,
    #: which is only allowed on loopback. Each key sees and continues only the threads
    #: it created.
    api_keys: tuple[str, ...] = ()
    #: Keys that also see and continue every thread (``PERFAGENT_ADMIN_KEYS``).
    admin_keys: tuple[str, ...] = ()
    #: Host names the server answers to besides its own (loopback and the bound
    #: address): ``--allowed-host`` and ``PERFAGENT_SERVER_HOSTS``; ``name`` or
    #: ``name:port``. A server bound to ``0.0.0.0`` needs its public names here.
    allowed_hosts: tuple[str, ...] = ()
    #: Origins allowed to call the API from a browser (``PERFAGENT_CORS_ORIGINS``);
    #: none by default: the served page is same-origin and needs none.
    cors_origins: tuple[str, ...] = ()
    #: Turns allowed to run at once (``PERFAGENT_MAX_RUNS``); past it, 429.
    max_concurrent_runs: int = 16
    #: Largest accepted request body (``PERFAGENT_MAX_BODY_BYTES``); past it, 413.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Offer tools that run code or read files (``PERFAGENT_ALLOW_CODE_TOOLS``).
    #: Default: on for loopback, off for any other address.
    allow_code_tools: bool = True
    #: Server processes (``PERFAGENT_WORKERS``, ``--workers``). More than one needs
    #: ``PERFAGENT_DATABASE_URL``: the workers share threads, the run cap and the
    #: thread claims through PostgreSQL.
    workers: int = 1

    @classmethod
    def from_env(cls, *, host: str | None = None, port: int | None = None,
                 workers: int | None = None, allowed_hosts: tuple[str, ...] = ()) -> ServerConfig:
        """The configuration for ``host:port`` with the environment applied and checked.

        What is not given comes from ``PERFAGENT_HOST``, ``PERFAGENT_PORT`` and
        ``PERFAGENT_WORKERS`` (the way server workers receive it), else the defaults.
        ``allowed_hosts`` (``--allowed-host``) add to ``PERFAGENT_SERVER_HOSTS``.
        """
        host = host or os.environ.get(HOST_ENV) or "127.0.0.1"
        port = port if port is not None else _env_int(PORT_ENV, 8000)
        workers = workers if workers is not None else _env_int(WORKERS_ENV, 1)
        if workers < 1:
            raise ServerConfigError("invalid_setting", f"--workers {workers} must be at least 1",
                                    "pass --workers 1 or more")
        if workers > 1:
            from agent.storage import DATABASE_URL_ENV, database_url

            if database_url() is None:
                raise ServerConfigError(
                    "workers_need_database",
                    f"{workers} workers cannot share threads, the run cap and thread claims "
                    "through SQLite files",
                    f"set {DATABASE_URL_ENV}=postgresql://user@host/db, or serve with --workers 1")
        keys = _env_list("PERFAGENT_API_KEYS")
        admin_keys = _env_list("PERFAGENT_ADMIN_KEYS")
        loopback = is_loopback(host)
        if not loopback and not (keys or admin_keys):
            raise ServerConfigError(
                "api_keys_required",
                f"binding {host} exposes the agent beyond this machine, and no API key is set",
                "set PERFAGENT_API_KEYS=key1,key2 (clients send 'Authorization: Bearer key1'), "
                "or bind 127.0.0.1")
        code_tools = _env_flag("PERFAGENT_ALLOW_CODE_TOOLS")
        return cls(
            host=host, port=port, api_keys=keys, admin_keys=admin_keys,
            allowed_hosts=_allowed_hosts(tuple(allowed_hosts)),
            cors_origins=_env_list("PERFAGENT_CORS_ORIGINS"),
            max_concurrent_runs=_env_int("PERFAGENT_MAX_RUNS", 16),
            max_body_bytes=_env_int("PERFAGENT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            allow_code_tools=loopback if code_tools is None else code_tools,
            workers=workers,
        )

    def worker_env(self, settings: Settings) -> dict[str, str]:
        """The environment from which each worker process rebuilds this configuration
        and these settings (see :func:`agent.server.app.app_from_env`)."""
        from agent.server.guards import SERVER_HOSTS_ENV

        return {HOST_ENV: self.host, PORT_ENV: str(self.port), WORKERS_ENV: str(self.workers),
                SERVER_HOSTS_ENV: ",".join(self.allowed_hosts),
                "PERFAGENT_MODEL": settings.model, "PERFAGENT_PERSONA": settings.persona,
                "PERFAGENT_STATE_DIR": str(settings.state_dir)}

    def host_policy(self) -> HostPolicy:
        """The Host and Origin rules of this server (see :class:`agent.server.guards.HostGuard`)."""
        from agent.server.guards import HostPolicy

        return HostPolicy(bind_host=self.host, port=self.port, allowed=self.allowed_hosts,
                          cors_origins=self.cors_origins)

    @property
    def binds_wildcard(self) -> bool:
        """Bound to every interface: its public names must come from ``allowed_hosts``."""
        from agent.server.guards import WILDCARD_BINDS, host_name

        return host_name(self.host) in WILDCARD_BINDS

    def agent_settings(self, settings: Settings) -> Settings:
        """The run settings this server uses: code tools follow the server's rule, and a
        server bound beyond loopback runs its tools under the public-server rules."""
        return settings.with_overrides(allow_code_tools=self.allow_code_tools,
                                       public_server=not is_loopback(self.host))
