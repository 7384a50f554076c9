"""``profile_python``: run a Python script under cProfile and say where the time goes.

The script runs in a subprocess (``sys.executable``) with a timeout, its
process group killed on expiry, so a hung or crashing script cannot take the
caller down. A small runner (kept below as text and written to a temp
folder) enables cProfile around ``runpy.run_path`` only, and optionally
tracemalloc, then writes pstats and a JSON of timings that this module parses.

What the result says:
* hotspots sorted by self time, with each function's share of profiled time;
  for C functions and methods (``<method 'execute' of 'sqlite3.Cursor'
  objects>``) the caller that makes most of the calls, because that is the
  user's line to change;
* ``cpu_hotspot``: the user function whose own code plus the library/builtin
  calls it makes directly take the largest share (a plain cumulative share
  would always name ``main``);
* ``repeated_query``: a DB-API ``execute`` called more than 100 times from one
  place, which is how an N+1 query loop looks in a profile.

cProfile adds a cost to every Python call (call-heavy code typically runs ~3x
slower, tiny recursive functions more), so shares are more trustworthy than
absolute times; the result says so, and ``measure_overhead`` times an
unprofiled run for comparison. With a
``pid``, py-spy samples an already running process instead, at almost no cost.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    ToolError,
    ToolResult,
    ToolSpec,
    resolve_in_workspace,
    tail,
    workspace_roots,
)
from tools.process import ScratchDir, read_tail, run_bounded

#: A function is a CPU hotspot when it (with the library calls it makes) takes
#: more than this share of the profiled time.
HOTSPOT_SHARE = 20.0
#: More calls than this to a DB-API execute from one place look like N+1.
REPEATED_QUERY_CALLS = 100
RUNNER_NAME = "perfagent_profile_runner.py"

OVERHEAD_NOTE = (
    "cProfile adds a cost to every Python function call: call-heavy code typically runs "
    "~3x slower under it (tiny recursive functions more), so trust the shares more than "
    "the absolute times (measure_overhead=true times an unprofiled run too)."
)

# The runner executes in the child process. It imports nothing of perfagent,
# profiles only runpy.run_path (so our own frames stay few and droppable), and
# exits with the script's exit code.
RUNNER_SOURCE = r'''
import json, os, runpy, sys, threading, time, traceback
import pkgutil  # noqa: F401 - runpy.run_path imports it lazily; keep that out of the profile


def site_stats(snapshot, limit, skip):
    import tracemalloc
    filtered = snapshot.filter_traces(
        [tracemalloc.Filter(False, p) for p in skip]
        + [tracemalloc.Filter(False, tracemalloc.__file__)])
    rows = []
    for stat in filtered.statistics("lineno")[:limit]:
        frame = stat.traceback[0]
        rows.append([frame.filename, frame.lineno, stat.size, stat.count])
    return rows


class PeakSampler(threading.Thread):
    # A snapshot at exit misses temporaries freed before the end, which is
    # usually where the peak came from: snapshot whenever traced memory
    # reaches a new high. Snapshots allocate memory themselves, so a run with
    # this sampler reports sites only; the peak comes from a run without it.
    def __init__(self, skip):
        super().__init__(daemon=True)
        self.skip, self.stop = skip, threading.Event()
        self.best_size, self.best_sites = 0, []

    def run(self):
        import tracemalloc
        while not self.stop.wait(0.01):
            current, _ = tracemalloc.get_traced_memory()
            if current > 1_000_000 and current > self.best_size * 1.1:
                snapshot = tracemalloc.take_snapshot()
                self.best_sites = site_stats(snapshot, 10, self.skip)
                self.best_size = current
                del snapshot


def main():
    with open(sys.argv[1], encoding="utf-8") as fh:
        cfg = json.load(fh)
    script = cfg["script"]
    module = cfg.get("module")
    sys.argv = [script, *cfg["args"]]
    # as `python script.py` or `python -m module` (from the working folder) would
    sys.path[0] = cfg["cwd"] if module else os.path.dirname(script)
    skip = (__file__, "*/runpy.py", "<frozen runpy>")
    profiler = sampler = None
    if cfg["memory"]:
        import tracemalloc
        tracemalloc.start()
        if cfg["memory"] == "sites":
            sampler = PeakSampler(skip)
            sampler.start()
    if cfg["profile"]:
        import cProfile
        profiler = cProfile.Profile()
    exit_code = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        if profiler is not None:
            profiler.enable()
        try:
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(script, run_name="__main__")
        finally:
            if profiler is not None:
                profiler.disable()
    except SystemExit as exc:
        if exc.code is None:
            exit_code = 0
        elif isinstance(exc.code, int):
            exit_code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            exit_code = 1
    except BaseException:
        traceback.print_exc()
        exit_code = 1
    meta = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
            "exit_code": exit_code}
    if cfg["memory"]:
        import tracemalloc
        if sampler is not None:
            sampler.stop.set()
            sampler.join()
        current, peak = tracemalloc.get_traced_memory()  # before our own snapshot
        meta["memory_peak"], meta["memory_end"] = peak, current
        meta["sites"] = site_stats(tracemalloc.take_snapshot(), 10, skip)
        if sampler is not None and sampler.best_size > current and sampler.best_sites:
            meta["sites"], meta["sites_size"] = sampler.best_sites, sampler.best_size
        tracemalloc.stop()
    if profiler is not None:
        profiler.dump_stats(cfg["stats_path"])
    with open(cfg["meta_path"], "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    sys.stdout.flush()
    sys.stderr.flush()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
'''


# --------------------------------------------------------------------------- models


class ProfileInput(BaseModel):
    """What to profile: a script to run, or (with py-spy) a running process."""

    model_config = ConfigDict(extra="forbid")

    script: str | None = Field(
        default=None, description="path of the .py file to run and profile (inside the workspace)"
    )
    module: str | None = Field(
        default=None, description="instead of a script: a module inside the workspace to run "
        "as `python -m MODULE` (from cwd, or the first workspace folder)")
    args: list[str] = Field(default_factory=list, description="command-line arguments")
    timeout: float = Field(default=60.0, gt=0, le=3600,
                           description="seconds before the script is killed")
    top: int = Field(default=15, ge=1, le=200, description="how many hotspots to return")
    memory: bool = Field(
        default=False,
        description="also trace allocations (tracemalloc): peak bytes and the top 10 "
        "allocation sites; slows allocation-heavy code further",
    )
    measure_overhead: bool = Field(
        default=False,
        description="run the script a second time without the profiler to measure "
        "cProfile's slowdown",
    )
    cwd: str | None = Field(
        default=None,
        description="working directory for the script (inside the workspace); default: "
        "the script's folder",
    )
    pid: int | None = Field(
        default=None,
        gt=0,
        description="instead of a script: sample this running Python process with py-spy",
    )
    duration: float = Field(default=5.0, gt=0, le=300,
                            description="with pid: seconds to sample")

    @model_validator(mode="after")
    def _target(self) -> ProfileInput:
        if sum(x is not None for x in (self.script, self.module, self.pid)) != 1:
            raise ValueError("give one of script or module (run and profile it) or pid "
                             "(sample a running process)")
        return self


class Hotspot(BaseModel):
    """One function's share of the run."""

    function: str
    location: str = Field(description="file:line of the function ('~' for builtins)")
    ncalls: int = Field(description="calls (0 when sampled by py-spy)")
    primitive_calls: int = Field(description="calls that were not recursive")
    self_ms: float = Field(description="time in the function's own code")
    total_ms: float = Field(description="time including everything it called")
    self_share: float = Field(description="self time, % of profiled time")
    total_share: float = Field(description="total time, % of profiled time")
    user_code: bool = Field(description="not the standard library, a package or a builtin")
    called_from: str | None = Field(
        default=None,
        description="for builtins and C methods: the caller making most of the calls "
        "(file:line (function)), where the user's code is",
    )


