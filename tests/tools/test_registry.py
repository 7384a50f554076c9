"""Every registered tool loads, has a typed schema, and names itself consistently."""

from __future__ import annotations

import pytest

from tools import ToolError, get_tool, tool_names
from tools.base import ToolResult


@pytest.mark.parametrize("name", tool_names())
def test_registered_tool_loads(name: str) -> None:
    spec = get_tool(name)
    assert spec.name == name
    assert spec.description
    schema = spec.json_schema()
    assert schema["type"] == "object" and schema["properties"]
    assert issubclass(spec.result_model, ToolResult)


def test_unknown_tool_lists_the_known_ones() -> None:
    with pytest.raises(ToolError) as caught:
        get_tool("teleport")
    assert caught.value.code == "unknown_tool"
    assert "load_test" in caught.value.hint
