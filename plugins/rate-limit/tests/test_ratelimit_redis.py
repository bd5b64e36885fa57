"""The Redis backend against a real redis-server: exactness, the Lua script, outages."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import pygate_rate_limit
import pytest
import redis.asyncio as aioredis
from pygate_rate_limit import backends
from pygate_rate_limit.algorithms import FIXED_WINDOW, SLIDING_WINDOW, TOKEN_BUCKET, Limit
from pygate_rate_limit.backends import MemoryStore, RedisStore, limit_keys
from redis.crc import key_slot

S = 1_000_000


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def start(pygate_gateway: Any, upstream_url: str, settings: dict[str, Any]) -> Any:
    return await pygate_gateway(
        {"plugins": {"rate-limit": settings},
         "routes": [{"name": "r", "path": "/", "upstream": upstream_url}]},
        plugins={"rate-limit": pygate_rate_limit})


async def statuses(gateway: Any, count: int) -> list[int]:
    return [(await gateway.request("GET", "/"))[0] for _ in range(count)]


async def early_in_window(window_s: float, needed_s: float) -> None:
    left = window_s - time.time() % window_s
    if left < needed_s:
        await asyncio.sleep(left + 0.01)


@pytest.mark.parametrize("algorithm", ["fixed-window", "sliding-window", "token-bucket"])
async def test_exactly_limit_pass_under_50_concurrent_clients(pygate_gateway, fake_upstream,
                                                              redis_server, algorithm):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 23, "window": "1h", "algorithm": algorithm, "backend": redis_server.url})
    await early_in_window(3600, 3)
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> int:
            async with session.get(gateway.url + "/") as response:
                await response.read()
                return response.status

        results = await asyncio.gather(*(one() for _ in range(100)))
    assert results.count(200) == 23
    assert results.count(429) == 77
    assert len(upstream.requests) == 23


@pytest.mark.parametrize("algorithm", [FIXED_WINDOW, SLIDING_WINDOW, TOKEN_BUCKET])
async def test_lua_script_and_python_agree(redis_server, algorithm):
    """Random traffic through both stores on one pinned clock gives identical outcomes."""
    rnd = random.Random(algorithm)
    steps = [0, 0, 1, 7, 100, 999, 1000, 2500, 5 * S, 6 * S, 60 * S]
    for trial in range(8):
        limits = list(dict.fromkeys(
            Limit(rnd.randint(1, 7), rnd.choice([5000, 7001, 60_000, 3_600_000]))
            for _ in range(rnd.randint(1, 3))))
        clock = Clock(1_700_000_000 * S + rnd.randint(0, 10**9))
        memory = MemoryStore(clock)
        remote = RedisStore(redis_server.url, 1.0)
        remote.clock = clock
        keys = limit_keys("agree", f"{trial}", algorithm, limits)
        try:
            for _ in range(120):
                clock.now += rnd.choice(steps)
                expected = await memory.check(keys, algorithm, limits)
                assert await remote.check(keys, algorithm, limits) == expected
        finally:
            await remote.close()


async def test_lua_script_caps_reset_and_retry_at_the_window(redis_server):
    hour = Limit(5, 3_600_000)
    clock = Clock(1_700_002_800 * S + 476 * S)  # 476 s into an hour
    memory = MemoryStore(clock)
    remote = RedisStore(redis_server.url, 1.0)
    remote.clock = clock
    client = aioredis.Redis.from_url(redis_server.url)

    async def both(keys: list[str], algorithm: str, limit: Limit) -> tuple[int, ...]:
        outcome = (await memory.check(keys, algorithm, [limit]))[0]
        assert await remote.check(keys, algorithm, [limit]) == [outcome]
        return outcome.allowed, outcome.remaining, outcome.reset_ms, outcome.retry_ms

    try:
        sliding = limit_keys("cap", "sw", SLIDING_WINDOW, [hour])
        # one request: the hour's end, not 2 h - 476 s
        assert await both(sliding, SLIDING_WINDOW, hour) == (True, 4, 3_124_000, 0)
        for _ in range(4):
            await both(sliding, SLIDING_WINDOW, hour)
        # a sixth in the hour's first 12 min: the exact wait, 3_844 s, is capped
        assert await both(sliding, SLIDING_WINDOW, hour) == (False, 0, 3_600_000, 3_600_000)
        # 5000 per ms: a 1 us interval; 3000 us of tokens taken (Redis expires keys on
        # its own clock, so the state is written, not built by 3000 pinned requests)
        fast = Limit(5000, 1)
        bucket = limit_keys("cap", "tb", TOKEN_BUCKET, [fast])
        memory.entries[bucket[0]] = ((clock.now + 3000,), clock.now + 60 * S)
        await client.set(bucket[0], str(clock.now + 3000), px=60_000)
        # 4 ms to a full bucket, more than the 1 ms window: the reset says 1 ms
        assert await both(bucket, TOKEN_BUCKET, fast) == (True, 1999, 1, 0)
    finally:
        await remote.close()
        await client.aclose()


async def test_keys_expire_and_share_one_cluster_slot(pygate_gateway, fake_upstream,
                                                      redis_server):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limits": [{"limit": 5, "window": "2s"}, {"limit": 50, "window": "1m"}],
        "backend": redis_server.url})
    assert (await gateway.request("GET", "/"))[0] == 200
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = sorted(await client.keys("pygate:rl:*"))
        assert [k.decode() for k in keys] == [
            "pygate:rl:{r=r|ip=127.0.0.1}:sw:2000:5",
            "pygate:rl:{r=r|ip=127.0.0.1}:sw:60000:50",
        ]
        assert len({key_slot(k) for k in keys}) == 1
        ttls = [await client.pttl(k) for k in keys]
        assert 2000 < ttls[0] <= 4000  # sliding window: the current and the next window
        assert 60_000 < ttls[1] <= 120_000
    finally:
        await client.aclose()


async def test_script_is_reloaded_after_a_flush(pygate_gateway, fake_upstream, redis_server):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 3, "window": "1h", "algorithm": "token-bucket", "backend": redis_server.url})
    assert await statuses(gateway, 1) == [200]
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.script_exists(backends.LUA_SHA) == [True]
        await client.script_flush()
        assert await statuses(gateway, 3) == [200, 200, 429]
        assert await client.script_exists(backends.LUA_SHA) == [True]
    finally:
        await client.aclose()


async def timed_statuses(gateway: Any, count: int) -> tuple[list[int], float]:
    started = time.monotonic()
    results = await statuses(gateway, count)
    return results, time.monotonic() - started


class Recorder:
    """Stands in for the plugin's structlog logger and keeps every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, "log_level": "warning", **fields})

    def info(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, "log_level": "info", **fields})


