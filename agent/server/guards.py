"""ASGI guards in front of every route (the MCP mount included): the Host and
Origin check, API keys (and whose threads a key sees), and body size.

They are plain ASGI middleware rather than FastAPI dependencies so that they
also cover mounted sub-applications, and so that a refused request costs no
routing, parsing or body read.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.threads import EVERYONE, NOBODY, Viewer

#: The environment variable with more host names the server answers to (comma-separated),
#: like ``--allowed-host``. Not ``PERFAGENT_ALLOWED_HOSTS``: that one lists tool targets.
SERVER_HOSTS_ENV = "PERFAGENT_SERVER_HOSTS"
#: Names every server answers to, with its own port: this machine's loopback.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
#: Bind addresses that are no name of the server (every interface).
WILDCARD_BINDS = frozenset({"", "*", "0.0.0.0", "::", "[::]"})
#: Methods a browser may send cross-origin without changing anything.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Where :class:`BearerAuth` leaves the :class:`agent.threads.Viewer` of a request.
VIEWER_KEY = "perfagent.viewer"

_NAME = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def error_body(code: str, message: str, hint: str = "", **extra: object) -> dict[str, object]:
    """The one error shape every HTTP error uses."""
    return {"error": {"code": code, "message": message, "hint": hint, **extra}}


async def send_error(send: Send, status: int, code: str, message: str, hint: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(code, message, hint)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header (or an allowed-host value) as (lower-case name, port or None);
    None when it is not a host name or bracketed IPv6 address with an optional port."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        name, rest = (value[:end + 1], value[end + 1:]) if end > 0 else ("", "")
    else:
        name, colon, rest = value.partition(":")
        rest = colon + rest
    if not name or not _NAME.match(name):
        return None
    if not rest:
        return name, None
    digits = rest[1:]
    if rest[0] != ":" or not (digits.isascii() and digits.isdigit()) or not 0 < int(digits) < 65536:
        return None
    return name, int(digits)


def host_name(value: str) -> str:
    """An address as it appears in a Host header: IPv6 in brackets, lower case."""
    value = value.strip().lower()
    return f"[{value}]" if ":" in value and not value.startswith("[") else value


@dataclass(frozen=True)
class HostPolicy:
    """Which Host headers and browser Origins a server answers.

    * Its own names: the loopback names (``localhost``, ``127.0.0.1``, ``[::1]``)
      and the address it is bound to (unless that is a wildcard such as
      ``0.0.0.0``), each with the server's port. A Host without a port means
      port 80, so it is accepted only by a server on port 80.
    * ``allowed``: the ``--allowed-host`` / ``PERFAGENT_SERVER_HOSTS`` values.
      ``name`` accepts that name with any port (or none: what a browser sends
      through a reverse proxy on 80 or 443); ``name:port`` accepts only that port
      (and no port when it is 80 or 443).
    * Browser Origins, for methods that change something (all but GET, HEAD and
      OPTIONS): a request without ``Origin`` (curl, SDKs) passes; one with an
      Origin passes only from the server's own origin (the same host and port as
      its Host header) or from ``cors_origins`` (``*`` there admits every origin).
    """

    bind_host: str = "127.0.0.1"
    port: int = 8000
    allowed: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    _own: frozenset[str] = field(init=False, repr=False)
    _extra: tuple[tuple[str, int | None], ...] = field(init=False, repr=False)
    _cors: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bound = host_name(self.bind_host)
        own = set(LOOPBACK_NAMES) | ({bound} if bound not in WILDCARD_BINDS else set())
        extra = []
        for value in self.allowed:
            parsed = split_host(host_name(value) if value.count(":") > 1 else value)
            if parsed is None:
                raise ValueError(f"not a host name (with an optional :port): {value!r}")
            extra.append(parsed)
        object.__setattr__(self, "_own", frozenset(own))
        object.__setattr__(self, "_extra", tuple(extra))
        object.__setattr__(self, "_cors", frozenset(o.strip().rstrip("/").lower()
                                                    for o in self.cors_origins))

    def host_allowed(self, host: str, port: int | None = None) -> bool:
        """Whether ``host`` (a Host header) names this server, listening on ``port``
        (the port the request came in on; the configured one when not given)."""
        parsed = split_host(host)
        if parsed is None:
            return False
        name, given = parsed
        server_port = port or self.port
        if name in self._own and (given or 80) == server_port:
            return True
        # Through a proxy, a portless Host may be a browser's https (443) as well as http (80).
        return any(name == allowed and (allowed_port is None or given == allowed_port
                                        or (given is None and allowed_port in (80, 443)))
                   for allowed, allowed_port in self._extra)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a browser page at ``origin`` may change things on this server, reached as
        ``host``: the server's own origin, or one of the CORS origins."""
        origin = origin.strip().rstrip("/").lower()
        if "*" in self._cors or origin in self._cors:
            return True
        scheme, sep, netloc = origin.partition("://")
        if not sep or scheme not in _DEFAULT_PORTS:
            return False  # includes "null" (sandboxed frames, file: pages)
        page, target = split_host(netloc), split_host(host)
        if page is None or target is None:
            return False
        default = _DEFAULT_PORTS[scheme]
        return page[0] == target[0] and (page[1] or default) == (target[1] or default)

    def sdk_patterns(self) -> tuple[list[str], list[str]]:
        """The same hosts and origins in the MCP SDK's form (``name:*`` is any port), for
        its own DNS-rebinding check. It cannot tell the server's port from another, so
        it takes any port for the server's own names; :class:`HostGuard`, outermost,
        holds them to the server's port."""
        hosts: list[str] = []
        for name in sorted(self._own):
            hosts += [f"{name}:*"] + ([name] if self.port == 80 else [])
        for name, port in self._extra:
            hosts += [name, f"{name}:*"] if port is None else (
                [f"{name}:{port}"] + ([name] if port in (80, 443) else []))
        origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
        return hosts, origins + sorted(self._cors)


