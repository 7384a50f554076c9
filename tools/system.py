"""``system_snapshot``: what the host (or one process tree) does over a short window.

Everything is a rate over the same measured window, never an instantaneous
reading: CPU time per core, process CPU time, disk and network bytes, swap
traffic and context switches are read once, the tool sleeps ``interval``
seconds, reads them again and divides the differences by the elapsed time.
CPU percentages are computed from ``psutil.cpu_times`` deltas (the same
formula as ``psutil.cpu_percent``, without its process-wide hidden state).
Load averages are normalised per logical core; on Linux a cgroup CPU quota
and its throttling, and pressure-stall information, are added when present.
``psutil`` is imported only when the tool runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    ToolError,
    ToolResult,
    ToolSpec,
    on_public_server,
    within_budget,
)

#: The persona's target: CPU utilisation below 70 %.
CPU_BUDGET = "<70"
CPU_SATURATED = 70.0
CPU_CRITICAL = 90.0
#: Memory in use above this share of RAM is pressure.
MEMORY_PRESSURE = 90.0
#: A process above this share of one core is worth profiling.
HOT_PROCESS = 50.0
#: At most this many hot_process findings.
MAX_HOT = 5
CMDLINE_HEAD = 160
CGROUP = Path("/sys/fs/cgroup")


class SystemSnapshotInput(BaseModel):
    """How long to watch, and what."""

    model_config = ConfigDict(extra="forbid")

    interval: float = Field(default=2.0, gt=0, le=60,
                            description="seconds to sample over; every figure is a rate over them")
    top: int = Field(default=10, ge=1, le=100, description="processes to list, busiest first")
    pid: int | None = Field(default=None, ge=1,
                            description="only this process and its children (the host figures "
                            "stay host-wide)")


class CpuStats(BaseModel):
    """CPU use over the window."""

    percent: float = Field(description="busy share of all logical cores (%)")
    per_core: list[float]
    breakdown: dict[str, float] = Field(
        description="share of all CPU time per state (%): user, system, iowait, steal, ...")
    logical_cores: int
    physical_cores: int | None = None
    quota_cores: float | None = Field(default=None, description="cgroup CPU quota, in cores")
    throttled_pct: float | None = Field(
        default=None, description="% of cgroup scheduling periods throttled in the window")
    load_average: list[float] | None = Field(default=None, description="1, 5, 15 minutes")
    load_per_core: list[float] | None = None
    ctx_switches_per_s: float | None = None
    interrupts_per_s: float | None = None


class MemoryStats(BaseModel):
    """RAM and swap at the end of the window, and swap traffic during it."""

    total: int
    available: int
    used: int
    percent: float = Field(description="(total - available) / total (%)")
    swap_total: int
    swap_used: int
    swap_percent: float
    swap_in_per_s: float | None = Field(default=None, description="bytes swapped in per second")
    swap_out_per_s: float | None = None


class IoRates(BaseModel):
    """Disk or network traffic over the window (per second)."""

    read_bytes_per_s: float
    write_bytes_per_s: float
    read_ops_per_s: float | None = None
    write_ops_per_s: float | None = None
    errors: int | None = Field(default=None, description="network errors + drops in the window")


class ProcessSample(BaseModel):
    """One process over the window."""

    pid: int
    ppid: int | None = None
    name: str = ""
    username: str | None = None
    cmdline: str = Field(default="", description="the command line's head")
    cpu_percent: float = Field(description="% of one core (can exceed 100 with threads)")
    rss: int | None = Field(default=None, description="resident memory, bytes")
    memory_percent: float | None = None
    num_threads: int | None = None
    ctx_switches_per_s: float | None = None
    status: str | None = None


class SystemSnapshotResult(ToolResult):
    """Host CPU, memory, I/O and the busiest processes over one window."""

    tool: str = "system_snapshot"
    host: str
    scope: str = Field(description="'host', or the process tree that was listed")
    interval_s: float = Field(description="the measured window")
    cpu: CpuStats
    memory: MemoryStats
    disk: IoRates | None = None
    network: IoRates | None = None
    pressure: dict[str, float] = Field(
        default_factory=dict, description="Linux PSI: % of time some tasks stalled (avg10)")
    process_count: int = Field(description="processes measured over the window")
    processes: list[ProcessSample] = Field(default_factory=list)
    tree_cpu_percent: float | None = Field(default=None,
                                           description="pid scope: CPU of the whole tree")
    tree_rss: int | None = Field(default=None, description="pid scope: summed RSS (shared pages "
                                 "counted once per process)")
    notes: list[str] = Field(default_factory=list)


@dataclass
class _Proc:
    proc: Any  # psutil.Process
    cpu: float
    ctx: int | None
    at: float


@dataclass
class _Snap:
    at: float
    cpu: list[Any]
    stats: Any
    disk: Any
    net: Any
    swap: Any
    throttled_usec: float | None
    periods: float | None
    procs: dict[int, _Proc] = field(default_factory=dict)


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        raise ToolError("missing_dependency", "psutil is not installed", "pip install psutil") from None
    return psutil


def _quiet(fn: Any, default: Any = None) -> Any:
    """Call ``fn``; a counter the platform or container does not offer gives ``default``."""
    try:
        return fn()
    except (OSError, RuntimeError, NotImplementedError, AttributeError):
        return default


def _cgroup_quota() -> float | None:
    """The CPU quota in cores (cgroup v2, then v1), or None when unlimited or unknown."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (CGROUP / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((CGROUP / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((CGROUP / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    return None


