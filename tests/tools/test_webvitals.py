"""web_vitals against real pages served on loopback, measured in real headless Chromium.

The pages live in ``tests/tools/pages``; a small threaded HTTP server serves
them and can hold a file back (``/delay/<ms>/<file>``) or answer an error
status (``/status/<code>``). Browser tests need Debian's ``chromium`` (or
``PERFAGENT_CHROMIUM``) and the ``playwright`` package: missing, they are
skipped on a developer's machine and fail in CI.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tools.webvitals as webvitals
from tests.conftest import require_module, unavailable
from tools import get_tool
from tools.base import ToolError
from tools.webvitals import (
    PROFILE_PREFIX,
    THRESHOLDS,
    WebVitalsInput,
    cumulative_layout_shift,
    interaction_to_next_paint,
    run,
    session_windows,
    total_blocking_time,
)

PAGES = Path(__file__).parent / "pages"


# --------------------------------------------------------------------------- server


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    """Static pages, plus ``/delay/<ms>/<file>`` and ``/status/<code>``."""

    def do_GET(self) -> None:
        delayed = re.fullmatch(r"/delay/(\d+)(/.+)", self.path)
        if delayed:
            time.sleep(int(delayed.group(1)) / 1000)
            self.path = delayed.group(2)
        status = re.fullmatch(r"/status/(\d{3})", self.path)
        if status:
            body = b"<!doctype html><title>error</title><p>error page</p>"
            self.send_response(int(status.group(1)))
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    """Base URL of the test pages on a loopback port."""
    handler = functools.partial(_PageHandler, directory=str(PAGES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> None:
    """Chromium and playwright are installed (skipped locally, a failure in CI)."""
    require_module("playwright")
    try:
        webvitals.find_chromium()
    except ToolError as exc:
        unavailable(f"Chromium is not installed: {exc}")


def _our_browsers() -> dict[int, str]:
    """Running processes that use one of the tool's temporary profiles: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if PROFILE_PREFIX in cmdline:
            found[int(entry.name)] = cmdline[:200]
    return found


def _our_profiles() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(PROFILE_PREFIX)}


@pytest.fixture
def leaves_nothing() -> Iterator[None]:
    """The test leaves no browser process and no profile folder behind.

    Compared with what existed before, so a leftover of an earlier, killed
    session does not fail this one.
    """
    browsers, profiles = set(_our_browsers()), _our_profiles()
    yield
    deadline = time.monotonic() + 10
    while set(_our_browsers()) - browsers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(_our_browsers()) - browsers, "a browser outlived the run"
    assert not _our_profiles() - profiles, "a profile folder was left behind"


# --------------------------------------------------------------------------- pure parts


def _shift(start: float, value: float, recent: bool = False) -> dict[str, object]:
    return {"start": start, "value": value, "recent": recent, "sources": []}


def test_session_windows_split_on_gap_and_cap() -> None:
    shifts = [_shift(100, 0.05), _shift(900, 0.05), _shift(2500, 0.3),  # gap > 1 s
              _shift(3000, 0.01, recent=True)]                        # after input: ignored
    windows = session_windows(shifts)
    assert [[s["start"] for s in w] for w in windows] == [[100, 900], [2500]]
    cls, worst = cumulative_layout_shift(shifts)
    assert cls == pytest.approx(0.3)
    assert [s["start"] for s in worst] == [2500]
    # Shifts every 0.9 s keep one window going, but never past 5 s.
    steady = [_shift(t, 0.02) for t in range(0, 9000, 900)]
    assert [len(w) for w in session_windows(steady)] == [6, 4]
    assert cumulative_layout_shift(steady)[0] == pytest.approx(0.12)
    assert cumulative_layout_shift([])[0] == 0.0


def test_inp_takes_worst_interaction_or_p98() -> None:
    def event(interaction: int, duration: float) -> dict[str, object]:
        return {"name": "click", "start": interaction * 10.0, "duration": duration,
                "processingStart": 0, "processingEnd": 0, "id": interaction, "target": "b"}

    few = [event(1, 40), event(1, 120), event(2, 80)]
    assert interaction_to_next_paint(few, None)[0] == 120
    # 100 interactions: skip the two worst (100 // 50 = 2), report the third.
    many = [event(i, float(i)) for i in range(1, 101)]
    assert interaction_to_next_paint(many, None)[0] == 98
    # A fast first input is below the 16 ms event threshold, yet still a value.
    first = {"name": "pointerdown", "start": 5.0, "duration": 8, "processingStart": 6,
             "processingEnd": 6.5, "id": 7, "target": "body"}
    assert interaction_to_next_paint([], first)[0] == 8
    assert interaction_to_next_paint([], None) == (None, [])