class AllocationSite(BaseModel):
    """A source line that allocated memory still traced when sampled."""

    location: str
    size_bytes: int
    count: int


class ProfileResult(ToolResult):
    """What the profile showed."""

    tool: str = "profile_python"
    mode: Literal["cprofile", "py-spy"]
    script: str | None = None
    args: list[str] = Field(default_factory=list)
    pid: int | None = None
    exit_code: int | None = None
    wall_time_ms: float | None = Field(default=None, description="the script's run, profiled")
    cpu_time_ms: float | None = None
    profiled_time_ms: float | None = Field(
        default=None, description="sum of self times: the denominator of the shares"
    )
    samples: int | None = Field(default=None, description="py-spy: stack samples taken")
    hotspots: list[Hotspot] = Field(default_factory=list)
    memory_peak_bytes: int | None = None
    allocation_sites: list[AllocationSite] = Field(default_factory=list)
    allocation_sites_when: str | None = None
    wall_time_unprofiled_ms: float | None = None
    overhead_ratio: float | None = Field(
        default=None, description="profiled wall time / unprofiled wall time"
    )
    stdout_tail: str = ""
    notes: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- helpers

FuncKey = tuple[str, int, str]


@lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            roots.add(sysconfig.get_paths()[key])
    return tuple(sorted(os.path.realpath(r) for r in roots if r))


