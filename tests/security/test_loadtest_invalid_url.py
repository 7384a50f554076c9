"""A malformed URL is a structured ``invalid_url`` error, never a traceback.

Checked through the tool's own ``run`` and through the agent's toolbox, which
is what a model's tool call reaches; nothing may connect anywhere first.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from agent import toolbox
from tools.base import ToolError
from tools.loadtest import LoadTestInput, run

PORT = 48213  # nothing listens there, and nothing may try to

MALFORMED = [
    f"http://a[b@127.0.0.1:{PORT}/",  # an unbalanced bracket (urlsplit's ValueError)
    f"http://[127.0.0.1:{PORT}/",
    "http://127.0.0.1:99999/",  # port out of range
    "http://127.0.0.1:80a/",  # port not a number
    "http://127.0.0.1:-1/",
    f"http://a\\b@127.0.0.1:{PORT}/",  # urlsplit takes it, aiohttp's yarl refuses it
    f"http://127.0.0.1:{PORT}/a\r\nX-Injected: 1",  # urlsplit silently drops the line break
    f"http://127.0.0.1:{PORT}/\tx",
    f"http://127.0.0.1:{PORT}/a b",
    f"ftp://127.0.0.1:{PORT}/",
    "http:///nohost",
    "not a url",
    "",
]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any connection attempt fails the test: an invalid URL is refused before traffic."""
    attempts: list[Any] = []

    def trap(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", trap)
    monkeypatch.setattr(socket.socket, "connect_ex", trap)
    return attempts


@pytest.mark.parametrize("url", MALFORMED)
async def test_run_raises_invalid_url(url: str, _no_network: list[Any]) -> None:
    inp = LoadTestInput(url=url, rate=5, duration=1)  # the input model takes any text
    with pytest.raises(ToolError) as err:
        await run(inp)
    assert err.value.code == "invalid_url", err.value
    assert err.value.hint and "http://127.0.0.1:8000" in err.value.hint
    assert _no_network == []


@pytest.mark.parametrize("engine", ["builtin", "locust"])
@pytest.mark.parametrize("url", MALFORMED)
async def test_toolbox_returns_invalid_url(url: str, engine: str, _no_network: list[Any]
                                           ) -> None:
    args: dict[str, Any] = {"url": url, "rate": 5, "duration": 1, "engine": engine,
                            "emit_locustfile": True}
    outcome = await toolbox.execute("load_test", args, allowed={"load_test"})
    payload = json.loads(outcome.content)
    assert payload["ok"] is False and payload["error"]["code"] == "invalid_url", payload
    assert payload["error"]["hint"]
    assert _no_network == []
