"""A checking HTTP forward proxy: every connection a browser makes passes the target policy.

``web_vitals`` loads a user-given page in Chromium, and a page asks for much
more than its own URL: redirects, images, scripts, ``fetch``, iframes,
WebSockets, service workers. Checking the URL once is not enough, and
Playwright's ``route()`` sees neither redirects nor WebSockets. So Chromium is
started with this proxy as its only way out (:meth:`EgressProxy.chromium_args`)
and the proxy decides for each connection:

* ``GET http://host:port/path`` (absolute form, plain HTTP): the host is checked
  with :func:`tools.base.check_target_host` (resolved once; the verdict is kept
  per ``(host, port)`` for the proxy's life), the request goes to the checked
  address in origin form, the response comes back. ``h11`` parses both sides
  and keeps both connections alive; the upstream connection is reused for the
  next request of the same client connection to the same address and port. A
  ``101 Switching Protocols`` answer turns the connection into a byte splice.
* ``CONNECT host:port`` (HTTPS, WebSockets): the same check, then ``200`` and a
  byte splice to the checked address.
* a refused host (not loopback and not in ``PERFAGENT_ALLOWED_HOSTS``, not
  resolvable, not ``http``): ``403`` with a short text body, and a
  :class:`Refusal` in :attr:`EgressProxy.refused` for the tool to report. A
  checked host that cannot be reached gets ``502`` and a :class:`Failure`.

Chromium never resolves a name itself (``--host-resolver-rules`` maps every
name to "not found"), so a name cannot answer one address to the check and
another to the browser (DNS rebinding): the proxy connects to the address the
check saw. Connection handlers never raise and never print; everything is
closed by :meth:`EgressProxy.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from tools.base import Target, ToolError, check_target_host

#: Seconds to connect to a checked address (all of its addresses together).
CONNECT_TIMEOUT_S = 5.0
#: Seconds :meth:`EgressProxy.close` waits for connection handlers to finish.
CLOSE_TIMEOUT_S = 2.0
READ_SIZE = 64 * 1024
#: Largest request or response head accepted (h11's default is 16 KiB; cookies grow).
MAX_HEAD_BYTES = 64 * 1024
#: Header on the proxy's own answers, so one can tell them from the server's.
MARK_HEADER = b"x-perfagent-egress"
#: Headers that describe one connection, not the message: never forwarded.
#: (Content-Length and Transfer-Encoding stay: h11 frames each side from them.
#: Expect is answered by the proxy itself: it reads a whole request body before
#: it waits for the server's answer.)
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"upgrade", b"expect"})
#: Methods a client may repeat safely when a reused connection turns out closed.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})


@dataclass(frozen=True)
class Refusal:
    """A request the policy refused: ``target`` is the URL, or ``host:port`` for CONNECT."""

    target: str
    host: str
    port: int
    reason: str
    hint: str = ""
    connect: bool = False

    def __str__(self) -> str:
        return f"{self.target}: {self.reason}"


@dataclass(frozen=True)
class Failure:
    """A checked host the proxy could not connect to (``error`` as Chromium names it)."""

    target: str
    host: str
    port: int
    error: str

    def __str__(self) -> str:
        return f"{self.target}: {self.error}"


def authority(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_key(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of an http(s)/ws(s) URL, as the proxy keys its verdicts; None otherwise."""
    defaults = {"http": 80, "ws": 80, "https": 443, "wss": 443}
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in defaults or not parts.hostname:
        return None
    return parts.hostname.lower(), port or defaults[parts.scheme]


def _error_name(exc: BaseException) -> str:
    """The ``net::ERR_*`` name Chromium would have shown for a failed connect."""
    if isinstance(exc, TimeoutError):
        return "ERR_CONNECTION_TIMED_OUT"
    if isinstance(exc, ConnectionRefusedError):
        return "ERR_CONNECTION_REFUSED"
    if isinstance(exc, ConnectionResetError):
        return "ERR_CONNECTION_RESET"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "ERR_ADDRESS_UNREACHABLE"
    return "ERR_CONNECTION_FAILED"


def _nodelay(writer: asyncio.StreamWriter) -> None:
    """Turn Nagle off: a proxy that holds small writes back adds a round trip to each."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()


async def _receive(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """The next h11 event, reading from the socket as needed (EOF feeds ``b""``)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(READ_SIZE))


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


