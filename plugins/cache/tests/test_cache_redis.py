"""The Redis backend against a real redis-server: layout, sharing, outages."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pygate_cache
import redis.asyncio as aioredis
from aiohttp import web
from pygate_cache import store
from yarl import URL


async def start(pygate_gateway: Any, upstream_url: str, settings: dict[str, Any]) -> Any:
    return await pygate_gateway(
        {"plugins": {"cache": settings},
         "routes": [{"name": "r", "path": "/", "upstream": upstream_url}]},
        plugins={"cache": pygate_cache})


async def x_cache(gateway: Any, path: str, **headers: str) -> str | None:
    url = URL(gateway.url + path, encoded=True)  # the query exactly as written here
    async with gateway.session.get(url, headers=headers) as response:
        status, response_headers = response.status, response.headers
        await response.read()
    assert status == 200
    return response_headers.get("X-Cache")


async def counting_upstream(fake_upstream: Any) -> Any:
    async def handle(request: web.Request) -> web.Response:
        headers = {"Vary": "Accept-Language"} if request.path == "/v" else {}
        return web.Response(text=f"{request.path} {request.headers.get('Accept-Language')}",
                            headers=headers)

    return await fake_upstream(handler=handle)


async def test_entries_are_redis_hashes_that_expire_with_the_ttl(pygate_gateway, fake_upstream,
                                                                 redis_server):
    upstream = await counting_upstream(fake_upstream)
    gateway = await start(pygate_gateway, upstream.url, {"backend": redis_server.url,
                                                         "ttl": "5s"})
    before = time.time()
    assert await x_cache(gateway, "/a?q=1") == "MISS"
    assert await x_cache(gateway, "/v", **{"Accept-Language": "fr"}) == "MISS"
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = sorted(k.decode() for k in await client.keys("pygate:cache:*"))
        assert len(keys) == 3
        assert keys[0] == "pygate:cache:e:{r:/a?q=1}"
        assert keys[1].startswith("pygate:cache:e:{r:/v?} v=")  # the variant
        assert keys[2] == "pygate:cache:v:{r:/v?}"  # the index: which headers it varies on
        stored = await client.hgetall("pygate:cache:e:{r:/a?q=1}")
        assert stored[b"s"] == b"200" and stored[b"b"] == b"/a None"
        assert ["Content-Type", "text/plain; charset=utf-8"] in json.loads(stored[b"h"])
        assert before <= float(stored[b"t"]) <= time.time()
        assert 4000 < await client.pttl("pygate:cache:e:{r:/a?q=1}") <= 5000
        assert await client.get("pygate:cache:v:{r:/v?}") == b"accept-language"
        assert await x_cache(gateway, "/a?q=1") == "HIT"
        await client.flushall()  # the entries live in Redis, not in the gateway
        assert await x_cache(gateway, "/a?q=1") == "MISS"
    finally:
        await client.aclose()


async def test_two_gateways_share_entries(pygate_gateway, fake_upstream, redis_server):
    upstream = await counting_upstream(fake_upstream)
    first = await start(pygate_gateway, upstream.url, {"backend": redis_server.url})
    # another timeout: a Redis client of its own, as a second node would have
    second = await start(pygate_gateway, upstream.url, {"backend": redis_server.url,
                                                        "backend_timeout": "300ms"})
    assert await x_cache(first, "/shared") == "MISS"
    assert await x_cache(second, "/shared") == "HIT"
    assert await x_cache(second, "/v", **{"Accept-Language": "de"}) == "MISS"
    assert await x_cache(first, "/v", **{"Accept-Language": "de"}) == "HIT"
    assert await x_cache(first, "/v", **{"Accept-Language": "fr"}) == "MISS"
    assert len(upstream.requests) == 3
    assert await pygate_cache.purge(second.running.gateway.facade, "r:/shared?") == 1
    assert await x_cache(first, "/shared") == "MISS"


class Recorder:
    """Stands in for the plugin's structlog logger and keeps every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, "log_level": "warning", **fields})

    def info(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, "log_level": "info", **fields})