def _is_user_file(filename: str) -> bool:
    """True for code the user wrote: not a builtin, not stdlib, not an installed package."""
    if not filename or filename == "~" or filename.startswith("<"):
        return False
    if "site-packages" in filename or "dist-packages" in filename:
        return False
    real = os.path.realpath(filename)
    return not any(real == root or real.startswith(root + os.sep) for root in _library_roots())


def _where(filename: str, line: int, base: Path) -> str:
    """``file:line``, relative to the script's folder when the file is inside it."""
    if filename == "~":
        return "~"
    path = Path(filename)
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(base)
    return f"{path}:{line}"


def _call_name(builtin: str) -> str | None:
    """The name a builtin is called by: "<method 'execute' of ...>" -> "execute"."""
    match = re.match(r"<method '(\w+)' of", builtin) or re.match(
        r"<built-in method (?:[\w.]+\.)?(\w+)>", builtin)
    return match.group(1) if match else None


@lru_cache(maxsize=64)
def _parsed(filename: str) -> ast.AST | None:
    try:
        return ast.parse(Path(filename).read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return None


def _call_line(filename: str, def_line: int, func_name: str, callee: str | None) -> int:
    """The line inside function ``func_name`` (defined at ``def_line``) that calls ``callee``.

    cProfile records callers per function, not per line; reading the source
    narrows it to the calling line when that is unambiguous (one call of that
    name, or one inside a loop). Otherwise the function's own line is kept.
    """
    if callee is None:
        return def_line
    tree = _parsed(filename)
    if tree is None:
        return def_line
    scope: ast.AST | None = tree if func_name == "<module>" else None
    if scope is None:
        for node in ast.walk(tree):
            if (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    and node.name == func_name
                    and (node.lineno == def_line
                         or any(d.lineno == def_line for d in node.decorator_list))):
                scope = node
                break
    if scope is None:
        return def_line
    calls: list[tuple[int, bool]] = []

    def visit(node: ast.AST, in_loop: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
                          | ast.Lambda):
                continue  # nested scopes are their own cProfile entries
            loop = in_loop or isinstance(child, ast.For | ast.AsyncFor | ast.While
                                         | ast.comprehension)
            if isinstance(child, ast.Call):
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else (
                    f.id if isinstance(f, ast.Name) else None)
                if name == callee:
                    calls.append((child.lineno, loop))
            visit(child, loop)

    visit(scope, False)
    if len(calls) == 1:
        return calls[0][0]
    looped = [line for line, in_loop in calls if in_loop]
    if len(looped) == 1:
        return looped[0]
    return def_line


_DB_BUILTIN = re.compile(
    r"<method 'execute' of '[\w.]*(sqlite3|psycopg|mysql|pymssql|oracle|duckdb)[\w.]*' "
    r"objects>", re.IGNORECASE)
_DB_PACKAGE = re.compile(r"[/\\](psycopg|psycopg2|pymysql|MySQLdb|mysql|asyncpg|aiosqlite|"
                         r"oracledb|pymssql|duckdb)[/\\]")


def _is_db_execute(key: FuncKey) -> bool:
    filename, _line, name = key
    if filename == "~":
        return bool(_DB_BUILTIN.match(name))
    return name == "execute" and bool(_DB_PACKAGE.search(filename))


def _label(key: FuncKey, base: Path) -> str:
    filename, line, name = key
    return f"{_where(filename, line, base)} ({name})"


def _is_runner_frame(key: FuncKey) -> bool:
    filename, _line, name = key
    return (os.path.basename(filename) == RUNNER_NAME
            or filename.endswith(("runpy.py", "<frozen runpy>"))
            or name.startswith("<method 'disable' of '_lsprof.Profiler"))


# --------------------------------------------------------------------------- cProfile


def _analyse_pstats(stats_path: Path, script: str, base: Path, top: int) -> tuple[
        list[Hotspot], list[Finding], float]:
    """Hotspots and findings from a pstats file; returns (hotspots, findings, total_s)."""
    import pstats

    raw: dict[FuncKey, tuple[int, int, float, float, dict[FuncKey, tuple[Any, ...]]]]
    raw = pstats.Stats(str(stats_path)).stats  # type: ignore[attr-defined]
    # Our runner, runpy and the profiler's own disable() are not the user's
    # run; neither is anything only they called, directly or not (exec,
    # compile, reading the script, path hooks). The script's own frames stay:
    # its <module> is called from runpy's exec.
    dropped = {key for key in raw if _is_runner_frame(key)}
    changed = True
    while changed:
        changed = False
        for key, value in raw.items():
            if key in dropped or key[0] == script:
                continue
            if value[4] and all(caller in dropped for caller in value[4]):
                dropped.add(key)
                changed = True
    kept = {key: value for key, value in raw.items() if key not in dropped}
    total = sum(v[2] for v in kept.values()) or 1e-12
    user = {key: _is_user_file(key[0]) for key in kept}

    def share(seconds: float) -> float:
        return round(100.0 * seconds / total, 2)

    def top_caller(callers: dict[FuncKey, tuple[Any, ...]]) -> FuncKey | None:
        # caller tuples are (ncalls, primitive calls, self time, total time)
        live = [(v[0], v[3], k) for k, v in callers.items() if k in kept]
        return max(live)[2] if live else None

    hotspots: list[Hotspot] = []
    for key, (cc, nc, tt, ct, callers) in sorted(kept.items(), key=lambda kv: -kv[1][2])[:top]:
        filename, line, name = key
        called_from = None
        if not user[key]:
            caller = top_caller(callers)
            if caller is not None:
                callee = _call_name(name) if filename == "~" else name
                at = _call_line(caller[0], caller[1], caller[2], callee)
                called_from = f"{_where(caller[0], at, base)} ({caller[2]})"
        hotspots.append(Hotspot(
            function=name, location=_where(filename, line, base), ncalls=nc,
            primitive_calls=cc, self_ms=round(tt * 1000, 3), total_ms=round(ct * 1000, 3),
            self_share=share(tt), total_share=share(ct), user_code=user[key],
            called_from=called_from))

    findings: list[Finding] = []
    hotspot = _cpu_hotspot(kept, user, total, base)
    if hotspot is not None:
        findings.append(hotspot)
    findings.extend(_repeated_queries(kept, user, base))
    return hotspots, findings, total


def _cpu_hotspot(kept: dict[FuncKey, tuple[Any, ...]], user: dict[FuncKey, bool], total: float,
                 base: Path) -> Finding | None:
    """The user function whose own code plus the library calls it makes cost the most.

    A function's cumulative share would always crown ``main``; its self time
    alone would miss a function that spends its time in ``sorted`` or
    ``cursor.execute``. Charging each library/builtin call to the user
    function that made it names the code the user can change.
    """
    charged: dict[FuncKey, float] = {}
    for key, (_cc, _nc, tt, _ct, callers) in kept.items():
        if user[key]:
            charged[key] = charged.get(key, 0.0) + tt
        else:
            for caller, edge in callers.items():
                if caller in kept and user[caller]:
                    charged[caller] = charged.get(caller, 0.0) + edge[3]
    if not charged:
        return None
    key, seconds = max(charged.items(), key=lambda kv: kv[1])
    seconds = min(seconds, kept[key][3])
    pct = 100.0 * seconds / total
    if pct <= HOTSPOT_SHARE:
        return None
    _cc, nc, tt, ct, _callers = kept[key]
    own = 100.0 * tt / total
    location = _where(key[0], key[1], base)
    return Finding(
        kind="cpu_hotspot",
        severity="high" if pct > 50 else "medium",
        summary=f"{key[2]} ({location}) accounts for {pct:.0f}% of the profiled time "
                f"({own:.0f}% in its own code, {pct - own:.0f}% in library or builtin "
                "calls it makes)",
        location=location,
        evidence=f"{nc} calls, self {tt * 1000:.1f} ms, cumulative {ct * 1000:.1f} ms",
    )


def _repeated_queries(kept: dict[FuncKey, tuple[Any, ...]], user: dict[FuncKey, bool],
                      base: Path) -> list[Finding]:
    """DB-API ``execute`` called more than 100 times from one user call site (N+1)."""
    sites: dict[str, tuple[int, str, float]] = {}
    for key, value in kept.items():
        if not _is_db_execute(key):
            continue
        for caller, edge in value[4].items():
            calls, seconds = edge[0], edge[3]
            if caller not in kept or calls <= REPEATED_QUERY_CALLS:
                continue
            # Walk up through library wrappers (an ORM, a driver's Python
            # layer) to the first frame of user code.
            callee_name, site = "execute", caller
            for _ in range(8):
                if user.get(site, False):
                    break
                parent_callers = {k: v for k, v in kept[site][4].items() if k in kept}
                if not parent_callers:
                    break
                callee_name = site[2]
                site = max(parent_callers, key=lambda k: parent_callers[k][0])
            if not user.get(site, False):
                site, callee_name = caller, "execute"
            line = _call_line(site[0], site[1], site[2], callee_name)
            location = _where(site[0], line, base)
            before = sites.get(location, (0, site[2], 0.0))
            sites[location] = (before[0] + calls, site[2], before[2] + seconds)
    return [
        Finding(
            kind="repeated_query",
            severity="high",
            summary=f"{count} database queries issued from one call site in {func} "
                    f"({location}), taking {seconds * 1000:.0f} ms: an N+1 query loop; "
                    "fetch the rows in one query (JOIN or IN (...)) or batch them",
            location=location,
            evidence=f"execute called {count} times from {func}",
        )
        for location, (count, func, seconds) in sorted(sites.items(), key=lambda kv: -kv[1][0])
    ]


# --------------------------------------------------------------------------- subprocess


#: (runner's JSON, pstats path or None, stdout tail, the temp folder holding them)
_RunOutput = tuple[dict[str, Any], Path | None, str, ScratchDir]


async def _run_once(script: Path, args: list[str], cwd: Path, timeout: float, *,
                    profile: bool, memory: Literal["peak", "sites"] | None,
                    progress: ProgressCallback | None,
                    label: str, module: str | None = None) -> _RunOutput:
    """Run the script once under the runner; raise ToolError on timeout or failure."""
    tmp = ScratchDir("perfagent-profile-")
    folder = Path(tmp.name)
    try:
        runner = folder / RUNNER_NAME
        runner.write_text(RUNNER_SOURCE, encoding="utf-8")
        cfg = {"script": str(script), "module": module, "cwd": str(cwd),
               "args": args, "profile": profile, "memory": memory,
               "stats_path": str(folder / "profile.pstats"),
               "meta_path": str(folder / "meta.json")}
        cfg_path = folder / "config.json"
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
        out, err = folder / "stdout.txt", folder / "stderr.txt"
        code, timed_out = await run_bounded([sys.executable, str(runner), str(cfg_path)], cwd,
                                       timeout, out, err, progress, label)
        stderr = tail(read_tail(err))
        if timed_out:
            raise ToolError(
                "timeout",
                f"{script.name} did not finish within {timeout:g} s and was killed"
                + (f"; stderr ends with:\n{stderr}" if stderr else ""),
                "raise timeout, give the script a smaller input, or look for a hang",
            )
        if code != 0:
            how = (f"was killed by signal {-code}" if code is not None and code < 0
                   else f"exited with code {code}")
            raise ToolError(
                "script_failed",
                f"{script.name} {how}" + (f"; stderr ends with:\n{stderr}" if stderr else ""),
                "fix the error above or pass the arguments the script needs, then profile "
                "again",
            )
        meta_path = Path(cfg["meta_path"])
        if not meta_path.exists():
            raise ToolError("profile_failed", f"{script.name} exited without profile data",
                            "the script may call os._exit(); profile a function that returns")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        stats = Path(cfg["stats_path"]) if profile else None
        return meta, stats, tail(read_tail(out), 10), tmp
    except BaseException:
        tmp.cleanup()
        raise


def _module_file(base: Path, module: str) -> Path:
    """The file ``python -m module`` would run from ``base``, which must be in the workspace.

    Only modules inside the workspace may run: an installed module is not the
    user's code, and running arbitrary ones would widen what the tool executes.
    """
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
        raise ToolError("invalid_module", f"{module!r} is not a dotted module name",
                        "give a name such as app.worker")
    stem = base.joinpath(*module.split("."))
    for candidate in (stem.with_suffix(".py"), stem / "__main__.py"):
        if candidate.is_file():
            return resolve_in_workspace(candidate)
    raise ToolError("not_found", f"module {module} is not in {base}",
                    "run from the folder that contains the package (cwd) or give a script path")


async def _profile_script(inp: ProfileInput, progress: ProgressCallback | None) -> ProfileResult:
    if inp.module is not None:
        cwd = resolve_in_workspace(inp.cwd) if inp.cwd else workspace_roots()[0]
        script = _module_file(cwd, inp.module)
    else:
        assert inp.script is not None
        script = resolve_in_workspace(inp.script)
        if not script.is_file():
            raise ToolError("not_found", f"{inp.script} is not a file",
                            "give the path of a Python script")
        cwd = resolve_in_workspace(inp.cwd) if inp.cwd else script.parent
    if not cwd.is_dir():
        raise ToolError("not_found", f"{inp.cwd} is not a folder",
                        "give an existing folder inside the workspace as cwd")
    base = script.parent
    notes = [OVERHEAD_NOTE, "only the main thread is profiled; time in other threads "
             "shows up as waiting in the main thread"]
    if progress is not None:
        progress(0.0, f"running {script.name} under cProfile")
    meta, stats_path, stdout_tail, tmp = await _run_once(
        script, inp.args, cwd, inp.timeout, profile=True, memory=None,
        progress=progress, label=f"profiling {script.name}", module=inp.module)
    try:
        assert stats_path is not None
        hotspots, findings, total = _analyse_pstats(stats_path, str(script), base, inp.top)
    finally:
        tmp.cleanup()

    target = str(script)
    wall_ms, cpu_ms = meta["wall_s"] * 1000, meta["cpu_s"] * 1000
    measurements = [
        Measurement(name="wall_time", value=round(wall_ms, 3), unit="ms",
                    source="profile_python", target=target),
        Measurement(name="cpu_time", value=round(cpu_ms, 3), unit="ms",
                    source="profile_python", target=target),
    ]
    result = ProfileResult(
        mode="cprofile", script=target, args=list(inp.args), exit_code=meta["exit_code"],
        wall_time_ms=round(wall_ms, 3), cpu_time_ms=round(cpu_ms, 3),
        profiled_time_ms=round(total * 1000, 3), hotspots=hotspots, findings=findings,
        measurements=measurements, stdout_tail=stdout_tail, notes=notes)

    if inp.memory:
        # Runs of their own: tracemalloc slows allocation-heavy code many
        # times over, which would distort the CPU shares if both ran together.
        # The first run gives the exact peak; when most of that memory was
        # gone by the end, a second run snapshots the sites near the peak
        # (its snapshots allocate too, so its own peak is not used).
        mem, _, _, mem_tmp = await _run_once(
            script, inp.args, cwd, inp.timeout, profile=False, memory="peak",
            progress=progress, label=f"tracing the memory peak of {script.name}",
            module=inp.module)
        mem_tmp.cleanup()
        peak = int(mem["memory_peak"])
        sites, when = mem["sites"], f"at the end of the run ({mem['memory_end']} bytes traced)"
        if mem["memory_end"] < peak / 2:
            again, _, _, again_tmp = await _run_once(
                script, inp.args, cwd, inp.timeout, profile=False, memory="sites",
                progress=progress, label=f"sampling allocation sites of {script.name}",
                module=inp.module)
            again_tmp.cleanup()
            if "sites_size" in again:
                sites = again["sites"]
                when = (f"sampled while {again['sites_size']} bytes were traced "
                        f"(peak {peak})")
        result.memory_peak_bytes = peak
        result.allocation_sites = [
            AllocationSite(location=_where(f, line, base), size_bytes=size, count=count)
            for f, line, size, count in sites]
        result.allocation_sites_when = when
        result.measurements.append(Measurement(name="memory_peak", value=float(mem["memory_peak"]),
                                        unit="bytes", source="profile_python", target=target))
        notes.append("memory is what tracemalloc traced (Python allocations, in separate "
                     "runs), not RSS; allocation sites near the peak are sampled every "
                     "10 ms, so a peak shorter than that may show its size, not its sites")

    if inp.measure_overhead:
        plain, _, _, plain_tmp = await _run_once(
            script, inp.args, cwd, inp.timeout, profile=False, memory=None,
            progress=progress, label=f"timing {script.name} without the profiler",
            module=inp.module)
        plain_tmp.cleanup()
        plain_ms = plain["wall_s"] * 1000
        result.wall_time_unprofiled_ms = round(plain_ms, 3)
        result.measurements.append(Measurement(name="wall_time_unprofiled", value=round(plain_ms, 3),
                                        unit="ms", source="profile_python", target=target))
        if plain_ms > 0:
            result.overhead_ratio = round(wall_ms / plain_ms, 3)
            result.measurements.append(Measurement(name="profiler_overhead",
                                            value=result.overhead_ratio, unit="x",
                                            source="profile_python", target=target))

    lines = [f"{script.name} ran {wall_ms:.0f} ms wall, {cpu_ms:.0f} ms CPU under cProfile"]
    if result.overhead_ratio:
        lines[0] += (f" ({result.overhead_ratio:.1f}x its unprofiled "
                     f"{result.wall_time_unprofiled_ms:.0f} ms)")
    if hotspots:
        h = hotspots[0]
        lines.append(f"top self time: {h.function} at {h.called_from or h.location} "
                     f"({h.self_share:.0f}% self, {h.ncalls} calls)")
    if findings:
        lines.append("findings: " + "; ".join(
            f"{f.kind} at {f.location}" + (f" ({f.evidence})" if f.kind == "repeated_query" else "")
            for f in findings[:3]))
    if inp.memory and result.memory_peak_bytes is not None:
        lines[0] += f"; peak traced memory {result.memory_peak_bytes / 1e6:.1f} MB"
    result.summary = "\n".join(lines[:3])
    if progress is not None:
        progress(1.0, lines[0])
    return result


# --------------------------------------------------------------------------- py-spy


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).with_name("py-spy")  # venv's bin/ when not on PATH
    return str(beside) if beside.exists() else None


