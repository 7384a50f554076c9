"""``web_vitals``: load a page in real headless Chromium and measure its Core Web Vitals.

Each run starts a fresh Chromium (Debian's ``/usr/bin/chromium`` or any
Chromium/Chrome named by ``PERFAGENT_CHROMIUM``, driven by Playwright; no
browser download) with a new temporary profile, so every run loads the page
with a cold HTTP cache. Before the page's own scripts run, an init script
registers ``PerformanceObserver``\\ s (``buffered: true``) for paint,
largest-contentful-paint, layout-shift, event timing, first-input, longtask and
long-animation-frame entries. The run then:

1. navigates and waits for the ``load`` event (``timeout`` per run);
2. waits until the page settles: ``settle`` seconds with no new layout shift,
   LCP candidate, long task or network request in flight, bounded by the
   timeout;
3. reads LCP, CLS, FCP, TTFB and TBT;
4. with ``interact`` clicks the first visible, enabled button or form field
   (typing a key into text fields), or an inert spot of the body when there is
   none, and reads the interaction's Event Timing entries for INP.

How each number is computed (lab values, one page load each):

* **LCP**: the last ``largest-contentful-paint`` entry before the first input;
* **CLS**: ``layout-shift`` entries without ``hadRecentInput`` grouped in
  session windows (a new window after a 1 s gap or when a window reaches
  5 s); the largest window sum, as in the Core Web Vitals definition;
* **INP**: Event Timing entries grouped by ``interactionId`` (threshold
  16 ms; the ``first-input`` entry is always reported, so even a fast first
  interaction has a value); the worst interaction, or with 50 or more
  interactions the one ranked ``count // 50`` from the worst (about p98).
  The browser reports durations in 8 ms steps, so a quick one may read 0 ms;
* **FCP**: the ``first-contentful-paint`` paint entry;
* **TTFB**: the navigation entry's ``responseStart`` measured from navigation
  start, so redirects, DNS, connection and server time are included (the
  ``server_ms`` of each run is ``responseStart - requestStart``, the server
  part; for plain-http pages it also holds the egress proxy's connection to
  the server, a millisecond or so on loopback, which the browser cannot see);
* **TBT** (a lab proxy for responsiveness, as in Lighthouse): for long tasks
  clipped to the window from FCP to the end of the settle period (our stand-in
  for Time to Interactive; the tool's own interaction is not counted), the
  sum of each task's time beyond 50 ms.

Medians across runs are compared with Google's published "good" thresholds
(LCP <= 2.5 s, CLS <= 0.1, INP <= 200 ms, FCP <= 1.8 s, TTFB <= 0.8 s; TBT
<= 200 ms is Lighthouse's). Findings (``lcp_slow``, ``layout_shift``,
``slow_interaction``, ``long_tasks``) name the element or script involved and
get a severity by how far the median is past the threshold.

Safety: the URL must be loopback or in ``PERFAGENT_ALLOWED_HOSTS``, checked
before a browser starts. After that, a page asks for much more than its URL
(redirects, images, scripts, fetches, iframes, WebSockets, service workers),
so each run's Chromium reaches the network only through an in-process
checking proxy (:mod:`tools.egress`): every host is checked by the same
policy, resolved once, and connected to at the checked address; Chromium
resolves no name itself (so DNS rebinding cannot point it elsewhere) and
sends no WebRTC UDP around the proxy. Refused sub-resources are reported
(``blocked_requests``, a ``blocked_request`` finding); a refused navigation
(the page or a redirect of it) fails the run with ``target_refused``. Every
browser and proxy is closed and the profile removed when a run ends, fails
or is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    Severity,
    Target,
    ToolError,
    ToolResult,
    ToolSpec,
    check_target_url,
    tail,
    within_budget,
)
from tools.egress import CONNECT_TIMEOUT_S, EgressProxy, Failure, Refusal, authority, url_key
from tools.process import REAPER

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page, Playwright

#: Chromium flags: headless on a closed network, no background traffic of its own.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Hosts of Chromium's own background traffic (update checks, sign-in), which
#: reaches the egress proxy even with background networking off. Refused like
#: any other, but not the page's doing, so not reported as the page's requests.
BROWSER_SERVICE_DOMAINS = ("google.com", "googleapis.com", "gvt1.com", "gvt2.com",
                           "googleusercontent.com", "gstatic.com")
#: At most this many blocked requests are listed per run.
MAX_BLOCKED_LISTED = 20
#: Names looked up on PATH when PERFAGENT_CHROMIUM is not set.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
#: Temporary profile folders start with this (one per run, removed afterwards).
PROFILE_PREFIX = "perfagent-webvitals-"
MAX_RUNS = 10
#: Extra time a run may take beyond its ``timeout`` (browser start and close).
RUN_MARGIN_S = 20.0
CLOSE_TIMEOUT_S = 10.0
POLL_S = 0.1
#: Event Timing threshold (ms); 16 is the lowest the API accepts.
EVENT_DURATION_THRESHOLD = 16
LONG_TASK_MS = 50.0

INSTALL_CHROMIUM_HINT = (
    "install Chromium: `apt-get install chromium` on Debian/Ubuntu (binary /usr/bin/chromium), "
    "or set PERFAGENT_CHROMIUM to the path of a Chromium or Chrome binary"
)
INSTALL_PLAYWRIGHT_HINT = (
    "`pip install playwright` (its wheel bundles the driver); no browser download is "
    "needed: do not run `playwright install`, the system Chromium is used"
)

#: Lighthouse's "Slow 4G" (devtools throttling): 150 ms RTT x 3.75, 1.6 Mbps x 0.9, 750 kbps x 0.9.
SLOW_4G = {
    "offline": False,
    "latency": 562.5,
    "downloadThroughput": 1.6 * 1024 * 1024 * 0.9 / 8,
    "uploadThroughput": 750 * 1024 * 0.9 / 8,
}
CPU_SLOWDOWN = 4


@dataclass(frozen=True)
class Threshold:
    """Google's published boundaries for one metric, in the measurement's unit."""

    name: str
    label: str
    unit: str
    good: float
    poor: float
    digits: int

    @property
    def budget(self) -> str:
        return f"<={self.good:g}"

    def rating(self, value: float) -> str:
        if value <= self.good:
            return "good"
        return "needs improvement" if value <= self.poor else "poor"

    def severity(self, value: float) -> Severity:
        """How far past "good": just past, needs improvement, poor, twice the poor line."""
        if value <= self.good * 1.25:
            return "low"
        if value <= self.poor:
            return "medium"
        return "high" if value <= 2 * self.poor else "critical"

    def show(self, value: float) -> str:
        text = f"{value:.{self.digits}f}"
        return f"{text} {self.unit}" if self.unit else text


THRESHOLDS: dict[str, Threshold] = {
    t.name: t
    for t in (
        Threshold("lcp", "LCP", "s", 2.5, 4.0, 2),
        Threshold("cls", "CLS", "", 0.1, 0.25, 3),
        Threshold("inp", "INP", "ms", 200.0, 500.0, 0),
        Threshold("fcp", "FCP", "s", 1.8, 3.0, 2),
        Threshold("ttfb", "TTFB", "ms", 800.0, 1800.0, 0),
        Threshold("tbt", "TBT", "ms", 200.0, 600.0, 0),
    )
}
#: Decimals kept in measurements and per-run values.
ROUNDING = {"lcp": 3, "cls": 4, "inp": 0, "fcp": 3, "ttfb": 1, "tbt": 0}


# --------------------------------------------------------------------------- input

Throttle = Literal["none", "slow-4g", "cpu-4x", "slow-4g+cpu-4x"]


class WebVitalsInput(BaseModel):
    """Which page to measure and how."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="page URL; loopback or an operator-allowed host only")
    runs: int = Field(default=3, ge=1, le=MAX_RUNS,
                      description="page loads, each in a fresh browser with a cold cache; "
                      "the result reports the median of each metric")
    timeout: float = Field(default=30.0, gt=0, le=120,
                           description="seconds per run for loading and settling the page")
    interact: bool = Field(default=True,
                           description="after load, click the first button or form field "
                           "(or an inert spot of the page) to measure INP")
    viewport: str = Field(default="1280x800", description='window size "WIDTHxHEIGHT"')
    throttle: Throttle | None = Field(
        default=None,
        description='"slow-4g" (Lighthouse\'s Slow 4G network: 562.5 ms latency, '
        '1.4 Mbps down; Chromium adds the latency to response bodies, so TTFB does not '
        'show it), "cpu-4x" (CPU 4x slower), both, or none',
    )
    settle: float = Field(default=1.5, ge=0.2, le=10,
                          description="after load, wait until this many seconds pass with no "
                          "layout shift, LCP candidate, long task or request in flight")

    @field_validator("viewport")
    @classmethod
    def _viewport(cls, value: str) -> str:
        match = re.fullmatch(r"\s*(\d{2,5})\s*[xX×]\s*(\d{2,5})\s*", value)
        if not match:
            raise ValueError(f"viewport {value!r} is not WIDTHxHEIGHT, e.g. 1280x800 or 390x844")
        width, height = int(match.group(1)), int(match.group(2))
        if not (200 <= width <= 4000 and 200 <= height <= 4000):
            raise ValueError("viewport sides must be between 200 and 4000 pixels")
        return f"{width}x{height}"

    def viewport_size(self) -> dict[str, int]:
        width, height = self.viewport.split("x")
        return {"width": int(width), "height": int(height)}


