"""Shared fixtures: every test gets its own state directory and workspace."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.demo import slow_service
from examples.shop import build_database

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """Threads, baselines and the knowledge store go to a temporary folder; no API key
    leaks in. Embedded vectors are shared across the session's tests (and their
    subprocesses): the playbooks are the same text every time."""
    state = tmp_path / "state"
    monkeypatch.setenv("PERFAGENT_STATE_DIR", str(state))
    monkeypatch.setenv("PERFAGENT_EMBEDDING_CACHE",
                       str(tmp_path_factory.getbasetemp() / "embeddings"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("PERFAGENT_MODEL", raising=False)
    return state


def unavailable(reason: str) -> None:
    """Skip a test whose component is missing on a developer's machine; fail it in CI.

    CI (``CI=true``) installs every component in ``.ci/run``, so a missing one
    there is a broken install step, never a reason to pass silently.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}: CI must install it (see .ci/run)")
    pytest.skip(reason)


def require_module(name: str) -> None:
    """Like ``pytest.importorskip``, but a failure in CI."""
    try:
        __import__(name)
    except ImportError:
        unavailable(f"the Python package {name!r} is not installed")


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the example shop: missing indexes and all."""
    return build_database(tmp_path_factory.mktemp("shop") / "shop.db", customers=200,
                          orders=10_000)


@pytest.fixture(scope="module")
def service(shop_db: Path) -> Iterator[str]:
    """The deliberately slow example service on a free loopback port."""
    with slow_service(shop_db) as url:
        yield url
