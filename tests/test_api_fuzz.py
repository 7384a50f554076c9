"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis): no 500s, and every
response matches what the schema promises."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from agent.server.app import create_app
from agent.server.config import ServerConfig
from tests.serving import served


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The server's URL and a thread that exists on it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PERFAGENT_STATE_DIR", str(tmp_path_factory.mktemp("fuzz-state")))
    try:
        with served(create_app(ServerConfig(max_body_bytes=65_536))) as url:
            thread = httpx.post(f"{url}/v1/threads", json={}).json()["thread_id"]
            yield url, thread
    finally:
        mp.undo()


# The schema the app publishes, read once at collection. (Loading it from the live
# server through a fixture trips schemathesis' lazy loader on pytest 9.)
schema = schemathesis.openapi.from_dict(create_app(ServerConfig()).openapi())


def no_internal_error(ctx: Any, response: Any, case: Any) -> None:
    """No 5xx but a 502 that blames the language model: a request may name a model
    whose server is not running (``openai:x`` with nothing on OPENAI_BASE_URL), and
    saying so is the correct answer, not a server failure."""
    if response.status_code >= 500:
        error = response.json().get("error", {})
        assert response.status_code == 502 and error.get("code") == "model_error", (
            f"server error {response.status_code}: {response.text[:500]}")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema_and_never_fails_with_500(
        case: Any, live: tuple[str, str]) -> None:
    url, thread = live
    if case.path_parameters and len(repr(case.body)) % 2:
        # Random thread ids only ever reach the 404; half the cases use a real thread,
        # so fuzzed messages reach the turn itself.
        case.path_parameters["thread_id"] = thread
    excluded = [not_a_server_error]
    if case.path == "/v1/chat/completions":
        # Its rules beyond the schema (the last message is the user's, the model is a
        # persona name) are checked by the handler; a 4xx for breaking them is correct.
        excluded.append(positive_data_acceptance)
    case.call_and_validate(base_url=url, timeout=120, excluded_checks=excluded,
                           additional_checks=[no_internal_error])
