"""cache_stats against real redis-server processes; simulate_cache on logs with known answers.

Each Redis server is started by these tests on a free loopback port in a temp
folder (no persistence) and stopped at the end; none is shared with the system.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_module, unavailable
from tests.tools.conftest import free_port
from tools.base import ToolError
from tools.caching import (
    SPEC_SIMULATE,
    SPEC_STATS,
    SPECS,
    CacheStatsInput,
    CacheStatsResult,
    SimulateCacheInput,
    check_redis_url,
    default_sizes,
    lru_hits_at,
    lru_stack_distances,
    next_uses,
    run_simulate,
    run_stats,
    simulate_lfu,
    simulate_lru,
    simulate_opt,
    simulate_ttl,
)

DATA = Path(__file__).parent / "data"
PASSWORD = "s3cret-pw"


# =========================================================================== redis servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Callable[..., int]]:
    """Start throwaway redis-server processes: ``redis_server("--maxmemory", "2mb") -> port``."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    require_module("redis")
    import redis

    root = Path(tempfile.mkdtemp(prefix="perfagent-redis-"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> int:
        port = free_port()
        folder = root / str(port)
        folder.mkdir()
        proc = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder), "--daemonize", "no", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        password = args[args.index("--requirepass") + 1] if "--requirepass" in args else None
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, password=password, socket_timeout=1).ping()
                return port
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    unavailable(f"redis-server {' '.join(args)} did not start")
                time.sleep(0.05)

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def _main_port(redis_server: Callable[..., int]) -> int:
    return redis_server()


@pytest.fixture
def redis_url(_main_port: int) -> str:
    """The shared plain server, emptied and with its counters reset for each test."""
    import redis

    client = redis.Redis(port=_main_port)
    client.flushall()
    client.config_resetstat()
    client.close()
    return f"redis://127.0.0.1:{_main_port}/0"


def client_for(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url)
    client.ping()  # connect now, so the handshake is not counted inside a measured window
    return client


async def measure_window(inp: CacheStatsInput, during: Callable[[], None]) -> CacheStatsResult:
    """Run cache_stats with an interval and call ``during`` once its window is open."""
    opened = asyncio.Event()

    def progress(_fraction: float, text: str) -> None:
        if text.startswith("window open"):
            opened.set()

    task = asyncio.create_task(run_stats(inp, progress))
    await asyncio.wait_for(opened.wait(), timeout=10)
    during()
    return await task


def finding(result: Any, kind: str) -> Any:
    found = [f for f in result.findings if f.kind == kind]
    assert found, f"no {kind} finding in {[f.kind for f in result.findings]}"
    return found[0]


def measurement(result: Any, name: str) -> Any:
    found = [m for m in result.measurements if m.name == name]
    assert found, f"no {name} measurement"
    return found[0]


# =========================================================================== cache_stats


def test_specs() -> None:
    assert [s.name for s in SPECS] == ["cache_stats", "simulate_cache"]
    assert SPECS == [SPEC_STATS, SPEC_SIMULATE]
    for spec in SPECS:
        assert spec.runs_code is False
        for name, prop in spec.json_schema()["properties"].items():
            assert prop.get("description"), f"{spec.name}.{name}"


def test_redis_url_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)
    target = check_redis_url("redis://app:" + PASSWORD + "@localhost:6380/3")
    assert (target.host, target.db) == ("localhost", 3)
    assert target.display == "redis://app@localhost:6380/3" and PASSWORD not in target.display
    assert check_redis_url("rediss://[::1]:6379").display == "rediss://[::1]:6379/0"
    for bad in ("http://127.0.0.1:6379", "redis:///0", "redis://127.0.0.1:6379/x"):
        with pytest.raises(ToolError) as err:
            check_redis_url(bad)
        assert err.value.code == "invalid_url", bad
    with pytest.raises(ToolError) as err:
        check_redis_url("redis://192.0.2.10:6379/0")
    assert err.value.code == "target_refused" and "PERFAGENT_ALLOWED_HOSTS=192.0.2.10" in err.value.hint
    monkeypatch.setenv("PERFAGENT_ALLOWED_HOSTS", "192.0.2.10")
    assert check_redis_url("redis://192.0.2.10:6379/0").host == "192.0.2.10"


