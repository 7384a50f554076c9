"""``load_test``: an HTTP load generator that measures latency honestly.

Two load models:

* **open model** (``rate``, the default): requests are sent at a fixed or
  ramping *arrival rate*, whatever the server does. Each request's latency is
  timed from its *intended* send time, so when the server stalls, the requests
  that should have gone out during the stall carry the waiting in their
  latency. A closed-loop tester would just send fewer requests and report a
  healthy p95 ("coordinated omission").
* **closed model** (``vus``): N virtual users each send a request, wait for the
  answer, and send the next. Useful for "how fast can it go", but it hides
  stalls; the result says so.

Every latency is kept and percentiles are exact (no histogram buckets, no
sampling). The generator watches itself: if it cannot send on schedule
(scheduling lag, or the in-flight cap is hit) the result says
``generator_saturated`` so nobody trusts numbers the generator distorted.

Safety: the URL must be loopback or in ``PERFAGENT_ALLOWED_HOSTS``; this is
checked before any connection is opened, and the name is resolved only then:
every connection (the probe's, the generator's, Locust's workers') goes to the
addresses that were checked, so a name that answers differently the second
time (DNS rebinding) cannot move the load elsewhere. Redirects are never
followed (they are counted and reported instead). The Locust engine runs one
fixed Locust file that reads the scenario as JSON data: no text of the
scenario ever becomes source code.

Plot: with ``plot_path`` the run also writes a self-contained picture of its
latencies (inline SVG, no script, nothing fetched): a histogram over
log-scale buckets with p50/p90/p95/p99/max marked, the percentile curve, and
latency over time (p50/p99/max per time slice, every request as a dot when
there are few). ``.html`` gives a page with the figures and a summary table;
``.svg`` gives the figures alone, stacked in one image. Other suffixes are
refused before any traffic: PNG would need matplotlib, and SVG already shows
in browsers, GitHub and most IDEs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    Target,
    ToolError,
    ToolResult,
    ToolSpec,
    check_target_url,
    resolve_in_workspace,
    split_url,
)

if TYPE_CHECKING:
    import aiohttp  # imported when a test runs; annotations only here
    from aiohttp.abc import AbstractResolver

#: Longest test one call may run; longer soaks belong to a dedicated tool run.
MAX_DURATION_S = 300.0
#: A request sent later than this after its intended time counts as "late".
LATE_THRESHOLD_S = 0.010
#: More than this fraction of late requests means the generator, not the
#: server, shaped the numbers.
LATE_FRACTION_LIMIT = 0.01
#: ... and lateness whose p99 is above this share of the p99 latency.
LAG_SHARE_LIMIT = 0.10
DEFAULT_RATE = 20.0
PROGRESS_EVERY_S = 0.5

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
#: HTTP methods are tokens (RFC 9110); every real one is letters only.
_METHOD = re.compile(r"[A-Z]+")
#: RFC 9110 token: what a header name may be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Control characters other than tab: never in a header value.
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Whitespace or control characters: never in a URL (urlsplit drops some silently).
_URL_BAD = re.compile(r"[\x00-\x20\x7f]")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: float | int | str) -> float:
    """Seconds from ``12``, ``12.5``, ``"30s"``, ``"2m"``, ``"1m30s"`` or ``"500ms"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"duration {value!r} is not understood; use seconds (10, 2.5) "
                    "or a string such as '30s', '2m', '1m30s', '500ms'"
                ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration {value!r} must be positive")
    return seconds


# --------------------------------------------------------------------------- input


class Stage(BaseModel):
    """One k6-style stage: move linearly to ``target`` over ``duration``."""

    model_config = ConfigDict(extra="forbid")

    duration: float | str = Field(description='stage length: seconds or "30s", "2m"')
    target: float = Field(
        ge=0,
        description="request rate (req/s) reached at the end of the stage in the open "
        "model, or the number of virtual users in the closed model",
    )

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: float | str) -> float:
        return parse_duration(value)


class LoadTestInput(BaseModel):
    """What to load-test and how."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="target URL; loopback or an operator-allowed host only")
    method: str = Field(default="GET", description="HTTP method")
    rate: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="open model: constant arrival rate in requests/second (latency is "
        "timed from each request's intended send time). Default 20 when neither rate "
        "nor vus is given. With stages, the starting rate (k6 startRate; default 0).",
    )
    vus: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="closed model: number of virtual users, each sending its next "
        "request when the previous one answers (hides server stalls)",
    )
    duration: float | str = Field(
        default=10.0,
        description='test length: seconds or "30s", "2m"; capped at 300 s. '
        "Ignored when stages are given (their durations add up).",
    )
    stages: list[Stage] | None = Field(
        default=None,
        description="k6-style ramp: [{duration, target}], each moving the arrival rate "
        "(or the number of vus in the closed model) linearly to target",
    )
    thresholds: list[str] = Field(
        default_factory=list,
        description='k6-style pass/fail criteria, latencies in ms: "p(95)<200", '
        '"p(99)<=500", "avg<100", "med<50", "max<1000", "http_req_duration p(95)<200", '
        '"http_req_failed rate<0.01", "http_reqs rate>=100"',
    )
    headers: dict[str, str] = Field(default_factory=dict, description="request headers")
    body: str | None = Field(default=None, description="request body (e.g. JSON text)")
    timeout: float = Field(default=10.0, gt=0, le=120, description="per-request timeout, s")
    max_in_flight: int = Field(
        default=1000,
        ge=1,
        le=20_000,
        description="open model: cap on concurrent requests (and connections)",
    )
    engine: Literal["builtin", "locust"] = Field(
        default="builtin",
        description='"builtin": this process, open model exact to the schedule; "locust": '
        "the same scenario through Locust's master and worker processes (more CPU cores; "
        "its users are closed loops, so the open model is approximated)",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description='engine "locust": number of local worker processes (default: one per '
        "CPU core)",
    )
    emit_locustfile: bool = Field(
        default=False,
        description="also return the Locust file (locustfile) and the scenario it reads "
        "(locust_scenario, JSON), to run the same load by hand beyond one machine",
    )
    plot_path: str | None = Field(
        default=None,
        description="also write the latency histogram (log-scale buckets, p50/p90/p95/p99/"
        "max marked), the percentile curve and latency over time to this file in the "
        "workspace: .html (self-contained page) or .svg",
    )

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: float | str) -> float:
        return parse_duration(value)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        # Letters only: a subset of the HTTP token grammar that holds every real
        # method, so nothing else can ride along into the request line.
        method = value.strip().upper()
        if not _METHOD.fullmatch(method):
            raise ValueError(f"{value!r} is not an HTTP method (letters only, e.g. GET)")
        return method

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        # A line break (or another control character) in a header would end it
        # and start a header, or a whole request, of the caller's choosing.
        for name, text in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"header name {name!r} is not an HTTP token")
            if _HEADER_VALUE_BAD.search(text):
                raise ValueError(f"header {name!r} holds a line break or control character")
        return value

    @model_validator(mode="after")
    def _one_model(self) -> LoadTestInput:
        if self.rate is not None and self.vus is not None:
            raise ValueError("give either rate (open model) or vus (closed model), not both")
        if self.stages is not None and not self.stages:
            raise ValueError("stages, when given, must hold at least one stage")
        if self.workers is not None and self.engine != "locust":
            raise ValueError('workers applies to engine "locust" only')
        return self


# --------------------------------------------------------------------------- thresholds

_THRESHOLD = re.compile(
    r"^\s*(?:(?P<metric>http_req_duration|http_req_failed|http_reqs)\s*:?\s*)?"
    r"(?P<stat>p\(\s*(?P<pct>\d+(?:\.\d+)?)\s*\)|avg|mean|med|min|max|rate|count)"
    r"\s*(?P<op><=|>=|==|<|>)\s*(?P<limit>-?\d+(?:\.\d+)?)\s*(?:ms)?\s*$",
    re.IGNORECASE,
)

ACCEPTED_THRESHOLDS = (
    '"p(95)<200", "p(99)<=500", "avg<100", "med<50", "min<5", "max<1000" '
    '(milliseconds; optionally prefixed "http_req_duration "), '
    '"http_req_failed rate<0.01" (fraction of failed requests), '
    '"http_reqs rate>=100" (req/s) or "http_reqs count>=1000"'
)


@dataclass(frozen=True)
class Threshold:
    """A parsed threshold expression."""

    expression: str
    metric: str  # http_req_duration | http_req_failed | http_reqs
    stat: str  # p | avg | med | min | max | rate | count
    percentile: float | None
    op: str
    limit: float

    @property
    def budget(self) -> str:
        return f"{self.op}{_fmt(self.limit)}"


def parse_threshold(expression: str) -> Threshold:
    """Parse one k6-style threshold; ToolError ``invalid_threshold`` when malformed."""
    match = _THRESHOLD.match(expression)

    def bad(reason: str) -> ToolError:
        return ToolError(
            "invalid_threshold",
            f"threshold {expression!r} {reason}",
            f"accepted forms: {ACCEPTED_THRESHOLDS}",
        )

    if not match:
        raise bad("is not understood")
    stat = match.group("stat").lower()
    pct: float | None = None
    if stat.startswith("p("):
        pct = float(match.group("pct"))
        stat = "p"
        if not 0 < pct <= 100:
            raise bad("has a percentile outside (0, 100]")
    stat = {"mean": "avg"}.get(stat, stat)
    metric = (match.group("metric") or "").lower()
    if not metric:
        if stat in ("rate", "count"):
            raise bad('needs a metric: write "http_req_failed rate<0.01" or "http_reqs rate>100"')
        metric = "http_req_duration"
    allowed = {
        "http_req_duration": {"p", "avg", "med", "min", "max"},
        "http_req_failed": {"rate"},
        "http_reqs": {"rate", "count"},
    }[metric]
    if stat not in allowed:
        raise bad(f"uses {stat!r}, which {metric} does not have")
    return Threshold(expression.strip(), metric, stat, pct, match.group("op"),
                     float(match.group("limit")))


# --------------------------------------------------------------------------- result


class LatencyStats(BaseModel):
    """Exact latency statistics over every request, in milliseconds."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float


