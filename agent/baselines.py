"""Baseline memory: every measurement a turn makes is kept, so the next turn can say
what changed ("p95 181 ms -> 240 ms since 2026-11-20").

Stored in SQLite under the state directory (``baselines.sqlite``), one row
per measurement, with its target, metric, value, unit, time and the git
revision of the workspace when there is one. Reads and writes are small and
synchronous; the graph runs them in a worker thread.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    source TEXT NOT NULL,
    budget TEXT,
    passed INTEGER,
    measured_at TEXT NOT NULL,
    git_rev TEXT,
    thread_id TEXT
);
CREATE INDEX IF NOT EXISTS measurements_by_target ON measurements (target, metric, measured_at);
"""


class Baseline(BaseModel):
    """One stored measurement."""

    target: str
    metric: str
    value: float
    unit: str
    source: str
    budget: str | None = None
    passed: bool | None = None
    measured_at: str
    git_rev: str | None = None
    thread_id: str | None = None

    @property
    def day(self) -> str:
        return self.measured_at[:10]


class BaselineStoreError(Exception):
    """The store cannot be opened or read; the message names the file and the fix."""


@cache
def git_revision(folder: str) -> str | None:
    """The short git revision of ``folder``, or None outside a repository (cached per process)."""
    try:
        done = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


class BaselineStore:
    """The measurements table of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "baselines.sqlite"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5)
            conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise BaselineStoreError(
                f"cannot open the baseline store {self.path}: {exc}; move the file aside to "
                "start a new one (earlier baselines stay in the moved file)") from None
        try:
            with conn:
                yield conn
        except sqlite3.Error as exc:
            raise BaselineStoreError(f"baseline store {self.path}: {exc}") from None
        finally:
            conn.close()

    def record(self, measurements: Iterable[dict[str, Any]], *, thread_id: str | None = None,
               git_rev: str | None = None, when: datetime | None = None) -> int:
        """Store measurements (the TurnResult shape); returns how many were stored."""
        stamp = (when or datetime.now(UTC)).isoformat(timespec="seconds")
        rows = [
            (m.get("target") or "", m["name"], float(m["value"]), m.get("unit", ""),
             m.get("source", ""), m.get("budget"),
             None if m.get("passed") is None else int(bool(m["passed"])),
             stamp, git_rev, thread_id)
            for m in measurements
        ]
        if not rows:
            return 0
        with self._connect() as conn:
            conn.executemany(
                "INSERT INTO measurements (target, metric, value, unit, source, budget, passed, "
                "measured_at, git_rev, thread_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def _select(self, where: str, params: tuple[Any, ...]) -> list[Baseline]:
        if not self.path.exists():
            return []
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT target, metric, value, unit, source, budget, passed, measured_at, "
                f"git_rev, thread_id FROM measurements {where}", params).fetchall()
        fields = list(Baseline.model_fields)
        return [Baseline(**{**dict(zip(fields, r, strict=True)),
                            "passed": None if r[6] is None else bool(r[6])}) for r in rows]

    def latest_for(self, named: Iterable[str], *, before: str | None = None) -> list[Baseline]:
        """The latest stored value of each (target, metric) whose target contains a name.

        ``named`` are the targets a user mentions (URLs, paths, DSNs): a stored
        target matches when it contains one of them, so "/orders" finds
        "http://127.0.0.1:8000/orders?customer=17".
        """
        names = [n for n in dict.fromkeys(named) if n]
        if not names:
            return []
        clauses = " OR ".join("instr(target, ?) > 0" for _ in names)
        window = " AND measured_at < ?" if before else ""
        latest = self._select(
            f"WHERE id IN (SELECT max(id) FROM measurements WHERE ({clauses}){window} "
            "GROUP BY target, metric) ORDER BY target, metric",
            (*names, *([before] if before else [])))
        return latest

    def history(self, target: str, metric: str | None = None) -> list[Baseline]:
        """Every stored measurement of targets containing ``target``, oldest first."""
        if metric:
            return self._select("WHERE instr(target, ?) > 0 AND metric = ? ORDER BY id",
                                (target, metric))
        return self._select("WHERE instr(target, ?) > 0 ORDER BY id", (target,))

    def targets(self) -> list[dict[str, Any]]:
        """Each target with its number of measurements and the time of the latest."""
        if not self.path.exists():
            return []
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT target, count(*), count(DISTINCT metric), max(measured_at) "
                "FROM measurements GROUP BY target ORDER BY max(measured_at) DESC").fetchall()
        return [{"target": t, "measurements": n, "metrics": k, "latest": at}
                for t, n, k, at in rows]


def changes(current: Iterable[dict[str, Any]], earlier: Iterable[dict[str, Any]],
            ) -> list[dict[str, Any]]:
    """Pair this turn's measurements with the earlier baseline of the same target and metric."""
    before = {(b["target"], b["metric"]): b for b in earlier}
    paired = []
    for m in current:
        old = before.get((m.get("target") or "", m["name"]))
        if old is not None and old.get("unit") == m.get("unit"):
            paired.append({"metric": m["name"], "target": m.get("target") or "",
                           "unit": m.get("unit", ""), "before": old["value"],
                           "now": m["value"], "since": str(old["measured_at"])[:10],
                           "git_rev": old.get("git_rev")})
    return paired
