"""Measurement tools: each really measures, returns typed results, never invents a number.

The registry maps a stable snake_case tool name to the module that defines
it, so ``import tools`` stays cheap and a tool's dependencies load only when
the tool is used. Each tool module exposes a module-level ``SPEC``
(:class:`tools.base.ToolSpec`).

This package knows nothing of ``agent``: it is usable on its own.
"""

from __future__ import annotations

import importlib

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    ToolError,
    ToolErrorInfo,
    ToolResult,
    ToolSpec,
)

#: tool name -> module holding its spec (``SPEC``, or ``module:ATTRIBUTE`` when one
#: family module defines several tools). One module per tool family.
_REGISTRY: dict[str, str] = {
    "load_test": "tools.loadtest",
    "profile_python": "tools.profiling",
    "explain_query": "tools.queries",
    "detect_n_plus_one": "tools.nplusone",
    "analyze_traces": "tools.traces",
    "cache_stats": "tools.caching:SPEC_STATS",
    "simulate_cache": "tools.caching:SPEC_SIMULATE",
    "system_snapshot": "tools.system",
    "web_vitals": "tools.webvitals",
    "check_budgets": "tools.budgets",
}


def tool_names() -> list[str]:
    """Every registered tool name, in a stable order."""
    return list(_REGISTRY)


def get_tool(name: str) -> ToolSpec:
    """The spec of tool ``name``; ToolError(``unknown_tool``) when there is none."""
    module_name = _REGISTRY.get(name)
    if module_name is None:
        raise ToolError(
            "unknown_tool",
            f"there is no tool named {name!r}",
            f"choose one of: {', '.join(_REGISTRY)}",
        )
    module, _, attribute = module_name.partition(":")
    spec: ToolSpec = getattr(importlib.import_module(module), attribute or "SPEC")
    return spec


__all__ = [
    "Finding",
    "Measurement",
    "ProgressCallback",
    "ToolError",
    "ToolErrorInfo",
    "ToolResult",
    "ToolSpec",
    "get_tool",
    "tool_names",
]