# --------------------------------------------------------------------------- result


class LayoutShiftInfo(BaseModel):
    """One layout shift of the worst session window."""

    start_s: float = Field(description="time since navigation start")
    value: float
    sources: list[str] = Field(default_factory=list,
                               description="shifted elements, most impactful first, with "
                               "their move as (x,y)->(x,y)")


class InteractionInfo(BaseModel):
    """The slowest interaction: its event, target and where its time went (ms)."""

    event: str
    target: str | None
    duration_ms: float
    input_delay_ms: float | None = None
    processing_ms: float | None = None
    presentation_delay_ms: float | None = None
    scripts: list[str] = Field(default_factory=list,
                               description="scripts of the long animation frame that "
                               "handled it (invoker, source, duration)")


class VitalsRun(BaseModel):
    """Everything one page load measured (None: the browser gave no value)."""

    run: int
    lcp: float | None = Field(default=None, description="s")
    cls: float | None = None
    inp: float | None = Field(default=None, description="ms")
    fcp: float | None = Field(default=None, description="s")
    ttfb: float | None = Field(default=None, description="ms, responseStart from navigation start")
    tbt: float | None = Field(default=None, description="ms")
    server_ms: float | None = Field(default=None, description="responseStart - requestStart")
    load_s: float | None = Field(default=None, description="end of the load event")
    lcp_element: str | None = None
    lcp_url: str | None = None
    lcp_breakdown_ms: dict[str, float] = Field(
        default_factory=dict,
        description="ttfb, resource_load_delay, resource_load_duration, element_render_delay")
    worst_shifts: list[LayoutShiftInfo] = Field(default_factory=list)
    interaction: InteractionInfo | None = None
    interacted_with: str | None = Field(default=None, description="what the tool clicked or typed")
    long_tasks: int = Field(default=0, description="long tasks between FCP and settle")
    longest_task_ms: float | None = None
    long_task_scripts: list[str] = Field(default_factory=list)
    other_hosts: list[str] = Field(default_factory=list,
                                   description="hosts other than the page's that it loaded from")
    blocked_requests: list[str] = Field(
        default_factory=list,
        description="requests of the page the egress check refused, as 'URL: reason' (the "
        "browser never connected to them)")
    #: The same refusals with their policy hints, for the result's findings.
    _refused: list[tuple[str, Refusal]] = PrivateAttr(default_factory=list)
    settled: bool = Field(default=True, description="False when the timeout ended the wait")
    elapsed_s: float = 0.0
    notes: list[str] = Field(default_factory=list)


class WebVitalsResult(ToolResult):
    """Per-run values and their medians."""

    tool: str = "web_vitals"
    url: str
    browser: str = ""
    viewport: str
    throttle: str = "none"
    runs: list[VitalsRun] = Field(default_factory=list)
    median: dict[str, float | None] = Field(
        default_factory=dict,
        description="median across runs: lcp (s), cls, inp (ms), fcp (s), ttfb (ms), tbt (ms)")
    ratings: dict[str, str] = Field(default_factory=dict,
                                    description="good / needs improvement / poor per metric")
    notes: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- page script

