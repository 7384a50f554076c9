"""Benchmark: the HTTP server under 1, 10 and 50 concurrent clients, measured with
perfagent's own ``load_test`` tool, plus time to the first SSE event and memory.

Two servers, each a separate process on loopback (so the load generator does
not share its event loop):

- ``offline``: the offline engine answering a trivial question (no tools run);
- ``instant``: a model that answers at once with a draft passing all five
  checks, so what is left is the server's non-model overhead: HTTP, the
  graph, the checks, knowledge retrieval and checkpointing.

Each request is ``POST /v1/chat/completions`` with a one-message conversation,
so every request starts its own thread (two turns on one thread cannot run at
once). Prints figures from one run and ratios between them; nothing here passes
or fails.

Run: ``python tests/bench/server.py [--duration 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

BODY = json.dumps({"model": "perfagent", "messages": [{"role": "user", "content": "hello"}]})
CLIENTS = (1, 10, 50)


def serve(port: int, engine: str) -> None:
    """The server process: the real app; ``instant`` swaps in the answer-at-once model."""
    import uvicorn

    from agent.context import Settings
    from agent.server.app import create_app
    from agent.server.config import ServerConfig
    from agent.service import AgentService

    config = ServerConfig(port=port, max_concurrent_runs=64)
    service = None
    if engine == "instant":
        from agent.bench import InstantModel

        service = AgentService(config.agent_settings(Settings()), max_concurrent_runs=64,
                               model=InstantModel())
    uvicorn.run(create_app(config, service=service), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


class Server:
    """A benchmark server process and its memory use, sampled while it runs."""

    def __init__(self, engine: str, state_dir: Path) -> None:
        from tests.serving import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PERFAGENT_STATE_DIR": str(state_dir)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port), "--engine", engine],
            env=env, cwd=REPO)
        self._wait_ready()
        self.peak_rss = 0.0
        self._sampling = False

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the benchmark server did not start")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def sample_peak(self) -> threading.Thread:
        """Sample RSS every 100 ms until :meth:`stop_sampling`."""
        self._sampling = True
        self.peak_rss = 0.0

        def loop() -> None:
            while self._sampling:
                self.peak_rss = max(self.peak_rss, self.rss_mb())
                time.sleep(0.1)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def stop_sampling(self, thread: threading.Thread) -> None:
        self._sampling = False
        thread.join()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def load(url: str, clients: int, duration: float) -> dict[str, float]:
    from tools import get_tool

    spec = get_tool("load_test")
    inp = spec.input_model(url=f"{url}/v1/chat/completions", method="POST", vus=clients,
                           duration=duration, body=BODY, timeout=60,
                           headers={"content-type": "application/json"})
    result = await spec.run(inp, None)
    return {m.name: m.value for m in result.measurements}


def first_event_ms(url: str, samples: int) -> tuple[list[float], list[float]]:
    """Time to the first SSE event and to the final one, for sequential streamed turns."""
    import httpx

    first, final = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(samples):
            thread = client.post("/v1/threads", json={}).json()["thread_id"]
            started = time.perf_counter()
            with client.stream("POST", f"/v1/threads/{thread}/runs/stream",
                               json={"message": "hello"}) as response:
                for line in response.iter_lines():
                    if line.startswith("event: ") and len(first) == len(final):
                        first.append((time.perf_counter() - started) * 1000)
                    if line == "event: final":
                        final.append((time.perf_counter() - started) * 1000)
    return first, final


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    from agent.bench import server_overhead_samples

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="offline", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.engine)
        return

    results: dict[str, dict[int, dict[str, float]]] = {}
    for engine in ("offline", "instant"):
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(engine, Path(tmp))
            try:
                asyncio.run(load(server.url, 1, 2.0))  # warm-up: imports, knowledge store
                idle = server.rss_mb()
                results[engine] = {}
                for clients in CLIENTS:
                    sampler = server.sample_peak()
                    results[engine][clients] = asyncio.run(load(server.url, clients,
                                                                args.duration))
                    server.stop_sampling(sampler)
                    results[engine][clients]["peak_rss_mb"] = server.peak_rss
                first, final = first_event_ms(server.url, 20)
                overhead = asyncio.run(server_overhead_samples(server.url, 50, 6))
            finally:
                server.close()
        print(f"\n{engine}: idle RSS {idle:.0f} MB; time to first SSE event p50 "
              f"{statistics.median(first):.1f} ms, p95 {p(first, 0.95):.1f} ms; to the final "
              f"event p50 {statistics.median(final):.1f} ms")
        print(f"server overhead around the turn at 50 clients: p50 "
              f"{statistics.median(overhead):.1f} ms, p95 {p(overhead, 0.95):.1f} ms")
        print(f"{'clients':>8} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>8} {'errors %':>9} "
              f"{'peak RSS MB':>12}")
        for clients, m in results[engine].items():
            print(f"{clients:>8} {m['p50_latency']:>9.1f} {m['p95_latency']:>9.1f} "
                  f"{m['throughput']:>8.1f} {m['error_rate']:>9.2f} {m['peak_rss_mb']:>12.0f}")
    off, inst = results["offline"], results["instant"]
    print("\nratios (one run):")
    print(f"  offline p95 at 50 clients / at 1 client: "
          f"{off[50]['p95_latency'] / off[1]['p95_latency']:.1f}x")
    print(f"  offline / instant throughput at 50 clients: "
          f"{off[50]['throughput'] / inst[50]['throughput']:.2f}x")
    print(f"  instant (non-model) p95 at 50 clients: {inst[50]['p95_latency']:.1f} ms "
          f"(target < 200 ms)")


if __name__ == "__main__":
    main()