async def timed(gateway: Any, path: str, count: int) -> tuple[list[str | None], float]:
    started = time.monotonic()
    results = [await x_cache(gateway, path) for _ in range(count)]
    return results, time.monotonic() - started


async def test_redis_down_requests_are_served_and_caching_resumes(pygate_gateway, fake_upstream,
                                                                  redis_server, monkeypatch):
    upstream = await counting_upstream(fake_upstream)
    gateway = await start(pygate_gateway, upstream.url, {"backend": redis_server.url})
    assert [await x_cache(gateway, "/a") for _ in range(2)] == ["MISS", "HIT"]
    recorder = Recorder()
    monkeypatch.setattr(store, "log", recorder)
    errors_before = store.metrics["backend_errors"]
    await asyncio.to_thread(redis_server.stop)
    results, elapsed = await timed(gateway, "/a", 5)
    assert results == ["BYPASS"] * 5
    assert elapsed < 2.5  # a refused connection answers at once
    assert len(upstream.requests) == 6
    await asyncio.to_thread(redis_server.start)
    # an empty Redis (no persistence): the next request stores, the one after hits
    assert [await x_cache(gateway, "/a") for _ in range(2)] == ["MISS", "HIT"]
    assert store.metrics["backend_errors"] - errors_before == 5
    down = [e for e in recorder.events if e["event"] == "cache backend unavailable"]
    assert len(down) == 1  # throttled: one line, not one per request
    assert down[0]["plugin"] == "cache" and down[0]["log_level"] == "warning"
    assert down[0]["backend"] == redis_server.url
    up = [e for e in recorder.events if e["event"] == "cache backend recovered"]
    assert up and up[0]["plugin"] == "cache" and up[0]["failed_calls"] == 5


async def test_a_hung_redis_costs_a_short_timeout(pygate_gateway, fake_upstream, redis_server):
    upstream = await counting_upstream(fake_upstream)
    gateway = await start(pygate_gateway, upstream.url, {"backend": redis_server.url})
    assert [await x_cache(gateway, "/a") for _ in range(2)] == ["MISS", "HIT"]
    process = redis_server.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        results, elapsed = await timed(gateway, "/a", 2)
    finally:
        process.send_signal(signal.SIGCONT)
    assert results == ["BYPASS"] * 2
    assert elapsed < 2.5  # two tries of backend_timeout (250 ms) per request
    assert await x_cache(gateway, "/a") == "HIT"  # the entry survived in Redis


async def test_unreachable_redis_from_the_start(pygate_gateway, fake_upstream, redis_server):
    upstream = await counting_upstream(fake_upstream)
    await asyncio.to_thread(redis_server.stop)
    gateway = await start(pygate_gateway, upstream.url, {"backend": redis_server.url})
    assert [await x_cache(gateway, "/a") for _ in range(3)] == ["BYPASS"] * 3
    assert len(upstream.requests) == 3


async def test_purge_prefixes_are_literal_not_patterns(pygate_gateway, fake_upstream,
                                                       redis_server):
    upstream = await counting_upstream(fake_upstream)
    gateway = await start(pygate_gateway, upstream.url, {"backend": redis_server.url})
    for path in ("/s?q=*", "/s?q=ab", "/s?q=[a]", "/s?q=a"):
        assert await x_cache(gateway, path) == "MISS"
    app = gateway.running.gateway.facade  # what hooks see as ctx.gateway
    assert await pygate_cache.purge(app, "r:/s?q=*") == 1
    assert await pygate_cache.purge(app, "r:/s?q=[a]") == 1
    assert [await x_cache(gateway, p) for p in ("/s?q=ab", "/s?q=a", "/s?q=*")] == [
        "HIT", "HIT", "MISS"]