#: Registered with add_init_script: runs in the top frame before any page script.
OBSERVER_SCRIPT = r"""
(() => {
  if (window !== window.top || window.__perfagentVitals) return;
  const cap = 400;
  const w = {
    timeOrigin: performance.timeOrigin, lcp: [], shifts: [], events: [], firstInput: null,
    longTasks: [], frames: [], fcp: null, inputAt: null, lastActivity: 0, unsupported: [],
  };
  Object.defineProperty(window, '__perfagentVitals', {value: w, enumerable: false});
  const describe = (node) => {
    if (!node) return null;
    let el = node.nodeType === 1 ? node : node.parentElement;
    if (!el) return (node.nodeName || '').toLowerCase() || null;
    const parts = [];
    while (el && el.nodeType === 1 && parts.length < 4) {
      let part = el.localName;
      if (el.id) { parts.unshift(part + '#' + CSS.escape(el.id)); break; }
      part += [...el.classList].slice(0, 2).map((c) => '.' + CSS.escape(c)).join('');
      const parent = el.parentElement;
      if (!parent || el === document.body) { parts.unshift(part); break; }
      const same = [...parent.children].filter((c) => c.localName === el.localName);
      if (same.length > 1) part += ':nth-of-type(' + (same.indexOf(el) + 1) + ')';
      parts.unshift(part);
      el = parent;
    }
    return parts.join(' > ');
  };
  w.describe = describe;
  const rect = (r) => r ? [Math.round(r.x), Math.round(r.y), Math.round(r.width),
                           Math.round(r.height)] : null;
  const touch = () => { w.lastActivity = performance.now(); };
  const push = (list, item) => { if (list.length < cap) list.push(item); };
  const observe = (type, fn, extra) => {
    if (!PerformanceObserver.supportedEntryTypes.includes(type)) { w.unsupported.push(type); return; }
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) { try { fn(e); } catch (err) { /* keep observing */ } }
    }).observe(Object.assign({type, buffered: true}, extra || {}));
  };
  observe('paint', (e) => { if (e.name === 'first-contentful-paint') w.fcp = e.startTime; });
  observe('largest-contentful-paint', (e) => {
    touch();
    push(w.lcp, {start: e.startTime, size: e.size, element: describe(e.element),
                 url: (e.url || '').slice(0, 300), loadTime: e.loadTime || 0});
  });
  observe('layout-shift', (e) => {
    touch();
    push(w.shifts, {start: e.startTime, value: e.value, recent: e.hadRecentInput,
      sources: (e.sources || []).map((s) => ({node: describe(s.node),
        prev: rect(s.previousRect), cur: rect(s.currentRect)}))});
  });
  const timing = (e) => ({name: e.name, start: e.startTime, duration: e.duration,
    processingStart: e.processingStart, processingEnd: e.processingEnd,
    id: e.interactionId || 0, target: describe(e.target)});
  observe('event', (e) => { if (e.interactionId) push(w.events, timing(e)); },
          {durationThreshold: 16});
  observe('first-input', (e) => { w.firstInput = timing(e); });
  observe('longtask', (e) => { touch(); push(w.longTasks, {start: e.startTime, duration: e.duration}); });
  observe('long-animation-frame', (e) => {
    push(w.frames, {start: e.startTime, duration: e.duration, blocking: e.blockingDuration,
      scripts: (e.scripts || []).slice(0, 5).map((s) => ({invoker: s.invoker || '',
        source: (s.sourceURL || '').slice(0, 200), fn: s.sourceFunctionName || '',
        pos: s.sourceCharPosition, duration: s.duration}))});
  });
  for (const type of ['pointerdown', 'mousedown', 'keydown', 'touchstart']) {
    addEventListener(type, (e) => {
      if (e.isTrusted && w.inputAt === null) w.inputAt = performance.now();
    }, {capture: true, passive: true});
  }
})();
"""

#: Returns a JSON-safe copy of the collected entries plus navigation timing.
SNAPSHOT_SCRIPT = r"""
() => {
  const w = window.__perfagentVitals;
  if (!w) return null;
  const nav = performance.getEntriesByType('navigation')[0];
  const lcp = w.lcp.filter((e) => w.inputAt === null || e.start <= w.inputAt);
  const last = lcp.length ? lcp[lcp.length - 1] : null;
  let resource = null;
  if (last && last.url) {
    const r = performance.getEntriesByName(last.url, 'resource')[0];
    if (r) resource = {start: r.startTime, requestStart: r.requestStart, end: r.responseEnd};
  }
  return {
    timeOrigin: w.timeOrigin, now: performance.now(), lastActivity: w.lastActivity,
    inputAt: w.inputAt, fcp: w.fcp, lcp: last, lcpResource: resource,
    shifts: w.shifts, events: w.events, firstInput: w.firstInput, longTasks: w.longTasks,
    frames: w.frames, unsupported: w.unsupported,
    nav: nav ? {start: nav.startTime, requestStart: nav.requestStart,
                responseStart: nav.responseStart, loadEventEnd: nav.loadEventEnd,
                status: nav.responseStatus || 0} : null,
  };
}
"""

#: Picks what to interact with: a visible, enabled control, else an inert spot.
TARGET_SCRIPT = r"""
(selector) => {
  const w = window.__perfagentVitals;
  const describe = w ? w.describe : (el) => el.localName;
  const controls = [...document.querySelectorAll(selector)];
  for (let i = 0; i < controls.length; i++) {
    const el = controls[i];
    if (el.disabled || el.readOnly) continue;
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (r.width < 2 || r.height < 2) continue;
    if (style.visibility === 'hidden' || style.pointerEvents === 'none') continue;
    const type = (el.getAttribute('type') || '').toLowerCase();
    const typing = el.localName === 'textarea' || el.isContentEditable ||
      (el.localName === 'input' &&
       ['', 'text', 'search', 'email', 'url', 'tel', 'password', 'number'].includes(type));
    return {kind: 'control', index: i, typing, name: describe(el)};
  }
  const active = 'a, button, input, select, textarea, label, summary, details, iframe, video, audio, ' +
    '[onclick], [contenteditable], [tabindex], [role=button], [role=link], [role=checkbox], ' +
    '[role=menuitem], [role=tab], [role=option], [role=switch]';
  const W = innerWidth, H = innerHeight;
  for (const [x, y] of [[W / 2, H / 2], [4, H - 4], [W - 4, H - 4], [4, 4], [W - 4, 4], [W / 2, H - 4]]) {
    const el = document.elementFromPoint(x, y);
    if (el && !el.closest(active)) return {kind: 'point', x, y, name: describe(el)};
  }
  return null;
}
"""

CONTROL_SELECTOR = ("button, input:not([type=hidden]):not([type=file]), textarea, "
                    "[role=button]:not(a)")

#: Resolves after the next frames are presented, so Event Timing entries are queued.
FRAMES_SCRIPT = ("() => new Promise((resolve) => requestAnimationFrame(() => "
                 "requestAnimationFrame(() => setTimeout(resolve, 50))))")

#: Stops native form submission during the tool's interaction (a navigation would
#: discard the page and its entries); page handlers still run and are timed.
GUARD_SCRIPT = ("() => addEventListener('submit', (e) => e.preventDefault(), "
                "{capture: false})")


# --------------------------------------------------------------------------- pure computations


