"""Benchmark: perfagent's ``load_test`` next to hey and Locust, on loopback only.

Prints figures and ratios measured in one run (a script, not a test):

1. **Throughput** against a fast server (nginx from Debian when installed,
   else the raw-asyncio ``fast`` server of ``tests/tools/http_target.py``):
   load_test closed model (``--vus`` users), load_test open model at rates
   rising 1.5x per step until it flags ``generator_saturated`` (or stops keeping
   up), ``hey -z
   Ds -c VUS`` and Locust (one process, ``FastHttpUser``, ``-u VUS -r VUS``).
   Ratios: load_test / Locust and load_test / hey.
2. **Latency correctness** against a server that answers after a fixed 50 ms:
   every generator offers the same 200 req/s (load_test open model, Locust
   with ``constant_throughput``, hey with ``-q``); p50/p95 error against 50 ms.
3. **Coordinated omission** against a server that freezes 300 ms every 2 s:
   load_test open model at 200 req/s next to closed-loop load_test, Locust and
   hey: flat out, and paced to the same 200 req/s by many idle workers (most
   sends still go out on time) or by a few busy ones (a frozen worker skips
   the sends due meanwhile); the analytic p95/p99 of the open model is
   printed for reference.

Every target is 127.0.0.1 and every run is bounded in time. A missing hey or
Locust is reported with its install line and its column skipped.

Run: ``python tests/bench/load_generators.py [--duration 10] [--vus 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

HTTP_TARGET = REPO / "tests" / "tools" / "http_target.py"
DELAY_S = 0.05
STALL_S, STALL_EVERY_S = 0.3, 2.0
PACED_RATE = 200.0
#: Paced closed-loop runs with this few workers: each one is blocked by a
#: freeze, so the sends due meanwhile never happen (coordinated omission).
FEW_WORKERS = 4
HEY_INSTALL = "apt-get install -y hey"
LOCUST_INSTALL = "pip install locust"


@dataclass
class Row:
    """One generator's run: its rate and latency percentiles in ms (None: not reported)."""

    generator: str
    model: str
    rps: float
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    note: str = ""
    #: the 1-minute load average right after the run: other work on the machine
    #: (beyond the server and this generator) skews the figures
    load: float = field(default_factory=lambda: os.getloadavg()[0])


def log(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes] | subprocess.Popen[str],
                   timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --------------------------------------------------------------------------- servers


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


@contextlib.contextmanager
def fast_server() -> Iterator[tuple[str, str]]:
    """(URL, description) of the fastest server at hand: nginx, else the asyncio one."""
    nginx = nginx_binary()
    if nginx is None:
        print(f"nginx is not installed (apt-get install -y nginx); using {HTTP_TARGET.name} "
              "fast instead, which may be the bottleneck for hey")
        with target_server("fast") as url:
            yield url, "http_target.py fast (raw asyncio, 1 process)"
        return
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as folder:
        port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = Path(folder) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=folder, port=port, user=user))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", folder, "-e",
                                 f"{folder}/error.log"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_listening(port, proc)
            yield f"http://127.0.0.1:{port}/", "nginx, 1 worker, return 200"
        finally:
            stop(proc)


@contextlib.contextmanager
def target_server(mode: str, *args: str) -> Iterator[str]:
    """Start ``http_target.py MODE`` in its own process and yield its URL."""
    proc = subprocess.Popen([sys.executable, str(HTTP_TARGET), mode, *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"{HTTP_TARGET.name} {mode} did not start: {line!r}")
        wait_listening(int(line), proc)
        yield f"http://127.0.0.1:{line}/"
    finally:
        stop(proc)


# --------------------------------------------------------------------------- generators


def load_test(url: str, duration: float, *, rate: float | None = None,
              vus: int | None = None) -> tuple[Row, bool]:
    """Run perfagent's load_test in this process; (row, generator_saturated)."""
    from tools.loadtest import LoadTestInput, run

    inp = LoadTestInput(url=url, rate=rate, vus=vus, duration=duration, timeout=10)
    result = asyncio.run(run(inp))
    stats = result.latency_ms
    model = f"open {rate:g}/s" if rate is not None else f"closed {vus} vus"
    note = "SATURATED" if result.generator_saturated else ""
    if result.errors:
        note = f"{note} {result.errors} errors".strip()
    row = Row("load_test", model, result.throughput, stats.p50 if stats else None,
              stats.p95 if stats else None, stats.p99 if stats else None, note)
    return row, result.generator_saturated


def hey(url: str, duration: float, workers: int, per_worker_qps: float | None = None
        ) -> Row | None:
    """Run ``hey -z``; None when hey is not installed."""
    binary = shutil.which("hey")
    if binary is None:
        return None
    cmd = [binary, "-z", f"{duration:g}s", "-c", str(workers)]
    if per_worker_qps:
        cmd += ["-q", f"{per_worker_qps:g}"]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"hey failed: {done.stderr.strip()[-300:]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    pct = {int(p): float(s) * 1000 for p, s in
           re.findall(r"^\s+(\d+)%+ in ([\d.]+) secs", done.stdout, re.M)}
    errors = re.search(r"Error distribution:(.*)", done.stdout, re.S)
    model = f"closed {workers} workers" + (
        f" paced {workers * per_worker_qps:g}/s" if per_worker_qps else "")
    return Row("hey", model, rps, pct.get(50), pct.get(95), pct.get(99),
               "errors" if errors else "")


