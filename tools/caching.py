"""Cache tools: ``cache_stats`` reads a live Redis, ``simulate_cache`` replays an access log.

``cache_stats`` connects to a Redis server (loopback or an operator-allowed
host only, like load tests) and reads ``INFO``: hit rate, evictions, memory
against ``maxmemory`` and its policy, fragmentation, clients and throughput.
Lifetime counters hide what a long-running server does *now*, so with
``interval`` it takes ``INFO`` twice and reports the rates of that window.
TTL coverage is exact, from ``INFO keyspace`` (keys and keys with an expiry
per database); a SCAN-based sample (never ``KEYS *``) adds key sizes and the
spread of remaining TTLs. The ``redis`` package is imported only when used.

``simulate_cache`` replays a recorded access log (one key per line, CSV/TSV
or JSON lines, optionally timestamped) through exact simulations of LRU, LFU,
TTL expiry and Belady's offline optimum, and reports the miss-ratio curve:
the hit rate at each cache size, and the smallest size that reaches the
target hit rate. LRU comes from Mattson's stack distances (one pass gives
every size exactly); the others are simulated size by size.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import csv
import heapq
import io
import itertools
import json
import math
import statistics
import time
from array import array
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    ToolError,
    ToolResult,
    ToolSpec,
    check_target_host,
    resolve_in_workspace,
    within_budget,
)

#: The persona's target: a cache hit rate above 80 %.
HIT_RATE_BUDGET = ">80"
HIT_RATE_TARGET = 80.0
#: Below this share of keys with a TTL, stale data and unbounded growth are likely.
TTL_COVERAGE_MIN = 50.0
#: mem_fragmentation_ratio above this is fragmentation, if the wasted bytes matter.
FRAGMENTATION_RATIO = 1.5
#: Fewer wasted (or swapped) bytes than this make the ratio meaningless (tiny datasets).
FRAGMENTATION_MIN_BYTES = 32 * 1024**2
#: The key sample stops after this long even if it has fewer keys than asked.
SAMPLE_BUDGET_S = 3.0

#: What each maxmemory-policy does when memory is full.
POLICY_EFFECT: dict[str, str] = {
    "noeviction": "evicts nothing: writes fail with OOM errors once memory is full",
    "allkeys-lru": "evicts the least recently used of all keys",
    "allkeys-lfu": "evicts the least frequently used of all keys",
    "allkeys-random": "evicts random keys",
    "volatile-lru": "evicts the least recently used of the keys that have a TTL",
    "volatile-lfu": "evicts the least frequently used of the keys that have a TTL",
    "volatile-random": "evicts random keys among those that have a TTL",
    "volatile-ttl": "evicts the keys with a TTL that expire soonest",
}


# =========================================================================== cache_stats


class CacheStatsInput(BaseModel):
    """Which Redis to read, and over what window."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        description="redis://[user:password@]host:port/db (rediss:// for TLS); the host must be "
        "loopback or listed in PERFAGENT_ALLOWED_HOSTS"
    )
    sample_keys: int = Field(
        default=1000, ge=0, le=100_000,
        description="keys sampled with SCAN (never KEYS *) for key sizes and remaining TTLs; "
        "0 skips the sample. Redis counts each sampled key as a keyspace lookup",
    )
    interval: float | None = Field(
        default=None, ge=0, le=300,
        description="seconds between two INFO snapshots; when > 0 the hit rate, ops/s and "
        "evictions/s are those of that window (recent behaviour) instead of lifetime counters",
    )
    timeout: float = Field(default=5.0, gt=0, le=60,
                           description="seconds to connect and for each command")


class KeyspaceDb(BaseModel):
    """One database of ``INFO keyspace``."""

    keys: int
    expires: int = Field(description="keys with a TTL")
    avg_ttl_ms: int | None = None


class KeySample(BaseModel):
    """What a SCAN sample of the URL's database showed."""

    db: int
    sampled: int
    with_ttl_pct: float | None = Field(default=None, description="sampled keys with a TTL")
    ttl_median_s: float | None = Field(default=None, description="median remaining TTL")
    ttl_max_s: float | None = None
    mean_key_bytes: float | None = Field(default=None, description="MEMORY USAGE, mean")
    max_key_bytes: int | None = None
    largest_key: str | None = None
    estimated_db_bytes: int | None = Field(
        default=None, description="mean key size x keys in the database (an estimate)")


class CacheStatsResult(ToolResult):
    """Hit rate, evictions, memory and keyspace of one Redis server."""

    tool: str = "cache_stats"
    target: str = Field(description="the URL without its password")
    redis_version: str = ""
    mode: str = ""
    uptime_s: int | None = None
    window_s: float | None = Field(
        default=None, description="length of the measured window; None = lifetime counters")
    hit_rate: float | None = Field(
        default=None, description="% of key lookups that hit, in the window (or lifetime)")
    hits: int = 0
    misses: int = 0
    lifetime_hit_rate: float | None = None
    ops_per_sec: float | None = None
    ops_source: str = Field(default="", description="window delta or instantaneous_ops_per_sec")
    evicted_keys: int = Field(default=0, description="in the window (or lifetime)")
    evictions_per_sec: float | None = None
    expired_keys: int = Field(default=0, description="in the window (or lifetime)")
    lifetime_evicted_keys: int = 0
    used_memory: int = 0
    used_memory_rss: int | None = None
    maxmemory: int | None = None
    maxmemory_policy: str | None = None
    maxmemory_source: str = Field(default="", description="CONFIG GET or INFO memory")
    mem_fragmentation_ratio: float | None = None
    connected_clients: int | None = None
    blocked_clients: int | None = None
    total_keys: int = 0
    ttl_coverage: float | None = Field(
        default=None, description="% of all keys with a TTL (exact, from INFO keyspace)")
    keyspace: dict[str, KeyspaceDb] = Field(default_factory=dict)
    sample: KeySample | None = None
    notes: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class RedisTarget:
    """A checked Redis URL."""

    url: str
    display: str
    host: str
    db: int
    #: the address the host was checked at: the client connects there and never
    #: resolves the name again (DNS rebinding)
    address: str