def test_tbt_clips_tasks_to_the_window() -> None:
    tasks = [{"start": 0, "duration": 200},      # before FCP at 100: 100 ms counted -> 50
             {"start": 300, "duration": 400},    # inside: 350
             {"start": 1000, "duration": 40},    # inside, too short: 0
             {"start": 1900, "duration": 300}]   # ends past the window at 2000: 100 -> 50
    tbt, count = total_blocking_time(tasks, 100, 2000)
    assert tbt == pytest.approx(450)
    assert count == 4


def test_thresholds_rate_and_grade() -> None:
    lcp = THRESHOLDS["lcp"]
    assert (lcp.budget, lcp.rating(2.5), lcp.rating(3.0), lcp.rating(4.5)) == (
        "<=2.5", "good", "needs improvement", "poor")
    assert [lcp.severity(v) for v in (2.8, 3.5, 6.0, 9.0)] == ["low", "medium", "high", "critical"]
    assert THRESHOLDS["inp"].severity(312) == "medium"


def test_findings_grade_slow_lcp_by_distance() -> None:
    """Findings come from the medians; the run nearest the median names the element."""
    inp = WebVitalsInput(url="http://127.0.0.1:8000/", runs=3)
    runs = [webvitals.VitalsRun(run=i, lcp=lcp, cls=0.0, lcp_element=f"img#hero{i}",
                                lcp_breakdown_ms={"ttfb": 20.0, "resource_load_duration": 3000.0})
            for i, lcp in enumerate((3.4, 3.6, 9.0), start=1)]
    result = webvitals._build_result(inp, runs, "Chrome/1")
    assert result.median["lcp"] == 3.6 and result.ratings["lcp"] == "needs improvement"
    (finding,) = result.findings
    assert (finding.kind, finding.severity, finding.location) == ("lcp_slow", "medium", "img#hero2")
    assert "3.40 s, 3.60 s, 9.00 s" in (finding.evidence or "")
    assert "resource_load_duration 3000 ms" in (finding.evidence or "")
    lcp = next(m for m in result.measurements if m.name == "lcp")
    assert (lcp.value, lcp.budget, lcp.passed) == (3.6, "<=2.5", False)
    assert "inp" not in result.median or result.median["inp"] is None


def test_input_validation() -> None:
    assert WebVitalsInput(url="http://127.0.0.1/", viewport=" 390 x 844 ").viewport == "390x844"
    with pytest.raises(ValueError):
        WebVitalsInput(url="http://127.0.0.1/", viewport="big")
    with pytest.raises(ValueError):
        WebVitalsInput(url="http://127.0.0.1/", runs=11)
    with pytest.raises(ValueError):
        WebVitalsInput(url="http://127.0.0.1/", throttle="3g")  # type: ignore[arg-type]


def test_registered_spec() -> None:
    spec = webvitals.SPEC
    assert (spec.name, spec.runs_code) == ("web_vitals", False)
    assert "url" in spec.json_schema()["properties"]
    assert get_tool("web_vitals") is spec


# --------------------------------------------------------------------------- refusals