LOCUSTFILE = """\
import os

from locust import FastHttpUser, constant, constant_throughput, task

PACE = float(os.environ.get("BENCH_PACE", "0"))


class Target(FastHttpUser):
    wait_time = constant_throughput(PACE) if PACE > 0 else constant(0)

    @task
    def hit(self):
        self.client.get("/")
"""


def locust(url: str, duration: float, users: int, per_user_rate: float | None = None
           ) -> Row | None:
    """One headless Locust process; None when Locust is not installed."""
    if importlib.util.find_spec("locust") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bench-locust-") as folder:
        locustfile = Path(folder) / "locustfile.py"
        locustfile.write_text(LOCUSTFILE)
        prefix = Path(folder) / "run"
        env = {**os.environ, "BENCH_PACE": str(per_user_rate or 0)}
        cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{duration:g}s",
               "--host", url.rstrip("/"), "--csv", str(prefix), "--only-summary",
               "--loglevel", "WARNING", "--stop-timeout", "5"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 90,
                              env=env, cwd=folder)
        stats = Path(f"{prefix}_stats.csv")
        if not stats.exists():
            raise RuntimeError(f"locust wrote no stats (exit {done.returncode}): "
                               f"{done.stderr.strip()[-400:]}")
        with stats.open() as fh:
            total = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    model = f"closed {users} users" + (
        f" paced {users * per_user_rate:g}/s" if per_user_rate else "")
    failures = int(total["Failure Count"])
    return Row("locust", model, float(total["Requests/s"]), float(total["50%"]),
               float(total["95%"]), float(total["99%"]),
               f"{failures} failures" if failures else "")


# --------------------------------------------------------------------------- printing


def fmt(value: float | None, unit: str = "ms") -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if unit == "rps" else f"{value:,.2f}"


def table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"  {'generator':<10} {'model':<28} {'req/s':>9} {'p50 ms':>9} {'p95 ms':>9} "
          f"{'p99 ms':>9} {'load':>5}  note")
    for r in rows:
        print(f"  {r.generator:<10} {r.model:<28} {fmt(r.rps, 'rps'):>9} {fmt(r.p50):>9} "
              f"{fmt(r.p95):>9} {fmt(r.p99):>9} {r.load:>5.1f}  {r.note}")


def missing(tool: str, install: str) -> None:
    print(f"  ({tool} is not installed: {install}; its column is skipped)")


# --------------------------------------------------------------------------- scenarios


def throughput(duration: float, vus: int, max_rate: float) -> None:
    with fast_server() as (url, server):
        print(f"\n== 1. throughput: {server} at {url}, {duration:g} s per run, "
              f"{os.cpu_count()} CPUs shared by server and generator")
        log("load_test closed model")
        closed, _ = load_test(url, duration, vus=vus)
        rows = [closed]
        log("load_test open model, raising the rate 1.5x per step")
        rate, best = 1000.0, None
        step = min(duration, 5.0)
        while rate <= max_rate:  # x1.5 per step
            row, saturated = load_test(url, step, rate=rate)
            kept_up = row.rps >= 0.95 * rate
            rows.append(row)
            if saturated or not kept_up:
                if not saturated:
                    row.note = f"answered only {row.rps / rate:.0%} of the rate"
                break
            best = row
            rate = round(rate * 1.5, -2)
        log("hey")
        hey_row = hey(url, duration, vus)
        log("locust")
        locust_row = locust(url, duration, vus)
        rows += [r for r in (hey_row, locust_row) if r is not None]
        table("req/s on the fast server (closed: as fast as answers come back)", rows)
        if hey_row is None:
            missing("hey", HEY_INSTALL)
        if locust_row is None:
            missing("Locust", LOCUST_INSTALL)
        open_rps = best.rps if best else None
        print(f"  load_test open model: highest rate kept without saturation: "
              f"{fmt(open_rps, 'rps')} req/s")
        for label, other in (("Locust", locust_row), ("hey", hey_row)):
            if other is None:
                continue
            print(f"  ratio load_test closed / {label}: {closed.rps / other.rps:.2f}x"
                  + (f"; load_test open (unsaturated) / {label}: {open_rps / other.rps:.2f}x"
                     if open_rps else ""))