def check_redis_url(url: str) -> RedisTarget:
    """Parse a redis:// or rediss:// URL and apply the load-test host rule.

    The host must be loopback or in ``PERFAGENT_ALLOWED_HOSTS``: the check is
    :func:`tools.base.check_target_host`, the one rule of every network tool.
    The name is resolved here, once; nothing connects.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ToolError("invalid_url", f"{url!r} is not a redis:// URL",
                        "write it as redis://127.0.0.1:6379/0 (redis://:PASSWORD@host:port "
                        "with a password, rediss:// for TLS)")
    host = parts.hostname.lower()
    try:
        port = parts.port
    except ValueError:
        raise ToolError("invalid_url", f"{url!r} has an invalid port",
                        "write it as redis://127.0.0.1:6379/0") from None
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ToolError("invalid_url", f"{path!r} is not a database number",
                        "end the URL with the database number, e.g. /0")
    checked = check_target_host(host, port or 6379, what="cache_stats")
    user = unquote(parts.username) + "@" if parts.username else ""
    netloc = f"[{host}]" if ":" in host else host
    display = f"{parts.scheme}://{user}{netloc}{f':{port}' if port else ''}/{int(path)}"
    return RedisTarget(url=url.strip(), display=display, host=host, db=int(path),
                       address=checked.address)


def pin_address(client: Any, target: RedisTarget) -> None:
    """Make a redis-py client connect to the address ``target`` was checked at.

    A plain connection goes to the checked address and never resolves the name
    again (DNS rebinding). A TLS connection that verifies the server's name
    keeps the name, so the certificate can be matched to it: a rebound name
    then reaches only a server holding that name's certificate.
    """
    import redis

    kwargs = client.connection_pool.connection_kwargs
    verifies_name = (issubclass(client.connection_pool.connection_class, redis.SSLConnection)
                     and str(kwargs.get("ssl_cert_reqs", "required")).lower()
                     not in ("none", "0", "verifymode.cert_none")
                     and kwargs.get("ssl_check_hostname", True))
    if not verifies_name:
        kwargs["host"] = target.address


def _redis_errors(target: RedisTarget, timeout: float) -> Callable[[BaseException], ToolError | None]:
    """A translator of redis-py exceptions into ToolErrors (None: not a redis error)."""
    import redis.exceptions as rex

    def translate(exc: BaseException) -> ToolError | None:
        where = target.display
        if isinstance(exc, rex.AuthenticationError):
            return ToolError(
                "auth_failed", f"{where} refused the credentials: {exc}",
                "put the password in the URL: redis://:PASSWORD@host:port (or "
                "redis://USER:PASSWORD@host:port for an ACL user)")
        if isinstance(exc, rex.NoPermissionError):
            return ToolError("permission_denied", f"{where}: {exc}",
                             "use a user allowed to run INFO (and, optionally, CONFIG GET, SCAN, "
                             "PTTL and MEMORY USAGE)")
        if isinstance(exc, rex.TimeoutError):
            return ToolError("timeout", f"{where} did not answer within {timeout:g} s: {exc}",
                             "check the host and port, or raise timeout if the server is busy")
        if isinstance(exc, rex.ConnectionError):
            return ToolError("target_unreachable", f"cannot connect to {where}: {exc}",
                             "start Redis or check the host and port (redis-cli -h HOST -p PORT "
                             "ping)")
        if isinstance(exc, rex.ResponseError):
            return ToolError("command_refused", f"{where} refused a command: {exc}",
                             "INFO may be renamed or disabled on this server")
        if isinstance(exc, rex.RedisError):
            return ToolError("redis_error", f"{where}: {type(exc).__name__}: {exc}",
                             "check the server's log")
        return None

    return translate


def _info_snapshot(client: Any) -> tuple[float, dict[str, Any]]:
    """``INFO`` (default sections) and the monotonic time of its round trip's midpoint."""
    start = time.monotonic()
    info: dict[str, Any] = client.info()
    return (start + time.monotonic()) / 2, info


def _maxmemory(client: Any, info: dict[str, Any], notes: list[str]) -> tuple[int | None, str | None, str]:
    """maxmemory and its policy: CONFIG GET, or INFO memory when CONFIG is disabled."""
    import redis.exceptions as rex

    try:
        config = client.config_get("maxmemory*")
        conf = {_text(k): _text(v) for k, v in config.items()}
        if "maxmemory" in conf:
            return int(conf["maxmemory"]), conf.get("maxmemory-policy"), "CONFIG GET"
    except (rex.ResponseError, rex.NoPermissionError) as exc:
        notes.append(f"CONFIG GET failed ({exc}); maxmemory comes from INFO memory")
    if "maxmemory" in info:
        policy = info.get("maxmemory_policy")
        return int(info["maxmemory"]), str(policy) if policy else None, "INFO memory"
    notes.append("maxmemory is unknown: CONFIG GET failed and INFO memory does not report it")
    return None, None, ""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _keyspace(info: dict[str, Any]) -> dict[str, KeyspaceDb]:
    out: dict[str, KeyspaceDb] = {}
    for name, value in info.items():
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict):
            out[name] = KeyspaceDb(keys=int(value.get("keys", 0)),
                                   expires=int(value.get("expires", 0)),
                                   avg_ttl_ms=int(value["avg_ttl"]) if "avg_ttl" in value else None)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0][2:])))


def _sample_keys(client: Any, want: int, db: int, db_keys: int, notes: list[str]) -> KeySample:
    """SCAN up to ``want`` keys of the current database; PTTL and MEMORY USAGE each."""
    import redis.exceptions as rex

    deadline = time.monotonic() + SAMPLE_BUDGET_S
    keys: list[bytes] = []
    cursor = 0
    while True:
        cursor, batch = client.scan(cursor=cursor, count=min(1000, max(100, want)))
        keys.extend(batch)
        if cursor == 0 or len(keys) >= want:
            break
        if time.monotonic() > deadline:
            notes.append(f"the key sample stopped after {SAMPLE_BUDGET_S:g} s with {len(keys)} keys")
            break
    keys = list(dict.fromkeys(keys))[:want]  # SCAN may return a key twice
    ttls: list[float] = []
    present = 0
    sizes: list[tuple[int, bytes]] = []
    size_error: str | None = None
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.pttl(key)
            pipe.memory_usage(key)
        replies = pipe.execute(raise_on_error=False)
        for key, pttl, usage in zip(chunk, replies[0::2], replies[1::2], strict=True):
            if isinstance(pttl, Exception):
                raise pttl
            if pttl == -2:
                continue  # expired or deleted since SCAN saw it
            present += 1
            if pttl >= 0:
                ttls.append(pttl / 1000)
            if isinstance(usage, rex.RedisError):
                size_error = str(usage)
            elif usage is not None:
                sizes.append((int(usage), key))
    if size_error:
        notes.append(f"MEMORY USAGE failed ({size_error}); key sizes are not sampled")
    sample = KeySample(db=db, sampled=present)
    if present:
        sample.with_ttl_pct = round(100 * len(ttls) / present, 2)
    if ttls:
        sample.ttl_median_s = round(statistics.median(ttls), 3)
        sample.ttl_max_s = round(max(ttls), 3)
    if sizes:
        mean = statistics.fmean(s for s, _ in sizes)
        biggest, name = max(sizes)
        sample.mean_key_bytes = round(mean, 1)
        sample.max_key_bytes = biggest
        sample.largest_key = _text(name)[:120]
        sample.estimated_db_bytes = round(mean * db_keys)
    return sample


def _delta(first: dict[str, Any], second: dict[str, Any], name: str) -> int:
    return int(second.get(name, 0)) - int(first.get(name, 0))


def _rate(hits: int, misses: int) -> float | None:
    return round(100 * hits / (hits + misses), 2) if hits + misses else None


def _mib(n: float) -> str:
    return f"{n / 1024**2:.1f} MiB"


