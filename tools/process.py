"""Running user code in a subprocess, bounded in time, and scratch folders that never outlive us.

The child gets its own process group so a timeout, an error or a cancelled
call kills it together with anything it started: a profiled script must never
outlive the tool call. Nor may it outlive perfagent: every group and every
scratch folder is also reported to the reaper (:mod:`tools.reaper`), a small
separate process that kills and removes what is left when perfagent dies, by
``kill -9`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from tools.base import ProgressCallback, ToolError


class _Reaper:
    """perfagent's end of the pipe to its reaper, started on first use (once per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0  # the pid that started it: a forked child needs its own

    def _pipe(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return self._proc
        try:
            # -I: the reaper imports only the standard library, never the user's modules.
            self._proc = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).with_name("reaper.py"))],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        except OSError:
            self._proc = None  # cleanup then rests on this process alone, as before
        self._owner = os.getpid()
        return self._proc

    def tell(self, verb: str, item: int | str) -> None:
        with self._lock:
            proc = self._pipe()
            if proc is None or proc.stdin is None:
                return
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write(json.dumps([verb, item]).encode() + b"\n")
                proc.stdin.flush()

    @property
    def pid(self) -> int | None:
        """The reaper's pid, once started (tests watch it)."""
        return self._proc.pid if self._proc is not None else None


REAPER = _Reaper()


class ScratchDir:
    """A temporary folder removed when it is done with, or by the reaper if perfagent dies.

    Used like :class:`tempfile.TemporaryDirectory` (``name``, ``cleanup()``, a
    context manager that yields the path as a string).
    """

    def __init__(self, prefix: str) -> None:
        self.name = tempfile.mkdtemp(prefix=prefix)
        REAPER.tell("+dir", self.name)

    def cleanup(self) -> None:
        shutil.rmtree(self.name, ignore_errors=True)
        REAPER.tell("-dir", self.name)

    def keep(self) -> None:
        """Leave the folder for the user (logs a failure points to); the reaper forgets it."""
        REAPER.tell("-dir", self.name)

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *_exc: object) -> None:
        self.cleanup()


@contextlib.contextmanager
def watched_group(pid: int) -> Iterator[None]:
    """Have the reaper kill process group ``pid`` if perfagent dies while it runs."""
    REAPER.tell("+group", pid)
    try:
        yield
    finally:
        REAPER.tell("-group", pid)


async def run_bounded(cmd: list[str], cwd: Path, timeout: float, out: Path, err: Path,
                      progress: ProgressCallback | None, label: str) -> tuple[int | None, bool]:
    """Run ``cmd`` in its own process group; returns (exit code, timed out)."""
    with out.open("wb") as stdout, err.open("wb") as stderr:
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=str(cwd), stdin=asyncio.subprocess.DEVNULL, stdout=stdout,
                stderr=stderr, start_new_session=True)
        except OSError as exc:
            raise ToolError("spawn_failed", f"could not start {cmd[0]}: {exc}",
                            "check that the Python interpreter is runnable") from None
    with watched_group(proc.pid):
        return await _wait_bounded(proc, timeout, progress, label)


async def _wait_bounded(proc: asyncio.subprocess.Process, timeout: float,
                        progress: ProgressCallback | None, label: str) -> tuple[int | None, bool]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while True:
            remaining = started + timeout - loop.time()
            if remaining <= 0:
                kill_group(proc.pid)
                await proc.wait()
                return None, True
            try:
                await asyncio.wait_for(proc.wait(), timeout=min(0.5, remaining))
                return proc.returncode, False
            except TimeoutError:
                if progress is not None:
                    elapsed = loop.time() - started
                    progress(min(elapsed / timeout, 0.99), f"{label}: {elapsed:.1f} s")
    except BaseException:
        # Cancelled or failed while waiting: never leave the script running.
        kill_group(proc.pid)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 5)
        raise


def kill_group(pid: int) -> None:
    """SIGKILL a process group, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def read_tail(path: Path, limit: int = 65536) -> str:
    """The end of a possibly large output file, decoded leniently."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - limit, 0))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
