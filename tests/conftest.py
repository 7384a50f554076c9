"""Shared fixtures: every test gets its own state directory and workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Threads, baselines and caches go to a temporary folder; no API key leaks in."""
    state = tmp_path / "state"
    monkeypatch.setenv("PERFAGENT_STATE_DIR", str(state))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("PERFAGENT_MODEL", raising=False)
    return state