def _cgroup_throttling() -> tuple[float | None, float | None]:
    """(throttled periods, all periods) from the cgroup's cpu.stat, when it has them."""
    for path in (CGROUP / "cpu.stat", CGROUP / "cpu" / "cpu.stat"):
        with contextlib.suppress(OSError, ValueError):
            stat = dict(line.split()[:2] for line in path.read_text().splitlines() if " " in line)
            if "nr_periods" in stat:
                return float(stat.get("nr_throttled", 0)), float(stat["nr_periods"])
    return None, None


def _pressure() -> dict[str, float]:
    """Linux pressure-stall information: the "some avg10" share per resource."""
    out: dict[str, float] = {}
    for resource in ("cpu", "memory", "io"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/pressure/{resource}").read_text().splitlines():
                if line.startswith("some "):
                    fields = dict(part.split("=") for part in line.split()[1:])
                    out[resource] = float(fields["avg10"])
    return out


def _procs(psutil: Any, pid: int | None) -> list[Any]:
    """The processes to watch: all of them, or ``pid`` and its descendants."""
    if pid is None:
        return list(psutil.process_iter())
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        raise ToolError("not_found", f"there is no process {pid}",
                        "check the pid (ps -ef), or leave pid out for the whole host") from None
    except psutil.AccessDenied:
        raise ToolError("permission_denied", f"process {pid} cannot be inspected",
                        "run perfagent as the process's user (or root)") from None


def _take(psutil: Any, procs: list[Any]) -> _Snap:
    """Read every counter once: host counters first, then each process with its own clock."""
    throttled, periods = _cgroup_throttling()
    snap = _Snap(
        at=time.monotonic(),
        cpu=psutil.cpu_times(percpu=True),
        stats=_quiet(psutil.cpu_stats),
        disk=_quiet(lambda: psutil.disk_io_counters(perdisk=False)),
        net=_quiet(lambda: psutil.net_io_counters(pernic=False)),
        swap=_quiet(psutil.swap_memory),
        throttled_usec=throttled,
        periods=periods,
    )
    sample = snap.procs
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                ctx = _quiet(proc.num_ctx_switches)
                sample[proc.pid] = _Proc(proc=proc, cpu=times.user + times.system,
                                         ctx=None if ctx is None else ctx.voluntary + ctx.involuntary,
                                         at=time.monotonic())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return snap


def _busy(times: Any) -> tuple[float, float]:
    """(busy, total) CPU seconds of one cpu_times tuple; guest time is already in user."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _cpu_stats(psutil: Any, first: _Snap, last: _Snap, elapsed: float,
               notes: list[str]) -> CpuStats:
    per_core: list[float] = []
    busy_all = total_all = 0.0
    for before, after in zip(first.cpu, last.cpu, strict=False):
        b0, t0 = _busy(before)
        b1, t1 = _busy(after)
        busy, total = max(0.0, b1 - b0), max(0.0, t1 - t0)
        per_core.append(round(100 * busy / total, 1) if total else 0.0)
        busy_all += busy
        total_all += total
    states: dict[str, float] = {}
    for name in first.cpu[0]._fields:
        if name in ("guest", "guest_nice"):
            continue
        spent = sum(getattr(a, name) - getattr(b, name) for b, a in zip(first.cpu, last.cpu,
                                                                         strict=False))
        states[name] = round(100 * max(0.0, spent) / total_all, 1) if total_all else 0.0
    logical = len(per_core) or (psutil.cpu_count() or 1)
    cpu = CpuStats(percent=round(100 * busy_all / total_all, 1) if total_all else 0.0,
                   per_core=per_core, breakdown=states, logical_cores=logical,
                   physical_cores=_quiet(lambda: psutil.cpu_count(logical=False)),
                   quota_cores=_cgroup_quota())
    load = _quiet(psutil.getloadavg)
    if load is not None:
        cpu.load_average = [round(x, 2) for x in load]
        cpu.load_per_core = [round(x / logical, 2) for x in load]
    if first.stats is not None and last.stats is not None and elapsed > 0:
        cpu.ctx_switches_per_s = round((last.stats.ctx_switches - first.stats.ctx_switches)
                                       / elapsed, 1)
        cpu.interrupts_per_s = round((last.stats.interrupts - first.stats.interrupts) / elapsed, 1)
    if (first.periods is not None and last.periods is not None and first.throttled_usec is not None
            and last.throttled_usec is not None and last.periods > first.periods):
        cpu.throttled_pct = round(100 * (last.throttled_usec - first.throttled_usec)
                                  / (last.periods - first.periods), 1)
    if cpu.quota_cores is not None:
        notes.append(f"this cgroup may use {cpu.quota_cores:g} of the host's {logical} cores; "
                     "host CPU % understates how close it is to its quota")
    if states.get("steal", 0) >= 10:
        notes.append(f"{states['steal']:.0f} % of CPU time was stolen by the hypervisor: "
                     "a noisy neighbour or an undersized VM")
    return cpu


def _memory(psutil: Any, first: _Snap, last: _Snap, elapsed: float) -> MemoryStats:
    vm = psutil.virtual_memory()
    swap = last.swap or psutil.swap_memory()
    mem = MemoryStats(total=vm.total, available=vm.available, used=vm.total - vm.available,
                      percent=round(vm.percent, 1), swap_total=swap.total, swap_used=swap.used,
                      swap_percent=round(swap.percent, 1))
    if first.swap is not None and last.swap is not None and elapsed > 0:
        mem.swap_in_per_s = round(max(0, last.swap.sin - first.swap.sin) / elapsed, 1)
        mem.swap_out_per_s = round(max(0, last.swap.sout - first.swap.sout) / elapsed, 1)
    return mem


def _io(first: Any, last: Any, elapsed: float, network: bool) -> IoRates | None:
    if first is None or last is None or elapsed <= 0:
        return None
    if network:
        errors = sum(getattr(last, n) - getattr(first, n)
                     for n in ("errin", "errout", "dropin", "dropout"))
        return IoRates(read_bytes_per_s=round((last.bytes_recv - first.bytes_recv) / elapsed, 1),
                       write_bytes_per_s=round((last.bytes_sent - first.bytes_sent) / elapsed, 1),
                       read_ops_per_s=round((last.packets_recv - first.packets_recv) / elapsed, 1),
                       write_ops_per_s=round((last.packets_sent - first.packets_sent) / elapsed, 1),
                       errors=errors)
    return IoRates(read_bytes_per_s=round((last.read_bytes - first.read_bytes) / elapsed, 1),
                   write_bytes_per_s=round((last.write_bytes - first.write_bytes) / elapsed, 1),
                   read_ops_per_s=round((last.read_count - first.read_count) / elapsed, 1),
                   write_ops_per_s=round((last.write_count - first.write_count) / elapsed, 1))


def _process_rates(psutil: Any, first: _Snap, last: _Snap) -> list[tuple[float, float | None, Any]]:
    """(CPU % of one core, context switches/s, Process) of every process seen at both ends."""
    out: list[tuple[float, float | None, Any]] = []
    for pid, after in last.procs.items():
        before = first.procs.get(pid)
        if before is None:
            continue
        dt = after.at - before.at
        if dt <= 0:
            continue
        with contextlib.suppress(psutil.Error):
            if after.proc.create_time() != before.proc.create_time():
                continue  # the pid was reused by another process
        cpu = max(0.0, 100 * (after.cpu - before.cpu) / dt)
        ctx = (after.ctx - before.ctx) / dt if after.ctx is not None and before.ctx is not None \
            else None
        out.append((cpu, ctx, after.proc))
    out.sort(key=lambda r: r[0], reverse=True)
    return out


def _describe(psutil: Any, cpu: float, ctx: float | None, proc: Any) -> ProcessSample | None:
    try:
        with proc.oneshot():
            info = ProcessSample(pid=proc.pid, cpu_percent=round(cpu, 1),
                                 ctx_switches_per_s=None if ctx is None else round(ctx, 1))
            info.name = _safe(psutil, proc.name, "")
            info.ppid = _safe(psutil, proc.ppid)
            info.username = _safe(psutil, proc.username)
            info.status = _safe(psutil, proc.status)
            info.num_threads = _safe(psutil, proc.num_threads)
            memory = _safe(psutil, proc.memory_info)
            info.rss = memory.rss if memory is not None else None
            percent = _safe(psutil, proc.memory_percent)
            info.memory_percent = round(percent, 2) if percent is not None else None
            # A public server's users may see that a process runs, never its
            # arguments (they carry paths, hosts and sometimes secrets).
            mine = proc.pid == os.getpid() or not on_public_server()
            cmdline = (_safe(psutil, proc.cmdline) or []) if mine else []
            text = " ".join(cmdline) or info.name
            info.cmdline = text if len(text) <= CMDLINE_HEAD else text[:CMDLINE_HEAD - 3] + "..."
            return info
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _safe(psutil: Any, fn: Any, default: Any = None) -> Any:
    try:
        return fn()
    except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return default


async def run(inp: SystemSnapshotInput, progress: ProgressCallback | None = None) -> SystemSnapshotResult:
    """Read the counters, wait ``interval`` seconds, read them again and report the rates."""
    psutil = _psutil()
    notes: list[str] = []
    if progress is not None:
        progress(0.0, f"sampling for {inp.interval:g} s")
    procs = await asyncio.to_thread(_procs, psutil, inp.pid)
    first = await asyncio.to_thread(_take, psutil, procs)

    def remaining(margin: float = 0.0) -> float:
        # The window runs from one read of the host counters to the next.
        return max(0.0, inp.interval - margin - (time.monotonic() - first.at))

    if inp.pid is not None:
        await asyncio.sleep(remaining(margin=min(0.2, inp.interval / 4)))
        # Children started during the window have no starting point: noted, not measured.
        current = await asyncio.to_thread(_procs, psutil, inp.pid)
        late = [p for p in current if p.pid not in first.procs]
        if late:
            notes.append(f"{len(late)} child process(es) started during the window and are not "
                         "measured")
        procs = [first.procs[p.pid].proc for p in current if p.pid in first.procs]
        if not procs:
            raise ToolError("not_found", f"process {inp.pid} exited during the window",
                            "sample a process that keeps running")
    await asyncio.sleep(remaining())
    last = await asyncio.to_thread(_take, psutil, procs)
    elapsed = last.at - first.at
    result = await asyncio.to_thread(_assemble, psutil, inp, first, last, elapsed, notes)
    if progress is not None:
        progress(1.0, result.summary.splitlines()[0])
    return result


def _assemble(psutil: Any, inp: SystemSnapshotInput, first: _Snap, last: _Snap, elapsed: float,
              notes: list[str]) -> SystemSnapshotResult:
    cpu = _cpu_stats(psutil, first, last, elapsed, notes)
    memory = _memory(psutil, first, last, elapsed)
    rates = _process_rates(psutil, first, last)
    me = os.getpid()
    listed: list[ProcessSample] = []
    hot: list[ProcessSample] = []
    for cpu_pct, ctx, proc in rates:
        if len(listed) >= inp.top and cpu_pct <= HOT_PROCESS:
            break
        info = _describe(psutil, cpu_pct, ctx, proc)
        if info is None:
            continue
        if len(listed) < inp.top:
            listed.append(info)
        if cpu_pct > HOT_PROCESS and proc.pid != me:
            hot.append(info)
    host = socket.gethostname()
    scope = "host"
    if inp.pid is not None:
        root = next((p for p in listed if p.pid == inp.pid), None)
        scope = f"pid {inp.pid}" + (f" ({root.name})" if root else "") + \
            f" and {max(0, len(rates) - 1)} descendant(s)"
    if not listed and inp.pid is None:
        notes.append("no process could be measured (permissions?)")
    result = SystemSnapshotResult(
        host=host, scope=scope, interval_s=round(elapsed, 3), cpu=cpu, memory=memory,
        disk=_io(first.disk, last.disk, elapsed, network=False),
        network=_io(first.net, last.net, elapsed, network=True),
        pressure=_pressure(), process_count=len(rates), processes=listed, notes=notes,
    )
    if result.disk is None:
        result.notes.append("disk I/O counters are not available here")
    if inp.pid is not None:
        result.tree_cpu_percent = round(sum(r[0] for r in rates), 1)
        rss = [_safe(psutil, r[2].memory_info) for r in rates]
        result.tree_rss = sum(m.rss for m in rss if m is not None)
    result.measurements = _measurements(result, host, inp.pid)
    result.findings = _findings(result, hot, host)
    result.summary = _summary(result)
    return result


def _measurements(res: SystemSnapshotResult, host: str, pid: int | None) -> list[Measurement]:
    out: list[Measurement] = []

    def add(name: str, value: float, unit: str, target: str = host, budget: str | None = None) -> None:
        out.append(Measurement(name=name, value=value, unit=unit, source="system_snapshot",
                               target=target, budget=budget,
                               passed=within_budget(value, budget) if budget else None))

    add("cpu_utilization", res.cpu.percent, "%", budget=CPU_BUDGET)
    add("memory_utilization", res.memory.percent, "%")
    if res.cpu.load_per_core:
        add("load_per_core", res.cpu.load_per_core[0], "load/core")
    add("swap_used", res.memory.swap_used, "bytes")
    if pid is not None and res.tree_cpu_percent is not None:
        add("process_cpu", res.tree_cpu_percent, "% of one core", target=res.scope)
        if res.tree_rss is not None:
            add("process_rss", res.tree_rss, "bytes", target=res.scope)
    return out


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _findings(res: SystemSnapshotResult, hot: list[ProcessSample], host: str) -> list[Finding]:
    found: list[Finding] = []
    cpu, mem = res.cpu, res.memory
    if cpu.percent > CPU_SATURATED:
        states = ", ".join(f"{k} {v:g} %" for k, v in cpu.breakdown.items() if v >= 1 and k != "idle")
        busiest = res.processes[0] if res.processes else None
        found.append(Finding(
            kind="cpu_saturated", severity="high" if cpu.percent > CPU_CRITICAL else "medium",
            summary=f"CPU is {cpu.percent:.1f} % busy over {res.interval_s:.1f} s on "
                    f"{cpu.logical_cores} cores (target < {CPU_SATURATED:g} %)"
                    + (f"; busiest: {busiest.name} (pid {busiest.pid}) at "
                       f"{busiest.cpu_percent:.0f} % of a core" if busiest else ""),
            location=host,
            evidence=f"per core {cpu.per_core}; {states}; load/core {cpu.load_per_core}"))
    swapping = (mem.swap_in_per_s or 0) > 0 or (mem.swap_out_per_s or 0) > 0
    if mem.percent > MEMORY_PRESSURE or swapping:
        parts = [f"memory is {mem.percent:.1f} % used ({_gib(mem.available)} of "
                 f"{_gib(mem.total)} available)"]
        if swapping:
            parts.append(f"the host swapped {mem.swap_in_per_s or 0:.0f} B/s in and "
                         f"{mem.swap_out_per_s or 0:.0f} B/s out during the window")
        found.append(Finding(
            kind="memory_pressure",
            severity="high" if swapping or mem.percent > 95 else "medium",
            summary="; ".join(parts), location=host,
            evidence=f"swap used {mem.swap_used} bytes ({mem.swap_percent:g} %)"
                     + (f"; PSI memory some avg10 {res.pressure['memory']:g} %"
                        if "memory" in res.pressure else "")))
    for proc in hot[:MAX_HOT]:
        found.append(Finding(
            kind="hot_process", severity="high" if proc.cpu_percent >= 90 else "medium",
            summary=f"{proc.name} (pid {proc.pid}) used {proc.cpu_percent:.0f} % of a core over "
                    f"{res.interval_s:.1f} s: profile it to see where",
            location=f"pid {proc.pid}",
            evidence=f"cmdline: {proc.cmdline}; rss {proc.rss} bytes; threads {proc.num_threads}"))
    return found


def _summary(res: SystemSnapshotResult) -> str:
    cpu, mem = res.cpu, res.memory
    load = f", load/core {cpu.load_per_core[0]:g}" if cpu.load_per_core else ""
    lines = [f"{res.host} over {res.interval_s:.1f} s: CPU {cpu.percent:.1f} % of "
             f"{cpu.logical_cores} cores{load}; memory {mem.percent:.1f} % used, swap "
             f"{_gib(mem.swap_used)}"]
    for proc in res.processes[:3]:
        lines.append(f"- {proc.name} (pid {proc.pid}): {proc.cpu_percent:.1f} % CPU, "
                     f"{(proc.rss or 0) / 1024**2:.0f} MiB")
    lines += [f"- {f.kind}: {f.summary}" for f in res.findings]
    return "\n".join(lines)


SPEC = ToolSpec(
    name="system_snapshot",
    description=(
        "Sample the host (or one process tree with pid) over `interval` seconds with psutil: CPU "
        "% overall and per core with a user/system/iowait/steal breakdown, load per core, memory "
        "and swap (and swap traffic), disk and network rates, context switches, and the busiest "
        "processes by CPU over the same window. Findings: cpu_saturated, memory_pressure, "
        "hot_process."
    ),
    input_model=SystemSnapshotInput,
    result_model=SystemSnapshotResult,
    run=run,
    runs_code=False,
)

__all__ = ["SPEC", "ProcessSample", "SystemSnapshotInput", "SystemSnapshotResult", "run"]
