"""load_test's ``plot_path``: a self-contained latency plot of a real run."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tools import get_tool
from tools.base import ToolError
from tools.loadtest import LatencyStats, LoadTestInput, LoadTestResult, _ms, run, write_plot

MARKS = ("p50", "p90", "p95", "p99", "max")


def _assert_self_contained(text: str, url: str) -> None:
    """No script, no external resource: the only URLs are the target and the SVG namespace."""
    assert "<script" not in text.lower()
    assert not re.search(r"\b(src|href)\s*=", text)
    others = set(re.findall(r"https?://[^\s\"'<]+", text)) - {url, "http://www.w3.org/2000/svg"}
    assert not others, others


async def test_html_plot_of_a_stalling_server(http_target: Callable[..., str], workspace: Path
                                              ) -> None:
    url = http_target("stall", "--stall", "0.2", "--every", "0.7")
    result = await run(LoadTestInput(url=url, rate=200, duration=1.5,
                                     plot_path="reports/latency.html"))
    path = workspace / "reports" / "latency.html"
    assert result.plot_path == str(path) and path.is_file()
    text = path.read_text()
    assert text.startswith("<!doctype html>")
    assert text.count("<svg") == 3  # histogram, percentile curve, latency over time
    assert "log-scale buckets" in text and "Latency over time" in text
    stats = result.latency_ms
    assert stats is not None
    for name in MARKS:  # each statistic is marked on the plot with the measured value
        assert f"{name} {_ms(getattr(stats, name))}" in text, name
    assert f"{result.requests} requests" in text
    _assert_self_contained(text, url)


async def test_svg_plot_is_well_formed_and_closed_model_works(
        http_target: Callable[..., str], workspace: Path) -> None:
    url = http_target("fast")
    result = await run(LoadTestInput(url=url, vus=2, duration=0.5, plot_path="plot.svg"))
    path = workspace / "plot.svg"
    assert result.plot_path == str(path)
    root = ET.parse(path).getroot()  # valid XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = path.read_text()
    assert result.latency_ms is not None
    assert f"p99 {_ms(result.latency_ms.p99)}" in text
    assert "closed model, 2 vus" in text
    _assert_self_contained(text, url)


async def test_no_plot_unless_asked(http_target: Callable[..., str], workspace: Path) -> None:
    result = await run(LoadTestInput(url=http_target("fast"), rate=20, duration=0.2))
    assert result.plot_path is None
    assert list(workspace.iterdir()) == []


@pytest.mark.parametrize(("plot_path", "code"), [
    ("latency.png", "invalid_input"),
    ("/etc/latency.html", "path_outside_workspace"),
])
async def test_bad_plot_paths_are_refused_before_any_traffic(
        workspace: Path, unused_port: int, plot_path: str, code: str) -> None:
    # nobody listens on unused_port: had the load started, the error would be
    # target_unreachable
    with pytest.raises(ToolError) as err:
        await run(LoadTestInput(url=f"http://127.0.0.1:{unused_port}/", rate=5, duration=1,
                                plot_path=plot_path))
    assert err.value.code == code
    assert err.value.hint


def test_plot_of_identical_latencies_and_of_no_answer(tmp_path: Path) -> None:
    stats = LatencyStats(count=3, min=5.0, mean=5.0, p50=5.0, p90=5.0, p95=5.0, p99=5.0,
                         max=5.0)
    result = LoadTestResult(url="http://127.0.0.1:1/", method="GET", model="open", rate=3,
                            planned_duration_s=1, elapsed_s=1, requests=3, errors=0,
                            error_rate=0, throughput=3, latency_ms=stats, summary="3 requests")
    write_plot(tmp_path / "same.svg", result, [0.005] * 3, [0.0, 0.3, 0.6], 0.0)
    ET.parse(tmp_path / "same.svg")
    assert "p95 5.00 ms" in (tmp_path / "same.svg").read_text()
    empty = result.model_copy(update={"latency_ms": None, "requests": 0,
                                      "summary": "no request completed"})
    write_plot(tmp_path / "none.html", empty, [], [], None)
    assert "nothing to plot" in (tmp_path / "none.html").read_text()


def test_plot_path_is_in_the_schema() -> None:
    props = get_tool("load_test").json_schema()["properties"]
    assert ".svg" in props["plot_path"]["description"]