async def test_window_hit_rate_ttl_coverage_and_sample(redis_url: str) -> None:
    client = client_for(redis_url)
    for i in range(100):
        client.set(f"user:{i}", "v" * 200, ex=3600 if i < 30 else None)
    client.get("warm-up-miss")  # lifetime counters differ from the window's

    def traffic() -> None:
        for i in range(90):
            assert client.get(f"user:{i}") is not None
        for i in range(10):
            assert client.get(f"absent:{i}") is None

    res = await measure_window(CacheStatsInput(url=redis_url, interval=1.0), traffic)
    client.close()
    assert res.ok and res.window_s == pytest.approx(1.0, abs=0.3)
    assert (res.hits, res.misses, res.hit_rate) == (90, 10, 90.0)
    hit = measurement(res, "cache_hit_rate")
    assert (hit.value, hit.unit, hit.budget, hit.passed) == (90.0, "%", ">80", True)
    assert hit.source == "cache_stats" and hit.target == redis_url
    # 100 GETs in the window, our own INFO excluded.
    assert res.ops_per_sec == pytest.approx(100 / res.window_s, rel=0.02)
    assert measurement(res, "ops_per_sec").value == res.ops_per_sec
    assert res.lifetime_hit_rate == pytest.approx(100 * 90 / 101, abs=0.01)
    assert res.keyspace["db0"].keys == 100 and res.keyspace["db0"].expires == 30
    assert res.ttl_coverage == 30.0 and measurement(res, "ttl_coverage").value == 30.0
    assert res.sample is not None and res.sample.sampled == 100
    assert res.sample.with_ttl_pct == 30.0
    assert res.sample.ttl_median_s is not None and 3500 < res.sample.ttl_median_s <= 3600
    assert res.sample.mean_key_bytes and res.sample.mean_key_bytes > 200
    assert res.used_memory > 0 and measurement(res, "used_memory").unit == "bytes"
    assert (res.maxmemory, res.maxmemory_policy, res.maxmemory_source) == (0, "noeviction",
                                                                           "CONFIG GET")
    assert res.connected_clients is not None and res.connected_clients >= 2
    assert "70 of 100 keys" in finding(res, "no_ttl").summary
    assert finding(res, "no_maxmemory").severity == "medium"
    kinds = {f.kind for f in res.findings}
    assert not kinds & {"low_hit_rate", "evictions", "fragmentation"}
    assert "hit rate 90.0 %" in res.summary


async def test_lifetime_low_hit_rate(redis_url: str) -> None:
    client = client_for(redis_url)
    client.set("a", 1, ex=60)
    for _ in range(3):
        client.get("a")
    for i in range(7):
        client.get(f"missing{i}")
    client.close()
    res = await run_stats(CacheStatsInput(url=redis_url, sample_keys=0))
    assert res.window_s is None and (res.hits, res.misses) == (3, 7)
    assert res.hit_rate == 30.0 and res.sample is None
    hit = measurement(res, "cache_hit_rate")
    assert hit.value == 30.0 and hit.passed is False
    low = finding(res, "low_hit_rate")
    assert low.severity == "high" and "7 of 10 lookups missed" in low.summary
    assert res.ttl_coverage == 100.0 and "no_ttl" not in {f.kind for f in res.findings}
    assert any("lifetime" in n for n in res.notes)
    assert "evictions_per_sec" not in {m.name for m in res.measurements}


async def test_no_lookups_means_no_hit_rate(redis_url: str) -> None:
    res = await run_stats(CacheStatsInput(url=redis_url))
    assert res.hit_rate is None and res.total_keys == 0 and res.ttl_coverage is None
    assert "cache_hit_rate" not in {m.name for m in res.measurements}
    assert "hit rate unknown" in res.summary


