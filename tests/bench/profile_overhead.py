"""Benchmark: what profiling costs a call-heavy Python program.

Runs one call-heavy script (recursive fib plus a loop of many small function
and method calls) plain, under ``profile_python`` (cProfile, through the real
tool), and under ``py-spy record`` (sampling, at its default 100 Hz and at
1000 Hz) when py-spy is installed. The script times its own work with
``perf_counter`` and writes it to a file, so interpreter start-up and the
profilers' own start-up and report writing are left out of the ratios; the
whole process time of each py-spy run is printed as well.

Prints medians and ratios to the plain run, measured in one run. Run:
``python tests/bench/profile_overhead.py [--repeat 5] [--fib 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

WORKLOAD = '''\
"""Call-heavy work: recursion and many tiny calls, where profilers cost the most."""
import sys
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y

    def moved(self, dx):
        return Point(self.x + dx, self.y)


def add(a, b):
    return a + b


def small_calls(n):
    total, p = 0, Point(0, 0)
    for i in range(n):
        total = add(total, i % 7)
        p = p.moved(1)
    return total + p.x


started = time.perf_counter()
fib(int(sys.argv[2]))
small_calls(int(sys.argv[3]))
elapsed = time.perf_counter() - started
with open(sys.argv[1], "w") as fh:
    fh.write(repr(elapsed))
'''


def work_seconds(out: Path) -> float:
    return float(out.read_text())


def plain(script: Path, args: list[str], out: Path) -> float:
    subprocess.run([sys.executable, str(script), str(out), *args], check=True, timeout=600)
    return work_seconds(out)


def under_tool(script: Path, args: list[str], out: Path) -> tuple[float, float]:
    """(script's own work time, the tool's profiled wall time) under profile_python."""
    from tools.profiling import ProfileInput, run

    result = asyncio.run(run(ProfileInput(script=str(script), args=[str(out), *args],
                                          timeout=600)))
    assert result.wall_time_ms is not None
    return work_seconds(out), result.wall_time_ms / 1000


def under_pyspy(pyspy: str, script: Path, args: list[str], out: Path, rate: int
                ) -> tuple[float, float]:
    """(script's own work time, py-spy's whole process time)."""
    report = out.with_suffix(".speedscope")
    started = time.perf_counter()
    done = subprocess.run([pyspy, "record", "--rate", str(rate), "--format", "speedscope",
                           "--output", str(report), "--", sys.executable, str(script),
                           str(out), *args], capture_output=True, text=True, timeout=600)
    whole = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return work_seconds(out), whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant (median)")
    parser.add_argument("--fib", type=int, default=30, help="fib(N) recursion depth")
    parser.add_argument("--calls", type=int, default=2_000_000, help="small-call loop length")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as folder:
        os.environ["PERFAGENT_WORKSPACE"] = folder  # profile_python runs workspace scripts
        script = Path(folder) / "call_heavy.py"
        script.write_text(WORKLOAD)
        out = Path(folder) / "elapsed.txt"
        work_args = [str(args.fib), str(args.calls)]
        samples: dict[str, list[float]] = {}
        wholes: dict[str, list[float]] = {}
        plain(script, work_args, out)  # warm the page cache and .pyc
        for _ in range(args.repeat):  # interleaved, so drift hits every variant alike
            samples.setdefault("plain", []).append(plain(script, work_args, out))
            work, wall = under_tool(script, work_args, out)
            samples.setdefault("profile_python (cProfile)", []).append(work)
            wholes.setdefault("profile_python (cProfile)", []).append(wall)
            if pyspy:
                for rate in (100, 1000):
                    label = f"py-spy record {rate} Hz"
                    work, whole = under_pyspy(pyspy, script, work_args, out, rate)
                    samples.setdefault(label, []).append(work)
                    wholes.setdefault(label, []).append(whole)
    base = statistics.median(samples["plain"])
    print(f"call-heavy script: fib({args.fib}) + {args.calls:,} small calls; median of "
          f"{args.repeat} runs; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"  {'variant':<28} {'work s':>8} {'ratio':>7}  whole run")
    for label, values in samples.items():
        work = statistics.median(values)
        whole = wholes.get(label)
        extra = ""
        if whole and label.startswith("py-spy"):
            extra = f"py-spy process {statistics.median(whole):.2f} s (start-up, report included)"
        elif whole:
            extra = f"tool's profiled wall time {statistics.median(whole):.2f} s"
        print(f"  {label:<28} {work:>8.3f} {work / base:>6.2f}x  {extra}")
    if not pyspy:
        print("  (py-spy is not installed: pip install py-spy, or perfagent[pyspy]; its rows "
              "are skipped)")


if __name__ == "__main__":
    main()
