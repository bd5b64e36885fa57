"""The plugin through an in-process gateway: headers, 429s, keys, scopes, algorithms.

Behaviour tests run on both backends (memory, and the real redis-server fixture)
with the store's clock pinned, so every header value is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import aiohttp
import pygate_rate_limit
import pytest
from pygate_rate_limit.backends import MemoryStore, RedisStore, Registry

from pygate.plugin import Identity, hookimpl
from pygate.testing import start_gateway

S = 1_000_000
T0 = 1_700_000_040 * S  # the start of a minute (and of a second)


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * S)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory"
    return str(request.getfixturevalue("redis_server").url)


def pin_clock(gateway: Any, backend: str, clock: Clock, timeout: float = 0.25) -> None:
    """Put a store reading ``clock`` in the gateway's registry, before first use."""
    store: Any
    if backend == "memory":
        store = MemoryStore(clock)
    else:
        store = RedisStore(backend, timeout)
        store.clock = clock
    state = gateway.running.gateway.facade.state(pygate_rate_limit.NAME)
    registry: Registry = state[pygate_rate_limit.REGISTRY]
    registry.stores[(backend, timeout)] = store


def auth_plugin() -> types.ModuleType:
    """Callers name themselves in X-User (a stand-in for jwt or key-auth)."""
    module = types.ModuleType("demo_auth")

    @hookimpl
    def authenticate(request: Any) -> Identity | None:
        user = request.headers.get("X-User")
        return Identity(id=user, consumer=user) if user else None

    module.authenticate = authenticate  # type: ignore[attr-defined]
    module.PRIORITY = 1000  # type: ignore[attr-defined]
    return module


async def start(pygate_gateway: Any, upstream_url: str, settings: dict[str, Any],
                routes: list[dict[str, Any]] | None = None, **gateway: Any) -> Any:
    config: dict[str, Any] = {
        "plugins": {"rate-limit": settings, "demo-auth": {}},
        "routes": routes or [{"name": "r", "path": "/", "upstream": upstream_url}],
    }
    if gateway:
        config["gateway"] = gateway
    return await pygate_gateway(config, plugins={"rate-limit": pygate_rate_limit,
                                                 "demo-auth": auth_plugin()})


async def statuses(gateway: Any, path: str, count: int, **kwargs: Any) -> list[int]:
    return [(await gateway.request("GET", path, **kwargs))[0] for _ in range(count)]


def rate_headers(headers: Any) -> tuple[str, str, str]:
    return (headers["RateLimit-Limit"], headers["RateLimit-Remaining"],
            headers["RateLimit-Reset"])


# ---------------------------------------------------------------------------
# Plugin wiring and configuration
# ---------------------------------------------------------------------------


def test_listed_by_pygate_plugins():
    command = Path(sys.executable).parent / "pygate"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    entry = next(e for e in json.loads(done.stdout) if e["name"] == "rate-limit")
    assert entry["distribution"] == "pygate-rate-limit"
    assert entry["priority"] == 910
    assert set(entry["hooks"]) == {"admit", "post_response", "startup", "config_schema"}


@pytest.mark.parametrize(("settings", "message"), [
    ({"limit": 5, "window": "1s", "limits": [{"limit": 1, "window": "1s"}]},
     "routes[0].plugins.rate-limit: Value error, give either limit and window, or limits"),
    ({"limit": 5}, "routes[0].plugins.rate-limit: Value error, set limit and window"),
    ({"limit": 5, "window": "1s", "key": "cookie:x"},
     "routes[0].plugins.rate-limit.key: expected \"ip\", \"consumer\" or \"header:NAME\""),
    ({"limit": 5, "window": "1s", "backend": "memcached://x"},
     "routes[0].plugins.rate-limit.backend: expected \"memory\" or a URL"),
    ({"limit": 5, "window": "1s", "algoritm": "token-bucket"},
     "routes[0].plugins.rate-limit.algoritm: unknown key; did you mean 'algorithm'?"),
    ({"limits": [{"limit": 0, "window": "1s"}]}, "routes[0].plugins.rate-limit.limits[0].limit"),
    ({"limit": 5, "window": "soon"}, "routes[0].plugins.rate-limit.window: expected a duration"),
])
async def test_config_errors_carry_the_key_path(settings, message):
    config = {"routes": [{"name": "r", "path": "/", "upstream": "http://127.0.0.1:9",
                          "plugins": {"rate-limit": settings}}]}
    # the gateway refuses to start: pygate's ConfigError lists every problem
    with pytest.raises(Exception, match="configuration error") as caught:
        await start_gateway(config, {"rate-limit": pygate_rate_limit})
    assert message.replace("Value error, ", "") in str(caught.value)


