"""``load_test`` with ``engine="locust"``: the same scenario, spread over Locust workers.

The run is perfagent's one fixed Locust file (:data:`tools.loadtest.LOCUSTFILE`,
the one a user gets with ``emit_locustfile``) reading the scenario from a JSON
file (:func:`tools.loadtest.locust_scenario`), started as one headless Locust
master and N ``--worker`` processes on this machine. The scenario is data: no
text of it ever becomes code in those processes. Its ``Plan`` shape moves the
users along the scenario's ramps and ends the run; the master binds loopback
only. The workers connect to the addresses the target was checked at (the
scenario's ``pin``) and never resolve its name themselves.

Percentiles stay exact: every worker keeps each response (start time,
latency, status, size, exception kind) and ships the list to the master with
the stats report Locust already sends every few seconds and once more at the
end; the master appends them to a record file (``--perfagent-record``). Here
they become the same tally the built-in engine fills, so measurements,
thresholds and findings are computed by the same code.

What Locust cannot do is said in the result's notes: its users are closed
loops (each waits for its answer before pacing the next request), so a server
stall delays the following requests instead of piling them up, latencies are
timed from the actual send (coordinated omission applies), and the offered
rate falls short when answers are slower than a user's pacing period.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tools.base import ProgressCallback, Target, ToolError, tail
from tools.process import ScratchDir, kill_group, read_tail, run_bounded, watched_group

if TYPE_CHECKING:
    from tools.loadtest import LoadTestInput, _Tally

#: Longest wait for every worker to connect to the master.
CONNECT_WAIT_S = 30
#: Start-up (imports, workers connecting) and shutdown allowance on top of the plan.
OVERHEAD_S = 30.0
#: Fewer answered requests than this share of the planned ones is called out.
SHORTFALL_LIMIT = 0.9


@dataclass
class LocustRun:
    """What one distributed run left behind, before it becomes a result."""

    tally: _Tally
    workers: int
    locustfile: str
    scenario: str  # the scenario JSON the locustfile read
    per_worker: dict[str, int] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)  # sorted, s behind each user's schedule
    locust_requests: int | None = None  # Locust's own count, a cross-check
    cpu_warning: bool = False


def default_workers() -> int:
    """One worker per CPU core: each Locust worker uses one core at most."""
    return max(os.cpu_count() or 1, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _error_kind(name: str) -> str:
    """Exception kinds named as the built-in engine names them (``timeout`` above all)."""
    return "timeout" if "timeout" in name.lower() else name


def read_record(path: Path, tally: _Tally, keep_starts: bool,
                ) -> tuple[dict[str, int], list[float]]:
    """Fill ``tally`` from the master's record file.

    Returns the requests per worker and, in the open model, each request's lag
    behind its user's schedule (seconds).
    """
    per_worker: dict[str, int] = {}
    lags: list[float] = []
    first = last = None
    if not path.exists():
        return per_worker, lags
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            batch = json.loads(line)
            worker = str(batch["worker"])
            per_worker[worker] = per_worker.get(worker, 0) + len(batch["rows"])
            for start, ms, status, size, kind, lag in batch["rows"]:
                latency = ms / 1000.0
                if lag is not None:
                    lags.append(max(lag, 0.0))
                tally.latencies.append(latency)
                if keep_starts:
                    tally.starts.append(start)
                tally.sent += 1
                tally.bytes_received += int(size)
                first = start if first is None else min(first, start)
                last = start + latency if last is None else max(last, start + latency)
                tally.outcome(status or None, None if status else _error_kind(kind or "unknown"))
    tally.first_send = first
    tally.last_done = last or 0.0
    return per_worker, lags


def _locust_count(path: Path) -> int | None:
    """Requests in Locust's own JSON stats (None when it wrote none)."""
    try:
        return sum(int(entry["num_requests"]) for entry in json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def run_locust(inp: LoadTestInput, target: Target,
                     segments: list[tuple[float, float, float]], planned: float,
                     progress: ProgressCallback | None) -> LocustRun:
    """Run the scenario on a Locust master and ``inp.workers`` local workers.

    The caller checked the thresholds and the target; ``target`` holds the
    addresses it was checked at, which the workers connect to. Every process
    is in its own process group and is killed when the run ends, fails, times
    out or is cancelled.
    """
    from tools.loadtest import _Tally, locust_scenario, locustfile, scenario_json

    if importlib.util.find_spec("locust") is None:
        raise ToolError("locust_unavailable", "Locust is not installed",
                        "install it (pip install 'perfagent[locust]') or use engine "
                        '"builtin"')
    workers = inp.workers or default_workers()
    text = locustfile()
    scenario = scenario_json(locust_scenario(inp, workers, segments, target))
    scratch = ScratchDir("perfagent-locust-")
    folder = Path(scratch.name)
    file, record, stats = folder / "locustfile.py", folder / "record.jsonl", folder / "stats"
    # The same two files a user gets with emit_locustfile, side by side.
    file.write_text(text, encoding="utf-8")
    (folder / "scenario.json").write_text(scenario, encoding="utf-8")
    port = _free_port()
    # The scenario is named on every command line: a PERFAGENT_LOCUST_SCENARIO
    # this process happens to inherit must not swap it for another.
    locust = [sys.executable, "-m", "locust", "-f", str(file),
              "--perfagent-scenario", str(folder / "scenario.json")]
    master_cmd = [*locust, "--headless", "--master", "--master-bind-host", "127.0.0.1",
                  "--master-bind-port", str(port), "--expect-workers", str(workers),
                  "--expect-workers-max-wait", str(CONNECT_WAIT_S),
                  "--only-summary", "--json-file", str(stats), "--perfagent-record", str(record)]
    worker_cmd = [*locust, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
    drain = inp.timeout + 2.0
    budget = planned + drain + CONNECT_WAIT_S + OVERHEAD_S

    report: ProgressCallback | None = None
    if progress is not None:
        callback = progress
        expected = planned + 3.0  # start-up takes a few seconds

        def report(fraction: float, _text: str) -> None:
            elapsed = fraction * budget
            callback(min(elapsed / expected, 0.99),
                     f"locust, {workers} workers: {elapsed:.0f} s of about {expected:.0f} s")

    procs: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []
    try:
        code, timed_out = await _run_processes(master_cmd, worker_cmd, workers, folder, budget,
                                               report, procs, logs)
    except BaseException:
        scratch.cleanup()
        raise

    tally = _Tally()
    per_worker, lags = read_record(record, tally, inp.plot_path is not None)
    master_log = read_tail(folder / "master.err")
    if timed_out or not tally.latencies:
        scratch.keep()
        why = (f"did not finish within {budget:g} s" if timed_out
               else f"recorded no request (exit code {code})")
        raise ToolError("load_failed", f"the Locust run {why}: {tail(master_log, 8)}",
                        f"the master's and workers' logs are in {folder}")
    cpu_warning = any("CPU usage" in read_tail(log) for log in [folder / "master.err", *logs])
    result = LocustRun(tally=tally, workers=workers, locustfile=text, scenario=scenario,
                       per_worker=per_worker,
                       lags=sorted(lags), locust_requests=_locust_count(stats.with_suffix(".json")),
                       cpu_warning=cpu_warning)
    scratch.cleanup()
    return result


async def _run_processes(master_cmd: list[str], worker_cmd: list[str], workers: int,
                         folder: Path, budget: float, report: ProgressCallback | None,
                         procs: list[asyncio.subprocess.Process], logs: list[Path],
                         ) -> tuple[int | None, bool]:
    """Start the master, then the workers; wait for the master; never leave one running."""
    master = asyncio.create_task(run_bounded(
        master_cmd, folder, budget, folder / "master.out", folder / "master.err", report,
        "locust"))
    # The workers' groups are the reaper's too until they are killed and waited for
    # below (the master's group is run_bounded's).
    with contextlib.ExitStack() as watched:
        try:
            for index in range(workers):
                log = folder / f"worker{index}.err"
                logs.append(log)
                with log.open("wb") as err:
                    try:
                        procs.append(await asyncio.create_subprocess_exec(
                            *worker_cmd, cwd=str(folder), stdin=asyncio.subprocess.DEVNULL,
                            stdout=asyncio.subprocess.DEVNULL, stderr=err, start_new_session=True))
                        watched.enter_context(watched_group(procs[-1].pid))
                    except OSError as exc:
                        raise ToolError("spawn_failed", f"could not start a Locust worker: {exc}",
                                        "check that the Python interpreter is runnable") from None
            code, timed_out = await master
            # Workers leave on the master's quit message; give them a moment to do so.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 5)
        finally:
            if not master.done():
                master.cancel()  # run_bounded kills the master's process group
                with contextlib.suppress(BaseException):
                    await master
            for proc in procs:
                kill_group(proc.pid)
            for proc in procs:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(proc.wait(), 5)
    return code, timed_out


def lag_stats(run: LocustRun) -> tuple[float | None, float | None]:
    """Open model: (p99 of the lag behind the users' schedules in ms, % sent > 10 ms late)."""
    from tools.loadtest import LATE_THRESHOLD_S, _count_below, percentile

    if not run.lags:
        return None, None
    late = len(run.lags) - _count_below(run.lags, LATE_THRESHOLD_S)
    return percentile(run.lags, 99) * 1000.0, 100.0 * late / len(run.lags)


def locust_notes(run: LocustRun, planned_requests: float | None) -> list[str]:
    """What the reader must know to trust (or not) a Locust run's numbers."""
    from tools.loadtest import LATE_FRACTION_LIMIT

    notes = [
        f"engine locust: {run.workers} worker processes; Locust users are closed loops "
        "(each waits for its answer before pacing its next request), so a server stall "
        "delays later requests instead of piling them up, and latencies are timed from the "
        "actual send: coordinated omission applies. Use engine builtin for latency SLOs "
        "under stalls.",
    ]
    requests = len(run.tally.latencies)
    lag_p99, late_pct = lag_stats(run)
    if lag_p99 is not None and late_pct is not None and late_pct > LATE_FRACTION_LIMIT * 100:
        notes.append(f"{late_pct:.1f}% of requests left > 10 ms behind their user's schedule "
                     f"(lag p99 {lag_p99:.1f} ms): a user was still waiting for its previous "
                     "answer or its worker was busy, and the latencies leave that wait out")
    if planned_requests is not None and requests < SHORTFALL_LIMIT * planned_requests:
        notes.append(f"only {requests} of the {planned_requests:.0f} planned requests were "
                     "sent: users could not keep their pace (answers slower than a user's "
                     "pacing period, or busy workers) or a ramp moved in Locust's 1 s "
                     "steps, so the offered rate fell short")
    if run.locust_requests is not None and run.locust_requests != requests:
        notes.append(f"Locust's own statistics counted {run.locust_requests} requests and "
                     f"the workers reported {requests}; percentiles use the reported ones")
    if run.cpu_warning:
        notes.append("Locust warned that a worker's CPU usage was too high: its timings may "
                     "be inflated; use more workers (or machines)")
    return notes


__all__ = ["LocustRun", "default_workers", "lag_stats", "locust_notes", "read_record",
           "run_locust"]
