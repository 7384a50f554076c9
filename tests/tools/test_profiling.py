"""profile_python on real scripts written by the tests into a temp workspace."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tools import get_tool, profiling
from tools.base import ToolError
from tools.profiling import ProfileInput, run

HOT = '''\
import sys


def slow_sum(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def quick():
    return sum(range(100))


def main():
    for _ in range(3):
        quick()
    print("args:", sys.argv[1:])
    return slow_sum(1_500_000)


if __name__ == "__main__":
    main()
'''

N_PLUS_ONE = '''\
import sqlite3


def setup():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"u{i}") for i in range(400)])
    return conn


def names(conn, ids):
    out = []
    for user_id in ids:
        row = conn.execute("SELECT name FROM users WHERE id = ?", (user_id,)).fetchone()
        out.append(row[0])
    return out


if __name__ == "__main__":
    print(len(names(setup(), range(400))))
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_spec_is_registered() -> None:
    spec = get_tool("profile_python")
    assert spec.runs_code is True
    props = spec.json_schema()["properties"]
    for name in ("script", "args", "timeout", "top", "memory", "pid"):
        assert props[name].get("description"), name


async def test_hotspot_at_its_line(workspace: Path) -> None:
    write(workspace, "hot.py", HOT)
    updates: list[tuple[float, str]] = []
    result = await run(ProfileInput(script="hot.py", args=["--size", "big"], top=100),
                       lambda f, t: updates.append((f, t)))
    where = f"hot.py:{line_of(HOT, 'def slow_sum')}"
    top = result.hotspots[0]
    assert (top.function, top.location, top.ncalls, top.user_code) == ("slow_sum", where, 1, True)
    assert top.self_share > 80
    quick = next(h for h in result.hotspots if h.function == "quick")
    assert quick.ncalls == 3
    hotspot = next(f for f in result.findings if f.kind == "cpu_hotspot")
    assert hotspot.location == where and hotspot.severity == "high"
    # no runner or runpy frames leak into the report
    assert not any("runpy" in h.location or "perfagent_profile_runner" in h.location
                   for h in result.hotspots)
    measured = {m.name: m for m in result.measurements}
    assert measured["wall_time"].value > 0 and measured["wall_time"].unit == "ms"
    assert measured["cpu_time"].value > 0
    assert measured["wall_time"].source == "profile_python"
    assert measured["wall_time"].target.endswith("hot.py")
    assert "args: ['--size', 'big']" in result.stdout_tail
    assert result.exit_code == 0
    assert "slow_sum" in result.summary
    assert any("3x" in note for note in result.notes)  # the overhead is stated
    assert updates and updates[0][0] == 0.0 and updates[-1][0] == 1.0


async def test_n_plus_one_shows_as_repeated_query(workspace: Path) -> None:
    write(workspace, "app.py", N_PLUS_ONE)
    result = await run(ProfileInput(script="app.py", top=40))
    call_site = f"app.py:{line_of(N_PLUS_ONE, 'SELECT name')}"
    finding = next(f for f in result.findings if f.kind == "repeated_query")
    assert finding.location == call_site
    assert "400" in (finding.evidence or "")
    execute = next(h for h in result.hotspots if "'execute' of 'sqlite3" in h.function)
    assert execute.ncalls >= 400 and execute.location == "~"
    assert execute.called_from == f"{call_site} (names)"


async def test_crash_reports_exit_code_and_stderr(workspace: Path) -> None:
    write(workspace, "boom.py", """\
        def explode():
            raise ValueError("the answer was not 42")

        explode()
        """)
    with pytest.raises(ToolError) as err:
        await run(ProfileInput(script="boom.py"))
    assert err.value.code == "script_failed"
    assert "exited with code 1" in err.value.message
    assert "ValueError: the answer was not 42" in err.value.message


async def test_nonzero_exit_is_a_failure_and_zero_is_fine(workspace: Path) -> None:
    write(workspace, "three.py", "import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)\n")
    write(workspace, "zero.py", "import sys\nsys.exit(0)\n")
    with pytest.raises(ToolError) as err:
        await run(ProfileInput(script="three.py"))
    assert err.value.code == "script_failed"
    assert "code 3" in err.value.message and "bye" in err.value.message
    ok = await run(ProfileInput(script="zero.py"))
    assert ok.exit_code == 0


async def test_hang_is_killed_with_its_children(workspace: Path) -> None:
    pids = workspace / "pids.txt"
    write(workspace, "hang.py", f"""\
        import os, subprocess, sys, time
        child = subprocess.Popen(["sleep", "60"])
        with open({str(pids)!r}, "w") as fh:
            fh.write(f"{{os.getpid()}} {{child.pid}}")
        print("waiting forever", file=sys.stderr, flush=True)
        time.sleep(60)
        """)
    started = time.monotonic()
    with pytest.raises(ToolError) as err:
        await run(ProfileInput(script="hang.py", timeout=1.5))
    assert time.monotonic() - started < 10
    assert err.value.code == "timeout"
    assert "waiting forever" in err.value.message
    for pid in map(int, pids.read_text().split()):
        for _ in range(50):
            if not _alive(pid):
                break
            await asyncio.sleep(0.05)
        assert not _alive(pid), f"process {pid} survived the timeout"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by its parent) is as good as dead
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


async def test_missing_and_outside_paths(workspace: Path, tmp_path_factory: pytest.TempPathFactory
                                         ) -> None:
    with pytest.raises(ToolError) as err:
        await run(ProfileInput(script="nope.py"))
    assert err.value.code == "not_found"
    elsewhere = write(tmp_path_factory.mktemp("outside"), "x.py", "print(1)\n")
    with pytest.raises(ToolError) as err:
        await run(ProfileInput(script=str(elsewhere)))
    assert err.value.code == "path_outside_workspace"


async def test_memory_peak_and_allocation_site(workspace: Path) -> None:
    script = """\
        def build():
            blocks = [bytes(1000) for _ in range(30000)]
            return len(blocks)


        print(build())
        """
    write(workspace, "mem.py", script)
    result = await run(ProfileInput(script="mem.py", memory=True))
    assert result.memory_peak_bytes is not None
    # 30 000 blocks of ~1 kB were alive at once, then freed
    assert 28_000_000 < result.memory_peak_bytes < 80_000_000
    peak = next(m for m in result.measurements if m.name == "memory_peak")
    assert peak.unit == "bytes" and peak.value == result.memory_peak_bytes
    assert result.allocation_sites[0].location == "mem.py:2"
    assert result.allocation_sites[0].size_bytes > 1_000_000


async def test_measured_profiler_overhead(workspace: Path) -> None:
    write(workspace, "calls.py", """\
        def f(x):
            return x + 1


        total = 0
        for i in range(300_000):
            total = f(total)
        print(total)
        """)
    result = await run(ProfileInput(script="calls.py", measure_overhead=True))
    assert result.wall_time_unprofiled_ms is not None and result.overhead_ratio is not None
    # a call-heavy loop pays cProfile's per-call cost
    assert result.overhead_ratio > 1.2
    names = {m.name for m in result.measurements}
    assert {"wall_time_unprofiled", "profiler_overhead"} <= names


async def test_py_spy_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiling, "_py_spy", lambda: None)
    with pytest.raises(ToolError) as err:
        await run(ProfileInput(pid=os.getpid(), duration=1))
    assert err.value.code == "missing_dependency"
    assert "pip install py-spy" in err.value.hint


async def test_py_spy_samples_a_running_process(workspace: Path) -> None:
    if profiling._py_spy() is None:
        unavailable("py-spy is not installed")
    script = write(workspace, "spin.py", """\
        import time


        def spin():
            end = time.time() + 20
            while time.time() < end:
                sum(i * i for i in range(1000))


        spin()
        """)
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        time.sleep(0.3)
        result = await run(ProfileInput(pid=proc.pid, duration=1))
    except ToolError as exc:
        if exc.code == "sampling_failed" and shutil.which("py-spy") is None:
            unavailable(f"py-spy cannot sample here: {exc}")
        raise
    finally:
        proc.kill()
        proc.wait()
    assert result.mode == "py-spy" and result.samples and result.samples > 20
    assert any(h.function in ("spin", "<genexpr>") for h in result.hotspots[:3])
    hotspot = next(f for f in result.findings if f.kind == "cpu_hotspot")
    assert hotspot.location is not None and "spin.py" in hotspot.location


async def test_module_runs_like_python_dash_m(workspace: Path) -> None:
    package = workspace / "app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def square(n):\n    return n * n\n")
    write(workspace, "app/worker.py", """\
        import sys

        from .helpers import square


        def crunch():
            return sum(square(i) for i in range(200_000))


        if __name__ == "__main__":
            assert sys.argv[1:] == ["--fast"]
            crunch()
        """)
    result = await run(ProfileInput(module="app.worker", args=["--fast"]))
    assert result.script.endswith("app/worker.py")
    assert any(h.function == "square" and h.location == "helpers.py:1" for h in result.hotspots)


async def test_module_outside_the_workspace_is_refused(workspace: Path) -> None:
    with pytest.raises(ToolError) as err:
        await run(ProfileInput(module="http.server"))
    assert err.value.code == "not_found"
    with pytest.raises(ToolError) as err:
        await run(ProfileInput(module="../evil"))
    assert err.value.code == "invalid_module"