def _forward_headers(headers: Iterable[tuple[bytes, bytes]], *, upgrade: bool = False,
                     host: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """End-to-end headers only: drop hop-by-hop ones and those the Connection header names.

    ``upgrade`` keeps ``Connection: upgrade`` and ``Upgrade`` (a WebSocket
    handshake in absolute form); ``host`` replaces the Host header, as a proxy
    must (RFC 9112 3.2.2: the request target wins).
    """
    headers = list(headers)
    named = {token.strip().lower() for name, value in headers if name.lower() == b"connection"
             for token in value.split(b",")}
    drop = HOP_BY_HOP | named
    out = [(name, value) for name, value in headers
           if name.lower() not in drop and not (host is not None and name.lower() == b"host")]
    if host is not None:
        out.insert(0, (b"host", host))
    if upgrade:
        out.extend((name, value) for name, value in headers if name.lower() == b"upgrade")
        out.append((b"connection", b"upgrade"))
    return out


def _wants_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    headers = list(headers)
    tokens = {token.strip().lower() for name, value in headers if name.lower() == b"connection"
              for token in value.split(b",")}
    return b"upgrade" in tokens and any(name.lower() == b"upgrade" for name, _ in headers)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, then half-close ``dst`` so the other side sees the end."""
    while data := await src.read(READ_SIZE):
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof():
        with contextlib.suppress(OSError):
            dst.write_eof()


async def _splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                  b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy bytes both ways until both sides are done or one fails."""
    tasks = [asyncio.ensure_future(_pump(a[0], b[1])), asyncio.ensure_future(_pump(b[0], a[1]))]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        # One direction failed (reset): the other has nothing more to say either.
        if any(not t.cancelled() and t.exception() is not None for t in done):
            return
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class _Upstream:
    """One connection to a checked address, with its h11 client state."""

    address: str
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection
    used: bool = False

    def reusable_for(self, target: Target, port: int) -> bool:
        # A server that closed an idle keep-alive connection has left EOF behind:
        # open a new one rather than write into it (a close racing our write is
        # caught in _exchange, which sends a bodiless GET again).
        return (port == self.port and self.address in target.addresses
                and self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE
                and not self.reader.at_eof() and not self.writer.is_closing())

    def close(self) -> None:
        _close_writer(self.writer)


class EgressProxy:
    """A forward proxy on 127.0.0.1 (ephemeral port) that lets only checked hosts through.

    ``checked`` seeds the verdict cache with targets the caller already
    checked (the page's own URL), so the proxy connects where that check
    looked instead of resolving the name a second time. ``what`` names the
    tool in refusal hints. Use as ``async with EgressProxy(...) as proxy:``.
    """

    def __init__(self, *, what: str = "web_vitals", checked: Iterable[Target] = (),
                 connect_timeout: float = CONNECT_TIMEOUT_S,
                 check: Callable[..., Target] = check_target_host) -> None:
        self.what = what
        self.connect_timeout = connect_timeout
        self.refused: list[Refusal] = []
        self.failed: list[Failure] = []
        self._check = check
        # The policy reads context variables (public-server mode): checks run in
        # worker threads, which do not inherit them, so keep the creator's context.
        self._context = contextvars.copy_context()
        self._verdicts: dict[tuple[str, int], Target | ToolError] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[Target | ToolError]] = {}
        for target in checked:
            if target.port is not None:
                self._verdicts[(target.host, target.port)] = target
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> EgressProxy:
        """Listen on 127.0.0.1 at a port the system picks."""
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0,
                                                  limit=MAX_HEAD_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        """Stop listening and drop every connection, upstream ones included.

        Everything is closed before the first ``await``, so even a cancelled
        close leaves no socket open.
        """
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _close_writer(writer)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        for future in self._pending.values():
            future.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=CLOSE_TIMEOUT_S)

    async def __aenter__(self) -> EgressProxy:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chromium_args(self) -> list[str]:
        """Chromium switches that leave this proxy as the browser's only way out.

        * ``--proxy-server``: every http, https, ws and wss connection;
        * ``--proxy-bypass-list=<-loopback>``: Chromium sends loopback URLs
          straight to the server unless told not to;
        * ``--host-resolver-rules``: every name, and every address literal too,
          resolves to "not found", so Chromium can neither look a name up itself
          nor connect anywhere directly. The proxy's own ``127.0.0.1:port`` is
          mapped to itself first: ``MAP * ~NOTFOUND`` alone also catches the
          proxy's literal address and the browser fails with
          ERR_PROXY_CONNECTION_FAILED (``EXCLUDE`` would free all of 127.0.0.1);
        * ``--webrtc-ip-handling-policy=disable_non_proxied_udp``: WebRTC may
          not send UDP around the proxy. Chromium 156 honours this spelling and
          ignores ``--force-webrtc-ip-handling-policy`` (with only that one, its
          STUN packets still went out); both are passed, since a build ignores
          a switch it does not know.
        """
        me = f"127.0.0.1:{self.port}"
        return [
            f"--proxy-server=http://{me}",
            "--proxy-bypass-list=<-loopback>",
            f"--host-resolver-rules=MAP {me} {me} , MAP * ~NOTFOUND",
            "--webrtc-ip-handling-policy=disable_non_proxied_udp",
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        ]

    # ------------------------------------------------------------------ policy

    async def verdict(self, host: str, port: int) -> Target | ToolError:
        """The checked target for ``(host, port)``, or the refusal; resolved once per key."""
        key = (host.strip().lower().strip("[]"), port)
        if key not in self._verdicts:
            future = self._pending.get(key)
            if future is None:
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(None, self._check_now, *key)
                self._pending[key] = future
            self._verdicts[key] = await asyncio.shield(future)
            self._pending.pop(key, None)
        result = self._verdicts[key]
        if (isinstance(result, Target) and port == self.port
                and any(self._is_me(a) for a in result.addresses)):
            # A request for the proxy itself would loop through it forever (even for a
            # seeded target: the page's port may be free, and the proxy may get it).
            return ToolError("target_refused", f"{authority(key[0], port)} is the egress proxy "
                             "itself", "pages may not reach the browser's own proxy")
        return result

    def _check_now(self, host: str, port: int) -> Target | ToolError:
        """Run the policy check in a worker thread (it may resolve the name)."""
        try:
            check = functools.partial(self._check, host, port, what=self.what)
            target = self._context.copy().run(check)
        except ToolError as exc:
            return exc
        except Exception as exc:  # a broken resolver refuses, it never lets a request through
            return ToolError("target_refused", f"{host} could not be checked ({exc})",
                             "check the name and try again")
        if not target.addresses:
            return ToolError("target_unresolvable", f"{host} does not resolve",
                             "check the name, or list its address instead")
        return target

    @staticmethod
    def _is_me(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        ip = mapped or ip
        return ip.is_loopback or ip.is_unspecified

    def _refuse(self, target: str, host: str, port: int, error: ToolError, *,
                connect: bool = False) -> bytes:
        self.refused.append(Refusal(target, host, port, error.message, error.hint, connect))
        return (f"perfagent egress proxy refused {target}: {error.message}\n"
                f"{error.hint}\n").encode()

    async def _connect(self, target: Target, host: str, port: int,
                       label: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str] | None:
        """Connect to the first checked address that answers; None (and a Failure) otherwise.

        Only the addresses the check saw are tried, as numeric literals: the
        name is never resolved again.
        """
        error: BaseException = OSError("no address")
        try:
            async with asyncio.timeout(self.connect_timeout):
                for address in target.addresses:
                    try:
                        reader, writer = await asyncio.open_connection(
                            address, port, flags=socket.AI_NUMERICHOST, limit=MAX_HEAD_BYTES)
                    except OSError as exc:
                        error = exc
                        continue
                    _nodelay(writer)
                    self._writers.add(writer)
                    return reader, writer, address
        except TimeoutError as exc:
            error = exc
        self.failed.append(Failure(label, host, port, _error_name(error)))
        return None

    # ------------------------------------------------------------------ connections

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one browser connection: requests in a keep-alive loop, or a tunnel."""
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        _nodelay(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        upstream: _Upstream | None = None
        try:
            while True:
                event = await _receive(conn, reader)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed, or a client that stopped mid-way
                if event.method == b"CONNECT":
                    await self._tunnel(conn, reader, writer, event)
                    return
                upstream = await self._exchange(conn, reader, writer, event, upstream)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            # A malformed request: say so if nothing was sent yet, then hang up.
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    await self._answer(conn, writer, exc.error_status_hint or 400,
                                       b"perfagent egress proxy: bad request\n", close=True)
        except Exception:
            # A side went away (reset, EOF mid-message) or broke the protocol: drop
            # the connection. A handler never raises into the event loop.
            pass
        except asyncio.CancelledError:
            # close() cancels handlers. The task must still end normally: asyncio's
            # stream server asks a finished handler task for its exception, and a
            # cancelled one makes that an error logged for every open connection.
            pass
        finally:
            if upstream is not None:
                upstream.close()
                self._writers.discard(upstream.writer)
            _close_writer(writer)
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                      body: bytes, *, close: bool = False) -> None:
        """The proxy's own short text answer (403 refused, 502 unreachable, 400)."""
        headers = [(b"content-type", b"text/plain; charset=utf-8"),
                   (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), (MARK_HEADER, str(status).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await _send(conn, writer, h11.Response(status_code=status, headers=headers))
        await _send(conn, writer, h11.Data(data=body))
        await _send(conn, writer, h11.EndOfMessage())

    async def _discard_body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> None:
        """Read the rest of a request we will not forward, so the connection stays usable."""
        while conn.their_state is h11.SEND_BODY:
            event = await _receive(conn, reader)
            if isinstance(event, h11.ConnectionClosed):
                return

    async def _exchange(self, conn: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, request: h11.Request,
                        upstream: _Upstream | None) -> _Upstream | None:
        """Check, forward and answer one absolute-form request; returns the upstream to keep."""
        target = request.target.decode("latin-1")
        try:
            parts = urlsplit(target)
            host, port = (parts.hostname or "").lower(), parts.port or 80
        except ValueError:
            parts, host, port = None, "", 0
        if parts is None or parts.scheme != "http" or not host or not 0 < port < 65536:
            await self._discard_body(conn, reader)
            body = self._refuse(target, host, port, ToolError(
                "target_refused", "only absolute http:// URLs (and CONNECT) pass this proxy",
                "use an http or https URL"))
            await self._answer(conn, writer, 403, body)
            return upstream
        verdict = await self.verdict(host, port)
        if isinstance(verdict, ToolError):
            await self._discard_body(conn, reader)
            await self._answer(conn, writer, 403, self._refuse(target, host, port, verdict))
            return upstream

        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        netloc = parts.netloc.rsplit("@", 1)[-1]
        upgrade = _wants_upgrade(request.headers)
        forwarded = h11.Request(method=request.method, target=path.encode("latin-1"),
                                headers=_forward_headers(request.headers, upgrade=upgrade,
                                                         host=netloc.encode("latin-1")))
        # Bodiless idempotent requests may be sent again on a fresh connection when a
        # reused one turns out closed; the others are streamed once.
        replayable = (request.method in IDEMPOTENT and not any(
            name.lower() in (b"content-length", b"transfer-encoding") and value.strip() != b"0"
            for name, value in request.headers))
        for attempt in (1, 2):
            if upstream is not None and not upstream.reusable_for(verdict, port):
                upstream.close()
                self._writers.discard(upstream.writer)
                upstream = None
            if upstream is None:
                opened = await self._connect(verdict, host, port, target)
                if opened is None:
                    await self._discard_body(conn, reader)
                    failure = self.failed[-1]
                    await self._answer(conn, writer, 502, (
                        f"perfagent egress proxy could not connect to {authority(host, port)}: "
                        f"{failure.error}\n").encode())
                    return None
                up_reader, up_writer, address = opened
                upstream = _Upstream(address, port, up_reader, up_writer, h11.Connection(
                    h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES))
            reused = upstream.used
            upstream.used = True
            try:
                await _send(upstream.conn, upstream.writer, forwarded)
                if conn.they_are_waiting_for_100_continue:
                    await _send(conn, writer, h11.InformationalResponse(status_code=100, headers=[]))
                if conn.their_state is h11.SEND_BODY:
                    while True:
                        event = await _receive(conn, reader)
                        if isinstance(event, h11.Data):
                            await _send(upstream.conn, upstream.writer, event)
                        elif isinstance(event, h11.EndOfMessage):
                            await _send(upstream.conn, upstream.writer, h11.EndOfMessage())
                            break
                        else:
                            raise OSError("the client closed mid-request")
                else:
                    await _send(upstream.conn, upstream.writer, h11.EndOfMessage())
                first = await _receive(upstream.conn, upstream.reader)
            except (OSError, h11.RemoteProtocolError):
                first = None
            if isinstance(first, h11.InformationalResponse | h11.Response):
                break
            # Nothing came back. A reused keep-alive connection may have been closed
            # by the server as we wrote: try once more on a new one, if safe.
            upstream.close()
            self._writers.discard(upstream.writer)
            upstream = None
            if not (reused and replayable and attempt == 1):
                await self._discard_body(conn, reader)
                self.failed.append(Failure(target, host, port, "ERR_EMPTY_RESPONSE"))
                await self._answer(conn, writer, 502, b"perfagent egress proxy: the server "
                                   b"closed the connection without an answer\n")
                return None

        assert upstream is not None and first is not None
        event = first
        while isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                await _send(conn, writer, h11.InformationalResponse(
                    status_code=101, headers=_forward_headers(event.headers, upgrade=True),
                    reason=event.reason))
                await self._switch(conn, reader, writer, upstream)
                return None
            await _send(conn, writer, h11.InformationalResponse(
                status_code=event.status_code, headers=_forward_headers(event.headers),
                reason=event.reason))
            event = await _receive(upstream.conn, upstream.reader)
        if not isinstance(event, h11.Response):
            raise OSError("the server closed the connection mid-answer")
        await _send(conn, writer, h11.Response(
            status_code=event.status_code, headers=_forward_headers(event.headers),
            reason=event.reason))
        while True:
            event = await _receive(upstream.conn, upstream.reader)
            if isinstance(event, h11.Data):
                await _send(conn, writer, event)
            elif isinstance(event, h11.EndOfMessage):
                await _send(conn, writer, h11.EndOfMessage())  # trailers are hop-by-hop here
                break
            else:
                raise OSError("the server closed the connection mid-body")
        if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE:
            upstream.conn.start_next_cycle()
            return upstream
        upstream.close()
        self._writers.discard(upstream.writer)
        return None

    async def _switch(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, upstream: _Upstream) -> None:
        """After 101 Switching Protocols: splice bytes, h11's leftovers first."""
        to_client, _ = upstream.conn.trailing_data
        to_server, _ = conn.trailing_data
        if to_client:
            writer.write(to_client)
        if to_server:
            upstream.writer.write(to_server)
        await _splice((reader, writer), (upstream.reader, upstream.writer))

    async def _tunnel(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, request: h11.Request) -> None:
        """``CONNECT host:port``: check, connect to the checked address, splice."""
        label = request.target.decode("latin-1")
        host, _, port_text = label.rpartition(":")
        host = host.strip("[]").lower()
        port = int(port_text) if port_text.isdigit() else 0
        if not host or not 0 < port < 65536:
            body = self._refuse(label, host, port, ToolError(
                "target_refused", "CONNECT needs host:port", "use an https or wss URL"),
                connect=True)
            await self._answer(conn, writer, 403, body, close=True)
            return
        verdict = await self.verdict(host, port)
        if isinstance(verdict, ToolError):
            await self._answer(conn, writer, 403,
                               self._refuse(label, host, port, verdict, connect=True), close=True)
            return
        opened = await self._connect(verdict, host, port, label)
        if opened is None:
            await self._answer(conn, writer, 502, (
                f"perfagent egress proxy could not connect to {label}: "
                f"{self.failed[-1].error}\n").encode(), close=True)
            return
        up_reader, up_writer, _address = opened
        try:
            while conn.their_state is h11.SEND_BODY:  # CONNECT has no body: its end
                await _receive(conn, reader)
            await _send(conn, writer, h11.Response(status_code=200, headers=[],
                                                   reason=b"Connection established"))
            early, _ = conn.trailing_data
            if early:
                up_writer.write(early)
            await _splice((reader, writer), (up_reader, up_writer))
        finally:
            _close_writer(up_writer)
            self._writers.discard(up_writer)


__all__ = ["CONNECT_TIMEOUT_S", "EgressProxy", "Failure", "Refusal", "authority", "url_key"]