class ThresholdResult(BaseModel):
    """One threshold and how the run fared against it."""

    expression: str
    metric: str
    observed: float | None = Field(description="the measured value in the threshold's unit")
    passed: bool


class LoadTestResult(ToolResult):
    """What the load test measured."""

    tool: str = "load_test"
    url: str
    method: str
    model: Literal["open", "closed"]
    rate: float | None = Field(default=None, description="target arrival rate (open model)")
    vus: int | None = None
    planned_duration_s: float
    elapsed_s: float = Field(description="from the first intended send to the last answer")
    requests: int = Field(description="requests sent (the probe request not included)")
    errors: int = Field(description="non-2xx/3xx answers plus requests that failed outright")
    redirects: int = Field(
        default=0, description="3xx answers: counted as answered, never followed (a redirect "
        "is timed, not the page it points to)")
    error_rate: float = Field(description="errors / requests, in %")
    throughput: float = Field(description="answered requests per second")
    status_counts: dict[str, int] = Field(default_factory=dict)
    error_kinds: dict[str, int] = Field(default_factory=dict,
                                        description="exceptions by kind, e.g. timeout")
    bytes_received: int = 0
    latency_ms: LatencyStats | None = None
    thresholds: list[ThresholdResult] = Field(default_factory=list)
    generator_saturated: bool = Field(
        default=False,
        description="the generator could not keep the schedule (> 1% of requests sent "
        "> 10 ms late with a lag p99 above 10% of the latency p99, or the in-flight cap "
        "was hit): the latencies include its own delay",
    )
    scheduling_lag_p99_ms: float | None = Field(
        default=None, description="open model: p99 of (actual - intended) send time"
    )
    late_fraction: float | None = Field(
        default=None, description="open model: share of requests sent > 10 ms late, in %"
    )
    in_flight_cap_hit: bool = False
    notes: list[str] = Field(default_factory=list)
    engine: Literal["builtin", "locust"] = "builtin"
    workers: int | None = Field(default=None, description="engine locust: worker processes")
    worker_requests: dict[str, int] = Field(
        default_factory=dict, description="engine locust: requests each worker reported")
    locustfile: str | None = Field(
        default=None, description="emit_locustfile: the Locust file (always the same text; it "
        "reads the scenario from scenario.json beside it)")
    locust_scenario: str | None = Field(
        default=None, description="emit_locustfile: the scenario as JSON, to save as "
        "scenario.json beside the Locust file")
    plot_path: str | None = Field(default=None, description="where the latency plot was written")


# --------------------------------------------------------------------------- schedule


def _segments(inp: LoadTestInput) -> list[tuple[float, float, float]]:
    """Piecewise-linear arrival rate: [(duration_s, rate_at_start, rate_at_end)]."""
    if inp.stages:
        segments = []
        rate = inp.rate or 0.0
        for stage in inp.stages:
            duration = float(stage.duration)
            segments.append((duration, rate, stage.target))
            rate = stage.target
        return segments
    rate = inp.rate if inp.rate is not None else DEFAULT_RATE
    return [(float(inp.duration), rate, rate)]


def _clip_segments(
    segments: list[tuple[float, float, float]], cap: float
) -> list[tuple[float, float, float]]:
    """Cut the plan at ``cap`` seconds, interpolating the rate where it is cut."""
    out: list[tuple[float, float, float]] = []
    left = cap
    for duration, r0, r1 in segments:
        if left <= 0:
            break
        if duration <= left:
            out.append((duration, r0, r1))
            left -= duration
        else:
            out.append((left, r0, r0 + (r1 - r0) * left / duration))
            left = 0
    return out


def send_offsets(segments: list[tuple[float, float, float]]) -> Iterator[float]:
    """Intended send times (seconds from start) of requests 0, 1, 2, ...

    Request i goes out when the integral of the arrival rate reaches i. Over a
    segment whose rate moves linearly from r0 to r1 in D seconds, the count is
    N(t) = r0*t + a*t^2/2 with a = (r1 - r0)/D; solving for t in the form
    2m / (r0 + sqrt(r0^2 + 2am)) stays exact for ramps up, down and from zero.
    """
    start = 0.0
    count_at_start = 0.0
    for duration, r0, r1 in segments:
        total = (r0 + r1) / 2 * duration
        accel = (r1 - r0) / duration
        i = math.ceil(count_at_start - 1e-9)
        while i < count_at_start + total - 1e-9:
            m = i - count_at_start
            if m <= 0:
                offset = 0.0
            else:
                disc = max(r0 * r0 + 2 * accel * m, 0.0)
                offset = 2 * m / (r0 + math.sqrt(disc))
            yield start + min(offset, duration)
            i += 1
        start += duration
        count_at_start += total