def session_windows(shifts: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Group shifts without recent input into CLS session windows.

    A window ends after a gap of more than 1 s between shifts or when it would
    last more than 5 s (times in ms, as the browser reports them).
    """
    windows: list[list[dict[str, Any]]] = []
    for shift in sorted((s for s in shifts if not s.get("recent")), key=lambda s: s["start"]):
        current = windows[-1] if windows else None
        if (current is not None and shift["start"] - current[-1]["start"] <= 1000
                and shift["start"] - current[0]["start"] <= 5000):
            current.append(shift)
        else:
            windows.append([shift])
    return windows


def cumulative_layout_shift(shifts: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """CLS (the largest session window's sum) and that window's shifts."""
    best: list[dict[str, Any]] = []
    best_sum = 0.0
    for window in session_windows(shifts):
        total = sum(s["value"] for s in window)
        if total > best_sum:
            best, best_sum = window, total
    return best_sum, best


def interactions(events: list[dict[str, Any]],
                 first_input: dict[str, Any] | None) -> dict[int, list[dict[str, Any]]]:
    """Event Timing entries grouped by interaction id (the first input included)."""
    groups: dict[int, list[dict[str, Any]]] = {}
    entries = list(events)
    if first_input is not None:
        entries.append(first_input)
    for index, entry in enumerate(entries):
        key = entry.get("id") or -(index + 1)  # a first input without an id stands alone
        groups.setdefault(int(key), []).append(entry)
    return groups


def interaction_to_next_paint(
    events: list[dict[str, Any]], first_input: dict[str, Any] | None
) -> tuple[float | None, list[dict[str, Any]]]:
    """INP in ms and the entries of the interaction it comes from.

    The worst interaction; with 50 or more, the one ranked ``count // 50``
    from the worst, which skips one outlier per 50 interactions (about p98).
    """
    groups = interactions(events, first_input)
    if not groups:
        return None, []
    ranked = sorted(groups.values(), key=lambda g: max(e["duration"] for e in g), reverse=True)
    chosen = ranked[min(len(ranked) - 1, len(ranked) // 50)]
    return float(max(e["duration"] for e in chosen)), chosen


def total_blocking_time(tasks: list[dict[str, Any]], start: float, end: float) -> tuple[float, int]:
    """Sum of (clipped duration - 50 ms) over long tasks within [start, end] (ms), and their count."""
    total, count = 0.0, 0
    for task in tasks:
        begin = max(task["start"], start)
        finish = min(task["start"] + task["duration"], end)
        if finish <= begin:
            continue
        count += 1
        total += max(0.0, (finish - begin) - LONG_TASK_MS)
    return total, count


def median_of(values: list[float | None]) -> float | None:
    """Median of the values a browser reported; None when none did."""
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def _round(name: str, value: float | None) -> float | None:
    return None if value is None else round(value, ROUNDING[name])


def _describe_source(source: dict[str, Any]) -> str:
    name = source.get("node") or "(removed node)"
    prev, cur = source.get("prev"), source.get("cur")
    if prev and cur:
        return f"{name} ({prev[0]},{prev[1]})->({cur[0]},{cur[1]})"
    return name


def _script_text(script: dict[str, Any]) -> str:
    where = script.get("source") or "inline"
    if script.get("fn"):
        where += f" {script['fn']}()"
    if script.get("pos") not in (None, -1):
        where += f" @char {script['pos']}"
    invoker = script.get("invoker") or "script"
    return f"{invoker} [{where}] {script.get('duration', 0):.0f} ms"


def _frame_scripts(frames: list[dict[str, Any]], start: float, end: float) -> list[str]:
    """Scripts of long animation frames overlapping [start, end], longest first."""
    scripts = [s for f in frames if f["start"] < end and f["start"] + f["duration"] > start
               for s in f.get("scripts", [])]
    scripts.sort(key=lambda s: s.get("duration") or 0, reverse=True)
    return [_script_text(s) for s in scripts[:3]]


def analyse(snapshot: dict[str, Any], window_end: float, run: int) -> VitalsRun:
    """Turn one page's collected entries into a :class:`VitalsRun`.

    ``window_end`` (ms, page time) is where the load phase ends: TBT counts
    long tasks from FCP up to it.
    """
    out = VitalsRun(run=run)
    nav = snapshot.get("nav")
    if nav:
        out.ttfb = _round("ttfb", nav["responseStart"] - nav["start"])
        if nav.get("requestStart"):
            out.server_ms = round(nav["responseStart"] - nav["requestStart"], 1)
        if nav.get("loadEventEnd"):
            out.load_s = round(nav["loadEventEnd"] / 1000, 3)
    else:
        out.notes.append("no navigation timing entry")
    fcp = snapshot.get("fcp")
    if fcp is not None:
        out.fcp = _round("fcp", fcp / 1000)
    lcp = snapshot.get("lcp")
    if lcp is not None:
        out.lcp = _round("lcp", lcp["start"] / 1000)
        out.lcp_element = lcp.get("element")
        out.lcp_url = lcp.get("url") or None
        out.lcp_breakdown_ms = _lcp_breakdown(snapshot, lcp)
    unsupported = set(snapshot.get("unsupported") or [])
    if "layout-shift" not in unsupported:
        cls, window = cumulative_layout_shift(snapshot.get("shifts") or [])
        out.cls = _round("cls", cls)
        out.worst_shifts = [
            LayoutShiftInfo(start_s=round(s["start"] / 1000, 3), value=round(s["value"], 4),
                            sources=[_describe_source(src) for src in s.get("sources", [])])
            for s in sorted(window, key=lambda s: s["value"], reverse=True)[:5]
        ]
    inp, entries = interaction_to_next_paint(snapshot.get("events") or [],
                                             snapshot.get("firstInput"))
    if inp is not None:
        out.inp = _round("inp", inp)
        out.interaction = _interaction_info(entries, snapshot.get("frames") or [])
    if "longtask" in unsupported:
        out.notes.append("this browser does not report long tasks: no TBT")
    elif fcp is not None:
        tasks = snapshot.get("longTasks") or []
        tbt, count = total_blocking_time(tasks, fcp, window_end)
        out.tbt = _round("tbt", tbt)
        out.long_tasks = count
        counted = [t for t in tasks if t["start"] < window_end and t["start"] + t["duration"] > fcp]
        if counted:
            out.longest_task_ms = round(max(t["duration"] for t in counted), 1)
            out.long_task_scripts = _frame_scripts(snapshot.get("frames") or [], fcp, window_end)
    return out


def _lcp_breakdown(snapshot: dict[str, Any], lcp: dict[str, Any]) -> dict[str, float]:
    """LCP subparts (ms): TTFB, resource load delay and duration, element render delay."""
    nav = snapshot.get("nav")
    if not nav:
        return {}
    ttfb = nav["responseStart"] - nav["start"]
    resource = snapshot.get("lcpResource")
    parts = {"ttfb": ttfb}
    if resource:
        begin = max(ttfb, resource.get("requestStart") or resource["start"])
        end = max(begin, resource["end"])
        parts["resource_load_delay"] = begin - ttfb
        parts["resource_load_duration"] = end - begin
        parts["element_render_delay"] = max(0.0, lcp["start"] - end)
    else:
        parts["element_render_delay"] = max(0.0, lcp["start"] - ttfb)
    return {k: round(v, 1) for k, v in parts.items()}


def _interaction_info(entries: list[dict[str, Any]], frames: list[dict[str, Any]]) -> InteractionInfo:
    duration = max(e["duration"] for e in entries)
    # The event whose handlers ran longest is the one to name (click, keydown, ...).
    slowest = max(entries, key=lambda e: ((e.get("processingEnd") or 0) - (e.get("processingStart") or 0),
                                          e["duration"]))
    first = min(entries, key=lambda e: e["start"])
    start = first["start"]
    processing_start = min(e["processingStart"] for e in entries if e.get("processingStart"))
    processing_end = max(e["processingEnd"] for e in entries if e.get("processingEnd"))
    return InteractionInfo(
        event=slowest["name"],
        target=slowest.get("target") or first.get("target"),
        duration_ms=round(duration, 1),
        input_delay_ms=round(processing_start - start, 1),
        processing_ms=round(processing_end - processing_start, 1),
        presentation_delay_ms=round(max(0.0, start + duration - processing_end), 1),
        scripts=_frame_scripts(frames, start, start + duration),
    )


# --------------------------------------------------------------------------- browser


def find_chromium() -> str:
    """The Chromium binary to drive: PERFAGENT_CHROMIUM, else one on PATH."""
    configured = os.environ.get("PERFAGENT_CHROMIUM", "").strip()
    if configured:
        path = shutil.which(configured) if os.sep not in configured else configured
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise ToolError("missing_dependency",
                        f"PERFAGENT_CHROMIUM={configured} is not an executable file",
                        INSTALL_CHROMIUM_HINT)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise ToolError("missing_dependency", "no Chromium browser found on PATH "
                    f"(looked for {', '.join(CHROMIUM_NAMES)})", INSTALL_CHROMIUM_HINT)


def _require_playwright() -> None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        raise ToolError("missing_dependency",
                        f"the Python package playwright is not installed ({exc})",
                        INSTALL_PLAYWRIGHT_HINT) from exc


async def _launch(pw: Playwright, chromium: str, profile: str, inp: WebVitalsInput,
                  timeout_s: float, extra_args: list[str]) -> BrowserContext:
    """A headless Chromium with a fresh profile; its one context is the run's cold cache.

    ``extra_args`` are the egress proxy's switches (the browser's only way out).
    """
    from playwright.async_api import Error as PlaywrightError

    try:
        return await pw.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True,
            args=[*CHROMIUM_ARGS, *extra_args],
            viewport=inp.viewport_size(), timeout=timeout_s * 1000, handle_sigint=False,
            handle_sigterm=False, handle_sighup=False)
    except PlaywrightError as exc:
        raise ToolError("browser_failed", f"Chromium ({chromium}) did not start: "
                        f"{tail(str(exc), 8)}",
                        "check that the binary runs (`chromium --headless --version`); "
                        "set PERFAGENT_CHROMIUM to another Chromium/Chrome") from exc


async def _close(context: BrowserContext | None, profile: str) -> None:
    """Close the browser and remove its profile, whatever state the run ended in."""
    try:
        if context is not None:
            # Shielded: a second cancellation must not abandon the close half-way (the
            # Playwright driver, when it stops, also kills any browser it launched).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(context.close()), CLOSE_TIMEOUT_S)
    finally:
        await _remove_profiles([profile])


async def _remove_profiles(profiles: list[str]) -> None:
    """Delete profile folders; a closing Chromium may write into one for a moment more."""
    for profile in profiles:
        for _ in range(30):
            shutil.rmtree(profile, ignore_errors=True)
            if not os.path.exists(profile):
                break
            await asyncio.sleep(0.1)
        REAPER.tell("-dir", profile)


def _navigation_error(exc: Exception, url: str, timeout_s: float) -> ToolError:
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    text = str(exc)
    if isinstance(exc, PlaywrightTimeout) or "Timeout" in type(exc).__name__:
        return ToolError("timeout", f"{url} did not finish loading (load event) within "
                         f"{timeout_s:g} s", "raise timeout, or check what the page waits for")
    match = re.search(r"net::(ERR_[A-Z_]+)", text)
    if match:
        return ToolError("target_unreachable", f"{url} could not be loaded: {match.group(1)}",
                         "check that the server is running and listening on that host and port")
    return ToolError("navigation_failed", f"loading {url} failed: {tail(text, 6)}",
                     "check the URL and the server's logs")


class _PageRequests:
    """What the page itself asked for, as the browser reports it to Playwright.

    Every request of the context (frames, workers, service workers) and every
    WebSocket, keyed like the egress proxy's verdicts, so a refusal can be told
    from Chromium's own background traffic; and the main frame's navigations in
    order (the page's URL, its redirects, client-side redirects).
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.urls: dict[tuple[str, int], list[str]] = {}
        self.navigations: list[str] = []

    def request(self, request: Any) -> None:
        with contextlib.suppress(Exception):  # a service worker's request has no frame
            self._add(request.url)
            if request.is_navigation_request() and request.frame == self.page.main_frame:
                self.navigations.append(request.url)

    def websocket(self, websocket: Any) -> None:
        with contextlib.suppress(Exception):
            self._add(websocket.url)

    def _add(self, url: str) -> None:
        key = url_key(url)
        if key is not None:
            urls = self.urls.setdefault(key, [])
            if url not in urls and len(urls) < MAX_BLOCKED_LISTED:
                urls.append(url)


def _check_navigation(url: str, seen: _PageRequests, proxy: EgressProxy, *,
                      failed: bool) -> None:
    """Fail the run when the egress check refused the page or a redirect of it.

    ``failed``: the navigation did not succeed (an exception, or an error
    status), so a connection the proxy could not make explains it.
    """
    refused: dict[tuple[str, int], Refusal] = {}
    for refusal in proxy.refused:
        refused.setdefault((refusal.host, refusal.port), refusal)
    for index, navigation in enumerate(seen.navigations):
        found = refused.get(url_key(navigation) or ("", 0))
        if found is None:
            continue
        hops = seen.navigations[1:index]
        via = f" (via {' -> '.join(hops)})" if hops else ""
        raise ToolError("target_refused", f"{url} redirected to {navigation}{via}: {found.reason}",
                        found.hint)
    if not failed:
        return
    failures: dict[tuple[str, int], Failure] = {(f.host, f.port): f for f in proxy.failed}
    for navigation in reversed(seen.navigations):
        failure = failures.get(url_key(navigation) or ("", 0))
        if failure is not None:
            where = "" if navigation == url else f" (at {navigation})"
            raise ToolError("target_unreachable",
                            f"{url} could not be loaded: {failure.error}{where}",
                            "check that the server is running and listening on that host and port")


def _browser_service(host: str) -> bool:
    return any(host == d or host.endswith("." + d) for d in BROWSER_SERVICE_DOMAINS)


def _blocked(proxy: EgressProxy,
             seen: _PageRequests) -> tuple[list[tuple[str, Refusal]], list[str]]:
    """The refusals that were the page's requests, as (URL, refusal); and the others.

    A refused CONNECT names only host:port, so it is shown as the page's https,
    wss or ws URLs on that host and port. Refusals the page did not ask for are
    Chromium's own traffic; its known service hosts are left out.
    """
    page: list[tuple[str, Refusal]] = []
    listed: set[str] = set()
    other: list[str] = []
    for refusal in proxy.refused:
        urls = seen.urls.get((refusal.host, refusal.port))
        if not urls:
            if not _browser_service(refusal.host) and refusal.target not in other:
                other.append(refusal.target)
            continue
        if refusal.connect:
            labels = [u for u in urls if urlsplit(u).scheme in ("https", "wss", "ws")]
            labels = labels or [refusal.target]
        else:
            labels = [refusal.target]
        for label in labels:
            if label not in listed and len(page) < MAX_BLOCKED_LISTED:
                listed.add(label)
                page.append((label, refusal))
    return page, other


class _Network:
    """Counts requests in flight, remembers when the last one started or ended, and
    which hosts the page loaded from."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_change = time.monotonic()
        self.hosts: set[str] = set()

    def started(self, request: Any) -> None:
        self.in_flight += 1
        self.last_change = time.monotonic()
        with contextlib.suppress(ValueError, AttributeError):
            host = urlsplit(request.url).hostname
            if host:
                self.hosts.add(host)

    def ended(self, _request: object) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.last_change = time.monotonic()


async def _settle(page: Page, network: _Network, settle_s: float, deadline: float) -> bool:
    """Wait for ``settle_s`` of quiet (page entries and network); False at the deadline."""
    while True:
        now = time.monotonic()
        quiet_page = 0.0
        with contextlib.suppress(Exception):  # a client-side redirect replaces the document
            state = await page.evaluate(
                "() => { const w = window.__perfagentVitals; "
                "return w ? performance.now() - w.lastActivity : 0; }")
            quiet_page = float(state) / 1000
        quiet_net = 0.0 if network.in_flight else now - network.last_change
        if min(quiet_page, quiet_net) >= settle_s:
            return True
        if now >= deadline:
            return False
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - now)))


async def _interact(page: Page, time_origin: float) -> tuple[str | None, list[str]]:
    """Click (and type into text fields) like a user would, once, for INP.

    Returns what was done (None when nothing was) and notes. ``time_origin``
    identifies the measured document: when the interaction replaced it, there
    is nothing to wait for.
    """
    from playwright.async_api import Error as PlaywrightError

    target = await page.evaluate(TARGET_SCRIPT, CONTROL_SELECTOR)
    if target is None:
        return None, ["nothing safe to interact with (no control, no inert spot): no INP"]
    await page.evaluate(GUARD_SCRIPT)
    try:
        if target["kind"] == "control":
            locator = page.locator(CONTROL_SELECTOR).nth(int(target["index"]))
            await locator.click(timeout=3000)
            done = f"click on {target['name']}"
            if target.get("typing"):
                await page.keyboard.press("a")
                done += ", key 'a'"
        else:
            await page.mouse.click(float(target["x"]), float(target["y"]))
            done = f"click on {target['name']} at ({target['x']:.0f},{target['y']:.0f})"
    except PlaywrightError as exc:
        return None, [f"interaction with {target['name']} failed: {tail(str(exc), 2)}"]
    # Event Timing entries are queued once the next frame is presented.
    for _ in range(20):
        with contextlib.suppress(PlaywrightError):
            await page.evaluate(FRAMES_SCRIPT)
            state = await page.evaluate(
                "() => { const w = window.__perfagentVitals; "
                "return w ? [w.timeOrigin, !!w.firstInput] : null; }")
            if state is None or state[0] != time_origin or state[1]:
                break
        await asyncio.sleep(0.05)
    return done, []


async def _measure(pw: Playwright, chromium: str, inp: WebVitalsInput, index: int,
                   info: dict[str, str], profiles: list[str], checked: Target) -> VitalsRun:
    """One cold page load in its own browser (its profile folder goes into ``profiles``).

    The browser's only way out is a fresh egress proxy that already knows
    ``checked`` (the page's host as the caller checked it), so the page loads
    from the address that check saw.
    """
    from playwright.async_api import Error as PlaywrightError

    began = time.monotonic()
    target_host = urlsplit(inp.url).hostname
    profile = tempfile.mkdtemp(prefix=PROFILE_PREFIX)
    REAPER.tell("+dir", profile)  # removed by the reaper should perfagent die mid-run
    profiles.append(profile)
    context: BrowserContext | None = None
    proxy = EgressProxy(what="web_vitals", checked=[checked],
                        connect_timeout=min(CONNECT_TIMEOUT_S, inp.timeout))
    try:
        await proxy.start()
        context = await _launch(pw, chromium, profile, inp, inp.timeout, proxy.chromium_args())
        await context.add_init_script(OBSERVER_SCRIPT)
        page = context.pages[0] if context.pages else await context.new_page()
        seen = _PageRequests(page)
        context.on("request", seen.request)
        page.on("websocket", seen.websocket)
        cdp = await context.new_cdp_session(page)
        if not info.get("browser"):
            version = await cdp.send("Browser.getVersion")
            info["browser"] = str(version.get("product", ""))
        throttle = inp.throttle or "none"
        if "slow-4g" in throttle:
            await cdp.send("Network.enable")
            await cdp.send("Network.emulateNetworkConditions", SLOW_4G)
        if "cpu-4x" in throttle:
            await cdp.send("Emulation.setCPUThrottlingRate", {"rate": CPU_SLOWDOWN})
        network = _Network()
        page.on("request", network.started)
        page.on("requestfinished", network.ended)
        page.on("requestfailed", network.ended)

        nav_start = time.monotonic()
        try:
            response = await page.goto(inp.url, wait_until="load", timeout=inp.timeout * 1000)
        except PlaywrightError as exc:
            _check_navigation(inp.url, seen, proxy, failed=True)
            raise _navigation_error(exc, inp.url, inp.timeout) from exc
        # The proxy answers a refused navigation (or a redirect of it) with 403, and
        # one to a server it could not reach with 502: its records say which.
        _check_navigation(inp.url, seen, proxy,
                          failed=response is not None and response.status >= 400)
        if response is not None and response.status >= 400:
            raise ToolError("http_error", f"{inp.url} answered HTTP {response.status} "
                            f"{response.status_text}".rstrip(),
                            "measure a URL that serves the page (status 2xx/3xx)")
        settled = await _settle(page, network, inp.settle, nav_start + inp.timeout)
        # A client-side redirect while the page settled is a navigation too.
        _check_navigation(inp.url, seen, proxy, failed=False)
        before = await page.evaluate(SNAPSHOT_SCRIPT)
        if before is None:
            raise ToolError("measurement_failed", "the measuring script did not run in the page",
                            "the page may have replaced itself; check for client-side redirects")
        window_end = float(before["now"])
        final = before
        interacted_with: str | None = None
        notes: list[str] = []
        if inp.interact:
            interacted_with, notes = await _interact(page, before["timeOrigin"])
            after = None
            with contextlib.suppress(PlaywrightError):
                after = await page.evaluate(SNAPSHOT_SCRIPT)
            if after is not None and after["timeOrigin"] == before["timeOrigin"]:
                # LCP stops at the first input: keep the load-phase view of it.
                final = {**after, "lcp": before["lcp"], "lcpResource": before["lcpResource"]}
            else:
                notes.append("the interaction navigated away from the page: no INP")
        run = analyse(final, window_end, index)
        run.settled = settled
        run.interacted_with = interacted_with
        page_host = urlsplit(page.url).hostname
        blocked, unattributed = _blocked(proxy, seen)
        run.blocked_requests = [f"{label}: {refusal.reason}" for label, refusal in blocked]
        run._refused = blocked
        # A host the page asked for but was refused every time loaded nothing.
        refused_keys = {(r.host, r.port) for r in proxy.refused}
        loaded = {host for host, port in seen.urls if (host, port) not in refused_keys}
        run.other_hosts = sorted(h for h in network.hosts
                                 if h not in (target_host, page_host) and h in loaded)
        run.notes.extend(notes)
        if unattributed:
            run.notes.append("the egress check also refused requests the page did not make "
                             f"itself (the browser's own): {', '.join(unattributed[:5])}")
        if not settled:
            run.notes.append(f"the page never had {inp.settle:g} s of quiet within "
                             f"{inp.timeout:g} s; values are as of the timeout")
        if inp.interact and interacted_with and run.inp is None and not notes:
            run.notes.append("the browser reported no timing for the interaction: no INP")
        if before.get("fcp") is None:
            run.notes.append("no first-contentful-paint (blank page?): no FCP, LCP or TBT")
        run.elapsed_s = round(time.monotonic() - began, 2)
        return run
    except ToolError:
        raise
    except PlaywrightError as exc:
        raise ToolError("measurement_failed", f"the browser failed while measuring: "
                        f"{tail(str(exc), 6)}", "try again; check the page in a browser") from exc
    finally:
        try:
            await _close(context, profile)
        finally:
            await proxy.close()


# --------------------------------------------------------------------------- tool


async def run(inp: WebVitalsInput, progress: ProgressCallback | None = None) -> WebVitalsResult:
    """Load the page ``runs`` times in fresh headless Chromium and report median web vitals."""
    checked = check_target_url(inp.url, what="web_vitals")  # before any browser starts
    chromium = find_chromium()
    _require_playwright()
    from playwright.async_api import async_playwright

    runs: list[VitalsRun] = []
    info: dict[str, str] = {}
    profiles: list[str] = []
    try:
        async with async_playwright() as pw:
            for index in range(1, inp.runs + 1):
                if progress is not None:
                    progress((index - 1) / inp.runs, f"run {index}/{inp.runs}: loading {inp.url}")
                try:
                    measured = await asyncio.wait_for(
                        _measure(pw, chromium, inp, index, info, profiles, checked),
                        inp.timeout + RUN_MARGIN_S)
                except TimeoutError as exc:
                    raise ToolError("timeout", f"run {index} did not finish within "
                                    f"{inp.timeout + RUN_MARGIN_S:g} s (the page may keep its "
                                    "main thread busy)", "raise timeout, or look for a script "
                                    "that never yields") from exc
                runs.append(measured)
                if progress is not None:
                    progress(index / inp.runs, f"run {index}/{inp.runs}: {_run_line(measured)}")
    finally:
        # The driver has stopped and taken any browser still starting with it (a
        # cancelled launch leaves one we have no handle on): sweep the profiles again.
        await _remove_profiles(profiles)
    return _build_result(inp, runs, info.get("browser", ""))


def _run_line(run: VitalsRun) -> str:
    parts = []
    for name, threshold in THRESHOLDS.items():
        value = getattr(run, name)
        if value is not None:
            parts.append(f"{threshold.label} {threshold.show(value)}")
    return ", ".join(parts) or "no metric reported"


def _closest(runs: list[VitalsRun], name: str, median: float) -> VitalsRun:
    """The run whose value of ``name`` is nearest the median: it speaks for the runs."""
    candidates = [r for r in runs if getattr(r, name) is not None]
    return min(candidates, key=lambda r: abs(getattr(r, name) - median))


def _per_run(runs: list[VitalsRun], name: str) -> str:
    threshold = THRESHOLDS[name]
    values = [threshold.show(getattr(r, name)) for r in runs if getattr(r, name) is not None]
    return f"{threshold.label} per run: {', '.join(values)}"


def _build_result(inp: WebVitalsInput, runs: list[VitalsRun], browser: str) -> WebVitalsResult:
    medians = {name: _round(name, median_of([getattr(r, name) for r in runs]))
               for name in THRESHOLDS}
    measurements: list[Measurement] = []
    ratings: dict[str, str] = {}
    notes: list[str] = []
    for name, threshold in THRESHOLDS.items():
        value = medians[name]
        if value is None:
            notes.append(f"{threshold.label}: no run reported a value")
            continue
        ratings[name] = threshold.rating(value)
        measurements.append(Measurement(
            name=name, value=value, unit=threshold.unit, source="web_vitals", target=inp.url,
            budget=threshold.budget, passed=within_budget(value, threshold.budget)))
    notes.append("TTFB is the navigation's responseStart from navigation start (redirects, DNS, "
                 "connection and server time); server_ms per run is responseStart - requestStart "
                 "(for http:// pages including the egress proxy's connect to the server)")
    notes.append("TBT counts long tasks from FCP to the end of the settle period (a stand-in for "
                 "Time to Interactive); its 200 ms budget is Lighthouse's")
    others = sorted({h for r in runs for h in r.other_hosts})
    if others:
        notes.append(f"the page also loaded resources from {', '.join(others[:10])}: their "
                     "speed is part of these numbers")
    blocked_hosts = sorted({authority(r.host, r.port) for run in runs for _u, r in run._refused})
    if blocked_hosts:
        notes.append(f"the egress check refused the page's requests to {', '.join(blocked_hosts[:10])} "
                     "(the browser never connected): the numbers are measured without them; "
                     "see blocked_requests")
    if not inp.interact:
        notes.append("interact=false: INP needs an interaction, so none was measured")
    if "slow-4g" in (inp.throttle or ""):
        notes.append("slow-4g: Chromium's network emulation delays response bodies, not "
                     "headers, so TTFB (responseStart) leaves the emulated latency out; "
                     "FCP and LCP include it")
    findings = _findings(inp, runs, medians)

    shown = [f"{THRESHOLDS[n].label} {THRESHOLDS[n].show(v)} ({ratings[n]})"
             for n, v in medians.items() if v is not None]
    failing = [THRESHOLDS[m.name].label for m in measurements if m.passed is False]
    verdict = ("all within Google's good thresholds" if not failing
               else f"past the good threshold: {', '.join(failing)}")
    summary = (f"web_vitals {inp.url}: median of {len(runs)} run(s)"
               f"{'' if (inp.throttle or 'none') == 'none' else f', throttle {inp.throttle}'}: "
               f"{', '.join(shown)}\n{verdict}")
    return WebVitalsResult(
        summary=summary, measurements=measurements, findings=findings, url=inp.url,
        browser=browser, viewport=inp.viewport, throttle=inp.throttle or "none", runs=runs,
        median=medians, ratings=ratings, notes=notes)


def _findings(inp: WebVitalsInput, runs: list[VitalsRun],
              medians: dict[str, float | None]) -> list[Finding]:
    findings: list[Finding] = []

    lcp = medians["lcp"]
    if lcp is not None and lcp > THRESHOLDS["lcp"].good:
        rep = _closest(runs, "lcp", lcp)
        parts = "; ".join(f"{k} {v:.0f} ms" for k, v in rep.lcp_breakdown_ms.items())
        element = rep.lcp_element or "an element no longer in the page"
        findings.append(Finding(
            kind="lcp_slow", severity=THRESHOLDS["lcp"].severity(lcp),
            summary=f"the largest contentful paint ({element}) comes at {lcp:.2f} s "
                    f"(good <= 2.5 s)",
            location=rep.lcp_element or inp.url,
            evidence=f"{_per_run(runs, 'lcp')}"
                     f"{f'; resource {rep.lcp_url}' if rep.lcp_url else ''}"
                     f"{f'; breakdown: {parts}' if parts else ''}"))

    cls = medians["cls"]
    if cls is not None and cls > THRESHOLDS["cls"].good:
        rep = _closest(runs, "cls", cls)
        shifts = rep.worst_shifts
        moved = shifts[0].sources[0].split(" (")[0] if shifts and shifts[0].sources else None
        detail = "; ".join(f"{s.value:.3f} at {s.start_s:.2f} s moving "
                           f"{', '.join(s.sources) or 'unattributed nodes'}" for s in shifts[:3])
        findings.append(Finding(
            kind="layout_shift", severity=THRESHOLDS["cls"].severity(cls),
            summary=f"layout shifts{f' of {moved}' if moved else ''} add up to CLS {cls:.3f} "
                    f"(good <= 0.1)",
            location=moved or inp.url,
            evidence=f"{_per_run(runs, 'cls')}; worst window's largest shifts: {detail}"))

    inp_ms = medians["inp"]
    if inp_ms is not None and inp_ms > THRESHOLDS["inp"].good:
        rep = _closest(runs, "inp", inp_ms)
        it = rep.interaction
        what = f"{it.event} on {it.target or 'the page'}" if it else "an interaction"
        evidence = _per_run(runs, "inp")
        if it:
            evidence += (f"; input delay {it.input_delay_ms:.0f} ms, processing "
                         f"{it.processing_ms:.0f} ms, presentation delay "
                         f"{it.presentation_delay_ms:.0f} ms")
            if it.scripts:
                evidence += f"; scripts: {'; '.join(it.scripts)}"
        findings.append(Finding(
            kind="slow_interaction", severity=THRESHOLDS["inp"].severity(inp_ms),
            summary=f"{what} took {inp_ms:.0f} ms to the next paint (INP, good <= 200 ms)",
            location=(it.target if it and it.target else inp.url), evidence=evidence))

    findings.extend(_blocked_findings(runs))

    tbt = medians["tbt"]
    if tbt is not None and tbt > THRESHOLDS["tbt"].good:
        rep = _closest(runs, "tbt", tbt)
        evidence = (f"{_per_run(runs, 'tbt')}; {rep.long_tasks} long task(s), longest "
                    f"{rep.longest_task_ms or 0:.0f} ms")
        if rep.long_task_scripts:
            evidence += f"; scripts: {'; '.join(rep.long_task_scripts)}"
        findings.append(Finding(
            kind="long_tasks", severity=THRESHOLDS["tbt"].severity(tbt),
            summary=f"long tasks block the main thread for {tbt:.0f} ms while the page loads "
                    f"(TBT, good <= 200 ms)",
            location=inp.url, evidence=evidence))
    return findings


def _blocked_findings(runs: list[VitalsRun]) -> list[Finding]:
    """One ``blocked_request`` finding per refused host and port, naming why."""
    by_host: dict[tuple[str, int], tuple[Refusal, list[str], set[int]]] = {}
    for run in runs:
        for url, refusal in run._refused:
            _first, urls, in_runs = by_host.setdefault((refusal.host, refusal.port),
                                                       (refusal, [], set()))
            if url not in urls:
                urls.append(url)
            in_runs.add(run.run)
    findings = []
    for (host, port), (refusal, urls, in_runs) in by_host.items():
        more = f" (and {len(urls) - 1} more request(s) to {authority(host, port)})" if urls[1:] else ""
        findings.append(Finding(
            kind="blocked_request", severity="medium",
            summary=f"the page asked for {urls[0]}{more}: {refusal.reason}",
            location=urls[0],
            evidence=f"refused before any connection in {len(in_runs)} of {len(runs)} run(s), so "
                     f"the numbers are measured without it: {', '.join(urls[:5])}; "
                     f"{refusal.hint}"))
    return findings


SPEC = ToolSpec(
    name="web_vitals",
    description=(
        "Load a loopback (or operator-allowed) page in real headless Chromium, several cold "
        "runs, and measure Core Web Vitals with PerformanceObserver: LCP, CLS, INP (after "
        "clicking the first button or field), FCP, TTFB and TBT. Reports per-run values and "
        "medians against Google's good thresholds, with findings naming the slow LCP element, "
        "the shifting element, the slow interaction's event and target, and long tasks' scripts."
    ),
    input_model=WebVitalsInput,
    result_model=WebVitalsResult,
    run=run,
    runs_code=False,
)

__all__ = ["SPEC", "THRESHOLDS", "WebVitalsInput", "WebVitalsResult", "cumulative_layout_shift",
           "find_chromium", "interaction_to_next_paint", "run", "session_windows",
           "total_blocking_time"]