async def test_evictions_in_window_with_config_disabled(redis_server: Callable[..., int]) -> None:
    """A small maxmemory with allkeys-lru evicts; CONFIG is renamed away, so INFO supplies it."""
    port = redis_server("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru",
                        "--rename-command", "CONFIG", "")
    url = f"redis://127.0.0.1:{port}/0"
    client = client_for(url)

    def write_past_maxmemory() -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(4000):
            pipe.set(f"blob:{i}", "x" * 1024, ex=600)
        pipe.execute()

    res = await measure_window(CacheStatsInput(url=url, interval=0.5, sample_keys=50),
                               write_past_maxmemory)
    client.close()
    assert res.maxmemory == 2 * 1024 * 1024 and res.maxmemory_policy == "allkeys-lru"
    assert res.maxmemory_source == "INFO memory"
    assert any("CONFIG GET failed" in n for n in res.notes)
    assert res.evicted_keys > 0 and res.evicted_keys == res.lifetime_evicted_keys
    assert res.evictions_per_sec == pytest.approx(res.evicted_keys / res.window_s, rel=0.01)
    assert measurement(res, "evicted_keys").value == res.evicted_keys
    evictions = finding(res, "evictions")
    assert evictions.severity == "high"
    assert "allkeys-lru" in evictions.summary and "least recently used" in evictions.summary
    assert res.total_keys < 4000 and res.ttl_coverage == 100.0
    assert not {f.kind for f in res.findings} & {"no_maxmemory", "no_ttl"}
    assert res.ops_per_sec is not None and res.ops_per_sec > 0


