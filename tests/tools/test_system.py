"""system_snapshot on this machine, with busy-looping children the tests start and stop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import require_module
from tools.base import ToolError
from tools.system import (
    SPEC,
    CpuStats,
    MemoryStats,
    ProcessSample,
    SystemSnapshotInput,
    SystemSnapshotResult,
    _findings,
    run,
)

BUSY = "while True: pass"


@pytest.fixture(autouse=True)
def _psutil() -> None:
    require_module("psutil")


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start Python children (killed at the end): ``spawn(code) -> Popen``."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str = BUSY) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=5)


def kinds(result: Any) -> set[str]:
    return {f.kind for f in result.findings}


def test_spec() -> None:
    assert SPEC.name == "system_snapshot" and SPEC.runs_code is False
    props = SPEC.json_schema()["properties"]
    assert set(props) == {"interval", "top", "pid"}
    assert all(p.get("description") for p in props.values())
    with pytest.raises(ValidationError):
        SystemSnapshotInput(interval=61)
    with pytest.raises(ValidationError):
        SystemSnapshotInput(interval=0)
    with pytest.raises(ValidationError):
        SystemSnapshotInput(top=0)


async def test_busy_child_is_the_hot_process(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    import psutil

    busy = spawn()
    time.sleep(0.2)  # let it start spinning
    reference = psutil.Process(busy.pid)
    reference.cpu_percent(None)
    started = time.monotonic()
    res = await run(SystemSnapshotInput(interval=1.5, top=10))
    wall = time.monotonic() - started
    expected = reference.cpu_percent(None)  # psutil's own figure over (about) the same window

    assert res.ok and res.scope == "host"
    assert res.interval_s == pytest.approx(1.5, abs=0.15)
    assert 1.5 <= wall < 3.5
    mine = next((p for p in res.processes if p.pid == busy.pid), None)
    assert mine is not None, [(p.pid, p.name, p.cpu_percent) for p in res.processes]
    assert mine.cpu_percent > 30 and mine.cpu_percent == pytest.approx(expected, abs=15)
    assert "while True" in mine.cmdline and mine.rss and mine.rss > 1_000_000
    assert mine.num_threads == 1 and mine.ppid == os.getpid()
    cpus = [p.cpu_percent for p in res.processes]
    assert cpus == sorted(cpus, reverse=True) and len(res.processes) <= 10
    if mine.cpu_percent > 50:
        hot = next(f for f in res.findings if f.kind == "hot_process" and f.location ==
                   f"pid {busy.pid}")
        assert "while True" in (hot.evidence or "")

    cpu, mem = res.cpu, res.memory
    assert cpu.logical_cores == (psutil.cpu_count() or 1) == len(cpu.per_core)
    # One core spins: at least its share of the machine is busy.
    assert 100 / cpu.logical_cores * 0.4 <= cpu.percent <= 100
    assert all(0 <= c <= 100 for c in cpu.per_core) and max(cpu.per_core) > 40
    assert cpu.breakdown["user"] > 0
    assert sum(cpu.breakdown.values()) == pytest.approx(100, abs=2)
    assert cpu.load_average is not None and cpu.load_per_core is not None
    assert cpu.load_per_core[0] == pytest.approx(cpu.load_average[0] / cpu.logical_cores, abs=0.01)
    assert cpu.ctx_switches_per_s is not None and cpu.ctx_switches_per_s > 0
    assert 0 < mem.percent < 100 and 0 < mem.available <= mem.total
    assert 0 <= mem.swap_used <= max(mem.swap_total, 0)
    assert res.network is not None and res.network.read_bytes_per_s >= 0
    assert res.process_count > 1

    by_name = {m.name: m for m in res.measurements}
    util = by_name["cpu_utilization"]
    assert (util.value, util.unit, util.budget) == (cpu.percent, "%", "<70")
    assert util.passed is (cpu.percent < 70) and util.source == "system_snapshot"
    assert by_name["memory_utilization"].value == mem.percent
    assert by_name["load_per_core"].value == cpu.load_per_core[0]
    assert by_name["swap_used"].unit == "bytes"
    assert ("cpu_saturated" in kinds(res)) is (cpu.percent > 70)


async def test_saturated_cpu(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """One spinning child per core saturates the machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    children = [spawn() for _ in range(cores or 1)]
    time.sleep(0.2)
    res = await run(SystemSnapshotInput(interval=1.0, top=3))
    assert res.cpu.percent > 70, res.cpu
    saturated = next(f for f in res.findings if f.kind == "cpu_saturated")
    assert saturated.severity == ("high" if res.cpu.percent > 90 else "medium")
    assert next(m for m in res.measurements if m.name == "cpu_utilization").passed is False
    assert len(res.processes) == 3
    pids = {c.pid for c in children}
    assert {p.pid for p in res.processes} & pids
    # Every listed process above half a core is reported (the machine may be shared, so
    # how many of our children get that much is not fixed).
    hot = {f.location for f in res.findings if f.kind == "hot_process"}
    assert len(hot) <= 5
    assert {f"pid {p.pid}" for p in res.processes if p.cpu_percent > 50} <= hot