class HostGuard:
    """Answer only requests that name this server (421 otherwise), and refuse changes
    asked by foreign browser pages (403): the DNS-rebinding and cross-site defence.

    A web page can point its own domain name at 127.0.0.1 (DNS rebinding) and
    so reach a loopback server from the user's browser, but the browser still
    sends that domain as the Host header; a page on another site can send a
    form or script request, but the browser names the page in ``Origin``.
    Outermost, so that nothing else (not even CORS or the key check) answers
    such a request. The rules are :class:`HostPolicy`'s.
    """

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = scope.get("headers", ())
        headers = dict(raw)
        hosts = [v for k, v in raw if k == b"host"]
        # One Host header, or none (then nothing names this server): two are ambiguous.
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
        server = scope.get("server") or (None, None)
        port = server[1] if isinstance(server[1], int) else None
        refusal: tuple[int, str, str, str] | None = None
        if not self.policy.host_allowed(host, port):
            shown, own_port = host[:100] or "(none)", port or self.policy.port
            refusal = (421, "host_not_allowed",
                       f"this server does not answer to the host {shown!r}",
                       f"open it by one of its own names (e.g. http://127.0.0.1:{own_port}); "
                       "to serve it under another name, start it with --allowed-host NAME "
                       f"(or set {SERVER_HOSTS_ENV})")
        elif b"origin" in headers and (scope["type"] == "websocket"
                                       or scope.get("method") not in SAFE_METHODS):
            origin = headers[b"origin"].decode("latin-1")
            if not self.policy.origin_allowed(origin, host):
                refusal = (403, "origin_not_allowed",
                           f"requests from the web page at {origin[:100]!r} are refused",
                           "use the server's own page, or call it from outside a browser; to "
                           "let a web app call it, add its origin to PERFAGENT_CORS_ORIGINS")
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send_error(send, *refusal)


class BearerAuth:
    """Require ``Authorization: Bearer <key>`` with one of ``keys`` or ``admin_keys``
    (none at all: let all in), and say whose threads the request sees.

    Every key is compared in constant time, and all of them are compared, so
    the response time tells nothing about how much of a guess was right. The
    request's :class:`agent.threads.Viewer` is left in the scope under
    :data:`VIEWER_KEY` (read it with :func:`viewer_of`): everyone's threads
    without keys, its own for an API key, all for an admin key, none for an
    open route reached without a key.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str], open_paths: Iterable[str] = (),
                 open_prefixes: Iterable[str] = (), admin_keys: Iterable[str] = ()) -> None:
        self.app = app
        # Admin keys first: a key listed as both is an admin key.
        self.keys = [(k.encode(), Viewer.for_key(k, admin=True)) for k in admin_keys] + [
            (k.encode(), Viewer.for_key(k)) for k in keys]
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    def _open(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path in self.open_paths or path.startswith(self.open_prefixes):
            return True
        return scope.get("method") == "OPTIONS"  # CORS preflight carries no credentials

    def _viewer(self, scope: Scope) -> Viewer | None:
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        found: Viewer | None = None
        for key, viewer in self.keys:
            if hmac.compare_digest(token, key) and found is None:
                found = viewer
        return found if scheme.lower() == b"bearer" else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        viewer = self._viewer(scope) if self.keys else EVERYONE
        if viewer is not None or self._open(scope):
            scope[VIEWER_KEY] = viewer or NOBODY
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, "unauthorized", "a valid API key is required",
                         "send the header 'Authorization: Bearer <key>' with a key from "
                         "PERFAGENT_API_KEYS", headers=[(b"www-authenticate", b"Bearer")])


def viewer_of(scope: Scope) -> Viewer:
    """Whose threads a request sees, as :class:`BearerAuth` decided. With no BearerAuth
    in front there are no keys, and everyone sees every thread, as without keys."""
    return scope.get(VIEWER_KEY, EVERYONE)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body outgrows the limit while it is read.

    An HTTPException, because FastAPI turns any other error while reading a
    body into a 400; the app's handler renders it in the shared shape."""

    code = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.hint = "send a shorter message, or raise PERFAGENT_MAX_BODY_BYTES on the server"


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, before or while they arrive.

    A declared Content-Length over the limit is refused without reading a
    byte; a chunked body is counted as it is read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # reached here only from routes with no handler
            if not started:
                await send_error(send, 413, exc.code, str(exc.detail), exc.hint)

    async def _refuse(self, send: Send) -> None:
        refusal = BodyTooLarge(self.max_bytes)
        await send_error(send, 413, refusal.code, str(refusal.detail), refusal.hint)