async def test_password_server(redis_server: Callable[..., int]) -> None:
    port = redis_server("--requirepass", PASSWORD)
    for url in (f"redis://127.0.0.1:{port}/0", f"redis://:wrong@127.0.0.1:{port}/0"):
        with pytest.raises(ToolError) as err:
            await run_stats(CacheStatsInput(url=url))
        assert err.value.code == "auth_failed", url
        assert "redis://:PASSWORD@host:port" in err.value.hint
        assert "wrong" not in err.value.message
    res = await run_stats(CacheStatsInput(url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0"))
    assert res.ok and res.target == f"redis://127.0.0.1:{port}/0"
    assert PASSWORD not in res.model_dump_json()


async def test_closed_port_is_unreachable(unused_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError) as err:
        await run_stats(CacheStatsInput(url=f"redis://127.0.0.1:{unused_port}/0"))
    assert err.value.code == "target_unreachable"
    assert time.monotonic() - started < 3  # no retries with back-off


async def test_silent_server_times_out() -> None:
    """A socket that accepts connections but never answers: the read times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ToolError) as err:
            await run_stats(CacheStatsInput(url=f"redis://127.0.0.1:{port}/0", timeout=0.5))
        assert err.value.code == "timeout"
        assert time.monotonic() - started < 3


async def test_non_loopback_refused_without_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFAGENT_ALLOWED_HOSTS", raising=False)

    def no_connect(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("cache_stats connected to a refused host")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket, "create_connection", no_connect)
    with pytest.raises(ToolError) as err:
        await run_stats(CacheStatsInput(url="redis://192.0.2.10:6379/0"))
    assert err.value.code == "target_refused"


async def test_allowed_host_is_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once allowed, a non-loopback host is contacted (TEST-NET: it cannot answer)."""
    monkeypatch.setenv("PERFAGENT_ALLOWED_HOSTS", "192.0.2.10")
    with pytest.raises(ToolError) as err:
        await run_stats(CacheStatsInput(url="redis://192.0.2.10:6379/0", timeout=0.3))
    assert err.value.code in ("timeout", "target_unreachable")


async def test_missing_redis_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    with pytest.raises(ToolError) as err:
        await run_stats(CacheStatsInput(url="redis://127.0.0.1:6379/0"))
    assert err.value.code == "missing_dependency" and err.value.hint == "pip install redis"


# =========================================================================== simulator cores


def zipf_log(seed: int, keys: int, accesses: int, scan_every: int = 0) -> list[int]:
    """A skewed (Zipf-like) key stream; with ``scan_every``, one-off keys interleaved."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(keys)]
    stream = rng.choices(range(keys), weights=weights, k=accesses)
    if not scan_every:
        return stream
    out: list[int] = []
    fresh = keys
    for i, key in enumerate(stream):
        out.append(key)
        if i % scan_every == 0:
            out.extend(range(fresh, fresh + 3))  # a short scan of never-again keys
            fresh += 3
    return out


def test_stack_distances_match_an_lru_cache() -> None:
    for seed in range(3):
        log = zipf_log(seed, 400, 8000)
        distances, cumulative = lru_stack_distances(log)
        for size in (1, 2, 7, 50, 200, 399, 400, 5000):
            assert lru_hits_at(distances, cumulative, size) == simulate_lru(log, size), size


def test_hand_computed_policies() -> None:
    a, b, c = 0, 1, 2
    log = [a, a, b, c, a, b]
    # LRU(2): a- a+ b- c-(evict a) a-(evict b) b-(evict c) -> 1 hit
    assert simulate_lru(log, 2) == 1
    # LFU(2): a- a+(f2) b- c-(evict b, f1) a+(f3) b-(evict c) -> 2 hits
    assert simulate_lfu(log, 2) == 2
    # LFU ties go to the least recently used: x y then z evicts x.
    assert simulate_lfu([0, 1, 2, 1, 0], 2) == 1
    # OPT(2): a- a+ b- c-(evict b: used after a) a+ b- -> 2 hits
    assert simulate_opt(log, 2, next_uses(log)) == 2
    # TTL 10 s, no size limit: a@0- a@5+ a@11- (expired at 10) a@12+
    assert simulate_ttl([a, a, a, a], [0, 5, 11, 12], 10, None) == (2, 1)


def test_opt_bounds_the_online_policies() -> None:
    log = zipf_log(11, 300, 6000, scan_every=5)
    uses = next_uses(log)
    for size in (1, 5, 20, 100):
        best = simulate_opt(log, size, uses)
        assert best >= simulate_lru(log, size) and best >= simulate_lfu(log, size), size


def test_default_sizes() -> None:
    assert default_sizes(5) == [1, 2, 3, 4, 5]
    sizes = default_sizes(100_000)
    assert sizes[0] == 1 and sizes[-1] == 100_000 and 10 <= len(sizes) <= 12
    assert sizes == sorted(set(sizes))


# =========================================================================== simulate_cache


def write_lines(path: Path, keys: list[int], prefix: str = "key:") -> Path:
    path.write_text("".join(f"{prefix}{k}\n" for k in keys), encoding="utf-8")
    return path


def curve_of(result: Any, policy: str) -> dict[int, float]:
    pc = next(p for p in result.policies if p.policy == policy)
    return {p.size: p.hit_rate for p in pc.curve}


def policy_of(result: Any, policy: str) -> Any:
    return next(p for p in result.policies if p.policy == policy)


async def test_cyclic_scan_known_answer(workspace: Path) -> None:
    n, cycles = 50, 20
    write_lines(workspace / "scan.log", list(range(n)) * cycles)
    res = await run_simulate(SimulateCacheInput(
        access_log="scan.log", policies=["lru", "lfu", "opt"], sizes=[1, n - 1, n, 2 * n]))
    accesses = n * cycles
    assert (res.format, res.accesses, res.distinct_keys) == ("lines", accesses, n)
    assert res.compulsory_miss_ratio == 100 * n / accesses
    expected = 100 * (1 - n / accesses)  # 95 %: only first accesses miss
    assert res.max_hit_rate == expected
    lru = curve_of(res, "lru")
    assert lru == {1: 0.0, n - 1: 0.0, n: expected, 2 * n: expected}
    assert curve_of(res, "lfu")[n - 1] == 0.0  # equal frequencies: LRU tie-break, same thrashing
    assert curve_of(res, "opt")[n - 1] > 90  # the offline optimum keeps most of the loop
    best = policy_of(res, "lru")
    assert (best.size_for_target, best.size_exact, best.hit_rate_at_size) == (n, True, expected)
    sized = [m for m in res.measurements if m.name == "cache_size_for_target"]
    assert {m.value for m in sized} >= {n} and all(m.unit == "entries" for m in sized)
    rate = next(m for m in res.measurements
                if m.name == "simulated_hit_rate" and "(lru," in m.target)
    assert (rate.value, rate.passed, rate.budget) == (expected, True, ">=80")
    assert not res.findings
    assert "lru: 50 entries reach 95.0 %" in res.summary


async def test_lfu_beats_lru_at_small_sizes_on_a_skewed_log(workspace: Path) -> None:
    log = zipf_log(7, 1000, 20_000)
    write_lines(workspace / "zipf.log", log)
    res = await run_simulate(SimulateCacheInput(access_log="zipf.log", policies=["lru", "lfu"],
                                                sizes=[10, 50, 200], target_hit_rate=50))
    lru, lfu = curve_of(res, "lru"), curve_of(res, "lfu")
    for size in (10, 50):
        assert lfu[size] > lru[size] + 5, (size, lfu[size], lru[size])
    for size in lru:  # the curve is the exact simulation, not an estimate
        assert lru[size] == round(100 * simulate_lru(log, size) / len(log), 3)
        assert lfu[size] == round(100 * simulate_lfu(log, size) / len(log), 3)
    lfu_size = policy_of(res, "lfu")
    assert lfu_size.size_exact and lfu_size.size_for_target is not None
    # Exact smallest size: one entry less misses the target.
    assert 100 * simulate_lfu(log, lfu_size.size_for_target) / len(log) >= 50
    assert 100 * simulate_lfu(log, lfu_size.size_for_target - 1) / len(log) < 50
    lru_size = policy_of(res, "lru").size_for_target
    assert lru_size is not None and lfu_size.size_for_target < lru_size
    assert 100 * simulate_lru(log, lru_size) / len(log) >= 50
    assert 100 * simulate_lru(log, lru_size - 1) / len(log) < 50


async def test_ttl_policy_with_timestamps(workspace: Path) -> None:
    shutil.copy(DATA / "ttl_access.csv", workspace / "ttl_access.csv")
    res = await run_simulate(SimulateCacheInput(
        access_log="ttl_access.csv", policies=["ttl", "lru"], ttl=10, sizes=[1, 2, 3]))
    assert res.format == "csv" and res.accesses == 8 and res.time_span_s == 30
    # a@0- b@1- a@5+ b@6+ a@11- (expired at 10) b@12- (at 11) a@12.5+ c@30- -> 3 of 8
    assert curve_of(res, "ttl") == {1: 0.0, 2: 37.5, 3: 37.5}
    assert res.ttl_only is not None
    assert (res.ttl_only.hit_rate, res.ttl_only.peak_entries) == (37.5, 2)
    assert curve_of(res, "lru")[2] == 62.5  # without expiry: a b a b a b a c -> 5 hits
    unreachable = finding(res, "target_unreachable")
    assert "62.5 %" in unreachable.summary and unreachable.severity == "high"
    assert "cache_size_for_target" not in {m.name for m in res.measurements}
    assert all(m.passed is False for m in res.measurements if m.name == "simulated_hit_rate")


async def test_ttl_too_short_and_json_lines_with_iso_times(workspace: Path) -> None:
    base = 1_700_000_000
    lines = []
    for i in range(200):  # one hot key read every 2 s, plus a few others
        lines.append({"key": "hot", "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                        time.gmtime(base + 2 * i))})
    log = workspace / "access.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
    res = await run_simulate(SimulateCacheInput(access_log="access.jsonl", ttl=3))
    assert res.format == "jsonl" and res.time_span_s == 398
    # Each entry lives 3 s, reads come every 2 s: miss, hit, miss, hit, ...
    assert res.ttl_only is not None and res.ttl_only.hit_rate == 50.0
    assert finding(res, "ttl_too_short").severity == "medium"
    assert policy_of(res, "lru").size_for_target == 1
    assert "ttl" in {p.policy for p in res.policies}


async def test_ttl_needs_timestamps(workspace: Path) -> None:
    write_lines(workspace / "keys.log", [1, 2, 1, 2])
    for extra in ({"policies": ["ttl"], "ttl": 10}, {"ttl": 10}, {"policies": ["lru", "ttl"]}):
        with pytest.raises(ToolError) as err:
            await run_simulate(SimulateCacheInput(access_log="keys.log", **extra))
        assert err.value.code == "invalid_input", extra
    with pytest.raises(ToolError) as err:
        await run_simulate(SimulateCacheInput(access_log="keys.log", ttl=10))
    assert "time_column" in err.value.hint
    # The defaults (lru, lfu, ttl) with no ttl: the ttl policy is left out, with a note.
    res = await run_simulate(SimulateCacheInput(access_log="keys.log"))
    assert [p.policy for p in res.policies] == ["lru", "lfu"]
    assert any("ttl policy skipped" in n for n in res.notes)


async def test_csv_columns_and_unsorted_times(workspace: Path) -> None:
    (workspace / "log.csv").write_text(
        "when,user,path\n3,u1,/a\n1,u2,/b\n2,u1,/c\n4,u2,/d\n", encoding="utf-8")
    res = await run_simulate(SimulateCacheInput(
        access_log="log.csv", key_column="user", time_column="when", policies=["lru", "ttl"],
        ttl=100, sizes=[1, 2]))
    # Sorted by time: u2 u1 u1 u2
    assert curve_of(res, "lru") == {1: 25.0, 2: 50.0}
    assert any("sorted by timestamp" in n for n in res.notes)
    with pytest.raises(ToolError) as err:
        await run_simulate(SimulateCacheInput(access_log="log.csv", key_column="nope"))
    assert err.value.code == "invalid_input" and "user" in err.value.hint
    (workspace / "plain.tsv").write_text("k1\t1\nk2\t2\nk1\t3\n", encoding="utf-8")
    res = await run_simulate(SimulateCacheInput(access_log="plain.tsv", key_column=0,
                                                time_column=1, policies=["ttl"], ttl=5))
    assert res.format == "tsv" and res.ttl_only is not None and res.ttl_only.hits == 1


async def test_compulsory_misses_make_the_target_unreachable(workspace: Path) -> None:
    keys = [k % 10 for k in range(40)] + list(range(100, 160))  # 100 accesses, 70 keys
    write_lines(workspace / "cold.log", keys)
    res = await run_simulate(SimulateCacheInput(access_log="cold.log"))
    assert res.max_hit_rate == 30.0 and res.compulsory_miss_ratio == 70.0
    unreachable = finding(res, "target_unreachable")
    assert "at most 30.0 %" in unreachable.summary and "70 of 100" in unreachable.summary
    assert all(p.size_for_target is None for p in res.policies)
    rates = [m for m in res.measurements if m.name == "simulated_hit_rate"]
    assert rates and all(m.value <= 30.0 and m.passed is False for m in rates)


async def test_log_must_be_in_the_workspace(workspace: Path, tmp_path_factory: Any) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "keys.log"
    write_lines(outside, [1, 2, 3])
    with pytest.raises(ToolError) as err:
        await run_simulate(SimulateCacheInput(access_log=str(outside)))
    assert err.value.code == "path_outside_workspace"
    with pytest.raises(ToolError) as err:
        await run_simulate(SimulateCacheInput(access_log="absent.log"))
    assert err.value.code == "not_found"
    (workspace / "empty.log").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ToolError) as err:
        await run_simulate(SimulateCacheInput(access_log="empty.log"))
    assert err.value.code == "invalid_input"


async def test_svg_plot(workspace: Path) -> None:
    write_lines(workspace / "scan.log", list(range(20)) * 5)
    res = await run_simulate(SimulateCacheInput(access_log="scan.log", policies=["lru", "lfu"],
                                                plot_path="curve.svg"))
    assert res.plot_path == str(workspace / "curve.svg")
    root = ET.fromstring((workspace / "curve.svg").read_text(encoding="utf-8"))
    polylines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(polylines) == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ToolError) as err:
            await run_simulate(SimulateCacheInput(access_log="scan.log", plot_path="c.png"))
        assert err.value.code == "missing_dependency" and ".svg" in err.value.hint
    else:
        await run_simulate(SimulateCacheInput(access_log="scan.log", plot_path="c.png"))
        assert (workspace / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
async def test_lru_on_a_million_accesses_is_fast(workspace: Path) -> None:
    log = zipf_log(5, 100_000, 1_000_000)
    write_lines(workspace / "big.log", log)
    progress: list[str] = []
    res = await run_simulate(SimulateCacheInput(access_log="big.log", policies=["lru"]),
                             lambda _f, text: progress.append(text))
    lru = policy_of(res, "lru")
    assert res.accesses == 1_000_000 and lru.size_exact
    assert lru.seconds < 10, f"LRU took {lru.seconds} s on 1e6 accesses"
    assert len(lru.curve) >= 10 and progress
    size = lru.size_for_target
    assert size is not None
    assert simulate_lru(log, size) >= 0.8 * len(log) > simulate_lru(log, size - 1)