def latency_correctness(duration: float, users: int) -> None:
    per_user = PACED_RATE / users
    with target_server("delay", "--delay", f"{DELAY_S:g}") as url:
        print(f"\n== 2. latency correctness: every answer after {DELAY_S * 1000:g} ms, "
              f"{PACED_RATE:g} req/s offered by each generator for {duration:g} s")
        log("load_test open model")
        rows = [load_test(url, duration, rate=PACED_RATE)[0]]
        log("locust paced")
        locust_row = locust(url, duration, users, per_user)
        log("hey paced")
        hey_row = hey(url, duration, users, per_user)
        rows += [r for r in (locust_row, hey_row) if r is not None]
        table("measured latency (truth: 50 ms plus loopback and parsing)", rows)
        if locust_row is None:
            missing("Locust", LOCUST_INSTALL)
        if hey_row is None:
            missing("hey", HEY_INSTALL)
        truth = DELAY_S * 1000
        for r in rows:
            errors = [f"{name} {value - truth:+.2f} ms ({(value - truth) / truth:+.1%})"
                      for name, value in (("p50", r.p50), ("p95", r.p95)) if value is not None]
            print(f"  {r.generator:<10} error vs {truth:g} ms: {', '.join(errors)}")
        print("  (Locust reports response times in whole ms below 100 ms)")


def coordinated_omission(duration: float, users: int) -> None:
    per_user = PACED_RATE / users
    period = STALL_S + STALL_EVERY_S  # the server sleeps, then schedules the next stall
    stalled = STALL_S / period
    expected_p95 = (STALL_S - 0.05 * period) * 1000
    expected_p99 = (STALL_S - 0.01 * period) * 1000
    with target_server("stall", "--stall", f"{STALL_S:g}", "--every",
                       f"{STALL_EVERY_S:g}") as url:
        print(f"\n== 3. coordinated omission: the server freezes {STALL_S * 1000:g} ms, then "
              f"runs {STALL_EVERY_S:g} s ({stalled:.0%} of the time frozen); {duration:g} s "
              "per run")
        log("load_test open model")
        rows = [load_test(url, duration, rate=PACED_RATE)[0]]
        log("load_test closed model")
        rows.append(load_test(url, duration, vus=users)[0])
        few = FEW_WORKERS
        for label, run_one in (
            ("locust", lambda: locust(url, duration, users)),
            ("locust paced", lambda: locust(url, duration, users, per_user)),
            ("locust paced, few users", lambda: locust(url, duration, few, PACED_RATE / few)),
            ("hey", lambda: hey(url, duration, users)),
            ("hey paced", lambda: hey(url, duration, users, per_user)),
            ("hey paced, few workers", lambda: hey(url, duration, few, PACED_RATE / few)),
        ):
            log(label)
            row = run_one()
            if row is None:
                missing(label.split()[0], LOCUST_INSTALL if "locust" in label else HEY_INSTALL)
            else:
                rows.append(row)
        table("latency around server stalls", rows)
        print(f"  analytic open-model truth (arrivals uniform, {stalled:.0%} of them land in a "
              f"freeze and wait out its rest): p95 ≈ {expected_p95:.0f} ms, "
              f"p99 ≈ {expected_p99:.0f} ms")
        reference = rows[0]
        for r in rows[1:]:
            if r.p95 and reference.p95:
                print(f"  load_test open p95 / {r.generator} {r.model} p95: "
                      f"{reference.p95 / r.p95:,.1f}x"
                      + (f"; p99: {reference.p99 / r.p99:,.1f}x" if r.p99 and reference.p99
                         else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--vus", type=int, default=50, help="closed-loop users/workers")
    parser.add_argument("--max-rate", type=float, default=64_000,
                        help="stop the open-model ramp here (req/s)")
    parser.add_argument("--only", choices=["throughput", "latency", "stall"], action="append",
                        help="run only these scenarios (repeatable)")
    args = parser.parse_args()
    if not 1 <= args.duration <= 120:
        parser.error("--duration must be between 1 and 120 s")
    wanted = set(args.only or ["throughput", "latency", "stall"])
    print(textwrap.fill(f"load generators on loopback, python {sys.version.split()[0]}, "
                        f"{os.cpu_count()} CPUs; hey: {shutil.which('hey') or 'missing'}; "
                        f"locust: {'yes' if importlib.util.find_spec('locust') else 'missing'}; "
                        f"nginx: {nginx_binary() or 'missing'}; load average "
                        f"{os.getloadavg()[0]:.2f}", 100))
    if "throughput" in wanted:
        throughput(args.duration, args.vus, args.max_rate)
    if "latency" in wanted:
        latency_correctness(args.duration, args.vus)
    if "stall" in wanted:
        coordinated_omission(args.duration, args.vus)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (other work on the machine "
          "skews every figure above)")


if __name__ == "__main__":
    main()