async def run_stats(inp: CacheStatsInput, progress: ProgressCallback | None = None) -> CacheStatsResult:
    """Read INFO (twice, ``interval`` apart, when asked), sample keys, and judge the cache."""
    target = check_redis_url(inp.url)  # before anything touches the network
    try:
        import redis
    except ImportError:
        raise ToolError("missing_dependency", "the redis package is not installed",
                        "pip install redis") from None
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    translate = _redis_errors(target, inp.timeout)
    # No retries: a refused or silent server is reported at once, within one timeout.
    client = redis.Redis.from_url(target.url, socket_connect_timeout=inp.timeout,
                                  socket_timeout=inp.timeout, decode_responses=False,
                                  retry=Retry(NoBackoff(), 0))
    pin_address(client, target)

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise
            raise error from None

    def step(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, text)

    notes: list[str] = []
    try:
        step(0.0, f"INFO {target.display}")
        t1, first = await call(_info_snapshot, client)
        second = first
        window: float | None = None
        if inp.interval:
            step(0.05, f"window open: INFO again in {inp.interval:g} s")
            await asyncio.sleep(inp.interval)
            t2, second = await call(_info_snapshot, client)
            window = t2 - t1
        step(0.9, "maxmemory and key sample")
        maxmemory, policy, mm_source = await call(_maxmemory, client, second, notes)
        keyspace = _keyspace(second)
        sample = None
        if inp.sample_keys:
            db_keys = keyspace.get(f"db{target.db}", KeyspaceDb(keys=0, expires=0)).keys
            sample = await call(_sample_keys, client, inp.sample_keys, target.db, db_keys, notes)
            if sample.sampled:
                notes.append(f"the key sample read {sample.sampled} keys after the measurement; "
                             "Redis counts those reads in its lifetime keyspace_hits")
    finally:
        with contextlib.suppress(Exception):
            client.close()

    result = _judge(target, second, first, window, maxmemory, policy, mm_source, keyspace, sample,
                    notes)
    step(1.0, result.summary.splitlines()[0])
    return result


def _judge(target: RedisTarget, info: dict[str, Any], first: dict[str, Any], window: float | None,
           maxmemory: int | None, policy: str | None, mm_source: str,
           keyspace: dict[str, KeyspaceDb], sample: KeySample | None,
           notes: list[str]) -> CacheStatsResult:
    """Turn the INFO snapshots into the result, its measurements and its findings."""
    life_hits, life_misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    res = CacheStatsResult(
        target=target.display,
        redis_version=str(info.get("redis_version", "")),
        mode=str(info.get("redis_mode", "")),
        uptime_s=int(info["uptime_in_seconds"]) if "uptime_in_seconds" in info else None,
        window_s=round(window, 3) if window is not None else None,
        lifetime_hit_rate=_rate(life_hits, life_misses),
        lifetime_evicted_keys=int(info.get("evicted_keys", 0)),
        used_memory=int(info.get("used_memory", 0)),
        used_memory_rss=int(info["used_memory_rss"]) if "used_memory_rss" in info else None,
        maxmemory=maxmemory,
        maxmemory_policy=policy,
        maxmemory_source=mm_source,
        mem_fragmentation_ratio=(float(info["mem_fragmentation_ratio"])
                                 if "mem_fragmentation_ratio" in info else None),
        connected_clients=int(info["connected_clients"]) if "connected_clients" in info else None,
        blocked_clients=int(info["blocked_clients"]) if "blocked_clients" in info else None,
        keyspace=keyspace,
        sample=sample,
        notes=notes,
    )
    if window is not None:
        res.hits = _delta(first, info, "keyspace_hits")
        res.misses = _delta(first, info, "keyspace_misses")
        res.evicted_keys = _delta(first, info, "evicted_keys")
        res.expired_keys = _delta(first, info, "expired_keys")
        # The first INFO is counted once it has run, so it falls inside the window.
        commands = max(0, _delta(first, info, "total_commands_processed") - 1)
        res.ops_per_sec = round(commands / window, 2) if window > 0 else None
        res.evictions_per_sec = round(res.evicted_keys / window, 3) if window > 0 else None
        res.ops_source = f"commands processed in the {window:.2f} s window (our INFO excluded)"
        if _delta(first, info, "uptime_in_seconds") < 0:
            res.notes.append("the server restarted during the window: the rates are not meaningful")
    else:
        res.hits, res.misses = life_hits, life_misses
        res.evicted_keys = res.lifetime_evicted_keys
        res.expired_keys = int(info.get("expired_keys", 0))
        if "instantaneous_ops_per_sec" in info:
            res.ops_per_sec = float(info["instantaneous_ops_per_sec"])
            res.ops_source = "instantaneous_ops_per_sec (the server's own recent sample)"
        res.notes.append("hit rate and evictions are lifetime counters (since start or CONFIG "
                     "RESETSTAT); give interval to measure recent behaviour")
    res.hit_rate = _rate(res.hits, res.misses)
    res.total_keys = sum(db.keys for db in keyspace.values())
    if res.total_keys:
        res.ttl_coverage = round(100 * sum(db.expires for db in keyspace.values()) / res.total_keys, 2)
    if str(info.get("cluster_enabled", "0")) == "1":
        res.notes.append("cluster mode: these figures are those of this node only")

    span = f"in the {window:.1f} s window" if window is not None else "since the counters were reset"
    m = _stats_measurements(res, target.display)
    res.measurements = m
    res.findings = _stats_findings(res, span, info)
    res.summary = _stats_summary(res, span)
    return res


def _stats_measurements(res: CacheStatsResult, where: str) -> list[Measurement]:
    out: list[Measurement] = []

    def add(name: str, value: float, unit: str, budget: str | None = None) -> None:
        out.append(Measurement(name=name, value=value, unit=unit, source="cache_stats", target=where,
                               budget=budget,
                               passed=within_budget(value, budget) if budget else None))

    if res.hit_rate is not None:
        add("cache_hit_rate", res.hit_rate, "%", HIT_RATE_BUDGET)
    add("evicted_keys", res.evicted_keys, "count")
    if res.evictions_per_sec is not None:
        add("evictions_per_sec", res.evictions_per_sec, "1/s")
    add("used_memory", res.used_memory, "bytes")
    if res.ttl_coverage is not None:
        add("ttl_coverage", res.ttl_coverage, "%")
    if res.ops_per_sec is not None:
        add("ops_per_sec", res.ops_per_sec, "ops/s")
    return out


