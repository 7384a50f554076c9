"""Child processes and scratch folders die with perfagent, ``kill -9`` included.

A profiled script, a Locust master and its workers, or a browser left running
after perfagent is gone keeps burning the machine (and, for a load test, keeps
sending load); a scratch folder left behind keeps copies of the user's data.
When perfagent is killed outright nothing in it runs, so its reaper does the
cleanup: these tests kill perfagent with SIGKILL mid-measurement and look.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

SLOW_SCRIPT = """\
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(120)
"""


def _wait_for(condition: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _measure(workspace: Path, tool: str, args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PERFAGENT_WORKSPACE": str(workspace)}
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "measure", tool, "--args", args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_profiled_script_and_its_folder_die_with_perfagent(workspace: Path) -> None:
    script = workspace / "slow.py"
    script.write_text(SLOW_SCRIPT)
    marker = workspace / "pid.txt"
    perfagent = _measure(workspace, "profile_python",
                         f'{{"script": "{script}", "args": ["{marker}"], "timeout": 100}}')
    try:
        pid = int(_wait_for(lambda: marker.exists() and marker.read_text(), 30,
                            "the script to start"))
        # The runner lives in the tool's scratch folder: that folder must go too.
        runner = Path(next(a for a in psutil.Process(pid).cmdline() if a.endswith(".py")))
        folder = runner.parent
        assert folder.name.startswith("perfagent-profile-") and folder.is_dir()
        perfagent.send_signal(signal.SIGKILL)
        perfagent.wait(timeout=10)
        _wait_for(lambda: _gone(pid), 10, f"the profiled script (pid {pid}) to be killed")
        _wait_for(lambda: not folder.exists(), 10, f"{folder} to be removed")
    finally:
        if perfagent.poll() is None:
            perfagent.kill()


def _locust_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any("perfagent-locust-" in part for part in cmdline) and "locust" in cmdline:
            found.append(proc)
    return found


def test_a_locust_master_and_workers_die_with_perfagent(workspace: Path,
                                                        http_target: Callable[..., str]) -> None:
    url = http_target("fast")
    before = {p.pid for p in _locust_processes()}
    perfagent = _measure(workspace, "load_test",
                         f'{{"url": "{url}", "rate": 20, "duration": 90, "engine": "locust", '
                         '"workers": 2}')
    try:
        procs = _wait_for(lambda: [p for p in _locust_processes() if p.pid not in before]
                          if len([p for p in _locust_processes() if p.pid not in before]) >= 3
                          else None, 60, "the Locust master and two workers to start")
        folders = {Path(part).parent for p in procs for part in p.cmdline()
                   if part.endswith("locustfile.py")}
        assert len(folders) == 1 and next(iter(folders)).is_dir()
        perfagent.send_signal(signal.SIGKILL)
        perfagent.wait(timeout=10)
        for proc in procs:
            _wait_for(lambda proc=proc: _gone(proc.pid), 10, f"Locust pid {proc.pid} to be killed")
        folder = next(iter(folders))
        _wait_for(lambda: not folder.exists(), 10, f"{folder} to be removed")
    finally:
        if perfagent.poll() is None:
            perfagent.kill()


SLOW_PAGE = """\
import http.server, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html><body><p>loading")
        self.wfile.flush()
        time.sleep(120)  # the page never finishes loading
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _chromium_processes(profile_prefix: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(profile_prefix in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_chromium_and_its_profile_die_with_perfagent(workspace: Path) -> None:
    from tools.webvitals import PROFILE_PREFIX

    page = subprocess.Popen([sys.executable, "-c", SLOW_PAGE], stdout=subprocess.PIPE, text=True)
    perfagent = None
    try:
        assert page.stdout is not None
        port = int(page.stdout.readline())
        before = {p.pid for p in _chromium_processes(PROFILE_PREFIX)}
        perfagent = _measure(workspace, "web_vitals",
                             f'{{"url": "http://127.0.0.1:{port}/", "runs": 1, "timeout": 90}}')
        browsers = _wait_for(lambda: [p for p in _chromium_processes(PROFILE_PREFIX)
                                      if p.pid not in before], 60, "Chromium to start")
        profiles = {Path(part.split("=", 1)[1]) for p in browsers for part in p.cmdline()
                    if part.startswith("--user-data-dir=")}
        assert profiles and all(folder.is_dir() for folder in profiles)
        perfagent.send_signal(signal.SIGKILL)
        perfagent.wait(timeout=10)
        for proc in browsers:
            _wait_for(lambda proc=proc: _gone(proc.pid), 15, f"Chromium pid {proc.pid} to exit")
        for folder in profiles:
            _wait_for(lambda folder=folder: not folder.exists(), 10, f"{folder} to be removed")
    finally:
        if perfagent is not None and perfagent.poll() is None:
            perfagent.kill()
        page.kill()
        page.wait()


def test_the_reaper_leaves_alone_what_finished_normally(workspace: Path) -> None:
    """Cleanup is the tool's own when it ends well; the reaper then has nothing to do and
    exits with perfagent."""
    script = workspace / "quick.py"
    script.write_text("print('done')\n")
    done = subprocess.run(
        [sys.executable, "-c",
         "import asyncio, sys\n"
         "from tools.process import REAPER\n"
         "from tools.profiling import ProfileInput, run\n"
         f"r = asyncio.run(run(ProfileInput(script={str(script)!r})))\n"
         "print(REAPER.pid)\n"],
        env={**os.environ, "PERFAGENT_WORKSPACE": str(workspace)},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    reaper = int(done.stdout.split()[-1])
    _wait_for(lambda: _gone(reaper), 10, "the reaper to exit with its perfagent")
