"""web_vitals lets the browser reach only checked hosts, and only at the checked address.

Every test serves its pages from loopback servers it starts itself: a
"disallowed" host is either 192.0.2.1 (TEST-NET-1, documentation-only and not
loopback, so every check refuses it; the browser never sends it a packet) or,
under the public-server rules, a live loopback port the operator did not list;
those servers count the connections they receive, so "never attempted" is
observed, not assumed. Names such as ``rebind.test`` exist only in this
process's patched ``socket.getaddrinfo`` (the egress proxy runs in-process and
resolves there; Chromium cannot resolve anything itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import pytest

import tools.webvitals as webvitals
from tools.base import ServingRules, Target, ToolError, serving
from tools.egress import EgressProxy
from tools.webvitals import WebVitalsInput, run

#: TEST-NET-1 (RFC 5737): documentation-only, not loopback; refused by every check.
DISALLOWED = "192.0.2.1"
#: A server bound to a public address: loopback is reachable only where listed.
PUBLIC = ServingRules(public=True)

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1 id="title">{title}</h1><p>Some text so the page paints.</p>{extra}</body></html>"""


# --------------------------------------------------------------------------- servers


@dataclass
class Site:
    """A loopback HTTP/1.1 server: ``routes`` maps a path to (status, headers, body)."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    hits: list[tuple[str, str]] = field(default_factory=list)  # (Host header, path)
    connections: int = 0
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, path: str, title: str, extra: str = "") -> None:
        self.routes[path] = (200, {"Content-Type": "text/html; charset=utf-8"},
                             PAGE.format(title=title, extra=extra).encode())

    def redirect(self, path: str, location: str) -> None:
        self.routes[path] = (302, {"Location": location}, b"")


def _handler(site: Site) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so the proxy's reuse is exercised

        def setup(self) -> None:
            site.connections += 1
            super().setup()

        def do_GET(self) -> None:
            site.hits.append((self.headers.get("Host", ""), self.path))
            status, headers, body = site.routes.get(
                self.path, (404, {"Content-Type": "text/plain"}, b"not found"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    return Handler


@pytest.fixture
def sites() -> Iterator[Callable[[], Site]]:
    """Start loopback sites on ephemeral ports; all are shut down after the test."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start() -> Site:
        site = Site()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
        server.daemon_threads = True
        site.port = int(server.server_port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return site

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, list[str]], list[str]]:
    """Names only this process knows: ``answers[name]`` is the sequence of addresses
    successive lookups get (the last repeats); ``lookups`` logs each lookup."""
    real = socket.getaddrinfo
    answers: dict[str, list[str]] = {}
    lookups: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(name)
        sequence = answers[name]
        address = sequence.pop(0) if len(sequence) > 1 else sequence[0]
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return answers, lookups


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chromium and playwright must be here (they are, and in CI): no skipping."""
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    try:
        import playwright.async_api  # noqa: F401

        webvitals.find_chromium()
    except (ImportError, ToolError) as exc:
        pytest.fail(f"the web_vitals egress tests need Chromium and playwright: {exc}")


@pytest.fixture
def proxies(monkeypatch: pytest.MonkeyPatch) -> list[EgressProxy]:
    """The egress proxies web_vitals starts, kept for a look after the run."""
    started: list[EgressProxy] = []

    class Kept(EgressProxy):
        async def start(self) -> EgressProxy:
            started.append(self)
            return await super().start()

    monkeypatch.setattr(webvitals, "EgressProxy", Kept)
    return started


async def _assert_closed(proxies: list[EgressProxy]) -> None:
    """Each run's proxy is gone: no listener, no connection, no handler left."""
    assert proxies, "web_vitals started no egress proxy"
    for proxy in proxies:
        assert not proxy._writers and not proxy._handlers
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", proxy.port)


def _quick(url: str, **kwargs: Any) -> WebVitalsInput:
    return WebVitalsInput(url=url, runs=1, timeout=10, settle=0.5, **kwargs)