async def test_route_settings_merge_over_the_global_table():
    config = {
        "plugins": {"rate-limit": {"limit": 100, "window": "1m", "key": "consumer"}},
        "routes": [{"name": "a", "path": "/a", "upstream": "http://127.0.0.1:9",
                    "plugins": {"rate-limit": {"limit": 5, "algorithm": "token-bucket"}}},
                   {"name": "b", "path": "/b", "upstream": "http://127.0.0.1:9",
                    "plugins": {"rate-limit": False}}]}
    gateway = await start_gateway(config, {"rate-limit": pygate_rate_limit})
    try:
        # what the plugin gets: the global table's config, then route a's merged one
        table, merged = gateway.running.gateway.facade.configs(pygate_rate_limit.NAME)
        _, on_a, _ = await gateway.request("GET", "/a")  # 502 (nothing listens), counted
        _, on_b, _ = await gateway.request("GET", "/b")
    finally:
        await gateway.close()
    assert (table.limit, table.window, table.algorithm) == (100, 60.0, "sliding-window")
    assert (merged.limit, merged.window, merged.key, merged.algorithm) == (
        5, 60.0, "consumer", "token-bucket")
    assert [(x.limit, x.window_ms) for x in merged.effective_limits] == [(5, 60_000)]
    assert on_a["RateLimit-Limit"] == "5"
    assert "RateLimit-Limit" not in on_b  # turned off on route b


# ---------------------------------------------------------------------------
# Headers, 429, several limits (both backends, pinned clock)
# ---------------------------------------------------------------------------


async def test_headers_retry_after_and_the_problem_document(pygate_gateway, fake_upstream,
                                                            backend):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 3, "window": "1m", "algorithm": "fixed-window", "backend": backend})
    clock = Clock(T0 + 15_200_000)  # 15.2 s into the minute: 44.8 s left -> 45
    pin_clock(gateway, backend, clock)
    seen = []
    for _ in range(3):
        status, headers, _ = await gateway.request("GET", "/x")
        assert status == 200
        seen.append(rate_headers(headers))
    assert seen == [("3", "2", "45"), ("3", "1", "45"), ("3", "0", "45")]
    status, headers, body = await gateway.request("GET", "/x")
    assert status == 429
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["Retry-After"] == "45"
    assert rate_headers(headers) == ("3", "0", "45")
    assert body["type"] == "about:blank" and body["title"] == "Too Many Requests"
    assert body["status"] == 429 and body["route"] == "r"
    assert body["request_id"] == headers["X-Request-ID"]
    assert "retry in 45 s" in body["detail"]
    assert len(upstream.requests) == 3
    clock.advance(44.8)
    status, headers, _ = await gateway.request("GET", "/x")
    assert (status, rate_headers(headers)) == (200, ("3", "2", "60"))


async def test_several_limits_at_once(pygate_gateway, fake_upstream, backend):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limits": [{"limit": 2, "window": "1s"}, {"limit": 3, "window": "1m"}],
        "algorithm": "fixed-window", "backend": backend})
    clock = Clock()
    pin_clock(gateway, backend, clock)
    status, headers, _ = await gateway.request("GET", "/")
    assert (status, rate_headers(headers)) == (200, ("2", "1", "1"))
    assert await statuses(gateway, "/", 4) == [200, 429, 429, 429]
    _, headers, _ = await gateway.request("GET", "/")
    assert (headers["Retry-After"], rate_headers(headers)) == ("1", ("2", "0", "1"))
    clock.advance(1)
    # the refused requests took nothing from the minute: one of its three is left
    status, headers, _ = await gateway.request("GET", "/")
    assert (status, rate_headers(headers)) == (200, ("3", "0", "59"))
    status, headers, _ = await gateway.request("GET", "/")
    assert (status, headers["Retry-After"], rate_headers(headers)) == (
        429, "59", ("3", "0", "59"))


async def test_sliding_window_weights_the_previous_window(pygate_gateway, fake_upstream,
                                                          backend):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 10, "window": "1m", "backend": backend})  # sliding-window by default
    clock = Clock()
    pin_clock(gateway, backend, clock)
    assert (await statuses(gateway, "/", 11)).count(200) == 10
    clock.advance(90)  # half-way into the next minute: the previous 10 weigh 5
    assert (await statuses(gateway, "/", 7)).count(200) == 5
    _, headers, _ = await gateway.request("GET", "/")
    # 10 * (30 - t) / 60 + 5 <= 9 once t >= 6 s
    assert headers["Retry-After"] == "6"


async def test_token_bucket_refills_gradually(pygate_gateway, fake_upstream, backend):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 4, "window": "1s", "algorithm": "token-bucket", "backend": backend})
    clock = Clock()
    pin_clock(gateway, backend, clock)
    assert await statuses(gateway, "/", 5) == [200, 200, 200, 200, 429]
    clock.advance(0.25)
    status, headers, _ = await gateway.request("GET", "/")
    assert (status, rate_headers(headers)) == (200, ("4", "0", "1"))
    assert await statuses(gateway, "/", 2) == [429, 429]
    clock.advance(0.5)
    assert await statuses(gateway, "/", 3) == [200, 200, 429]


