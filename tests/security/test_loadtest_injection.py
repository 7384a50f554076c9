"""load_test's scenario is data: no text of it ever becomes Python source.

The Locust engine runs a Locust file in its own processes. If the scenario's
text (the URL, method, headers, body, thresholds) were written into that file
as source, a quote in any of it could end a string literal and run code in the
Locust master and workers. These tests give every field hostile text (quotes,
triple quotes, newlines, backslashes) whose code, if it ever ran, would create
a marker folder, and check that the marker never appears and that the file the
user gets holds none of the scenario's text.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from tools.loadtest import LoadTestInput, locust_scenario, locustfile, run

#: The environment variable the hostile code reads its marker path from: a
#: hostile URL cannot hold a "/" in its user part, so the path comes from here.
MARKER_ENV = "PERFAGENT_PWN_MARKER"
#: Creates the marker folder when evaluated as Python.
PAYLOAD = f"str(__import__('os').makedirs(__import__('os').getenv('{MARKER_ENV}'),exist_ok=True))"


def hostile_url(base: str) -> str:
    """``base`` (http://127.0.0.1:PORT/) with the payload in its user part and path.

    The user part ends a triple-quoted string, runs the payload and opens a new
    one; it passes the target check because the host is still 127.0.0.1.
    """
    user = f'a"""+{PAYLOAD}+"""'
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{user}@{rest}x'''+{PAYLOAD}+'''\\\"?q=\"\"\"+{PAYLOAD}+\"\"\""


def hostile_fields() -> dict[str, object]:
    """Headers, body and thresholds that would run the payload if spliced into source."""
    return {
        "headers": {
            "X-Triple": f'"""+{PAYLOAD}+"""',
            "X-Single": f"'''+{PAYLOAD}+'''",
            "X-Backslash": f"\\\\\\'+{PAYLOAD}+'\\",
        },
        # the body may hold anything, newlines included
        "body": f'"""\n{PAYLOAD}\n"""\'\'\'\n{PAYLOAD}\n\'\'\'\\\n\\"+{PAYLOAD}+"\r\n',
        "thresholds": ["p(99)<60000", "http_req_failed rate<=1"],
    }


async def test_hostile_scenario_never_runs_in_the_locust_processes(
        http_target: Callable[..., str],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    url = hostile_url(http_target("fast"))
    result = await run(LoadTestInput(url=url, method="POST", rate=10, duration=1, timeout=2,
                                     engine="locust", workers=1, emit_locustfile=True,
                                     **hostile_fields()))
    assert not marker.exists(), "the scenario's text ran as code in a Locust process"
    # ... and the load really went through Locust, with the hostile text as data
    assert result.engine == "locust" and result.requests >= 5
    assert result.status_counts == {"200": result.requests}
    assert [t.passed for t in result.thresholds] == [True, True]
    assert result.locustfile is not None and result.locust_scenario is not None
    assert PAYLOAD not in result.locustfile
    assert PAYLOAD in result.locust_scenario  # the scenario the user gets, as JSON data


def test_the_locustfile_source_holds_none_of_the_scenario() -> None:
    inp = LoadTestInput(url=hostile_url("http://127.0.0.1:48213/"), method="PATCH", rate=7,
                        duration=3, emit_locustfile=True, **hostile_fields())
    text = locustfile()
    compile(text, "locustfile.py", "exec")
    scenario = locust_scenario(inp)
    texts = [inp.url, scenario["host"], scenario["path"], PAYLOAD, "48213", "PATCH",
             *inp.headers, *inp.headers.values(), inp.body or "", *inp.thresholds]
    assert not [t for t in texts if t in text]
    # the file reads every one of them from the scenario file instead
    assert scenario["method"] == "PATCH" and scenario["headers"] == inp.headers
    assert scenario["body"] == inp.body and scenario["thresholds"] == inp.thresholds
    assert scenario["path"].startswith("/x'''+") and "?q=" in scenario["path"]
    assert "PERFAGENT_LOCUST_SCENARIO" in text and "scenario.json" in text


@pytest.mark.parametrize("method", ['GET"""', "GET\r\nX: 1", "G\\ET", "GET /x", "", "GE'T"])
def test_a_method_that_is_not_an_http_token_is_refused(method: str) -> None:
    with pytest.raises(ValidationError, match="method"):
        LoadTestInput(url="http://127.0.0.1:8000/", method=method)


@pytest.mark.parametrize("headers", [
    {"X-Ok": "one\r\nX-Injected: two"}, {"X-Ok": "a\nb"}, {"X-Ok": "nul\x00"},
    {'X"""': "v"}, {"X Name": "v"}, {"": "v"}, {"X:Y": "v"},
])
def test_headers_that_would_split_the_request_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="header"):
        LoadTestInput(url="http://127.0.0.1:8000/", headers=headers)


def test_payload_really_creates_the_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    """The check above can fail: the payload does create the marker when it runs."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    eval(PAYLOAD)  # the test's own constant, never user input
    assert marker.is_dir()
    eval(PAYLOAD)  # twice, as in a master and its workers: every process runs on
    os.rmdir(marker)