def _no_launch(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("a browser was launched")


async def test_refuses_non_loopback_without_a_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    monkeypatch.setenv("PERFAGENT_CHROMIUM", "/nonexistent/chromium")  # would fail later
    monkeypatch.setattr(webvitals, "_launch", _no_launch)
    with pytest.raises(ToolError) as err:
        await run(WebVitalsInput(url="http://93.184.216.34/", runs=1))
    assert err.value.code == "target_refused"
    assert "PERFAGENT_ALLOWED_HOSTS=93.184.216.34" in err.value.hint


async def test_missing_chromium_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFAGENT_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(webvitals, "_launch", _no_launch)
    with pytest.raises(ToolError) as err:
        await run(WebVitalsInput(url="http://127.0.0.1:9/", runs=1))
    assert err.value.code == "missing_dependency"
    assert "/nonexistent/chromium" in err.value.message
    assert "apt-get install chromium" in err.value.hint
    assert "PERFAGENT_CHROMIUM" in err.value.hint


async def test_missing_playwright_says_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFAGENT_CHROMIUM", sys.executable)  # any executable passes the lookup
    monkeypatch.setitem(sys.modules, "playwright.async_api", None)  # import now fails
    monkeypatch.setattr(webvitals, "_launch", _no_launch)
    with pytest.raises(ToolError) as err:
        await run(WebVitalsInput(url="http://127.0.0.1:9/", runs=1))
    assert err.value.code == "missing_dependency"
    assert "pip install playwright" in err.value.hint
    assert "playwright install" in err.value.hint  # ... and that it must not be run


# --------------------------------------------------------------------------- real pages


@pytest.mark.slow
async def test_layout_shift_page(browser: None, pages: str,
                                 leaves_nothing: None) -> None:
    url = f"{pages}/shift.html"
    seen: list[tuple[float, str]] = []
    result = await run(WebVitalsInput(url=url, runs=2),
                       progress=lambda fraction, text: seen.append((fraction, text)))
    assert result.ok and len(result.runs) == 2
    # The banner moves a 600 px block by 250 px in an 800 px high viewport.
    for measured in result.runs:
        assert measured.cls is not None and 0.1 < measured.cls < 0.35
        assert measured.worst_shifts[0].sources[0].startswith("div#article")
        assert 0.25 < measured.worst_shifts[0].start_s < 2.0  # inserted after 300 ms
        assert measured.settled
    cls = next(m for m in result.measurements if m.name == "cls")
    assert (cls.unit, cls.budget, cls.passed, cls.source, cls.target) == (
        "", "<=0.1", False, "web_vitals", url)
    assert cls.value == pytest.approx(statistics.median(r.cls or 0 for r in result.runs), abs=1e-4)
    shift = next(f for f in result.findings if f.kind == "layout_shift")
    assert shift.location == "div#article"
    assert "div#article" in shift.summary and "(0,0)->(0,250)" in (shift.evidence or "")
    assert shift.severity in ("low", "medium")
    assert result.ratings["cls"] == "needs improvement"
    # Progress per run: a start and an end for each.
    assert [f for f, _ in seen] == [0.0, 0.5, 0.5, 1.0]
    assert "CLS" in seen[-1][1]


@pytest.mark.slow
async def test_stable_page_passes(browser: None, pages: str) -> None:
    result = await run(WebVitalsInput(url=f"{pages}/stable.html", runs=1))
    only = result.runs[0]
    assert only.cls is not None and only.cls < 0.01
    assert only.lcp is not None and 0 < only.lcp < 1.0
    assert only.fcp is not None and 0 < only.fcp <= only.lcp
    assert only.ttfb is not None and 0 < only.ttfb < 500
    assert only.tbt == 0
    # No control on the page: the tool clicked an inert spot, and the first
    # input is reported whatever its duration.
    assert only.interacted_with and "click on" in only.interacted_with
    assert only.other_hosts == [] and only.settled
    # Chromium's own background traffic (update checks, sign-in) is refused by the
    # egress proxy but is not the page's: nothing blocked, no note about it.
    assert only.blocked_requests == [] and only.notes == []
    # (Event Timing reports durations in 8 ms steps: a quick click may read 0 ms.)
    assert only.inp is not None and 0 <= only.inp < 100 and only.inp % 8 == 0
    assert {m.name for m in result.measurements} == {"lcp", "cls", "inp", "fcp", "ttfb", "tbt"}
    assert all(m.passed for m in result.measurements)
    assert {m.name: m.unit for m in result.measurements} == {
        "lcp": "s", "cls": "", "inp": "ms", "fcp": "s", "ttfb": "ms", "tbt": "ms"}
    assert result.findings == []
    assert "all within Google's good thresholds" in result.summary
    assert re.match(r"(Headless)?Chrome/\d+", result.browser)


@pytest.mark.slow
async def test_slow_lcp_image(browser: None, pages: str) -> None:
    result = await run(WebVitalsInput(url=f"{pages}/slow_lcp.html", runs=1, timeout=15,
                                      interact=False))
    only = result.runs[0]
    # The hero image is held back 1000 ms by the server.
    assert only.lcp is not None and 1.0 <= only.lcp < 5.0
    assert only.lcp_element == "img#hero"
    assert only.lcp_url and only.lcp_url.endswith("/delay/1000/hero.svg")
    assert only.lcp_breakdown_ms["resource_load_duration"] >= 950
    assert only.fcp is not None and only.fcp < 0.9  # the caption painted long before
    assert only.inp is None and result.median["inp"] is None
    assert "inp" not in {m.name for m in result.measurements}
    lcp = next(m for m in result.measurements if m.name == "lcp")
    assert lcp.passed is True and lcp.value == only.lcp


@pytest.mark.slow
async def test_slow_click_and_long_task(browser: None, pages: str) -> None:
    result = await run(WebVitalsInput(url=f"{pages}/busy.html", runs=1))
    only = result.runs[0]
    # The click handler spins for 300 ms; Event Timing rounds to 8 ms.
    assert only.inp is not None and 250 <= only.inp < 1000
    assert only.interaction is not None
    assert (only.interaction.event, only.interaction.target) == ("click", "button#slow")
    assert only.interaction.processing_ms is not None and only.interaction.processing_ms >= 290
    slow = next(f for f in result.findings if f.kind == "slow_interaction")
    assert slow.location == "button#slow" and "click on button#slow" in slow.summary
    assert slow.severity == "medium"  # 200 < INP <= 500
    assert "recalculate" in (slow.evidence or "")  # the handler, from long-animation-frame
    inp = next(m for m in result.measurements if m.name == "inp")
    assert (inp.unit, inp.budget, inp.passed) == ("ms", "<=200", False)
    # One 400 ms task during load: 350 ms blocking. The tool's own click is not counted.
    assert only.tbt is not None and 300 <= only.tbt < 500
    tasks = next(f for f in result.findings if f.kind == "long_tasks")
    assert "loadWork" in (tasks.evidence or "")


@pytest.mark.slow
async def test_throttled_network_delays_ttfb(browser: None, pages: str) -> None:
    result = await run(WebVitalsInput(url=f"{pages}/stable.html", runs=1, interact=False,
                                      throttle="slow-4g"))
    only = result.runs[0]
    assert result.throttle == "slow-4g"
    # Chromium's emulation delays the body by 562.5 ms, not the headers: the
    # paints show the latency, TTFB (responseStart) does not, and the result says so.
    assert only.fcp is not None and only.fcp >= 0.5
    assert only.lcp is not None and only.lcp >= 0.5
    assert only.ttfb is not None and only.ttfb < only.fcp * 1000
    assert any("slow-4g" in note and "TTFB" in note for note in result.notes)


# --------------------------------------------------------------------------- failures


@pytest.mark.slow
async def test_unreachable_and_http_error(browser: None, pages: str, unused_port: int,
                                          leaves_nothing: None) -> None:
    with pytest.raises(ToolError) as err:
        await run(WebVitalsInput(url=f"http://127.0.0.1:{unused_port}/", runs=1))
    assert err.value.code == "target_unreachable"
    assert "ERR_CONNECTION_REFUSED" in err.value.message
    with pytest.raises(ToolError) as err:
        await run(WebVitalsInput(url=f"{pages}/status/503", runs=1))
    assert err.value.code == "http_error" and "503" in err.value.message


@pytest.mark.slow
async def test_navigation_timeout(browser: None, pages: str,
                                  leaves_nothing: None) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError) as err:
        await run(WebVitalsInput(url=f"{pages}/delay/5000/stable.html", runs=1, timeout=1))
    assert err.value.code == "timeout"
    assert time.monotonic() - started < 8


@pytest.mark.slow
async def test_unsettled_page_is_bounded(browser: None, pages: str) -> None:
    started = time.monotonic()
    result = await run(WebVitalsInput(url=f"{pages}/endless.html", runs=1, timeout=3,
                                      interact=False))
    assert time.monotonic() - started < 10
    only = result.runs[0]
    assert only.settled is False and any("never had" in n for n in only.notes)
    assert only.cls is not None and only.cls > 0.1  # it did keep shifting


@pytest.mark.slow
async def test_cancellation_closes_the_browser(browser: None, pages: str,
                                               leaves_nothing: None) -> None:
    before = set(_our_browsers())
    task = asyncio.create_task(run(WebVitalsInput(url=f"{pages}/endless.html", runs=3)))
    deadline = time.monotonic() + 10
    while not set(_our_browsers()) - before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert set(_our_browsers()) - before, "the browser never started"
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