async def test_redis_down_allow_then_limits_resume(pygate_gateway, fake_upstream,
                                                   redis_server, monkeypatch):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 2, "window": "1h", "algorithm": "token-bucket", "backend": redis_server.url,
        "on_backend_error": "allow"})
    assert await statuses(gateway, 3) == [200, 200, 429]
    errors_before = pygate_rate_limit.metrics["backend_errors"]
    recorder = Recorder()
    monkeypatch.setattr(backends, "log", recorder)
    await asyncio.to_thread(redis_server.stop)
    results, elapsed = await timed_statuses(gateway, 5)
    assert results == [200] * 5
    assert elapsed < 2.5  # short socket timeouts: no request waits on a dead Redis
    _, headers, _ = await gateway.request("GET", "/")
    assert "RateLimit-Limit" not in headers
    await asyncio.to_thread(redis_server.start)
    # an empty Redis (no persistence) and no script cache: counting starts afresh
    assert await statuses(gateway, 3) == [200, 200, 429]
    logs = recorder.events
    assert pygate_rate_limit.metrics["backend_errors"] - errors_before == 6
    down = [e for e in logs if e["event"] == "rate-limit backend unavailable"]
    assert len(down) == 1  # throttled: one line, not one per request
    assert down[0]["plugin"] == "rate-limit" and down[0]["log_level"] == "warning"
    assert down[0]["on_backend_error"] == "allow"
    assert redis_server.url.rpartition("/")[0] in down[0]["backend"]
    up = [e for e in logs if e["event"] == "rate-limit backend recovered"]
    assert up and up[0]["failed_checks"] == 6


async def test_redis_down_deny_then_limits_resume(pygate_gateway, fake_upstream,
                                                  redis_server):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 2, "window": "1h", "algorithm": "fixed-window", "backend": redis_server.url,
        "on_backend_error": "deny"})
    await early_in_window(3600, 3)
    assert await statuses(gateway, 3) == [200, 200, 429]
    await asyncio.to_thread(redis_server.stop)
    results, elapsed = await timed_statuses(gateway, 4)
    assert results == [503] * 4
    assert elapsed < 2.5
    status, headers, body = await gateway.request("GET", "/")
    assert status == 503
    assert headers["Content-Type"] == "application/problem+json"
    assert body["detail"] == "the rate-limit store is unavailable"
    assert "127.0.0.1" not in str(body) and "RateLimit-Limit" not in headers
    await asyncio.to_thread(redis_server.start)
    assert await statuses(gateway, 3) == [200, 200, 429]
    assert len(upstream.requests) == 4


async def test_unreachable_redis_from_the_start(pygate_gateway, fake_upstream, redis_server):
    upstream = await fake_upstream()
    await asyncio.to_thread(redis_server.stop)
    allow = await start(pygate_gateway, upstream.url, {
        "limit": 1, "window": "1h", "backend": redis_server.url})
    assert await statuses(allow, 3) == [200, 200, 200]