HOUR_START = 1_700_002_800 * S  # the start of an hour


@pytest.mark.parametrize(("algorithm", "reset", "retry_after"), [
    ("fixed-window", "3124", "3124"),  # the hour's end, 476 s in
    # the hour's end; refused, the 5 of the first 12 min (an hour / 5) would weigh into
    # the next hour (exact wait 3844 s): Retry-After is capped at the window
    ("sliding-window", "3124", "3600"),
    ("token-bucket", "720", "720"),  # one token back every 3600 s / 5
])
async def test_reset_and_retry_after_stay_within_the_window(pygate_gateway, fake_upstream,
                                                            backend, algorithm, reset,
                                                            retry_after):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 5, "window": "1h", "algorithm": algorithm, "backend": backend})
    pin_clock(gateway, backend, Clock(HOUR_START + 476 * S))
    status, headers, _ = await gateway.request("GET", "/")
    assert (status, rate_headers(headers)) == (200, ("5", "4", reset))
    assert await statuses(gateway, "/", 4) == [200] * 4
    status, headers, _ = await gateway.request("GET", "/")
    assert status == 429
    assert headers["Retry-After"] == retry_after
    assert rate_headers(headers) == ("5", "0", retry_after)


@pytest.mark.parametrize("algorithm", ["fixed-window", "sliding-window", "token-bucket"])
async def test_reset_within_the_window_on_the_real_clock(pygate_gateway, fake_upstream,
                                                         backend, algorithm):
    """No pinned clock: the memory store reads the wall clock, Redis its own TIME."""
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 5, "window": "1h", "algorithm": algorithm, "backend": backend})
    await early_in_window(3600, 3)
    status, headers, _ = await gateway.request("GET", "/")
    assert status == 200 and headers["RateLimit-Remaining"] == "4"
    assert 1 <= int(headers["RateLimit-Reset"]) <= 3600
    assert await statuses(gateway, "/", 4) == [200] * 4
    status, headers, _ = await gateway.request("GET", "/")
    assert status == 429 and headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 3600
    assert headers["RateLimit-Reset"] == headers["Retry-After"]


async def early_in_window(window_s: float, needed_s: float) -> None:
    """Sleep past the next epoch-aligned boundary if less than ``needed_s`` is left."""
    left = window_s - time.time() % window_s
    if left < needed_s:
        await asyncio.sleep(left + 0.01)


async def test_window_resets_in_real_time(pygate_gateway, fake_upstream, backend):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 2, "window": "1s", "algorithm": "fixed-window", "backend": backend})
    await early_in_window(1.0, 0.6)
    assert await statuses(gateway, "/", 3) == [200, 200, 429]
    _, headers, _ = await gateway.request("GET", "/")
    assert headers["Retry-After"] == "1"
    await asyncio.sleep(1.0 - time.time() % 1.0 + 0.02)
    assert await statuses(gateway, "/", 3) == [200, 200, 429]


# ---------------------------------------------------------------------------
# Keys and scopes (memory)
# ---------------------------------------------------------------------------