def _stats_findings(res: CacheStatsResult, span: str, info: dict[str, Any]) -> list[Finding]:
    found: list[Finding] = []
    where = res.target
    lookups = res.hits + res.misses
    if res.hit_rate is not None and res.hit_rate < HIT_RATE_TARGET:
        found.append(Finding(
            kind="low_hit_rate", severity="high" if res.hit_rate < 50 else "medium",
            summary=f"cache hit rate is {res.hit_rate:.1f} % {span}, below the "
                    f"{HIT_RATE_TARGET:g} % target: {res.misses} of {lookups} lookups missed",
            location=where,
            evidence=f"keyspace_hits={res.hits} keyspace_misses={res.misses}"))
    policy = res.maxmemory_policy or "unknown"
    if res.evicted_keys > 0:
        effect = POLICY_EFFECT.get(policy, "evicts keys")
        limit = f"maxmemory {_mib(res.maxmemory)}" if res.maxmemory else "maxmemory"
        found.append(Finding(
            kind="evictions", severity="high" if res.window_s is not None else "medium",
            summary=f"{res.evicted_keys} keys evicted {span} under maxmemory-policy {policy} "
                    f"({effect}): the data outgrew {limit}, and each evicted key that is read "
                    "again is a miss",
            location=where,
            evidence=f"evicted_keys={res.evicted_keys} used_memory={res.used_memory} "
                     f"maxmemory={res.maxmemory}"))
    if res.ttl_coverage is not None and res.ttl_coverage < TTL_COVERAGE_MIN:
        without = res.total_keys - sum(db.expires for db in res.keyspace.values())
        volatile = policy.startswith("volatile-")
        extra = (f"; under {policy} only keys with a TTL can be evicted, so a full cache rejects "
                 "writes with OOM errors") if volatile else ""
        found.append(Finding(
            kind="no_ttl", severity="high" if volatile else "medium",
            summary=f"{without} of {res.total_keys} keys ({100 - res.ttl_coverage:.1f} %) have no "
                    "TTL: they never expire, so the cache grows without bound and can serve stale "
                    f"data{extra}",
            location=where,
            evidence=", ".join(f"{n}: keys={d.keys} expires={d.expires}"
                               for n, d in res.keyspace.items())))
    if res.maxmemory == 0:
        system = int(info.get("total_system_memory", 0))
        found.append(Finding(
            kind="no_maxmemory", severity="medium",
            summary="maxmemory is 0 (no limit): the cache can grow until the host runs out of "
                    "memory" + (f" ({_mib(system)} on this host)" if system else "")
                    + f"; it uses {_mib(res.used_memory)} now",
            location=where,
            evidence=f"maxmemory=0 maxmemory-policy={policy} ({res.maxmemory_source})"))
    if res.maxmemory and policy == "noeviction" and res.used_memory >= 0.9 * res.maxmemory:
        found.append(Finding(
            kind="memory_full", severity="high",
            summary=f"used memory {_mib(res.used_memory)} is at "
                    f"{100 * res.used_memory / res.maxmemory:.0f} % of maxmemory "
                    f"{_mib(res.maxmemory)} with noeviction: writes fail with OOM once it is full",
            location=where))
    ratio, rss = res.mem_fragmentation_ratio, res.used_memory_rss
    if ratio is not None and rss is not None:
        if ratio > FRAGMENTATION_RATIO:
            waste = rss - res.used_memory
            if waste >= FRAGMENTATION_MIN_BYTES:
                found.append(Finding(
                    kind="fragmentation", severity="high" if ratio > 2 else "medium",
                    summary=f"mem_fragmentation_ratio is {ratio:.2f}: the process holds "
                            f"{_mib(rss)} for {_mib(res.used_memory)} of data ({_mib(waste)} "
                            "wasted); consider activedefrag yes",
                    location=where, evidence=f"used_memory_rss={rss} used_memory={res.used_memory}"))
            else:
                res.notes.append(f"mem_fragmentation_ratio {ratio:.2f} is not meaningful for so "
                                 f"little data ({_mib(res.used_memory)} used)")
        elif ratio < 1 and res.used_memory - rss >= FRAGMENTATION_MIN_BYTES:
            found.append(Finding(
                kind="swapping", severity="high",
                summary=f"mem_fragmentation_ratio is {ratio:.2f}: part of Redis's "
                        f"{_mib(res.used_memory)} is swapped out, which makes every access slow",
                location=where))
    return found


def _stats_summary(res: CacheStatsResult, span: str) -> str:
    hit = (f"hit rate {res.hit_rate:.1f} % ({res.hits} hits, {res.misses} misses {span})"
           if res.hit_rate is not None else f"no key lookups {span}: hit rate unknown")
    ops = f", {res.ops_per_sec:g} ops/s" if res.ops_per_sec is not None else ""
    mem = (f"{_mib(res.used_memory)} of {_mib(res.maxmemory)} ({res.maxmemory_policy})"
           if res.maxmemory else f"{_mib(res.used_memory)} (no maxmemory)")
    ttl = f"{res.ttl_coverage:.0f} % with a TTL" if res.ttl_coverage is not None else "no keys"
    lines = [f"Redis {res.redis_version} at {res.target}: {hit}{ops}",
             f"memory {mem}; {res.evicted_keys} evictions; {res.total_keys} keys, {ttl}"]
    lines += [f"- {f.kind}: {f.summary}" for f in res.findings]
    return "\n".join(lines)


# =========================================================================== simulate_cache

Policy = Literal["lru", "lfu", "ttl", "opt"]
LogFormat = Literal["auto", "lines", "csv", "tsv", "jsonl"]

#: Column or field names recognised without being named in the input.
KEY_NAMES = ("key", "cache_key", "cachekey", "k")
TIME_NAMES = ("timestamp", "time", "ts", "t", "epoch", "at")
#: Default number of points on the miss-ratio curve.
CURVE_POINTS = 12
#: Extra simulations that pin down the size for the target stop after this long per policy.
REFINE_BUDGET_S = 4.0


class SimulateCacheInput(BaseModel):
    """The access log to replay and the caches to simulate."""

    model_config = ConfigDict(extra="forbid")

    access_log: str = Field(
        description="path inside the workspace: one key per line, CSV/TSV with a key column and "
        "an optional timestamp column, or JSON lines with a key field")
    format: LogFormat = Field(default="auto",
                              description="log format; auto looks at the suffix and first line")
    key_column: str | int | None = Field(
        default=None,
        description="CSV/TSV column (header name or 0-based index) or JSON field holding the key; "
        f"default: the first of {', '.join(KEY_NAMES)} found, else column 0")
    time_column: str | int | None = Field(
        default=None,
        description="column or field with the access time (epoch seconds or ISO 8601); default: "
        f"the first of {', '.join(TIME_NAMES)} found")
    policies: list[Policy] = Field(
        default_factory=lambda: ["lru", "lfu", "ttl"], min_length=1,
        description="lru; lfu (in-cache frequency, LRU among equals); ttl (entries expire ttl s "
        "after insertion, LRU when full); opt (Belady's offline optimum: the best any policy "
        "could do)")
    sizes: list[int] | None = Field(
        default=None,
        description="cache sizes in entries; default a geometric series from 1 to the number of "
        f"distinct keys (~{CURVE_POINTS} points)")
    ttl: float | None = Field(default=None, gt=0,
                              description="seconds an entry lives, for the ttl policy (needs "
                              "timestamps)")
    target_hit_rate: float = Field(default=HIT_RATE_TARGET, gt=0, le=100,
                                   description="hit rate (%) the cache must reach")
    max_accesses: int = Field(default=5_000_000, ge=1, le=50_000_000,
                              description="replay at most this many accesses (the first ones)")
    plot_path: str | None = Field(
        default=None,
        description="optional file in the workspace for the curve: .svg (self-contained) or .png "
        "(needs matplotlib)")


class CurvePoint(BaseModel):
    """The hit rate of one policy at one cache size."""

    size: int
    hits: int
    hit_rate: float


class PolicyCurve(BaseModel):
    """One policy's miss-ratio curve and the size it needs for the target."""

    policy: Policy
    curve: list[CurvePoint]
    size_for_target: int | None = Field(
        default=None, description="smallest size (entries) whose hit rate reaches the target")
    hit_rate_at_size: float | None = None
    size_exact: bool = Field(
        default=False, description="size_for_target is the exact smallest (not an upper bound)")
    best_hit_rate: float = Field(description="the highest hit rate this policy reaches at any size")
    seconds: float = Field(description="simulation time")
    note: str | None = None


