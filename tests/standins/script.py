"""Script steps and the HTTP plumbing the stand-in servers share.

A stand-in is driven by a *script*: a queue of steps, consumed one per model
request. A step is a :class:`Reply` (what the model says), a :class:`Fail`
(an HTTP error, optionally in the middle of a stream) or a :class:`Hangup`
(the connection drops without an answer). Requests the real API would reject
as malformed are answered with 400 *without* consuming a step, so a provider
bug shows up as a failed call rather than as a silently shifted script.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

# --------------------------------------------------------------------------- script steps


@dataclass(frozen=True)
class ToolCall:
    """A tool call the scripted model makes.

    ``raw_arguments`` replaces the JSON encoding of ``input`` on the wire, so a
    test can make the model emit malformed arguments.
    """

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    raw_arguments: str | None = None

    def arguments_json(self) -> str:
        """The arguments exactly as they go on the wire."""
        if self.raw_arguments is not None:
            return self.raw_arguments
        return json.dumps(self.input)


@dataclass(frozen=True)
class Reply:
    """One successful model answer.

    ``text`` given as a sequence is streamed as exactly those deltas; a plain
    string is one delta. Token counts left as ``None`` are estimated from the
    request and reply sizes (about four characters a token).
    """

    text: str | Sequence[str] = ""
    tool_calls: Sequence[ToolCall] = ()
    stop_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    delay: float = 0.0
    """Seconds to wait before answering (to provoke client timeouts)."""
    chunk_delay: float = 0.0
    """Seconds to wait between streamed events (to observe incremental delivery)."""

    def text_chunks(self) -> list[str]:
        """The text deltas, without empty ones."""
        chunks = [self.text] if isinstance(self.text, str) else list(self.text)
        return [chunk for chunk in chunks if chunk]


@dataclass(frozen=True)
class Fail:
    """An error answer.

    ``retry_after`` (seconds) is sent as the ``retry-after`` header, which real
    APIs send on 429 and which clients honour, so retry tests stay fast.
    ``mid_stream`` makes a streaming request succeed with HTTP 200 and then
    fail with an error event after the stream has started.
    """

    status: int
    message: str = ""
    error_type: str | None = None
    retry_after: float | None = None
    mid_stream: bool = False
    delay: float = 0.0


@dataclass(frozen=True)
class Hangup:
    """Close the connection without a (complete) response.

    By default nothing at all is sent. With ``mid_stream`` a streaming request
    gets a 200, the start of the stream and ``text`` as a first delta, and then
    the connection drops before the stream ends.
    """

    mid_stream: bool = False
    text: str = ""


Step = Reply | Fail | Hangup


@dataclass
class RecordedRequest:
    """A request as the stand-in received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def estimate_tokens(value: Any) -> int:
    """A rough token count: compact JSON length over four, at least one."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return max(1, len(text) // 4)


# --------------------------------------------------------------------------- server plumbing


class StandInServer:
    """A threaded HTTP server on 127.0.0.1 that plays a script.

    Subclasses implement :meth:`handle` for their routes. Use as a context
    manager (``with Sub(script=[...]) as api: api.base_url``) or call
    :meth:`start` / :meth:`stop` from a fixture.
    """

    provider_name: ClassVar[str] = "stand-in"

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        default: Step | None = None,
        api_key: str | None = None,
    ) -> None:
        """``default`` answers once the script is exhausted (e.g. for benchmarks);
        without it an exhausted script is a 500 marked not-retryable. ``api_key``,
        when set, is required on every request."""
        self._script: deque[Step] = deque(script)
        self.default = default
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> StandInServer:
        """Bind an ephemeral port and serve in a daemon thread."""
        handler = _make_handler(self)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        # Keep-alive connections may still be open at shutdown; do not wait for them.
        httpd.block_on_close = False
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        if self._httpd is None:
            raise RuntimeError("stand-in is not running")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- script

    def push(self, *steps: Step) -> None:
        """Append steps to the script while the server runs."""
        with self._lock:
            self._script.extend(steps)

    def next_step(self) -> Step | None:
        """Consume the next scripted step (or the default)."""
        with self._lock:
            if self._script:
                return self._script.popleft()
        return self.default

    @property
    def remaining(self) -> int:
        """Scripted steps not yet consumed."""
        with self._lock:
            return len(self._script)

    def record(self, request: RecordedRequest) -> None:
        """Remember a request for later assertions."""
        with self._lock:
            self.requests.append(request)

    def bodies(self, path_suffix: str = "") -> list[Any]:
        """Bodies of the recorded requests whose path ends with ``path_suffix``."""
        with self._lock:
            return [r.body for r in self.requests if r.path.endswith(path_suffix)]

    # -- to implement

    def handle(self, http: Exchange) -> None:
        """Answer one request (subclasses)."""
        raise NotImplementedError


class Exchange:
    """One request/response, with helpers for JSON, SSE and failures."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: Any, raw_body: bytes) -> None:
        self._h = handler
        self.method = handler.command
        self.path = handler.path.split("?", 1)[0]
        self.headers = {k.lower(): v for k, v in handler.headers.items()}
        self.body = body
        self.raw_body = raw_body
        self._chunked = False

    def bearer_or_key(self) -> str | None:
        """The credential sent as ``x-api-key`` or ``Authorization: Bearer``."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """A complete JSON response."""
        data = json.dumps(payload).encode()
        self._h.send_response(status)
        self._h.send_header("content-type", "application/json")
        self._h.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self._h.send_header(name, value)
        self._h.end_headers()
        self._h.wfile.write(data)
        self._h.wfile.flush()

    def start_stream(self, headers: dict[str, str] | None = None) -> None:
        """Begin a 200 ``text/event-stream`` response with chunked encoding."""
        self._h.send_response(200)
        self._h.send_header("content-type", "text/event-stream; charset=utf-8")
        self._h.send_header("cache-control", "no-cache")
        self._h.send_header("transfer-encoding", "chunked")
        for name, value in (headers or {}).items():
            self._h.send_header(name, value)
        self._h.end_headers()
        self._chunked = True

    def sse(self, data: Any, event: str | None = None, delay: float = 0.0) -> None:
        """Write one server-sent event (``data`` JSON-encoded unless a str)."""
        if delay:
            time.sleep(delay)
        text = data if isinstance(data, str) else json.dumps(data)
        frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
        payload = frame.encode()
        self._h.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self._h.wfile.flush()

    def end_stream(self) -> None:
        """Terminate the chunked body."""
        if self._chunked:
            self._h.wfile.write(b"0\r\n\r\n")
            self._h.wfile.flush()
            self._chunked = False

    def hang_up(self) -> None:
        """Drop the connection, leaving any started response unfinished."""
        self._chunked = False
        self._h.close_connection = True


def _make_handler(server: StandInServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``server``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            return

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            exchange = Exchange(self, body, raw)
            server.record(
                RecordedRequest(exchange.method, exchange.path, dict(exchange.headers), body)
            )
            try:
                server.handle(exchange)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_GET = _serve
        do_POST = _serve

    return Handler


def error_type_for(status: int, table: dict[int, str], fallback: str) -> str:
    """The provider's error type name for an HTTP status."""
    return table.get(status, fallback)