def _vus_at(segments: list[tuple[float, float, float]], t: float) -> float:
    """The ramped number of virtual users at ``t`` seconds (closed model with stages)."""
    for duration, r0, r1 in segments:
        if t < duration:
            return r0 + (r1 - r0) * t / duration
        t -= duration
    return segments[-1][2] if segments else 0.0


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], pct: float) -> float:
    """Exact percentile by linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * pct / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.0f}"


@dataclass
class _Tally:
    """Everything the request coroutines record; plain lists for speed."""

    latencies: list[float] = field(default_factory=list)  # seconds, every request
    starts: list[float] = field(default_factory=list)  # clock starts, only for a plot
    lags: list[float] = field(default_factory=list)  # seconds, open model only
    statuses: dict[int, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    answered: int = 0
    errors: int = 0
    bytes_received: int = 0
    cap_hits: int = 0
    first_send: float | None = None
    last_done: float = 0.0

    def outcome(self, status: int | None, error_kind: str | None) -> None:
        """Count one finished request: its status, or (no response) its error kind."""
        if status is not None:
            self.answered += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status >= 400:
                self.errors += 1
        else:
            self.errors += 1
            kind = error_kind or "unknown"
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


# --------------------------------------------------------------------------- engine


def _host_key(host: str) -> str:
    """A host name as both urlsplit and aiohttp (yarl) spell it: lower case, ASCII (IDNA)."""
    host = host.strip("[]").lower()
    try:
        return host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return host


@functools.cache
def _pinned_resolver_class() -> type[AbstractResolver]:
    """aiohttp's resolver interface, answered from a checked :class:`Target` alone.

    Built on first use: aiohttp is imported only when a test runs.
    """
    from aiohttp.abc import AbstractResolver, ResolveResult

    class PinnedResolver(AbstractResolver):
        """Resolves the checked host to its checked addresses and refuses every other name.

        aiohttp would otherwise look the name up again when it connects (and
        again when its DNS cache expires): a name that answers differently the
        second time (DNS rebinding) would send the load where no check looked.
        """

        def __init__(self, target: Target) -> None:
            self.host = _host_key(target.host)
            self.addresses = target.addresses

        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
            if _host_key(host) != self.host:
                # Only a redirect could name another host, and none is followed.
                raise socket.gaierror(socket.EAI_NONAME,
                                      f"{host} is not the checked target {self.host}")
            found: list[ResolveResult] = []
            for address in self.addresses:
                fam = socket.AF_INET6 if ":" in address else socket.AF_INET
                if family in (socket.AF_UNSPEC, fam):
                    found.append(ResolveResult(
                        hostname=host, host=address, port=port, family=fam, proto=0,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
            if not found:
                raise socket.gaierror(socket.EAI_FAMILY,
                                      f"{host} has no checked address of that family")
            return found

        async def close(self) -> None:
            return None

    return PinnedResolver


def _connector(target: Target, **kwargs: Any) -> aiohttp.TCPConnector:
    """A connector that connects to the target's checked addresses only."""
    import aiohttp

    return aiohttp.TCPConnector(resolver=_pinned_resolver_class()(target), **kwargs)