async def test_pid_scope_covers_the_tree(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    code = ("import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', {BUSY!r}])\n"
            "time.sleep(60)\n")
    parent = spawn(code)
    import psutil

    deadline = time.monotonic() + 10
    while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = psutil.Process(parent.pid).children()[0]
    try:
        res = await run(SystemSnapshotInput(interval=1.0, pid=parent.pid))
    finally:
        child.kill()
    assert res.scope.startswith(f"pid {parent.pid}") and "1 descendant" in res.scope
    assert {p.pid for p in res.processes} == {parent.pid, child.pid}
    assert res.processes[0].pid == child.pid and res.processes[0].cpu_percent > 40
    assert res.tree_cpu_percent == pytest.approx(sum(p.cpu_percent for p in res.processes),
                                                 abs=0.2)
    by_name = {m.name: m for m in res.measurements}
    assert by_name["process_cpu"].value == res.tree_cpu_percent
    assert by_name["process_cpu"].target == res.scope
    assert by_name["process_rss"].value == res.tree_rss and res.tree_rss and res.tree_rss > 0
    assert "cpu_utilization" in by_name  # host figures stay host-wide


async def test_unknown_pid(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    gone = spawn("pass")
    gone.wait(timeout=10)
    with pytest.raises(ToolError) as err:
        await run(SystemSnapshotInput(interval=0.1, pid=gone.pid))
    assert err.value.code == "not_found"


async def test_missing_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    with pytest.raises(ToolError) as err:
        await run(SystemSnapshotInput(interval=0.1))
    assert err.value.code == "missing_dependency" and err.value.hint == "pip install psutil"


def snapshot(cpu: float = 20.0, mem: float = 50.0, swap_in: float = 0.0) -> SystemSnapshotResult:
    """A result with chosen figures, to check the thresholds of the findings."""
    return SystemSnapshotResult(
        host="h", scope="host", interval_s=2.0, process_count=1,
        cpu=CpuStats(percent=cpu, per_core=[cpu, cpu], breakdown={"user": cpu}, logical_cores=2),
        memory=MemoryStats(total=8 << 30, available=int((8 << 30) * (1 - mem / 100)),
                           used=int((8 << 30) * mem / 100), percent=mem, swap_total=1 << 30,
                           swap_used=1 << 20, swap_percent=0.1, swap_in_per_s=swap_in,
                           swap_out_per_s=0.0))


def test_finding_thresholds() -> None:
    assert _findings(snapshot(), [], "h") == []
    assert [(f.kind, f.severity) for f in _findings(snapshot(cpu=75), [], "h")] == [
        ("cpu_saturated", "medium")]
    assert _findings(snapshot(cpu=95), [], "h")[0].severity == "high"
    assert [(f.kind, f.severity) for f in _findings(snapshot(mem=92), [], "h")] == [
        ("memory_pressure", "medium")]
    swapping = _findings(snapshot(swap_in=4096), [], "h")
    assert [(f.kind, f.severity) for f in swapping] == [("memory_pressure", "high")]
    assert "swapped 4096 B/s in" in swapping[0].summary
    hot = ProcessSample(pid=42, name="worker", cmdline="python worker.py --jobs 4",
                        cpu_percent=97.0, rss=1 << 20, num_threads=1)
    found = _findings(snapshot(), [hot], "h")
    assert [(f.kind, f.severity, f.location) for f in found] == [("hot_process", "high", "pid 42")]
    assert "worker (pid 42)" in found[0].summary and "worker.py --jobs 4" in (found[0].evidence or "")