# --------------------------------------------------------------------------- 1. redirects


@pytest.mark.slow
async def test_redirect_to_disallowed_host_is_refused(browser: None, sites: Callable[[], Site],
                                                     proxies: list[EgressProxy]) -> None:
    """A redirect chain that leaves for a disallowed host fails the run, naming the chain."""
    site = sites()
    site.redirect("/hop1", "/hop2")
    site.redirect("/hop2", f"http://{DISALLOWED}/landing")
    started = time.monotonic()
    with pytest.raises(ToolError) as err:
        await run(_quick(f"{site.base}/hop1"))
    assert err.value.code == "target_refused"
    message = err.value.message
    assert message.startswith(f"{site.base}/hop1 redirected to http://{DISALLOWED}/landing")
    assert f"{site.base}/hop2" in message  # the chain, hop by hop
    assert "not a loopback address" in message
    assert f"PERFAGENT_ALLOWED_HOSTS={DISALLOWED}" in err.value.hint
    assert [path for _host, path in site.hits] == ["/hop1", "/hop2"]
    # Refused by the proxy at once, not after a connect attempt timed out.
    assert time.monotonic() - started < 10
    await _assert_closed(proxies)


@pytest.mark.slow
async def test_public_server_redirect_never_reaches_an_unlisted_port(
        browser: None, sites: Callable[[], Site], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the public-server rules a redirect to an unlisted loopback port (a live
    server) is refused before the browser connects: that server sees nothing."""
    site, other = sites(), sites()
    site.redirect("/", f"{other.base}/admin")
    other.page("/admin", "admin console")
    monkeypatch.setenv("PERFAGENT_ALLOWED_HOSTS", f"127.0.0.1:{site.port}")
    with serving(PUBLIC), pytest.raises(ToolError) as err:
        await run(_quick(f"{site.base}/"))
    assert err.value.code == "target_refused"
    assert f"redirected to {other.base}/admin" in err.value.message
    assert other.connections == 0 and other.hits == []


# --------------------------------------------------------------------------- 2. sub-resources


@pytest.mark.slow
async def test_disallowed_subresources_are_blocked_and_reported(
        browser: None, sites: Callable[[], Site], proxies: list[EgressProxy]) -> None:
    site = sites()
    site.page("/", "Sub-resources", extra=(
        f'<img src="http://{DISALLOWED}/pixel.png" width="10" height="10" alt="">'
        f'<script src="http://{DISALLOWED}:8080/track.js"></script>'
        f'<iframe src="https://{DISALLOWED}/frame.html"></iframe>'))
    result = await run(_quick(f"{site.base}/", interact=False))
    only = result.runs[0]
    # The page's own vitals still come back.
    assert only.fcp is not None and only.lcp is not None and only.ttfb is not None
    assert only.lcp_element == "h1#title"
    assert only.other_hosts == []  # the browser loaded nothing from it (it tried, before)
    blocked = only.blocked_requests
    assert any(b.startswith(f"http://{DISALLOWED}/pixel.png: ") for b in blocked), blocked
    assert any(b.startswith(f"http://{DISALLOWED}:8080/track.js: ") for b in blocked), blocked
    assert any(b.startswith(f"https://{DISALLOWED}/frame.html: ") for b in blocked), blocked
    assert all("not a loopback address" in b for b in blocked), blocked
    finding = next(f for f in result.findings if f.kind == "blocked_request")
    assert DISALLOWED in finding.summary and "not a loopback address" in finding.summary
    assert "PERFAGENT_ALLOWED_HOSTS" in (finding.evidence or "")
    assert any(DISALLOWED in note for note in result.notes)
    await _assert_closed(proxies)


# --------------------------------------------------------------------------- 3. DNS rebinding


@pytest.mark.slow
async def test_rebinding_name_loads_from_the_checked_address(
        browser: None, sites: Callable[[], Site],
        resolver: tuple[dict[str, list[str]], list[str]]) -> None:
    """``rebind.test`` answers 127.0.0.1 to the check and 192.0.2.1 afterwards: the
    page loads from the checked loopback address, and only the check resolved it."""
    answers, lookups = resolver
    answers["rebind.test"] = ["127.0.0.1", DISALLOWED]
    site = sites()
    site.page("/", "Rebinding", extra='<img src="/again.png" alt="">')
    url = f"http://rebind.test:{site.port}/"
    result = await run(_quick(url, interact=False))
    only = result.runs[0]
    assert only.fcp is not None and only.lcp_element == "h1#title"
    assert (f"rebind.test:{site.port}", "/") in site.hits
    assert (f"rebind.test:{site.port}", "/again.png") in site.hits  # same checked address
    assert lookups == ["rebind.test"]  # resolved once, by the check; never by Chromium
    assert only.blocked_requests == []


# --------------------------------------------------------------------------- 4. page scripts


@pytest.mark.slow
async def test_script_websocket_and_fetch_to_disallowed_hosts_are_blocked(
        browser: None, sites: Callable[[], Site], monkeypatch: pytest.MonkeyPatch) -> None:
    """WebSockets and fetches from page script go through the check too; under the
    public-server rules an unlisted live loopback port never sees a connection."""
    site, unlisted = sites(), sites()
    unlisted.page("/api", "secret")
    site.page("/", "Scripts", extra=f"""<script>
      const ws1 = new WebSocket("ws://{DISALLOWED}:8765/socket");
      const ws2 = new WebSocket("ws://127.0.0.1:{unlisted.port}/socket");
      fetch("http://{DISALLOWED}:8765/api").catch(() => {{}});
      fetch("http://127.0.0.1:{unlisted.port}/api").catch(() => {{}});
    </script>""")
    monkeypatch.setenv("PERFAGENT_ALLOWED_HOSTS", f"127.0.0.1:{site.port}")
    with serving(PUBLIC):
        result = await run(_quick(f"{site.base}/", interact=False))
    assert unlisted.connections == 0 and unlisted.hits == []  # never even attempted
    blocked = result.runs[0].blocked_requests
    for url in (f"ws://{DISALLOWED}:8765/socket", f"http://{DISALLOWED}:8765/api",
                f"ws://127.0.0.1:{unlisted.port}/socket", f"http://127.0.0.1:{unlisted.port}/api"):
        assert any(b.startswith(f"{url}: ") for b in blocked), (url, blocked)
    assert result.runs[0].fcp is not None


# --------------------------------------------------------------------------- 5. allowed ones


@pytest.mark.slow
async def test_allowed_loopback_subresources_on_another_port_load(
        browser: None, sites: Callable[[], Site],
        resolver: tuple[dict[str, list[str]], list[str]]) -> None:
    """Loopback sub-resources on another port load, also under a name only the checked
    resolver knows (``assets.test``): Chromium gets it from the proxy, not from DNS."""
    answers, _lookups = resolver
    answers["assets.test"] = ["127.0.0.1"]
    site, assets = sites(), sites()
    assets.routes["/hero.svg"] = (200, {"Content-Type": "image/svg+xml"}, (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="800" height="400">'
        b'<rect width="800" height="400" fill="#c33"/></svg>'))
    assets.routes["/app.js"] = (200, {"Content-Type": "text/javascript"},
                                b"document.title = 'script ran';")
    site.page("/", "Assets", extra=(
        f'<img id="hero" src="http://assets.test:{assets.port}/hero.svg" width="800" height="400">'
        f'<script src="{assets.base}/app.js"></script>'))
    result = await run(_quick(f"{site.base}/", interact=False))
    only = result.runs[0]
    assert only.lcp_element == "img#hero"
    assert only.lcp_url == f"http://assets.test:{assets.port}/hero.svg"
    assert {path for _host, path in assets.hits} == {"/hero.svg", "/app.js"}
    assert only.blocked_requests == []
    assert only.other_hosts == ["assets.test"]
    assert not any(f.kind == "blocked_request" for f in result.findings)


# --------------------------------------------------------------------------- 6. WebRTC


@pytest.mark.slow
async def test_webrtc_sends_no_udp_around_the_proxy(browser: None, sites: Callable[[], Site]) -> None:
    """A page's RTCPeerConnection may not send STUN over UDP (the proxy carries TCP only):
    a STUN "server" on a loopback UDP port receives nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stun:
        stun.bind(("127.0.0.1", 0))
        stun.setblocking(False)
        site = sites()
        site.page("/", "WebRTC", extra=f"""<script>
          const pc = new RTCPeerConnection({{iceServers: [
            {{urls: "stun:127.0.0.1:{stun.getsockname()[1]}"}}, {{urls: "stun:{DISALLOWED}:3478"}}]}});
          pc.createDataChannel("probe");
          pc.createOffer().then((offer) => pc.setLocalDescription(offer));
        </script>""")
        result = await run(WebVitalsInput(url=f"{site.base}/", runs=1, timeout=10, settle=1.0,
                                          interact=False))
        assert result.runs[0].fcp is not None
        packets = 0
        with contextlib.suppress(BlockingIOError):
            while stun.recv(2048):
                packets += 1
        assert packets == 0, f"{packets} STUN packet(s) went around the proxy"


# --------------------------------------------------------------------------- the proxy alone
#
# No browser: a raw loopback upstream whose answers the test writes byte by byte,
# and an h11 client speaking to the proxy as Chromium does (absolute-form
# requests, CONNECT), to pin down framing, keep-alive, refusals and cleanup.


@dataclass
class Upstream:
    """A raw HTTP/1.1 server: ``answers[path]`` is the exact bytes sent back, and
    ``closes`` the paths after which it hangs up (a close-delimited body)."""

    answers: dict[str, bytes] = field(default_factory=dict)
    closes: set[str] = field(default_factory=set)
    requests: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (line, head, body)
    connections: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                lowered = head.lower()
                body = b""
                if b"transfer-encoding: chunked" in lowered:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        chunk = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        body += chunk[:-2]
                elif b"content-length:" in lowered:
                    length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                self.requests.append((line, head, body))
                path = line.split(" ")[1].split("?")[0]
                writer.write(self.answers.get(
                    path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
                await writer.drain()
                if path in self.closes:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # (a cancelled handler would be logged as an error by asyncio's server)
        finally:
            writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server_state = Upstream()
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    server_state.port = int(server.sockets[0].getsockname()[1])
    async with server:
        yield server_state


class Client:
    """One browser-like connection to the proxy, parsed with h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, proxy: EgressProxy) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", proxy.port))

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), 5))

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, str], bytes]:
        host = urlsplit(target).netloc or target
        sent = [("host", host), *(headers or [])]
        if body and not any(name.lower() == "transfer-encoding" for name, _ in sent):
            sent.append(("content-length", str(len(body))))
        self.writer.write(self.conn.send(h11.Request(method=method, target=target, headers=sent)))
        if body:
            self.writer.write(self.conn.send(h11.Data(data=body)))
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        response = await self._next()
        while isinstance(response, h11.InformationalResponse):
            response = await self._next()
        answer = b""
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                answer += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        headers_out = {k.decode().lower(): v.decode() for k, v in response.headers}
        return response.status_code, headers_out, answer

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[EgressProxy]:
    async with EgressProxy(what="web_vitals", connect_timeout=1.0) as started:
        yield started


async def test_proxy_keeps_both_sides_alive_and_frames_every_body(
        proxy: EgressProxy, upstream: Upstream) -> None:
    """Content-Length, chunked, HEAD, 204 and 304 answers and request bodies pass on one
    client connection and one upstream connection; a close-delimited body ends the
    upstream connection but not the browser's."""
    upstream.answers.update({
        "/cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\nhello",
        "/chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"),
        "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        "/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
        "/same": b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        "/post": b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        "/legacy": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
    })
    upstream.closes.add("/legacy")
    base = f"http://127.0.0.1:{upstream.port}"
    client = await Client.open(proxy)
    try:
        status, headers, body = await client.request("GET", f"{base}/cl?q=1",
                                                     headers=[("proxy-connection", "keep-alive")])
        assert (status, body, headers["x-kept"]) == (200, b"hello", "yes")
        assert (await client.request("GET", f"{base}/chunked"))[2] == b"abcdefg"
        status, headers, body = await client.request("HEAD", f"{base}/head")
        assert (status, body, headers["content-length"]) == (200, b"", "1234")
        assert (await client.request("GET", f"{base}/empty"))[:3:2] == (204, b"")
        assert (await client.request("GET", f"{base}/same"))[:3:2] == (304, b"")
        assert (await client.request("POST", f"{base}/post", body=b"a=1"))[2] == b"ok"
        chunked_body = await client.request("POST", f"{base}/post", body=b"streamed",
                                            headers=[("transfer-encoding", "chunked")])
        assert chunked_body[2] == b"ok"
        assert upstream.connections == 1  # reused for every request so far
        assert (await client.request("GET", f"{base}/legacy"))[2] == b"until close"
        assert (await client.request("GET", f"{base}/cl"))[2] == b"hello"  # same client conn
        assert upstream.connections == 2  # the server hung up after /legacy: a new one
    finally:
        client.close()
    lines = [line for line, _head, _body in upstream.requests]
    assert lines[0] == "GET /cl?q=1 HTTP/1.1"  # origin form upstream
    heads = b"".join(head.lower() for _line, head, _body in upstream.requests)
    assert b"proxy-connection" not in heads  # hop-by-hop headers stay behind
    assert f"host: 127.0.0.1:{upstream.port}".encode() in heads
    assert [b for _l, _h, b in upstream.requests if b] == [b"a=1", b"streamed"]
    assert proxy.refused == [] and proxy.failed == []


async def test_proxy_refuses_disallowed_hosts_and_schemes(proxy: EgressProxy) -> None:
    client = await Client.open(proxy)
    try:
        status, headers, body = await client.request("GET", f"http://{DISALLOWED}/x")
        assert status == 403 and headers["x-perfagent-egress"] == "403"
        assert b"not a loopback address" in body
        # The connection stays usable after a refusal (keep-alive).
        assert (await client.request("GET", "ftp://127.0.0.1/file"))[0] == 403
        assert (await client.request("GET", "/origin-form"))[0] == 403
        assert (await client.request("GET", f"http://127.0.0.1:{proxy.port}/"))[0] == 403
    finally:
        client.close()
    connect = await Client.open(proxy)
    try:
        status, _headers, body = await connect.request("CONNECT", f"{DISALLOWED}:443")
        assert status == 403 and b"not a loopback address" in body
    finally:
        connect.close()
    targets = [(r.target, r.connect) for r in proxy.refused]
    assert targets == [(f"http://{DISALLOWED}/x", False), ("ftp://127.0.0.1/file", False),
                       ("/origin-form", False), (f"http://127.0.0.1:{proxy.port}/", False),
                       (f"{DISALLOWED}:443", True)]
    assert "PERFAGENT_ALLOWED_HOSTS=192.0.2.1:80" in proxy.refused[0].hint
    assert "egress proxy itself" in proxy.refused[3].reason


async def test_proxy_tunnels_connect_and_upgrades_to_the_checked_address(
        proxy: EgressProxy) -> None:
    """CONNECT answers 200 and splices; a 101 answer to an absolute-form upgrade splices too."""

    async def upgrading_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the GET with Upgrade: websocket
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\nhello from upstream|")
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    async def plain_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    tunnel_server = await asyncio.start_server(plain_echo, "127.0.0.1", 0)
    upgrade_server = await asyncio.start_server(upgrading_echo, "127.0.0.1", 0)
    async with tunnel_server, upgrade_server:
        tunnel_port = tunnel_server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(f"CONNECT 127.0.0.1:{tunnel_port} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{tunnel_port}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"tls would go here")
        assert await asyncio.wait_for(reader.readexactly(17), 5) == b"TLS WOULD GO HERE"
        writer.close()

        upgrade_port = upgrade_server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(f"GET http://127.0.0.1:{upgrade_port}/ws HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{upgrade_port}\r\nConnection: Upgrade\r\n"
                     "Upgrade: websocket\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101") and b"upgrade: websocket" in head.lower()
        assert await asyncio.wait_for(reader.readuntil(b"|"), 5) == b"hello from upstream|"
        writer.write(b"frame")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"FRAME"
        writer.close()
    assert proxy.refused == []


async def test_proxy_resolves_each_host_once_and_connects_to_that_address(
        upstream: Upstream, resolver: tuple[dict[str, list[str]], list[str]]) -> None:
    """A name is checked once per (host, port); later requests reuse the verdict, so a
    rebinding answer is never seen. A seeded target is never resolved at all."""
    answers, lookups = resolver
    answers["rebind.test"] = ["127.0.0.1", DISALLOWED]
    answers["seeded.test"] = [DISALLOWED]
    upstream.answers["/"] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    seeded = Target("seeded.test", upstream.port, ("127.0.0.1",))
    async with EgressProxy(checked=[seeded]) as proxy:
        for _ in range(3):
            client = await Client.open(proxy)  # a new client connection each time
            try:
                assert (await client.request("GET", f"http://rebind.test:{upstream.port}/"))[2] == b"ok"
                assert (await client.request("GET", f"http://seeded.test:{upstream.port}/"))[2] == b"ok"
            finally:
                client.close()
    assert lookups == ["rebind.test"]
    assert proxy.refused == []


async def test_proxy_checks_under_the_callers_serving_rules(upstream: Upstream) -> None:
    """The policy reads the public-server rules from a context variable; the check runs
    in a worker thread, which must see the rules of the code that made the proxy."""
    with serving(PUBLIC):
        proxy = EgressProxy()
    async with proxy:
        client = await Client.open(proxy)
        try:
            status, _headers, body = await client.request("GET", f"http://127.0.0.1:{upstream.port}/")
        finally:
            client.close()
    assert status == 403 and b"allowed hosts" in body
    assert upstream.connections == 0


async def test_proxy_reports_unreachable_and_slow_upstreams(unused_port: int) -> None:
    """A refused connect answers 502 (ERR_CONNECTION_REFUSED); one that hangs is cut at
    the connect timeout (ERR_CONNECTION_TIMED_OUT)."""
    with socket.socket() as full:
        # A listener whose accept queue is full: the kernel drops further SYNs.
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.2)
        async with EgressProxy(connect_timeout=0.5) as proxy:
            client = await Client.open(proxy)
            try:
                status, _h, body = await client.request("GET", f"http://127.0.0.1:{unused_port}/")
                assert status == 502 and b"ERR_CONNECTION_REFUSED" in body
                started = time.monotonic()
                status, _h, body = await client.request("GET", f"http://127.0.0.1:{port}/")
                assert status == 502 and b"ERR_CONNECTION_TIMED_OUT" in body
                assert time.monotonic() - started < 3
            finally:
                client.close()
                for filler in fillers:
                    filler.close()
    assert [f.error for f in proxy.failed] == ["ERR_CONNECTION_REFUSED", "ERR_CONNECTION_TIMED_OUT"]
    assert proxy.failed[0].target == f"http://127.0.0.1:{unused_port}/"


async def test_proxy_survives_garbage_and_closes_everything(
        proxy: EgressProxy, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"\x16\x03\x01 this is not http\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 400")
    writer.close()
    # An open tunnel and an idle keep-alive connection are both cut by close().
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    idle = await Client.open(proxy)
    await proxy.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert await asyncio.wait_for(idle.reader.read(), 5) == b""
    writer.close()
    idle.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
