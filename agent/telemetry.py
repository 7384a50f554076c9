"""Prometheus metrics of perfagent's own turns: latency, tools, checks, tokens.

Metrics are off until :func:`enable_metrics` is called (the server does it at
start), so a CLI turn pays nothing for them. Once on, every turn that goes
through :func:`agent.run.stream_turn`, whatever surface started it, is
observed from its run events: no surface records anything itself.

A server with several worker processes (``perfagent serve --workers N``)
sets ``PROMETHEUS_MULTIPROC_DIR``: each worker then writes its values to files
there, and whichever worker answers ``/metrics`` adds up all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from agent.results import RunEvent

#: Turn latency buckets (seconds): offline turns take milliseconds, measuring ones minutes.
TURN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOOL_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

#: prometheus_client's switch to multiprocess mode: the folder the workers share.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: usage keys of a TurnResult -> the ``kind`` label of the token counter.
_TOKEN_KINDS = {"input_tokens": "input", "output_tokens": "output",
                "cache_read_tokens": "cache_read", "cache_write_tokens": "cache_write"}


class Metrics:
    """The collectors, registered in their own registry (one per process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        r = self.registry
        self.turn_seconds = Histogram(
            "perfagent_turn_duration_seconds", "Wall time of a turn, from start to final or error.",
            ["model", "outcome"], buckets=TURN_BUCKETS, registry=r)
        self.first_text_seconds = Histogram(
            "perfagent_time_to_first_token_seconds", "Time from a turn's start to its first text.",
            ["model"], buckets=TURN_BUCKETS, registry=r)
        self.tool_seconds = Histogram(
            "perfagent_tool_duration_seconds", "Wall time of a tool call.",
            ["tool", "ok"], buckets=TOOL_BUCKETS, registry=r)
        self.checks = Counter(
            "perfagent_check_results_total", "Pre-response check results by check and status.",
            ["check", "status"], registry=r)
        self.tokens = Counter(
            "perfagent_model_tokens_total", "Model tokens by kind.", ["model", "kind"], registry=r)
        self.llm_calls = Counter(
            "perfagent_model_calls_total", "Model calls.", ["model"], registry=r)
        self.revisions = Counter(
            "perfagent_revisions_total", "Drafts sent back by failed checks.", registry=r)
        self.delegations = Counter(
            "perfagent_delegations_total", "Delegations to sub-agents by target.", ["to"],
            registry=r)
        self.errors = Counter(
            "perfagent_turn_errors_total", "Turns that ended in an error, by code.", ["code"],
            registry=r)
        self.kb_seconds = Histogram(
            "perfagent_kb_query_duration_seconds", "Knowledge-base searches (retrieval only).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5), registry=r)
        self.runs_in_progress = Gauge(
            "perfagent_runs_in_progress", "Turns running now.", registry=r,
            multiprocess_mode="livesum")  # with several workers: the sum over live ones

    async def observe(self, events: AsyncIterator[RunEvent]) -> AsyncIterator[RunEvent]:
        """Pass a turn's events through, recording what they say."""
        started = time.perf_counter()
        model = ""
        first_text = True
        outcome = "cancelled"  # what is recorded if the consumer stops early
        self.runs_in_progress.inc()
        try:
            async with aclosing(events) as stream:
                async for event in stream:
                    kind, data = event.type, event.data
                    if kind == "run_start":
                        model = data.get("model", "")
                    elif kind == "text_delta" and first_text:
                        first_text = False
                        self.first_text_seconds.labels(model).observe(time.perf_counter() - started)
                    elif kind == "tool_result":
                        self.tool_seconds.labels(data.get("name", "?"), str(bool(data.get("ok")))
                                                 .lower()).observe(data.get("duration_ms", 0) / 1000)
                    elif kind == "check":
                        self.checks.labels(data.get("name", "?"), data.get("status", "?")).inc()
                    elif kind == "revision":
                        self.revisions.inc()
                    elif kind == "delegation":
                        self.delegations.labels(data.get("to", "?")).inc()
                    elif kind == "final":
                        outcome = "ok"
                        self._usage(data.get("model", model), data.get("usage", {}))
                    elif kind == "error":
                        outcome = "error"
                        self.errors.labels(data.get("code", "?")).inc()
                    yield event
        finally:
            self.runs_in_progress.dec()
            self.turn_seconds.labels(model, outcome).observe(time.perf_counter() - started)

    def _usage(self, model: str, usage: dict[str, Any]) -> None:
        self.llm_calls.labels(model).inc(usage.get("llm_calls", 0))
        for key, kind in _TOKEN_KINDS.items():
            if usage.get(key):
                self.tokens.labels(model, kind).inc(usage[key])

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (of every worker, with several)."""
        from prometheus_client import CollectorRegistry, generate_latest

        if not os.environ.get(MULTIPROC_DIR_ENV):
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged)


_METRICS: Metrics | None = None


def enable_metrics() -> Metrics:
    """Turn metrics on for this process (idempotent) and return them."""
    global _METRICS
    if _METRICS is None:
        _METRICS = Metrics()
    return _METRICS


def write_textfile(path: Path) -> None:
    """Write the metrics for node_exporter's textfile collector (atomically: a scrape
    never reads half a file)."""
    if _METRICS is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(_METRICS.exposition())
    partial.replace(path)


def active_metrics() -> Metrics | None:
    """The process's metrics, or None while they are off."""
    return _METRICS
