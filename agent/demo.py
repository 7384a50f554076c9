"""``perfagent demo``: the whole pipeline on a real, deliberately slow service.

Builds the example shop database, starts :mod:`examples.slow_service` on a
free loopback port in a subprocess, asks the agent why ``/orders`` is slow,
and always stops the service, even when the turn fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import examples
from agent.context import Settings

EXAMPLES_DIR = Path(examples.__file__).resolve().parent
STARTUP_TIMEOUT_S = 20.0


@contextmanager
def slow_service(db: Path) -> Iterator[str]:
    """Run the example service; yield its base URL; terminate it on exit."""
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES_DIR.parent)}
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.slow_service", "--db", str(db), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = _wait_for_address(process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_address(process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("listening on "):
            return line.split("listening on ", 1)[1].strip()
        if not line and process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"the example service exited early: {stderr.strip()[-500:]}")
    raise RuntimeError("the example service did not start within "
                       f"{STARTUP_TIMEOUT_S:.0f} s")


def demo_question(url: str, db: Path) -> str:
    workload = EXAMPLES_DIR / "orders_workload.py"
    return (
        f"Our orders endpoint {url}/orders?customer=17 is slow in production. "
        f"Find out why. The service reads the SQLite database {db}, and "
        f"{workload} reproduces the request path in-process."
    )


def prepare_demo(settings: Settings) -> Path:
    """Build the demo database under the state directory and confine the tools to
    the examples and that folder. Returns the database path."""
    from examples.shop import build_database

    demo_dir = settings.state_dir / "demo"
    db = build_database(demo_dir / "shop.db")
    os.environ["PERFAGENT_WORKSPACE"] = os.pathsep.join([str(EXAMPLES_DIR), str(demo_dir)])
    return db