class TtlOnly(BaseModel):
    """The ttl policy with no size limit: what the TTL alone allows."""

    ttl: float
    hits: int
    hit_rate: float
    peak_entries: int = Field(description="most entries alive at once: the memory it really needs")


class SimulateCacheResult(ToolResult):
    """The miss-ratio curves of the replayed log."""

    tool: str = "simulate_cache"
    access_log: str
    format: str
    accesses: int
    distinct_keys: int
    compulsory_miss_ratio: float = Field(description="% of accesses that are first accesses")
    max_hit_rate: float = Field(description="ceiling: the hit rate of an infinite cache")
    one_hit_keys_pct: float = Field(description="% of keys accessed only once")
    top1pct_access_share: float = Field(description="% of accesses to the top 1 % of keys")
    time_span_s: float | None = None
    target_hit_rate: float
    sizes: list[int]
    policies: list[PolicyCurve]
    ttl_only: TtlOnly | None = None
    plot_path: str | None = None
    seconds: float = Field(default=0.0, description="total time to read and simulate")
    notes: list[str] = Field(default_factory=list)


@dataclass
class AccessLog:
    """The replayed log: keys as dense integers, optional timestamps."""

    keys: list[int]
    times: array | None  # array('d'), seconds
    distinct: int
    format: str
    notes: list[str]


# --------------------------------------------------------------------------- reading


def _parse_time(raw: Any, where: str) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    text = str(raw).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ToolError("invalid_input", f"{where}: {text[:40]!r} is not a timestamp",
                        "use epoch seconds or ISO 8601 times, or set time_column") from None
    return stamp.timestamp()


def _detect_format(path: Path, first: str, inp: SimulateCacheInput) -> str:
    if inp.format != "auto":
        return inp.format
    suffix = path.suffix.lower()
    if first.lstrip().startswith("{") or suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv" or "\t" in first:
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if "," in first:
        header = {c.strip().lower() for c in first.split(",")}
        named = {str(c).lower() for c in (inp.key_column, inp.time_column) if isinstance(c, str)}
        if header & (set(KEY_NAMES) | set(TIME_NAMES) | named) or isinstance(inp.key_column, int):
            return "csv"
    return "lines"


def _column(header: list[str] | None, wanted: str | int | None, defaults: Sequence[str],
            what: str) -> int | None:
    if isinstance(wanted, int):
        return wanted
    lowered = [h.strip().lower() for h in header] if header else []
    if isinstance(wanted, str):
        if wanted.strip().lower() not in lowered:
            raise ToolError("invalid_input", f"the {what} column {wanted!r} is not in the header",
                            f"columns: {', '.join(header or []) or 'no header found'}")
        return lowered.index(wanted.strip().lower())
    for name in defaults:
        if name in lowered:
            return lowered.index(name)
    return None


