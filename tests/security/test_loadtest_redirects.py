"""load_test never follows a redirect, counts 3xx answers, and says so.

A redirect followed would carry the load to a host nobody checked; a redirect
counted silently as a success would make a fast 302 look like a fast page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.security.test_loadtest_rebinding import CountingServer, counting_server  # noqa: F401
from tools.loadtest import LoadTestInput, run


@pytest.mark.parametrize("engine", [{"engine": "builtin"}, {"engine": "locust", "workers": 1}],
                         ids=["builtin", "locust"])
async def test_redirects_are_counted_reported_and_not_followed(
        counting_server: Callable[..., CountingServer],  # noqa: F811
        engine: dict[str, Any]) -> None:
    elsewhere = counting_server()  # where the redirect points: must see no request
    server = counting_server(302, f"http://127.0.0.1:{elsewhere.port}/landing")
    result = await run(LoadTestInput(url=f"http://127.0.0.1:{server.port}/", rate=20,
                                     duration=1, timeout=2, **engine))
    n = result.requests
    assert n >= 10 and result.status_counts == {"302": n}
    assert result.redirects == n
    assert result.errors == 0  # an answer, not a failure; but not a page either
    assert f"{n} of {n} answers were redirects (3xx), not followed" in result.summary
    finding = next(f for f in result.findings if f.kind == "redirects_not_followed")
    assert finding.severity == "medium" and finding.evidence == f"302: {n}"
    assert {m.name: m.value for m in result.measurements}["redirects"] == n
    assert server.requests == n + 1  # and the probe
    assert elsewhere.requests == 0  # neither the probe nor the load followed a redirect


async def test_no_redirect_no_mention(counting_server: Callable[..., CountingServer],  # noqa: F811
                                      ) -> None:
    server = counting_server()
    result = await run(LoadTestInput(url=f"http://127.0.0.1:{server.port}/", rate=20,
                                     duration=0.5, timeout=2))
    assert result.redirects == 0 and "redirect" not in result.summary
    assert not any(f.kind == "redirects_not_followed" for f in result.findings)
    assert "redirects" not in {m.name for m in result.measurements}
