"""The reaper: cleans up after a perfagent process that died without cleaning up itself.

perfagent starts it once (the first time a tool starts a child process or
makes a scratch folder) as a separate program in a session of its own, with
a pipe on its standard input. perfagent tells it, one JSON line at a time,
which process groups and folders it owns right now::

    ["+group", 4242]   ["-group", 4242]   ["+dir", "/tmp/perfagent-x"]   ["-dir", "..."]

When the pipe closes, perfagent is gone however it ended (``kill -9``
included, where nothing in perfagent itself gets to run): the reaper kills
every group still listed and removes every folder still listed, then exits.
It imports nothing but the standard library and never touches anything it
was not told about.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time

#: Removal passes over the folders, SWEEP_INTERVAL_S apart, until none reappears twice.
SWEEPS = 20
SWEEP_INTERVAL_S = 0.25


def main() -> int:
    # A terminal's Ctrl-C reaches the whole foreground group; the reaper must
    # outlive perfagent long enough to clean up after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    folders: set[str] = set()
    for line in sys.stdin.buffer:
        try:
            verb, item = json.loads(line)
        except (ValueError, TypeError):
            continue
        if verb == "+group":
            groups.add(int(item))
        elif verb == "-group":
            groups.discard(int(item))
        elif verb == "+dir":
            folders.add(str(item))
        elif verb == "-dir":
            folders.discard(str(item))
    for group in groups:
        with contextlib.suppress(OSError):  # already gone
            os.killpg(group, signal.SIGKILL)
    # A process dying with perfagent (a browser is taken down by its driver, not
    # by this reaper) may still write into its folder for a moment: remove the
    # folders again until they stay gone.
    quiet = 0
    for _ in range(SWEEPS):
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        time.sleep(SWEEP_INTERVAL_S)
        quiet = 0 if any(os.path.exists(folder) for folder in folders) else quiet + 1
        if quiet == 2:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
