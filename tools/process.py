"""Running user code in a subprocess, bounded in time, for the tools that execute code.

The child gets its own process group so a timeout, an error or a cancelled
call kills it together with anything it started: a profiled script must never
outlive the tool call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from tools.base import ProgressCallback, ToolError


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