async def _probe(inp: LoadTestInput, target: Target) -> None:
    """One request before the load: an unreachable target fails fast and clearly."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=inp.timeout)
    try:
        async with (
            aiohttp.ClientSession(connector=_connector(target), timeout=timeout) as session,
            # Redirects are not followed: a 3xx must not carry load to a host that
            # was never checked against the allowed list.
            session.request(inp.method, inp.url, headers=inp.headers,
                            data=_body_bytes(inp), allow_redirects=False) as resp,
        ):
            await resp.read()
    except aiohttp.ClientConnectorError as exc:
        raise ToolError(
            "target_unreachable",
            f"cannot connect to {inp.url}: {exc.os_error or exc}",
            "start the server first and check host and port (is it listening on "
            "that address?)",
        ) from None
    except TimeoutError:
        raise ToolError(
            "target_unreachable",
            f"{inp.url} accepted no request within {inp.timeout:g} s",
            "the server may be hung or overloaded; check it, or raise timeout",
        ) from None
    except aiohttp.ClientError as exc:
        raise ToolError(
            "target_unreachable",
            f"the probe request to {inp.url} failed: {type(exc).__name__}: {exc}",
            "check that the URL serves HTTP",
        ) from None


def _body_bytes(inp: LoadTestInput) -> bytes | None:
    return inp.body.encode() if inp.body is not None else None


class _Generator:
    """Runs the load in its own event loop (on a worker thread).

    A private loop keeps the measurement away from whatever else the caller's
    loop is doing (a busy caller would otherwise show up as scheduling lag),
    and keeps the caller responsive during a long test.
    """

    def __init__(self, inp: LoadTestInput, target: Target,
                 segments: list[tuple[float, float, float]],
                 duration: float, report: Callable[[float, str], None] | None,
                 stop: threading.Event) -> None:
        self.inp = inp
        self.target = target
        self.segments = segments
        self.duration = duration
        self.report = report
        self.stop = stop
        self.tally = _Tally()
        self.body = _body_bytes(inp)
        self.open_model = inp.vus is None
        self.keep_starts = inp.plot_path is not None
        self.session: aiohttp.ClientSession | None = None

    def run(self) -> _Tally:
        asyncio.run(self._main())
        return self.tally

    async def _main(self) -> None:
        import aiohttp

        limit = self.inp.max_in_flight if self.open_model else (self.inp.vus or 1) + 1
        if not self.open_model and self.inp.stages:
            limit = int(max(s[2] for s in self.segments)) + 1
        connector = _connector(self.target, limit=limit, limit_per_host=limit,
                               enable_cleanup_closed=False)
        timeout = aiohttp.ClientTimeout(total=self.inp.timeout)
        headers = {"User-Agent": "perfagent-load-test", **self.inp.headers}
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         headers=headers, auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            self.session = session
            start = time.perf_counter() + 0.005
            reporter = asyncio.create_task(self._progress(start))
            try:
                if self.open_model:
                    await self._open(start)
                else:
                    await self._closed(start)
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter

    async def _request(self) -> tuple[int | None, str | None]:
        """Send one request; return (status, exception kind)."""
        import aiohttp

        try:
            assert self.session is not None
            resp = await self.session.request(self.inp.method, self.inp.url, data=self.body,
                                              allow_redirects=False)
            try:
                payload = await resp.read()
            finally:
                resp.release()
            self.tally.bytes_received += len(payload)
            return resp.status, None
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientError as exc:
            return None, type(exc).__name__
        except Exception as exc:  # any other failure is still a failed request to count
            return None, type(exc).__name__

    def _record(self, started: float, status: int | None, kind: str | None) -> None:
        """Count one finished request whose latency clock started at ``started``."""
        now = time.perf_counter()
        tally = self.tally
        tally.latencies.append(now - started)
        if self.keep_starts:
            tally.starts.append(started)
        tally.last_done = now
        tally.outcome(status, kind)

    # -- open model

    async def _open(self, start: float) -> None:
        sem = asyncio.Semaphore(self.inp.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        tally = self.tally
        loop = asyncio.get_running_loop()

        async def one(intended: float) -> None:
            tally.lags.append(time.perf_counter() - intended)
            try:
                status, kind = await self._request()
                # The clock started at the intended send time: time spent
                # waiting for the generator or the server counts (no
                # coordinated omission).
                self._record(intended, status, kind)
            finally:
                sem.release()

        tally.first_send = start
        perf = time.perf_counter
        for offset in send_offsets(self.segments):
            if self.stop.is_set():
                break
            intended = start + offset
            delay = intended - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            elif tally.sent % 64 == 0:
                # Behind schedule: still let the request tasks run now and then.
                await asyncio.sleep(0)
            if sem.locked():
                tally.cap_hits += 1
            await sem.acquire()
            tally.sent += 1
            task = loop.create_task(one(intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await self._drain(tasks)

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Let in-flight requests finish (each is bounded by its own timeout)."""
        if not tasks:
            return
        _done, pending = await asyncio.wait(set(tasks), timeout=self.inp.timeout + 2.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            self.tally.errors += len(pending)
            self.tally.error_kinds["unfinished"] = len(pending)

    # -- closed model

    async def _closed(self, start: float) -> None:
        deadline = start + self.duration
        tally = self.tally
        tally.first_send = start
        ramp = bool(self.inp.stages)
        workers = int(max(s[2] for s in self.segments)) if ramp else (self.inp.vus or 1)
        perf = time.perf_counter

        async def user(index: int) -> None:
            await asyncio.sleep(max(start - perf(), 0))
            while not self.stop.is_set():
                now = perf()
                if now >= deadline:
                    return
                if ramp and _vus_at(self.segments, now - start) <= index:
                    await asyncio.sleep(0.02)  # this user is not active at this point
                    continue
                tally.sent += 1
                status, kind = await self._request()
                self._record(now, status, kind)

        await asyncio.gather(*(user(i) for i in range(workers)))

    async def _progress(self, start: float) -> None:
        if self.report is None:
            return
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            elapsed = max(time.perf_counter() - start, 1e-9)
            tally = self.tally
            self.report(
                min(elapsed / self.duration, 1.0),
                f"{tally.sent} sent, {tally.errors} errors, "
                f"{tally.answered / elapsed:.0f} req/s answered",
            )


# --------------------------------------------------------------------------- run


def _observed(th: Threshold, stats: LatencyStats | None, lat_sorted: list[float],
              error_fraction: float, throughput: float, requests: int) -> float | None:
    if th.metric == "http_req_failed":
        return error_fraction
    if th.metric == "http_reqs":
        return throughput if th.stat == "rate" else float(requests)
    if stats is None:
        return None
    if th.stat == "p":
        assert th.percentile is not None
        return percentile(lat_sorted, th.percentile)
    return {"avg": stats.mean, "med": stats.p50, "min": stats.min, "max": stats.max}[th.stat]


def _measurement_name(th: Threshold) -> str:
    if th.metric == "http_req_failed":
        return "error_rate"
    if th.metric == "http_reqs":
        return "throughput" if th.stat == "rate" else "requests"
    if th.stat == "p":
        assert th.percentile is not None
        return f"p{_fmt(th.percentile).replace('.', '_')}_latency"
    return {"avg": "mean_latency", "med": "p50_latency", "min": "min_latency",
            "max": "max_latency"}[th.stat]


def _compare(value: float, op: str, limit: float) -> bool:
    return {"<": value < limit, "<=": value <= limit, ">": value > limit,
            ">=": value >= limit, "==": value == limit}[op]


def check_url(url: str) -> Target:
    """The checked target of ``url``; ToolError ``invalid_url`` or ``target_refused`` otherwise.

    Besides the target policy (:func:`tools.base.check_target_url`), the URL
    must be one every client reads the same way: urlsplit drops tabs and line
    breaks silently and aiohttp's yarl refuses what urlsplit accepts (a
    backslash in the host part), so such a URL is refused here, as data,
    rather than failing later as a traceback or meaning two different things.
    """
    bad = ToolError("invalid_url", f"{url!r} is not a valid http(s) URL",
                    "give a full URL such as http://127.0.0.1:8000/items, without spaces or "
                    "control characters (percent-encode them)")
    if _URL_BAD.search(url):
        raise bad
    split_url(url)  # invalid_url for a malformed host or port, before any lookup
    import yarl  # aiohttp's URL type, what the requests really go to

    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        raise bad from None
    if not parsed.absolute or not parsed.host:
        raise bad
    return check_target_url(url)


async def run(inp: LoadTestInput, progress: ProgressCallback | None = None) -> LoadTestResult:
    """Send the load, time every request, and report exact percentiles and findings."""
    # Safety and input checks come before any traffic, the probe included. The
    # name is resolved here, once: every connection goes to these addresses.
    target = check_url(inp.url)
    thresholds = [parse_threshold(t) for t in inp.thresholds]

    notes: list[str] = []
    segments = _segments(inp)
    planned = sum(s[0] for s in segments)
    if planned > MAX_DURATION_S:
        notes.append(f"planned {planned:g} s was cut to the {MAX_DURATION_S:g} s limit")
        segments = _clip_segments(segments, MAX_DURATION_S)
        planned = MAX_DURATION_S
    if inp.vus is None and sum((r0 + r1) / 2 * d for d, r0, r1 in segments) < 1:
        raise ToolError("invalid_input", "the planned load sends no request",
                        "give a rate above zero or stages with a target above zero")
    if inp.vus is not None and inp.stages and max(s[2] for s in segments) < 1:
        raise ToolError("invalid_input", "the stages never reach one virtual user",
                        "give stages with a target of at least 1")
    plot_file = _plot_target(inp.plot_path) if inp.plot_path is not None else None

    await _probe(inp, target)

    if inp.engine == "locust":
        tally, result = await _run_locust(inp, target, thresholds, segments, planned, notes,
                                          progress)
    else:
        tally = await _run_builtin(inp, target, segments, planned, progress)
        result = _build_result(inp, tally, thresholds, segments, planned, notes)
        if inp.emit_locustfile:
            result.locustfile = locustfile()
            result.locust_scenario = scenario_json(locust_scenario(inp, 1, segments, target))
    if plot_file is not None:
        try:
            # off the caller's loop: a long run has millions of latencies to bin
            await asyncio.to_thread(write_plot, plot_file, result, tally.latencies,
                                    tally.starts, tally.first_send)
            result.plot_path = str(plot_file)
        except OSError as exc:  # the measurement stands; say why the picture is missing
            result.notes.append(f"the plot could not be written to {plot_file}: "
                                f"{type(exc).__name__}: {exc.strerror or exc}")
    if progress is not None:
        progress(1.0, result.summary.splitlines()[0])
    return result


async def _run_builtin(inp: LoadTestInput, target: Target,
                       segments: list[tuple[float, float, float]],
                       planned: float, progress: ProgressCallback | None) -> _Tally:
    """The built-in engine: this process, its own event loop on a worker thread."""
    report: Callable[[float, str], None] | None = None
    if progress is not None:
        caller_loop = asyncio.get_running_loop()
        callback = progress

        def report(fraction: float, text: str) -> None:
            # The generator runs on its own thread; hand progress back to the
            # caller's loop, where its callback expects to run.
            caller_loop.call_soon_threadsafe(callback, fraction, text)

    stop = threading.Event()
    generator = _Generator(inp, target, segments, planned, report, stop)
    try:
        return await asyncio.to_thread(generator.run)
    except asyncio.CancelledError:
        stop.set()  # the worker thread ends its test early instead of running on
        raise
    except Exception as exc:  # e.g. aiohttp refusing a header: report, do not crash
        raise ToolError("load_failed", f"the load generator failed: {type(exc).__name__}: "
                        f"{exc}", "check the method, headers and body") from exc


async def _run_locust(inp: LoadTestInput, target: Target, thresholds: list[Threshold],
                      segments: list[tuple[float, float, float]], planned: float,
                      notes: list[str], progress: ProgressCallback | None,
                      ) -> tuple[_Tally, LoadTestResult]:
    """The Locust engine: the same tally, so the same statistics and threshold verdicts."""
    from tools.locust_engine import lag_stats, locust_notes, run_locust

    ran = await run_locust(inp, target, segments, planned, progress)
    planned_requests = (sum((r0 + r1) / 2 * d for d, r0, r1 in segments)
                        if inp.vus is None else None)
    result = _build_result(inp, ran.tally, thresholds, segments, planned,
                           [*notes, *locust_notes(ran, planned_requests)])
    result.engine = "locust"
    result.workers = ran.workers
    result.worker_requests = ran.per_worker
    lag_p99, late_pct = lag_stats(ran)
    if lag_p99 is not None and late_pct is not None:
        result.scheduling_lag_p99_ms = round(lag_p99, 3)
        result.late_fraction = round(late_pct, 3)
    if inp.emit_locustfile:
        # the file and the scenario that really ran
        result.locustfile, result.locust_scenario = ran.locustfile, ran.scenario
    if ran.cpu_warning:
        result.generator_saturated = True
        result.findings.append(Finding(
            kind="generator_saturated", severity="high",
            summary="a Locust process ran short of CPU; its latencies include its own delay",
            location=inp.url, evidence="Locust logged a CPU usage warning"))
    return ran.tally, result


def _build_result(inp: LoadTestInput, tally: _Tally, thresholds: list[Threshold],
                  segments: list[tuple[float, float, float]], planned: float,
                  notes: list[str]) -> LoadTestResult:
    open_model = inp.vus is None
    requests = len(tally.latencies)
    elapsed = max(tally.last_done - (tally.first_send or tally.last_done), 1e-9)
    throughput = tally.answered / elapsed if requests else 0.0
    error_fraction = tally.errors / requests if requests else 0.0
    lat_sorted = sorted(x * 1000.0 for x in tally.latencies)
    stats: LatencyStats | None = None
    if lat_sorted:
        stats = LatencyStats(
            count=len(lat_sorted),
            min=lat_sorted[0],
            mean=sum(lat_sorted) / len(lat_sorted),
            p50=percentile(lat_sorted, 50),
            p90=percentile(lat_sorted, 90),
            p95=percentile(lat_sorted, 95),
            p99=percentile(lat_sorted, 99),
            max=lat_sorted[-1],
        )

    lag_p99: float | None = None
    late_pct: float | None = None
    saturated = lag_matters = False
    if open_model and tally.lags:
        lags = sorted(tally.lags)
        lag_p99 = percentile(lags, 99) * 1000.0
        late = len(lags) - _count_below(lags, LATE_THRESHOLD_S)
        late_pct = 100.0 * late / len(lags)
        # Lateness matters when it is frequent AND big next to the latencies
        # it would distort: a 20 ms hiccup while answers take 300 ms (a burst
        # of replies after a server stall) does not make the p99 false.
        p99_latency = stats.p99 if stats is not None else 0.0
        lag_matters = lag_p99 > LAG_SHARE_LIMIT * p99_latency
        frequent = late_pct > LATE_FRACTION_LIMIT * 100
        saturated = (frequent and lag_matters) or tally.cap_hits > 0
        if frequent and not lag_matters:
            notes.append(f"the generator sent {late_pct:.1f}% of requests > 10 ms late "
                         f"(lag p99 {lag_p99:.1f} ms), small next to the p99 latency of "
                         f"{p99_latency:.1f} ms")

    target = inp.url
    measurements: list[Measurement] = []
    by_name: dict[str, Measurement] = {}

    def add(name: str, value: float, unit: str) -> None:
        m = Measurement(name=name, value=round(value, 3), unit=unit, source="load_test",
                        target=target)
        measurements.append(m)
        by_name[name] = m

    if stats is not None:
        add("p50_latency", stats.p50, "ms")
        add("p90_latency", stats.p90, "ms")
        add("p95_latency", stats.p95, "ms")
        add("p99_latency", stats.p99, "ms")
        add("max_latency", stats.max, "ms")
        add("mean_latency", stats.mean, "ms")
    add("throughput", throughput, "req/s")
    add("error_rate", 100.0 * error_fraction, "%")
    # A 3xx is an answer, not an error, but it is not the page either: a fast
    # redirect would make the latencies look good for a page nobody loaded.
    redirects = sum(n for status, n in tally.statuses.items() if 300 <= status < 400)
    if redirects:
        add("redirects", redirects, "count")

    threshold_results: list[ThresholdResult] = []
    findings: list[Finding] = []
    for th in thresholds:
        observed = _observed(th, stats, lat_sorted, error_fraction, throughput, requests)
        passed = observed is not None and _compare(observed, th.op, th.limit)
        threshold_results.append(ThresholdResult(
            expression=th.expression, metric=th.metric,
            observed=None if observed is None else round(observed, 4), passed=passed))
        name = _measurement_name(th)
        if name not in by_name and observed is not None:
            unit = {"requests": "count", "throughput": "req/s"}.get(name, "ms")
            add(name, observed, unit)
        m = by_name.get(name)
        # error_rate is reported in %, the k6 threshold as a fraction: convert.
        budget = (f"{th.op}{_fmt(th.limit * 100)}" if th.metric == "http_req_failed"
                  else th.budget)
        if m is not None and (m.budget is None or (m.passed and not passed)):
            m.budget, m.passed = budget, passed
        if not passed and th.metric == "http_req_duration":
            shown = "n/a" if observed is None else f"{observed:.1f} ms"
            findings.append(Finding(
                kind="latency_budget_exceeded", severity="high",
                summary=f"{name.replace('_', ' ')} {shown} breaks the threshold "
                        f"{th.expression}",
                location=target, evidence=_evidence(inp, stats, requests)))
        elif not passed:
            findings.append(Finding(
                kind="threshold_failed", severity="medium",
                summary=f"threshold {th.expression} failed (observed "
                        f"{'n/a' if observed is None else _fmt(round(observed, 4))})",
                location=target))

    if requests and error_fraction > 0.01:
        kinds = {**{str(k): v for k, v in tally.statuses.items() if k >= 400},
                 **tally.error_kinds}
        findings.append(Finding(
            kind="errors", severity="high" if error_fraction > 0.05 else "medium",
            summary=f"{100 * error_fraction:.1f}% of {requests} requests failed",
            location=target, evidence=", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))))
    if redirects:
        kinds = {str(k): v for k, v in sorted(tally.statuses.items()) if 300 <= k < 400}
        findings.append(Finding(
            kind="redirects_not_followed", severity="medium",
            summary=f"{redirects} of {tally.answered} answers were redirects (3xx), not "
                    "followed: their latencies time the redirect, not the page it points to",
            location=target, evidence=", ".join(f"{k}: {v}" for k, v in kinds.items())))
    if saturated:
        why = []
        if late_pct is not None and late_pct > LATE_FRACTION_LIMIT * 100 and lag_matters:
            why.append(f"{late_pct:.1f}% of requests left > 10 ms late "
                       f"(scheduling lag p99 {lag_p99:.1f} ms)")
        if tally.cap_hits:
            why.append(f"the in-flight cap of {inp.max_in_flight} was hit "
                       f"{tally.cap_hits} times")
        findings.append(Finding(
            kind="generator_saturated", severity="high",
            summary="the load generator could not keep the schedule; latencies include "
                    "its own delay and the target rate was not really offered",
            location=target, evidence="; ".join(why)))
    if not open_model:
        notes.append("closed model (vus): each user waits for its previous answer, so "
                     "server stalls are under-counted; use rate for latency SLOs")
    if tally.error_kinds.get("unfinished"):
        notes.append(f"{tally.error_kinds['unfinished']} requests were still open after "
                     "the timeout grace period and were counted as errors")

    if stats is not None:
        line1 = (f"{requests} requests in {elapsed:.1f} s ({throughput:.0f} req/s answered); "
                 f"p50 {stats.p50:.1f} ms, p95 {stats.p95:.1f} ms, p99 {stats.p99:.1f} ms, "
                 f"max {stats.max:.1f} ms; errors {100 * error_fraction:.2f}%")
    else:
        line1 = "no request completed"
    lines = [line1]
    if redirects:
        lines.append(f"{redirects} of {tally.answered} answers were redirects (3xx), not "
                     "followed; load-test the URL they point to")
    if thresholds:
        failed = [t.expression for t in threshold_results if not t.passed]
        lines.append(f"thresholds: {len(thresholds) - len(failed)}/{len(thresholds)} passed"
                     + (f" (failed: {', '.join(failed)})" if failed else ""))
    if saturated:
        lines.append("WARNING: generator saturated; do not trust these latencies")

    # the target rate: the constant one, or the peak of a ramp
    rate = max(max(r0, r1) for _, r0, r1 in segments) if open_model else None
    return LoadTestResult(
        ok=True,
        summary="\n".join(lines),
        measurements=measurements,
        findings=findings,
        url=inp.url,
        method=inp.method,
        model="open" if open_model else "closed",
        rate=rate,
        vus=None if open_model else (inp.vus or int(max(s[2] for s in segments))),
        planned_duration_s=planned,
        elapsed_s=round(elapsed, 3),
        requests=requests,
        errors=tally.errors,
        error_rate=round(100.0 * error_fraction, 4),
        throughput=round(throughput, 2),
        status_counts={str(k): v for k, v in sorted(tally.statuses.items())},
        error_kinds=dict(tally.error_kinds),
        bytes_received=tally.bytes_received,
        latency_ms=stats,
        thresholds=threshold_results,
        generator_saturated=saturated,
        scheduling_lag_p99_ms=None if lag_p99 is None else round(lag_p99, 3),
        late_fraction=None if late_pct is None else round(late_pct, 3),
        in_flight_cap_hit=tally.cap_hits > 0,
        notes=notes,
        redirects=redirects,
    )


def _count_below(sorted_values: list[float], limit: float) -> int:
    import bisect

    return bisect.bisect_right(sorted_values, limit)


def _evidence(inp: LoadTestInput, stats: LatencyStats | None, requests: int) -> str:
    if stats is None:
        return "no request completed"
    model = f"vus={inp.vus}" if inp.vus else "open model"
    return (f"{requests} requests ({model}): p50 {stats.p50:.1f} ms, p95 {stats.p95:.1f} ms, "
            f"p99 {stats.p99:.1f} ms, max {stats.max:.1f} ms")


# --------------------------------------------------------------------------- plot

#: Files ``plot_path`` may name: a self-contained HTML page or a bare SVG.
PLOT_SUFFIXES = (".html", ".htm", ".svg")
#: The statistics marked on the plots, with their colours.
_MARKS = (("p50", "#2b8a3e"), ("p90", "#e67700"), ("p95", "#d9480f"), ("p99", "#c92a2a"),
          ("max", "#5f3dc4"))
_W, _H = 760.0, 270.0  # one chart
_LEFT, _RIGHT, _TOP, _BOTTOM = 64.0, 20.0, 34.0, 46.0
_PW, _PH = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
#: Labels get a white halo so they stay readable over bars and lines.
_HALO = 'paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round"'
#: Above this many requests the time chart shows per-slice lines only, no dots.
_MAX_DOTS = 4000


def _plot_target(path: str) -> Path:
    """The resolved plot file; refused before any traffic when it cannot be one."""
    target = resolve_in_workspace(path, must_exist=False)
    if target.suffix.lower() not in PLOT_SUFFIXES:
        raise ToolError(
            "invalid_input", f"plot_path {path!r} must end in .html or .svg",
            "use .svg (shows in browsers, GitHub and IDEs) or .html (a page with the "
            "figures and a summary); PNG is not rendered")
    if target.is_dir():
        raise ToolError("invalid_input", f"plot_path {path!r} is a folder",
                        "give a file name ending in .html or .svg")
    return target


def _ms(value: float) -> str:
    """A latency for a label: three significant figures or so."""
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks between ``lo`` and ``hi`` (positive), thinned to at most ~8."""
    ticks: list[float] = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for mant in (1, 2, 5):
            tick = mant * 10.0**exp
            if lo <= tick <= hi:
                ticks.append(tick)
    if len(ticks) > 8:
        ticks = [t for t in ticks if f"{t:e}".startswith("1")]
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:g}" if value >= 0.01 else f"{value:.0e}"


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    """Title, axis labels and the plot area's border."""
    return [
        f'<text x="{_LEFT}" y="20" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{_PW}" height="{_PH}" fill="none" '
        'stroke="#999"/>',
        f'<text x="{_LEFT + _PW / 2:.1f}" y="{_H - 8}" text-anchor="middle" font-size="12">'
        f"{html.escape(x_label)}</text>",
        f'<text transform="translate(14 {_TOP + _PH / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" font-size="12">{html.escape(y_label)}</text>',
    ]


def _x_tick(x: float, label: str) -> str:
    bottom = _TOP + _PH
    return (f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#999"/>'
            f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{bottom + 17}" text-anchor="middle" font-size="11">'
            f"{html.escape(label)}</text>")


def _y_tick(y: float, label: str) -> str:
    return (f'<line x1="{_LEFT - 4}" y1="{y:.1f}" x2="{_LEFT}" y2="{y:.1f}" stroke="#999"/>'
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + _PW}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{_LEFT - 7}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{html.escape(label)}</text>")


def _marks(stats: LatencyStats) -> list[tuple[str, str, float]]:
    return [(name, colour, float(getattr(stats, name))) for name, colour in _MARKS]


def _log_range(lo: float, hi: float) -> tuple[float, float]:
    """log10 bounds around [lo, hi] with a little room, never empty."""
    lo = max(lo, 1e-3)
    hi = max(hi, lo * 1.01)
    pad = (math.log10(hi) - math.log10(lo)) * 0.03 + 0.01
    return math.log10(lo) - pad, math.log10(hi) + pad


def _histogram_chart(lat: list[float], stats: LatencyStats) -> str:
    """Counts over log-spaced latency buckets, the marks as labelled vertical lines."""
    import bisect

    llo, lhi = _log_range(lat[0], lat[-1])
    buckets = min(80, max(12, math.ceil((lhi - llo) * 24)))
    edges = [10 ** (llo + (lhi - llo) * i / buckets) for i in range(buckets + 1)]
    counts = []
    for i in range(buckets):
        first = 0 if i == 0 else bisect.bisect_left(lat, edges[i])
        last = len(lat) if i == buckets - 1 else bisect.bisect_left(lat, edges[i + 1])
        counts.append(last - first)
    top = max(counts) or 1

    def x(value: float) -> float:
        return _LEFT + (math.log10(max(value, 1e-3)) - llo) / (lhi - llo) * _PW

    parts = _frame(f"Latency histogram: {len(lat)} requests, log-scale buckets",
                   "latency (ms, log scale)", "requests per bucket")
    for tick in _log_ticks(10**llo, 10**lhi):
        parts.append(_x_tick(x(tick), _tick_label(tick)))
    for frac in (0.0, 0.5, 1.0):
        parts.append(_y_tick(_TOP + _PH - frac * _PH, f"{top * frac:,.0f}"))
    for i, count in enumerate(counts):
        if not count:
            continue
        height = max(count / top * _PH, 1.5)  # a lone slow request stays visible
        x0, x1 = x(edges[i]), x(edges[i + 1])
        parts.append(f'<rect x="{x0:.1f}" y="{_TOP + _PH - height:.1f}" '
                     f'width="{max(x1 - x0 - 0.6, 0.8):.1f}" height="{height:.1f}" '
                     f'fill="#4c6ef5"><title>{_ms(edges[i])} – {_ms(edges[i + 1])}: '
                     f"{count} requests</title></rect>")
    for k, (name, colour, value) in enumerate(_marks(stats)):
        px = x(value)
        label = f"{name} {_ms(value)}"
        anchor, dx = ("end", -4) if px > _LEFT + _PW - 110 else ("start", 4)
        parts.append(f'<line x1="{px:.1f}" y1="{_TOP}" x2="{px:.1f}" y2="{_TOP + _PH}" '
                     f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="5 3"/>'
                     f'<text x="{px + dx:.1f}" y="{_TOP + 14 + 14 * k}" text-anchor="{anchor}" '
                     f'font-size="12" fill="{colour}" {_HALO}>{html.escape(label)}</text>')
    return "".join(parts)


def _percentile_chart(lat: list[float], stats: LatencyStats) -> str:
    """Latency by percentile, the tail stretched: x is -log10(1 - p/100)."""
    count = len(lat)
    u_max = min(max(math.log10(count), 1.0), 5.0)  # 90 % .. 99.999 %, as far as data goes
    llo, lhi = _log_range(lat[0], lat[-1])

    def x(u: float) -> float:
        return _LEFT + u / u_max * _PW

    def y(value: float) -> float:
        return _TOP + _PH - (math.log10(max(value, 1e-3)) - llo) / (lhi - llo) * _PH

    parts = _frame("Latency by percentile", "percentile (tail stretched)",
                   "latency (ms, log scale)")
    for u in range(int(u_max) + 1):
        label = "0" if u == 0 else f"{100 - 100 / 10**u:.{max(u - 2, 0)}f}"
        parts.append(_x_tick(x(u), f"{label}%"))
    for tick in _log_ticks(10**llo, 10**lhi):
        parts.append(_y_tick(y(tick), _tick_label(tick)))
    steps = 240
    points = []
    for i in range(steps + 1):
        u = u_max * i / steps
        pct = 100.0 * (1 - 10 ** -u)
        points.append(f"{x(u):.1f},{y(percentile(lat, pct)):.1f}")
    parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#4c6ef5" '
                 'stroke-width="2"/>')
    positions = {"p50": math.log10(2), "p90": 1.0, "p95": math.log10(20), "p99": 2.0}
    for k, (name, colour, value) in enumerate(_marks(stats)):
        u = min(positions.get(name, u_max), u_max)
        legend_y = _TOP + 16 + 15 * k
        parts.append(f'<circle cx="{x(u):.1f}" cy="{y(value):.1f}" r="4" fill="{colour}"/>'
                     f'<circle cx="{_LEFT + 12}" cy="{legend_y - 4}" r="4" fill="{colour}"/>'
                     f'<text x="{_LEFT + 20}" y="{legend_y}" font-size="12" fill="{colour}" '
                     f'{_HALO}>{name} {html.escape(_ms(value))}</text>')
    return "".join(parts)


def _time_chart(latencies_ms: list[float], offsets: list[float], elapsed: float) -> str:
    """Latency against send time: per-slice p50/p99/max lines, and dots when few."""
    span = max(max(offsets, default=0.0), elapsed, 1e-3)
    slices = max(10, min(150, math.ceil(span / 0.1)))
    binned: list[list[float]] = [[] for _ in range(slices)]
    for off, lat in zip(offsets, latencies_ms, strict=True):
        binned[min(int(off / span * slices), slices - 1)].append(lat)
    llo, lhi = _log_range(min(latencies_ms), max(latencies_ms))

    def x(seconds: float) -> float:
        return _LEFT + seconds / span * _PW

    def y(value: float) -> float:
        return _TOP + _PH - (math.log10(max(value, 1e-3)) - llo) / (lhi - llo) * _PH

    parts = _frame("Latency over time", "seconds since the first send (by the time each "
                   "request's clock started)", "latency (ms, log scale)")
    for tick in _log_ticks(10**llo, 10**lhi):
        parts.append(_y_tick(y(tick), _tick_label(tick)))
    step = 10 ** math.floor(math.log10(span))
    if span / step < 4:
        step /= 2
    t = 0.0
    while t <= span + 1e-9:
        parts.append(_x_tick(x(t), f"{t:g}"))
        t += step
    if len(latencies_ms) <= _MAX_DOTS:
        dots = "".join(f'<circle cx="{x(off):.1f}" cy="{y(lat):.1f}" r="1.6"/>'
                       for off, lat in zip(offsets, latencies_ms, strict=True))
        parts.append(f'<g fill="#868e96" fill-opacity="0.45">{dots}</g>')
    series: dict[str, list[str]] = {"p50": [], "p99": [], "max": []}
    for i, values in enumerate(binned):
        if not values:
            continue
        values.sort()
        mid = x((i + 0.5) * span / slices)
        for name, pct in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
            series[name].append(f"{mid:.1f},{y(percentile(values, pct)):.1f}")
    colours = dict(_MARKS)
    legend = [f'<tspan fill="{colours[name]}" font-weight="bold">{name}</tspan>'
              for name in series]
    for name, points in series.items():
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" '
                     f'stroke="{colours[name]}" stroke-width="1.6"/>')
    parts.append(f'<text x="{_LEFT + _PW}" y="{_TOP - 6}" text-anchor="end" font-size="12">'
                 f'{" · ".join(legend)} per {span / slices * 1000:.0f} ms slice</text>')
    return "".join(parts)


def plot_figures(result: LoadTestResult, latencies_s: list[float], starts: list[float],
                 first_send: float | None) -> list[str]:
    """The SVG bodies (no ``<svg>`` wrapper) of the three charts; none without data."""
    if result.latency_ms is None or not latencies_s:
        return []
    lat_ms = [v * 1000.0 for v in latencies_s]
    lat_sorted = sorted(lat_ms)
    figures = [_histogram_chart(lat_sorted, result.latency_ms),
               _percentile_chart(lat_sorted, result.latency_ms)]
    if starts and len(starts) == len(lat_ms):
        origin = first_send if first_send is not None else min(starts)
        figures.append(_time_chart(lat_ms, [s - origin for s in starts], result.elapsed_s))
    return figures


def _svg(body: str, height: float = _H) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {_W:.0f} {height:.0f}" font-family="sans-serif">{body}</svg>')


def write_plot(path: Path, result: LoadTestResult, latencies_s: list[float],
               starts: list[float], first_send: float | None) -> None:
    """Write the latency plot as a self-contained ``.html`` page or a bare ``.svg``."""
    figures = plot_figures(result, latencies_s, starts, first_send)
    stats = result.latency_ms
    model = (f"open model, {result.rate:g} req/s" if result.model == "open"
             else f"closed model, {result.vus} vus")
    heading = f"{result.method} {result.url} — {model}"
    if path.suffix.lower() == ".svg":
        lines = [heading, result.summary.splitlines()[0]]
        weights = ("bold", "normal")
        head = "".join(f'<text x="{_LEFT}" y="{20 + 18 * i}" font-size="{13 - i}" '
                       f'font-weight="{weights[i]}">{html.escape(line)}</text>'
                       for i, line in enumerate(lines))
        offset = 50.0
        body = head + "".join(f'<g transform="translate(0 {offset + i * _H:.0f})">{f}</g>'
                              for i, f in enumerate(figures))
        text = _svg(body, offset + max(len(figures), 1) * _H)
    else:
        rows = [("requests", f"{result.requests:,}"), ("elapsed", f"{result.elapsed_s:g} s"),
                ("throughput", f"{result.throughput:,.1f} req/s"),
                ("errors", f"{result.errors:,} ({result.error_rate:g} %)")]
        if stats is not None:
            rows += [(name, _ms(float(getattr(stats, name))))
                     for name in ("min", "mean", "p50", "p90", "p95", "p99", "max")]
        if result.scheduling_lag_p99_ms is not None:
            rows.append(("scheduling lag p99", _ms(result.scheduling_lag_p99_ms)))
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                        for k, v in rows)
        warning = ("<p class=warn>The load generator was saturated: these latencies include "
                   "its own delay.</p>" if result.generator_saturated else "")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
        charts = "".join(f"<figure>{_svg(f)}</figure>" for f in figures) or \
            "<p>No request completed: nothing to plot.</p>"
        text = (
            "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>load_test: {html.escape(result.url)}</title><style>"
            "body{font-family:sans-serif;margin:24px;color:#222}"
            "table{border-collapse:collapse;margin:12px 0}"
            "th,td{padding:3px 12px;border-bottom:1px solid #ddd;text-align:left}"
            "td{font-variant-numeric:tabular-nums}figure{margin:16px 0}"
            ".warn{color:#c92a2a;font-weight:bold}</style></head><body>"
            f"<h1>load_test</h1><p>{html.escape(heading)}</p>"
            f"<p>{html.escape(result.summary.splitlines()[0])}</p>{warning}"
            f"<table>{table}</table>{charts}"
            f"{f'<ul>{notes}</ul>' if notes else ''}</body></html>\n"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- locust


#: Open model in Locust: each user paces itself to about this many requests per
#: second, so it keeps its pace while answers take up to 1/PACE seconds.
LOCUST_USER_PACE = 2.0
#: ... but no worker gets more users than this (each is a greenlet with its own
#: connection); beyond it the per-user pace goes up instead.
LOCUST_MAX_USERS_PER_WORKER = 1000


def locust_plan(inp: LoadTestInput, workers: int = 1,
                segments: list[tuple[float, float, float]] | None = None,
                ) -> tuple[list[tuple[float, float, float]], float | None]:
    """Locust users over time: ([(duration_s, users_at_start, users_at_end)], pace).

    Open model: ``pace`` is each user's own sending schedule (req/s), chosen
    so that the peak rate needs at least one user per worker and the users add
    up to the arrival rate. Closed model: the users are the vus and ``pace`` is
    None (each user sends its next request as soon as the answer is in).
    """
    segments = _segments(inp) if segments is None else segments
    if inp.vus is not None:
        if inp.stages:
            return segments, None  # the stage targets already count users
        return [(d, float(inp.vus), float(inp.vus)) for d, _r0, _r1 in segments], None
    peak = max(max(r0, r1) for _, r0, r1 in segments)
    users = min(max(workers, math.ceil(peak / LOCUST_USER_PACE)),
                LOCUST_MAX_USERS_PER_WORKER * workers)
    pace = peak / users
    return [(d, r0 / pace, r1 / pace) for d, r0, r1 in segments], pace


#: The one Locust file: fixed text, shipped with perfagent, reading its scenario as data.
LOCUSTFILE = Path(__file__).with_name("locust_runner") / "locustfile.py"


def locustfile() -> str:
    """The Locust file that runs a load_test scenario (always the same text).

    The scenario is never written into it: the file reads it from JSON (see
    :func:`locust_scenario`) when Locust starts, so no text of a URL, header
    or body can ever become code in a Locust process. Its docstring says how
    to run it by hand, on one machine or several.
    """
    return LOCUSTFILE.read_text(encoding="utf-8")


def locust_scenario(inp: LoadTestInput, workers: int = 1,
                    segments: list[tuple[float, float, float]] | None = None,
                    target: Target | None = None) -> dict[str, Any]:
    """The scenario :func:`locustfile` reads: the same load, as plain data.

    Locust is closed-loop at heart: the open model becomes users that each send
    on their own schedule at a low pace (see :func:`locust_plan`), catching up
    after a slow answer. The ``plan`` moves the number of users along the same
    linear ramps, then the users stop and the run waits up to ``drain_s`` for
    answers still in flight. ``pin`` (from a checked ``target``) holds the
    addresses the host was checked at, so the workers never resolve it again.
    """
    parts = _urlsplit_checked(inp.url)
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    plan, pace = locust_plan(inp, workers, segments)
    peak_users = max(max(u0, u1) for _, u0, u1 in plan)
    return {
        "host": f"{parts.scheme}://{parts.netloc}",
        "path": path,
        "method": inp.method,
        "headers": dict(inp.headers),
        "body": inp.body,
        "thresholds": list(inp.thresholds),
        "timeout": inp.timeout,
        # (seconds, users at start, users at end): each a linear ramp
        "plan": [[round(d, 3), round(u0, 3), round(u1, 3)] for d, u0, u1 in plan],
        # Users start and stop in one step (Locust dispatches up to spawn_rate users
        # per second): a slower ramp-down would keep sending after the plan ends.
        "spawn_rate": max(math.ceil(peak_users), 1),
        "drain_s": inp.timeout + 2.0,
        # open model: requests per second each user sends on its own schedule (null:
        # closed model, the next request as soon as the answer is in)
        "pace": pace,
        "pin": None if target is None else {"host": target.host,
                                            "addresses": list(target.addresses)},
    }


def scenario_json(scenario: dict[str, Any]) -> str:
    """The scenario as the JSON text of ``scenario.json`` (ASCII only, one key a line)."""
    return json.dumps(scenario, indent=2) + "\n"


def _urlsplit_checked(url: str) -> SplitResult:
    """``urlsplit(url)``; ToolError ``invalid_url`` instead of a ValueError."""
    split_url(url)  # raises invalid_url for a malformed host or port
    return urlsplit(url)


SPEC = ToolSpec(
    name="load_test",
    description=(
        "HTTP load test against a loopback (or operator-allowed) URL. Open model by "
        "default (constant or ramping arrival rate, latency timed from each request's "
        "intended send time so server stalls are not hidden); closed model with vus. "
        "Reports exact p50/p90/p95/p99/max latency, throughput, error rate, k6-style "
        "threshold verdicts, and flags a saturated load generator. engine=\"locust\" runs "
        "the same scenario through Locust master/worker processes (workers=N) with the "
        "same exact statistics."
    ),
    input_model=LoadTestInput,
    result_model=LoadTestResult,
    run=run,
    runs_code=False,
)

__all__ = ["LOCUSTFILE", "SPEC", "LoadTestInput", "LoadTestResult", "check_url",
           "locust_scenario", "locustfile", "parse_threshold", "percentile", "plot_figures",
           "run", "scenario_json", "send_offsets", "write_plot"]