def read_access_log(path: Path, inp: SimulateCacheInput) -> AccessLog:
    """Read up to ``inp.max_accesses`` accesses; keys become dense integer ids."""
    notes: list[str] = []
    ids: dict[str, int] = {}
    keys: list[int] = []
    times = array("d")
    want_time = True
    skipped = 0
    limit = inp.max_accesses
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        first = ""
        for line in fh:
            if line.strip():
                first = line
                break
        fmt = _detect_format(path, first, inp)
        rest: Iterator[str] = _chain_first(first, fh)
        if fmt == "lines":
            want_time = False
            if inp.time_column is not None:
                raise ToolError("invalid_input", "a one-key-per-line log has no time column",
                                "use CSV/TSV or JSON lines for timestamps")
            setdefault = ids.setdefault
            for line in rest:
                key = line.strip()
                if not key:
                    continue
                if len(keys) >= limit:
                    notes.append(f"only the first {limit} accesses were replayed")
                    break
                keys.append(setdefault(key, len(ids)))
        elif fmt in ("csv", "tsv"):
            reader = csv.reader(rest, delimiter="," if fmt == "csv" else "\t")
            row0 = next(reader, None) or []
            lowered = {c.strip().lower() for c in row0}
            named = {c.strip().lower() for c in (inp.key_column, inp.time_column)
                     if isinstance(c, str)}
            # A column named in the input implies a header; else known names reveal one.
            has_header = bool(named) or bool(lowered & (set(KEY_NAMES) | set(TIME_NAMES)))
            header = row0 if has_header else None
            kcol = _column(header, inp.key_column, KEY_NAMES, "key")
            kcol = 0 if kcol is None else kcol
            tcol = _column(header, inp.time_column, TIME_NAMES, "time")
            want_time = tcol is not None
            rows: Iterator[list[str]] = reader if has_header else _chain_first(row0, reader)
            setdefault = ids.setdefault
            for lineno, row in enumerate(rows, 2 if has_header else 1):
                if not row or kcol >= len(row) or not row[kcol].strip():
                    skipped += 1
                    continue
                if len(keys) >= limit:
                    notes.append(f"only the first {limit} accesses were replayed")
                    break
                if tcol is not None:
                    if tcol >= len(row):
                        skipped += 1
                        continue
                    times.append(_parse_time(row[tcol], f"row {lineno}"))
                keys.append(setdefault(row[kcol].strip(), len(ids)))
        else:
            kname = inp.key_column if isinstance(inp.key_column, str) else None
            tname = inp.time_column if isinstance(inp.time_column, str) else None
            if isinstance(inp.key_column, int) or isinstance(inp.time_column, int):
                raise ToolError("invalid_input", "JSON lines name fields, not column numbers",
                                "give key_column/time_column as field names")
            detected = False
            for lineno, line in enumerate(rest, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ToolError("invalid_input", f"line {lineno} is not JSON: {exc}",
                                    "one JSON object per line") from None
                if not isinstance(record, dict):
                    skipped += 1
                    continue
                if not detected:  # field names come from the first record
                    detected = True
                    kname = kname or next((n for n in KEY_NAMES if n in record), None)
                    if kname is None:
                        raise ToolError("invalid_input", f"line {lineno} has no key field",
                                        f"name it with key_column; fields: {', '.join(record)}")
                    tname = tname or next((n for n in TIME_NAMES if n in record), None)
                    want_time = tname is not None
                value = record.get(kname) if kname else None
                stamp = record.get(tname) if tname else None
                if value is None or (want_time and stamp is None):
                    skipped += 1
                    continue
                if len(keys) >= limit:
                    notes.append(f"only the first {limit} accesses were replayed")
                    break
                key = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                if want_time:
                    times.append(_parse_time(stamp, f"line {lineno}"))
                keys.append(ids.setdefault(key, len(ids)))
    if skipped:
        notes.append(f"{skipped} records without a key (or time) were skipped")
    if fmt == "lines" and ("," in first or ";" in first):
        notes.append("each whole line was taken as a key; if the log is CSV without a header, "
                     "give format='csv' and key_column")
    if not keys:
        raise ToolError("invalid_input", f"{path.name} holds no accesses",
                        "one key per line, or CSV/TSV/JSON lines with a key column")
    stamps: array | None = times if want_time and len(times) == len(keys) else None
    if stamps is not None and any(b < a for a, b in itertools.pairwise(stamps)):
        order = sorted(range(len(keys)), key=stamps.__getitem__)
        keys = [keys[i] for i in order]
        stamps = array("d", (stamps[i] for i in order))
        notes.append("the log was not in time order: it was replayed sorted by timestamp")
    return AccessLog(keys=keys, times=stamps, distinct=len(ids), format=fmt, notes=notes)


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    if first:
        yield first
    yield from rest


# --------------------------------------------------------------------------- simulators


def lru_stack_distances(keys: Sequence[int]) -> tuple[list[int], list[int]]:
    """Mattson's stack distances of every re-access, as sorted distances and cumulative hits.

    The distance of an access is the number of distinct keys touched since the
    previous access to the same key, plus one; an LRU cache of size C hits
    exactly the accesses with distance <= C. A Fenwick tree marks each key's
    latest position, so one pass costs O(n log n). Returns ``(distances,
    cumulative)``: hits(C) = cumulative[bisect_right(distances, C) - 1].
    """
    n = len(keys)
    tree = [0] * (n + 1)
    last: dict[int, int] = {}
    hist: Counter[int] = Counter()
    distinct = 0
    for i, key in enumerate(keys, 1):
        prev = last.get(key)
        if prev is None:
            distinct += 1
        else:
            marked, j = 0, prev
            while j:
                marked += tree[j]
                j &= j - 1
            hist[distinct - marked + 1] += 1
            j = prev
            while j <= n:
                tree[j] -= 1
                j += j & -j
        j = i
        while j <= n:
            tree[j] += 1
            j += j & -j
        last[key] = i
    distances = sorted(hist)
    cumulative: list[int] = []
    total = 0
    for d in distances:
        total += hist[d]
        cumulative.append(total)
    return distances, cumulative


def lru_hits_at(distances: list[int], cumulative: list[int], size: int) -> int:
    """Hits of an LRU cache of ``size`` entries, from the stack-distance histogram."""
    idx = bisect.bisect_right(distances, size)
    return cumulative[idx - 1] if idx else 0


def simulate_lru(keys: Sequence[int], size: int) -> int:
    """Hits of an LRU cache (an OrderedDict; the reference the stack distances must match)."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    touch, evict = cache.move_to_end, cache.popitem
    for key in keys:
        if key in cache:
            touch(key)
            hits += 1
        else:
            cache[key] = None
            if len(cache) > size:
                evict(last=False)
    return hits


def simulate_lfu(keys: Sequence[int], size: int) -> int:
    """Hits of an LFU cache: O(1) per access with frequency buckets, LRU among equals.

    Frequencies count accesses while a key is cached (an evicted key starts
    again at 1), as in the classic O(1) LFU design.
    """
    freq: dict[int, int] = {}
    buckets: dict[int, OrderedDict[int, None]] = {}
    min_freq = 0
    hits = 0
    for key in keys:
        f = freq.get(key)
        if f is not None:
            hits += 1
            bucket = buckets[f]
            del bucket[key]
            if not bucket:
                del buckets[f]
                if min_freq == f:
                    min_freq = f + 1
            up = buckets.get(f + 1)
            if up is None:
                up = buckets[f + 1] = OrderedDict()
            up[key] = None
            freq[key] = f + 1
        else:
            if len(freq) >= size:
                bucket = buckets[min_freq]
                victim, _ = bucket.popitem(last=False)
                if not bucket:
                    del buckets[min_freq]
                del freq[victim]
            freq[key] = 1
            ones = buckets.get(1)
            if ones is None:
                ones = buckets[1] = OrderedDict()
            ones[key] = None
            min_freq = 1
    return hits


def simulate_ttl(keys: Sequence[int], times: Sequence[float], ttl: float,
                 size: int | None) -> tuple[int, int]:
    """Hits of a TTL cache, and the most entries alive at once.

    An entry expires ``ttl`` seconds after it was inserted (a hit does not
    extend it) and is removed at that moment; with ``size`` the cache also
    evicts its least recently used entry when full.
    """
    cache: OrderedDict[int, float] = OrderedDict()
    expiry: deque[tuple[float, int]] = deque()  # (expires at, key), in insertion order
    hits = 0
    peak = 0
    for key, now in zip(keys, times, strict=True):
        while expiry and expiry[0][0] <= now:
            at, old = expiry.popleft()
            if cache.get(old) == at:
                del cache[old]
        if key in cache:
            hits += 1
            if size is not None:
                cache.move_to_end(key)
            continue
        at = now + ttl
        cache[key] = at
        expiry.append((at, key))
        if size is not None and len(cache) > size:
            cache.popitem(last=False)
        peak = max(peak, len(cache))
    return hits, peak


def simulate_opt(keys: Sequence[int], size: int, next_use: Sequence[int]) -> int:
    """Hits of Belady's MIN: on a miss, evict the entry used furthest in the future."""
    cache: dict[int, int] = {}  # key -> position of its next use
    heap: list[tuple[int, int]] = []  # (-next use, key); stale entries skipped
    hits = 0
    for i, key in enumerate(keys):
        nxt = next_use[i]
        if key in cache:
            hits += 1
        elif len(cache) >= size:
            while True:
                neg, victim = heapq.heappop(heap)
                if cache.get(victim) == -neg:
                    del cache[victim]
                    break
        cache[key] = nxt
        heapq.heappush(heap, (-nxt, key))
    return hits


def next_uses(keys: Sequence[int]) -> list[int]:
    """For each access, the position of the next access to the same key (len(keys) if none)."""
    n = len(keys)
    out = [n] * n
    seen: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        key = keys[i]
        out[i] = seen.get(key, n + i)  # distinct "never" positions keep the heap order total
        seen[key] = i
    return out


def default_sizes(distinct: int, points: int = CURVE_POINTS) -> list[int]:
    """A geometric series of cache sizes from 1 to ``distinct`` (about ``points`` sizes)."""
    if distinct <= points:
        return list(range(1, distinct + 1))
    return sorted({max(1, round(distinct ** (i / (points - 1)))) for i in range(points)})


# --------------------------------------------------------------------------- the run


def _pct(hits: int, n: int) -> float:
    return round(100 * hits / n, 3)


def _policy_curve(policy: Policy, log: AccessLog, sizes: list[int], target: float,
                  ttl: float | None, report: Callable[[str], None]) -> PolicyCurve:
    """Simulate one policy at every size and find the smallest size reaching ``target``."""
    keys, n, distinct = log.keys, len(log.keys), log.distinct
    need = target * n / 100  # hits that reach the target
    started = time.perf_counter()
    cache_hits: dict[int, int] = {}
    exact_smallest: int | None = None
    if policy == "lru":
        report(f"lru: stack distances of {n} accesses")
        distances, cumulative = lru_stack_distances(keys)

        def hits_at(size: int) -> int:
            return lru_hits_at(distances, cumulative, size)

        idx = bisect.bisect_left(cumulative, need)
        exact_smallest = distances[idx] if idx < len(distances) else None
    else:
        uses = next_uses(keys) if policy == "opt" else None
        times = log.times

        def hits_at(size: int) -> int:
            if size >= distinct and policy != "ttl":
                return n - distinct  # nothing is ever evicted: only first accesses miss
            if policy == "lfu":
                return simulate_lfu(keys, size)
            if policy == "opt":
                assert uses is not None
                return simulate_opt(keys, size, uses)
            assert times is not None and ttl is not None
            return simulate_ttl(keys, times, ttl, size)[0]

    def measured(size: int) -> int:
        if size not in cache_hits:
            cache_hits[size] = hits_at(size)
        return cache_hits[size]

    curve = []
    for size in sizes:
        report(f"{policy} at {size} entries")
        curve.append(CurvePoint(size=size, hits=measured(size), hit_rate=_pct(measured(size), n)))
    best = max(_pct(measured(distinct), n), *(p.hit_rate for p in curve))
    out = PolicyCurve(policy=policy, curve=curve, best_hit_rate=best, seconds=0.0)
    reaches = [s for s in sorted(set(sizes) | {distinct}) if measured(s) >= need]
    if policy == "lru":
        if exact_smallest is not None:
            out.size_for_target, out.size_exact = exact_smallest, True
    elif reaches:
        hi = reaches[0]
        lo = max((s for s in sizes if s < hi), default=0)
        deadline = time.perf_counter() + REFINE_BUDGET_S
        # Bisection between the last size that missed the target and the first that reached it.
        while hi - lo > 1 and time.perf_counter() < deadline:
            mid = (lo + hi) // 2
            report(f"{policy}: narrowing the size for {target:g} % ({lo}..{hi})")
            if measured(mid) >= need:
                hi = mid
            else:
                lo = mid
        out.size_for_target, out.size_exact = hi, hi - lo <= 1
        if not out.size_exact:
            out.note = (f"the smallest size lies between {lo + 1} and {hi}: the bisection stopped "
                        f"after {REFINE_BUDGET_S:g} s")
        elif policy == "lfu":
            out.note = "found by bisection, which assumes the hit rate grows with the size"
    if out.size_for_target is not None:
        out.hit_rate_at_size = _pct(measured(out.size_for_target), n)
    elif policy == "ttl":
        out.note = (f"unreachable with ttl={ttl:g} s: even with no size limit the hit rate is "
                    f"{best:.1f} %, because entries expire before they are read again")
    out.seconds = round(time.perf_counter() - started, 3)
    return out


def _simulate(inp: SimulateCacheInput, path: Path,
              report: Callable[[float, str], None]) -> SimulateCacheResult:
    started = time.perf_counter()
    report(0.0, f"reading {path.name}")
    log = read_access_log(path, inp)
    notes = list(log.notes)
    n, distinct = len(log.keys), log.distinct
    policies: list[Policy] = list(dict.fromkeys(inp.policies))
    explicit = "policies" in inp.model_fields_set
    if "ttl" in policies:
        problem = None
        if inp.ttl is None:
            problem = ToolError("invalid_input", "the ttl policy needs a ttl",
                                "give ttl in seconds, or leave ttl out of policies")
        elif log.times is None:
            problem = ToolError("invalid_input",
                                f"the ttl policy needs timestamps and {path.name} has none",
                                "use a CSV/TSV or JSON lines log with a time column (time_column), "
                                "or leave ttl out of policies")
        if problem is not None:
            if explicit or inp.ttl is not None:
                raise problem
            policies.remove("ttl")
            notes.append(f"ttl policy skipped: {problem.message}")
    elif inp.ttl is not None:
        notes.append("ttl is ignored: the ttl policy is not among the policies")
    if not policies:
        raise ToolError("invalid_input", "no policy left to simulate", "give policies")

    sizes = sorted({s for s in inp.sizes if s > 0}) if inp.sizes else default_sizes(distinct)
    if not sizes:
        raise ToolError("invalid_input", "sizes holds no positive size", "give sizes >= 1")
    counts = Counter(log.keys)
    ranked = sorted(counts.values(), reverse=True)
    top = max(1, distinct // 100)
    span = (log.times[-1] - log.times[0]) if log.times is not None else None

    curves: list[PolicyCurve] = []
    for index, policy in enumerate(policies):
        base = index / len(policies)

        def step(text: str, base: float = base) -> None:
            report(min(0.99, 0.05 + 0.9 * base), text)

        curves.append(_policy_curve(policy, log, sizes, inp.target_hit_rate, inp.ttl, step))

    ttl_only = None
    if "ttl" in policies and log.times is not None and inp.ttl is not None:
        hits, peak = simulate_ttl(log.keys, log.times, inp.ttl, None)
        ttl_only = TtlOnly(ttl=inp.ttl, hits=hits, hit_rate=_pct(hits, n), peak_entries=peak)

    result = SimulateCacheResult(
        access_log=str(path), format=log.format, accesses=n, distinct_keys=distinct,
        compulsory_miss_ratio=_pct(distinct, n), max_hit_rate=_pct(n - distinct, n),
        one_hit_keys_pct=round(100 * sum(1 for c in ranked if c == 1) / distinct, 2),
        top1pct_access_share=_pct(sum(ranked[:top]), n),
        time_span_s=round(span, 3) if span is not None else None,
        target_hit_rate=inp.target_hit_rate, sizes=sizes, policies=curves, ttl_only=ttl_only,
        notes=notes,
    )
    _sim_judge(result, path.name)
    if inp.plot_path:
        report(0.99, "drawing the curve")
        result.plot_path = str(_plot(result, inp.plot_path))
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _sim_judge(res: SimulateCacheResult, name: str) -> None:
    """Measurements, findings and summary of a simulation."""
    target = res.target_hit_rate
    budget = f">={target:g}"
    for pc in res.policies:
        if pc.size_for_target is not None and pc.hit_rate_at_size is not None:
            where = f"{name} ({pc.policy}, {pc.size_for_target} entries)"
            res.measurements.append(Measurement(
                name="simulated_hit_rate", value=pc.hit_rate_at_size, unit="%",
                source="simulate_cache", target=where, budget=budget,
                passed=within_budget(pc.hit_rate_at_size, budget)))
            res.measurements.append(Measurement(
                name="cache_size_for_target", value=pc.size_for_target, unit="entries",
                source="simulate_cache", target=f"{name} ({pc.policy}, hit rate >= {target:g} %)"))
        else:
            best = max(pc.curve, key=lambda p: (p.hit_rate, -p.size))
            res.measurements.append(Measurement(
                name="simulated_hit_rate", value=best.hit_rate, unit="%", source="simulate_cache",
                target=f"{name} ({pc.policy}, {best.size} entries)", budget=budget,
                passed=within_budget(best.hit_rate, budget)))
    if res.max_hit_rate < target:
        res.findings.append(Finding(
            kind="target_unreachable", severity="high",
            summary=f"no cache size reaches {target:g} %: {res.distinct_keys} of {res.accesses} "
                    f"accesses are first accesses (compulsory misses), so even an infinite cache "
                    f"hits at most {res.max_hit_rate:.1f} %",
            location=name,
            evidence=f"{res.one_hit_keys_pct:.1f} % of keys are read only once"))
    elif res.ttl_only is not None and res.ttl_only.hit_rate < target:
        res.findings.append(Finding(
            kind="ttl_too_short", severity="medium",
            summary=f"with ttl={res.ttl_only.ttl:g} s the hit rate cannot pass "
                    f"{res.ttl_only.hit_rate:.1f} % at any size (target {target:g} %): entries "
                    "expire before they are read again; a longer TTL with explicit invalidation "
                    "keeps them",
            location=name))
    lines = [f"{res.accesses} accesses to {res.distinct_keys} keys: an infinite cache hits at most "
             f"{res.max_hit_rate:.1f} %"]
    for pc in res.policies:
        if pc.size_for_target is not None:
            exact = "" if pc.size_exact else " (upper bound)"
            lines.append(f"- {pc.policy}: {pc.size_for_target} entries{exact} reach "
                         f"{pc.hit_rate_at_size:.1f} % (target {target:g} %)")
        else:
            lines.append(f"- {pc.policy}: never reaches {target:g} %; best {pc.best_hit_rate:.1f} %")
    if res.ttl_only is not None:
        lines.append(f"- ttl {res.ttl_only.ttl:g} s with no size limit: "
                     f"{res.ttl_only.hit_rate:.1f} %, at most {res.ttl_only.peak_entries} entries "
                     "alive")
    res.summary = "\n".join(lines)


# --------------------------------------------------------------------------- plot


def _plot(res: SimulateCacheResult, where: str) -> Path:
    path = resolve_in_workspace(where, must_exist=False)
    if not path.parent.is_dir():
        raise ToolError("not_found", f"the folder of {where} does not exist", "create it first")
    suffix = path.suffix.lower()
    if suffix == ".png":
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ToolError("missing_dependency", "a PNG plot needs matplotlib",
                            "pip install matplotlib, or give plot_path ending in .svg") from None
        fig, ax = plt.subplots(figsize=(7, 4))
        for pc in res.policies:
            ax.plot([p.size for p in pc.curve], [p.hit_rate for p in pc.curve], marker="o",
                    label=pc.policy)
        ax.axhline(res.target_hit_rate, linestyle="--", color="grey", label="target")
        ax.set_xscale("log")
        ax.set_xlabel("cache size (entries)")
        ax.set_ylabel("hit rate (%)")
        ax.set_ylim(0, 100)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
    if suffix not in (".svg", ".html"):
        raise ToolError("invalid_input", f"{where}: the plot must be .svg, .html or .png",
                        "give plot_path ending in .svg")
    svg = render_svg(res)
    path.write_text(svg if suffix == ".svg" else f"<!doctype html><meta charset=utf-8>"
                    f"<title>miss-ratio curve</title><body>{svg}</body>", encoding="utf-8")
    return path


def render_svg(res: SimulateCacheResult) -> str:
    """The hit-rate curves as a small self-contained SVG (log-scaled sizes)."""
    width, height, left, right, top, bottom = 640, 360, 56, 110, 20, 44
    sizes = [p.size for pc in res.policies for p in pc.curve] or [1]
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    span = (hi - lo) or 1.0

    def x(size: int) -> float:
        return left + (math.log10(size) - lo) / span * (width - left - right)

    def y(rate: float) -> float:
        return top + (100 - rate) / 100 * (height - top - bottom)

    colors = {"lru": "#1f77b4", "lfu": "#d62728", "ttl": "#2ca02c", "opt": "#7f7f7f"}
    out = io.StringIO()
    out.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'font-family="sans-serif" font-size="12">')
    out.write(f'<rect width="{width}" height="{height}" fill="white"/>')
    for rate in range(0, 101, 20):
        out.write(f'<line x1="{left}" x2="{width - right}" y1="{y(rate):.1f}" y2="{y(rate):.1f}" '
                  f'stroke="#ddd"/><text x="{left - 6}" y="{y(rate) + 4:.1f}" '
                  f'text-anchor="end">{rate}%</text>')
    for exp in range(math.floor(lo), math.ceil(hi) + 1):
        if lo <= exp <= hi:
            out.write(f'<text x="{x(10**exp):.1f}" y="{height - bottom + 16}" '
                      f'text-anchor="middle">{10**exp:g}</text>')
    out.write(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">'
              'cache size (entries, log scale)</text>')
    target = y(res.target_hit_rate)
    out.write(f'<line x1="{left}" x2="{width - right}" y1="{target:.1f}" y2="{target:.1f}" '
              f'stroke="black" stroke-dasharray="4 3"/>')
    for i, pc in enumerate(res.policies):
        color = colors.get(pc.policy, "black")
        points = " ".join(f"{x(p.size):.1f},{y(p.hit_rate):.1f}" for p in pc.curve)
        out.write(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        ly = top + 14 + 18 * i
        out.write(f'<line x1="{width - right + 10}" x2="{width - right + 30}" y1="{ly - 4}" '
                  f'y2="{ly - 4}" stroke="{color}" stroke-width="2"/>'
                  f'<text x="{width - right + 36}" y="{ly}">{pc.policy}</text>')
    out.write(f'<text x="{width - right + 10}" y="{top + 14 + 18 * len(res.policies)}">'
              f'- - target</text></svg>')
    return out.getvalue()


async def run_simulate(inp: SimulateCacheInput,
                       progress: ProgressCallback | None = None) -> SimulateCacheResult:
    """Replay the access log through each policy and report the miss-ratio curves."""
    path = resolve_in_workspace(inp.access_log)
    if not path.is_file():
        raise ToolError("invalid_input", f"{inp.access_log} is not a file", "give the log file")
    if inp.plot_path:
        resolve_in_workspace(inp.plot_path, must_exist=False)  # refuse early, before the work
    loop = asyncio.get_running_loop()

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, fraction, text)

    result = await asyncio.to_thread(_simulate, inp, path, report)
    if progress is not None:
        progress(1.0, result.summary.splitlines()[0])
    return result


SPEC_STATS = ToolSpec(
    name="cache_stats",
    description=(
        "Read a live Redis (loopback or allowed hosts only): hit rate (over an `interval` window "
        "for recent behaviour, else lifetime), ops/s, evictions and the maxmemory policy, used "
        "memory against maxmemory, fragmentation, clients, keys per database and TTL coverage, "
        "plus a SCAN sample of key sizes. Findings: low_hit_rate, evictions, no_ttl, "
        "no_maxmemory, fragmentation."
    ),
    input_model=CacheStatsInput,
    result_model=CacheStatsResult,
    run=run_stats,
    runs_code=False,
)

SPEC_SIMULATE = ToolSpec(
    name="simulate_cache",
    description=(
        "Replay a recorded access log (keys per line, CSV/TSV or JSON lines, optional "
        "timestamps) through exact LRU, LFU, TTL and optimal-offline cache simulations and "
        "report the miss-ratio curve: hit rate per cache size, the smallest size reaching the "
        "target hit rate per policy, and the compulsory-miss ceiling no size can beat."
    ),
    input_model=SimulateCacheInput,
    result_model=SimulateCacheResult,
    run=run_simulate,
    runs_code=False,
)

SPECS = [SPEC_STATS, SPEC_SIMULATE]

__all__ = [
    "SPECS", "SPEC_SIMULATE", "SPEC_STATS", "CacheStatsInput", "CacheStatsResult",
    "SimulateCacheInput", "SimulateCacheResult", "check_redis_url", "default_sizes",
    "lru_hits_at", "lru_stack_distances", "next_uses", "read_access_log", "render_svg", "run_simulate",
    "run_stats", "simulate_lfu", "simulate_lru", "simulate_opt", "simulate_ttl",
]