async def test_key_by_ip_uses_the_trusted_client_ip(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    trusting = await start(pygate_gateway, upstream.url, {"limit": 2, "window": "1h"},
                           trusted_proxies=["127.0.0.1/32"])
    one = {"X-Forwarded-For": "10.0.0.1"}
    two = {"X-Forwarded-For": "192.0.2.9, 10.0.0.2"}
    assert await statuses(trusting, "/", 3, headers=one) == [200, 200, 429]
    assert await statuses(trusting, "/", 3, headers=two) == [200, 200, 429]
    # without trusted proxies the header is not believed: one client, 127.0.0.1
    plain = await start(pygate_gateway, upstream.url, {"limit": 2, "window": "1h",
                                                       "key_prefix": "other"})
    assert await statuses(plain, "/", 1, headers=one) == [200]
    assert await statuses(plain, "/", 2, headers=two) == [200, 429]


async def test_key_by_consumer_falls_back_to_ip(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url,
                          {"limit": 2, "window": "1h", "key": "consumer"})
    assert await statuses(gateway, "/", 3, headers={"X-User": "alice"}) == [200, 200, 429]
    assert await statuses(gateway, "/", 3, headers={"X-User": "bob"}) == [200, 200, 429]
    assert await statuses(gateway, "/", 3) == [200, 200, 429]  # anonymous: by IP
    # an anonymous caller whose IP spells a consumer name does not share its counter
    assert await statuses(gateway, "/", 1, headers={"X-User": "127.0.0.1"}) == [200]


async def test_key_by_header_falls_back_to_ip(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url,
                          {"limit": 2, "window": "1h", "key": "header:X-Tenant"})
    for tenant in ("a", "b", "{weird} tenant/ä"):
        headers = {"X-Tenant": tenant}
        assert await statuses(gateway, "/", 3, headers=headers) == [200, 200, 429]
    assert await statuses(gateway, "/", 3) == [200, 200, 429]


async def test_scope_route_and_global(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    routes = [{"name": "a", "path": "/a", "upstream": upstream.url},
              {"name": "b", "path": "/b", "upstream": upstream.url}]
    per_route = await start(pygate_gateway, upstream.url, {"limit": 2, "window": "1h"},
                            routes)
    assert await statuses(per_route, "/a", 3) == [200, 200, 429]
    assert await statuses(per_route, "/b", 3) == [200, 200, 429]
    shared = await start(pygate_gateway, upstream.url, {
        "limit": 2, "window": "1h", "scope": "global", "key_prefix": "g"}, routes)
    assert await statuses(shared, "/a", 1) == [200]
    assert await statuses(shared, "/b", 2) == [200, 429]
    assert await statuses(shared, "/a", 1) == [429]


async def test_route_without_the_plugin_has_no_headers(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {"limit": 1, "window": "1h"}, [
        {"name": "on", "path": "/on", "upstream": upstream.url},
        {"name": "off", "path": "/off", "upstream": upstream.url,
         "plugins": {"rate-limit": False}}])
    assert await statuses(gateway, "/off", 3) == [200, 200, 200]
    _, headers, _ = await gateway.request("GET", "/off")
    assert "RateLimit-Limit" not in headers
    status, headers, _ = await gateway.request("GET", "/on/missing")
    assert status == 200 and headers["RateLimit-Remaining"] == "0"


async def test_headers_on_upstream_errors_too(pygate_gateway, fake_upstream):
    async def failing(request: Any) -> Any:
        from aiohttp import web

        return web.Response(status=500, headers={"RateLimit-Limit": "999"})

    upstream = await fake_upstream(handler=failing)
    gateway = await start(pygate_gateway, upstream.url, {"limit": 5, "window": "1h"})
    status, headers, _ = await gateway.request("GET", "/")
    assert status == 500
    assert headers.getall("RateLimit-Limit") == ["5"]
    assert headers["RateLimit-Remaining"] == "4"


# ---------------------------------------------------------------------------
# Exactness under concurrency (memory, one worker)
# ---------------------------------------------------------------------------


async def concurrent_statuses(url: str, count: int, clients: int = 50) -> list[int]:
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> int:
            async with session.get(url) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.parametrize("algorithm", ["fixed-window", "sliding-window", "token-bucket"])
async def test_exactly_limit_pass_under_50_concurrent_clients(pygate_gateway, fake_upstream,
                                                              algorithm):
    upstream = await fake_upstream()
    gateway = await start(pygate_gateway, upstream.url, {
        "limit": 37, "window": "1h", "algorithm": algorithm})
    await early_in_window(3600, 3)
    before = dict(pygate_rate_limit.metrics)
    results = await concurrent_statuses(gateway.url + "/", 150)
    assert results.count(200) == 37
    assert results.count(429) == 113
    assert len(upstream.requests) == 37
    assert pygate_rate_limit.metrics["allowed"] - before["allowed"] == 37
    assert pygate_rate_limit.metrics["limited"] - before["limited"] == 113


def test_store_keys_are_made_once_per_caller_and_route() -> None:
    from aiohttp.test_utils import make_mocked_request
    from pygate_rate_limit import KNOWN_KEYS, keys_for
    from pygate_rate_limit.config import RateLimitConfig

    from pygate.plugin import Context, RouteInfo

    config = RateLimitConfig(limit=5, window=60.0, key="ip")
    known: dict = {}
    request = make_mocked_request("GET", "/")

    def keys(ip: str, route: str) -> list[str]:
        ctx = Context(request_id="r", client_ip=ip, method="GET", path="/", start=0.0)
        ctx.route = RouteInfo(route, {})
        return keys_for(request, ctx, config, known)

    first = keys("10.0.0.1", "a")
    assert keys("10.0.0.1", "a") is first  # made once
    assert keys("10.0.0.2", "a") != first and keys("10.0.0.1", "b") != first
    assert first == ["pygate:rl:{r=a|ip=10.0.0.1}:sw:60000:5"]
    for index in range(KNOWN_KEYS + 5):
        keys(f"10.1.{index // 256}.{index % 256}", "a")
    assert len(known) <= KNOWN_KEYS
    assert keys("10.0.0.1", "a") == first  # made again after the memory started over
