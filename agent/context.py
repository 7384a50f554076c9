"""Run settings: one dataclass, every field overridable from the environment.

Precedence for the model: an explicit value (``--model``) > ``PERFAGENT_MODEL``
> ``anthropic:<default>`` when ``ANTHROPIC_API_KEY`` is set > ``offline``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


def default_state_dir() -> Path:
    """Where threads, baselines and caches live: ``PERFAGENT_STATE_DIR`` or the user's data dir."""
    override = os.environ.get("PERFAGENT_STATE_DIR")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("perfagent", appauthor=False))


def default_model() -> str:
    explicit = os.environ.get("PERFAGENT_MODEL")
    if explicit:
        return explicit
    if os.environ.get("ANTHROPIC_API_KEY"):
        from agent.models import DEFAULT_ANTHROPIC_SPEC

        return DEFAULT_ANTHROPIC_SPEC
    return "offline"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class Settings:
    """What a run needs to know besides the user's message."""

    model: str = field(default_factory=default_model)
    persona: str = field(default_factory=lambda: os.environ.get(
        "PERFAGENT_PERSONA", "performance-engineer"))
    state_dir: Path = field(default_factory=default_state_dir)
    #: agent <-> tools round trips per turn before the model must answer.
    max_steps: int = field(default_factory=lambda: _env_int("PERFAGENT_MAX_STEPS", 8))
    #: times failed checks may send a draft back before it is finalized as is.
    max_revisions: int = field(default_factory=lambda: _env_int("PERFAGENT_MAX_REVISIONS", 2))
    #: how deep sub-agents may delegate further (1: the main agent's delegates only).
    max_delegation_depth: int = field(
        default_factory=lambda: _env_int("PERFAGENT_MAX_DELEGATION_DEPTH", 1))
    #: whether tools that run code or read files are offered (a public server turns this off).
    allow_code_tools: bool = True
    #: whether turns serve a server bound to a public address: tools then reach only
    #: the hosts the operator lists (not this host's loopback) and hide other
    #: processes' command lines (see SECURITY.md).
    public_server: bool = False
    #: where measurements are remembered as baselines (default: the state directory);
    #: the eval runner gives each case its own, so one run's numbers never leak into
    #: another case's answer.
    baselines_dir: Path | None = None

    @property
    def baselines_root(self) -> Path:
        return self.baselines_dir or self.state_dir

    @property
    def checkpoint_path(self) -> Path:
        return self.state_dir / "threads.sqlite"

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the non-None values of ``changes`` applied."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None and k in known})
