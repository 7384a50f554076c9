"""Model providers behind one interface, chosen by a spec string.

``offline`` (the deterministic engine), ``anthropic:<model>`` (Claude through
the ``anthropic`` SDK) and ``openai:<model>`` (any OpenAI-compatible server).
Providers import their SDKs only when built, so choosing ``offline`` never
loads an HTTP client.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from agent.models.anthropic import DEFAULT_ANTHROPIC_MODEL
from agent.models.base import ChatModel, ModelError, ModelRequest, ToolSchema

if TYPE_CHECKING:
    from agent.persona import Persona

DEFAULT_ANTHROPIC_SPEC = f"anthropic:{DEFAULT_ANTHROPIC_MODEL}"
VALID_SPECS = ("offline", "anthropic:<model>", "openai:<model>")


class UnknownModelError(ValueError):
    """The model spec names no provider; the message lists the valid forms."""


def parse_spec(spec: str) -> tuple[str, str]:
    """``"anthropic:claude-x"`` -> ``("anthropic", "claude-x")``; validates the provider."""
    provider, _, name = spec.strip().partition(":")
    if provider == "offline" and not name:
        return "offline", ""
    if provider in ("anthropic", "openai"):
        if provider == "anthropic" and not name:
            return provider, DEFAULT_ANTHROPIC_MODEL
        if name:
            return provider, name
    raise UnknownModelError(
        f"unknown model spec {spec!r}; valid specs: {', '.join(VALID_SPECS)} "
        f"(e.g. {DEFAULT_ANTHROPIC_SPEC})"
    )


def build_model(spec: str, persona: Persona) -> ChatModel:
    """The provider for ``spec``. Missing credentials fail here, before the turn starts."""
    provider, name = parse_spec(spec)
    if provider == "offline":
        from agent.models.offline import OfflineEngine

        return OfflineEngine(persona)
    if provider == "anthropic":
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise ModelError(
                "anthropic models need an API key",
                provider="anthropic", retryable=False,
                hint="set ANTHROPIC_API_KEY, or use --model offline",
            )
        from agent.models.anthropic import AnthropicModel

        return AnthropicModel(name)
    from agent.models.openai import OpenAICompatibleModel

    return OpenAICompatibleModel(name)


__all__ = [
    "DEFAULT_ANTHROPIC_MODEL",
    "DEFAULT_ANTHROPIC_SPEC",
    "ChatModel",
    "ModelError",
    "ModelRequest",
    "ToolSchema",
    "UnknownModelError",
    "build_model",
    "parse_spec",
]