_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _parse_raw(text: str) -> list[tuple[list[FuncKey], int]]:
    """py-spy's raw (collapsed) stacks: "frame;frame;... count", root first."""
    stacks: list[tuple[list[FuncKey], int]] = []
    for row in text.splitlines():
        stack, _, count = row.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames: list[FuncKey] = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            if match:
                frames.append((match.group("file"), int(match.group("line") or 0),
                               match.group("name")))
            else:
                frames.append(("~", 0, frame))
        stacks.append((frames, int(count)))
    return stacks


async def _sample_pid(inp: ProfileInput, progress: ProgressCallback | None) -> ProfileResult:
    """Sample a running process with py-spy (no restart, almost no overhead)."""
    assert inp.pid is not None
    exe = _py_spy()
    if exe is None:
        raise ToolError("missing_dependency", "py-spy is not installed",
                        "pip install py-spy (then call again with the same pid)")
    try:
        os.kill(inp.pid, 0)
    except ProcessLookupError:
        raise ToolError("not_found", f"no process with pid {inp.pid}",
                        "check the pid of the running Python program") from None
    except PermissionError:
        pass  # exists but is not ours; py-spy will say whether it can read it
    rate = 100
    base = Path.cwd()
    with ScratchDir("perfagent-pyspy-") as tmp:
        folder = Path(tmp)
        raw_path, out, err = folder / "raw.txt", folder / "out.txt", folder / "err.txt"
        cmd = [exe, "record", "--pid", str(inp.pid), "--duration", str(max(1, round(inp.duration))),
               "--rate", str(rate), "--format", "raw", "--function", "--full-filenames",
               "--output", str(raw_path)]
        if progress is not None:
            progress(0.0, f"sampling pid {inp.pid} with py-spy for {inp.duration:g} s")
        code, timed_out = await run_bounded(cmd, folder, inp.duration + 30, out, err, progress,
                                       f"sampling pid {inp.pid}")
        stderr = tail(read_tail(err) + read_tail(out))
        if timed_out or code != 0 or not raw_path.exists():
            raise ToolError("sampling_failed",
                            f"py-spy could not sample pid {inp.pid}"
                            + (f": {stderr}" if stderr else ""),
                            "the process must be a Python program you may ptrace "
                            "(run as the same user or root)")
        stacks = _parse_raw(raw_path.read_text(encoding="utf-8", errors="replace"))

    total = sum(count for _, count in stacks)
    if not total:
        raise ToolError("no_samples", f"py-spy took no sample of pid {inp.pid} in "
                        f"{inp.duration:g} s", "the process was idle; sample it under load")
    own: dict[FuncKey, int] = {}
    inclusive: dict[FuncKey, int] = {}
    charged: dict[FuncKey, int] = {}
    for frames, count in stacks:
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        for key in set(frames):
            inclusive[key] = inclusive.get(key, 0) + count
        # Charge the sample to the innermost user frame: the code one can change.
        for key in reversed(frames):
            if _is_user_file(key[0]):
                charged[key] = charged.get(key, 0) + count
                break
    interval_ms = 1000.0 / rate
    hotspots = [
        Hotspot(function=key[2], location=_where(key[0], key[1], base), ncalls=0,
                primitive_calls=0, self_ms=round(n * interval_ms, 1),
                total_ms=round(inclusive[key] * interval_ms, 1),
                self_share=round(100.0 * n / total, 2),
                total_share=round(100.0 * inclusive[key] / total, 2),
                user_code=_is_user_file(key[0]))
        for key, n in sorted(own.items(), key=lambda kv: -kv[1])[: inp.top]
    ]
    findings: list[Finding] = []
    if charged:
        key, n = max(charged.items(), key=lambda kv: kv[1])
        pct = 100.0 * n / total
        if pct > HOTSPOT_SHARE:
            location = _where(key[0], key[1], base)
            findings.append(Finding(
                kind="cpu_hotspot", severity="high" if pct > 50 else "medium",
                summary=f"{key[2]} ({location}) is on top of the user stack in {pct:.0f}% "
                        "of the samples",
                location=location, evidence=f"{n} of {total} samples at {rate}/s"))
    summary = f"py-spy took {total} samples of pid {inp.pid} over {inp.duration:g} s"
    if hotspots:
        summary += f"; top: {hotspots[0].function} at {hotspots[0].location} " \
                   f"({hotspots[0].self_share:.0f}% of samples)"
    return ProfileResult(
        mode="py-spy", pid=inp.pid, samples=total, hotspots=hotspots, findings=findings,
        summary=summary,
        measurements=[Measurement(name="profile_samples", value=float(total), unit="count",
                                  source="profile_python", target=f"pid {inp.pid}")],
        notes=["ncalls is 0 in py-spy mode: sampling sees where time goes, not call counts; "
               "times are samples x the 10 ms sampling interval",
               "idle (sleeping or waiting) stacks are not sampled"])


async def run(inp: ProfileInput, progress: ProgressCallback | None = None) -> ProfileResult:
    """Profile a script (cProfile, in a subprocess) or sample a running pid (py-spy)."""
    if inp.pid is not None:
        return await _sample_pid(inp, progress)
    return await _profile_script(inp, progress)


SPEC = ToolSpec(
    name="profile_python",
    description=(
        "Run a Python script (inside the workspace) under cProfile in a subprocess with a "
        "timeout and report where the time goes: hotspots by self time with shares, the "
        "calling line of hot builtins (e.g. sqlite3 execute), CPU hotspot and N+1 "
        "repeated-query findings, wall and CPU time; optionally peak memory and top "
        "allocation sites (tracemalloc), or sample a running process by pid with py-spy."
    ),
    input_model=ProfileInput,
    result_model=ProfileResult,
    run=run,
    runs_code=True,
)

__all__ = ["SPEC", "Hotspot", "ProfileInput", "ProfileResult", "run"]
