"""The plugin through in-process gateways and a counting fake upstream.

Behaviour that does not depend on the store runs on both backends: memory, and a
real redis-server (the ``redis_server`` fixture of ``pygate.testing``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygate_cache
import pytest
from aiohttp import web
from pygate_cache import purge

from pygate.plugin import Identity, hookimpl
from pygate.testing import start_gateway


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    stream: bool = False  # chunked, without Content-Length


class Origin:
    """The upstream: replies shaped per path by the test, hits counted per path.

    Without a body of its own a reply says which path it is and the how-manieth
    upstream call answered it (``/a #3``), so a test sees whether it got a stored copy.
    """

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.hits: Counter[str] = Counter()
        self.methods: list[str] = []
        self.calls = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.hits[request.path] += 1
        self.methods.append(request.method)
        reply = self.replies.get(request.path, Reply())
        body = reply.body if reply.body is not None else f"{request.path} #{self.calls}".encode()
        headers = {"Content-Type": "text/plain", **reply.headers}
        if reply.stream:
            response = web.StreamResponse(status=reply.status, headers=headers)
            await response.prepare(request)
            for start in range(0, len(body), 1000):
                await response.write(body[start:start + 1000])
            await response.write_eof()
            return response
        return web.Response(status=reply.status, headers=headers, body=body)


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


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory"
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
async def origin(fake_upstream: Any) -> tuple[Origin, str]:
    found = Origin()
    upstream = await fake_upstream(handler=found.handle)
    return found, upstream.url


async def start(pygate_gateway: Any, upstream_url: str, settings: dict[str, Any] | None = None,
                routes: list[dict[str, Any]] | None = None) -> Any:
    return await pygate_gateway(
        {"plugins": {"cache": settings or {}, "demo-auth": {}},
         "routes": routes or [{"name": "r", "path": "/", "upstream": upstream_url}]},
        plugins={"cache": pygate_cache, "demo-auth": auth_plugin()})


async def get(gateway: Any, path: str, method: str = "GET",
              **headers: str) -> tuple[int, str | None, bytes, Any]:
    """``(status, X-Cache, body, headers)``."""
    hdrs = {name.replace("_", "-"): value for name, value in headers.items()}
    status, response_headers, body = await gateway.request(method, path, headers=hdrs,
                                                           allow_redirects=False)
    return status, response_headers.get("X-Cache"), body, response_headers


async def x_cache(gateway: Any, path: str, **headers: str) -> str | None:
    return (await get(gateway, path, **headers))[1]


# ---------------------------------------------------------------------------
# Hit, miss, expiry, Age
# ---------------------------------------------------------------------------


async def test_miss_then_hit_then_expiry(pygate_gateway, origin, backend):
    origin_, url = origin
    gateway = await start(pygate_gateway, url, {"ttl": "300ms", "backend": backend})
    status, cache, body, headers = await get(gateway, "/a?x=1")
    assert (status, cache, body) == (200, "MISS", b"/a #1")
    assert "Age" not in headers
    status, cache, body, headers = await get(gateway, "/a?x=1")
    assert (status, cache, body) == (200, "HIT", b"/a #1")
    assert headers["Age"] == "0"
    assert headers["Content-Type"] == "text/plain"
    assert headers["X-Request-ID"] != ""  # this request's id, not the stored one's
    assert origin_.hits["/a"] == 1
    assert await x_cache(gateway, "/a?x=2") == "MISS"  # the raw query is part of the key
    await asyncio.sleep(0.4)
    status, cache, body, _ = await get(gateway, "/a?x=1")
    assert (cache, body) == ("MISS", b"/a #3")
    assert origin_.hits["/a"] == 3


async def test_age_is_whole_seconds_since_the_response_was_generated(pygate_gateway, origin,
                                                                     backend):
    origin_, url = origin
    origin_.replies["/aged"] = Reply(headers={"Age": "7", "Cache-Control": "max-age=60"})
    gateway = await start(pygate_gateway, url, {"backend": backend})
    await get(gateway, "/fresh")
    await get(gateway, "/aged")
    await asyncio.sleep(1.05)
    assert (await get(gateway, "/fresh"))[3]["Age"] == "1"
    assert (await get(gateway, "/aged"))[3]["Age"] == "8"  # the upstream's Age counts too


async def test_head_is_answered_from_a_get_entry(pygate_gateway, origin, backend):
    origin_, url = origin
    gateway = await start(pygate_gateway, url, {"backend": backend})
    await get(gateway, "/h")
    status, cache, body, headers = await get(gateway, "/h", method="HEAD")
    assert (status, cache, body) == (200, "HIT", b"")
    assert headers["Content-Length"] == str(len(b"/h #1"))
    assert origin_.methods == ["GET"]
    # a HEAD miss goes upstream as HEAD and stores nothing (it has no body)
    assert (await get(gateway, "/h2", method="HEAD"))[1] == "MISS"
    assert (await get(gateway, "/h2"))[1:3] == ("MISS", b"/h2 #3")
    assert origin_.methods == ["GET", "HEAD", "GET"]


async def test_methods_setting_and_other_methods_bypass(pygate_gateway, origin):
    origin_, url = origin
    gateway = await start(pygate_gateway, url, {"methods": ["get"]})
    assert (await get(gateway, "/m", method="POST"))[1] == "BYPASS"
    assert await x_cache(gateway, "/m") == "MISS"
    assert await x_cache(gateway, "/m") == "HIT"
    assert (await get(gateway, "/m", method="HEAD"))[1] == "BYPASS"
    assert origin_.methods == ["POST", "GET", "HEAD"]


async def test_only_cached_routes_get_the_headers(pygate_gateway, origin):
    _, url = origin
    gateway = await pygate_gateway(
        {"plugins": {"demo-auth": {}},
         "routes": [{"name": "cached", "path": "/c", "upstream": url, "plugins": {"cache": {}}},
                    {"name": "plain", "path": "/", "upstream": url}]},
        plugins={"cache": pygate_cache, "demo-auth": auth_plugin()})
    assert await x_cache(gateway, "/c/1") == "MISS"
    assert await x_cache(gateway, "/c/1") == "HIT"
    assert await x_cache(gateway, "/p") is None


# ---------------------------------------------------------------------------
# Cache-Control, statuses, Set-Cookie, Vary
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "stored"), [
    ({"Cache-Control": "no-cache"}, False),  # stored only to revalidate: not stored here
    ({"Cache-Control": "no-store"}, False),
    ({"Cache-Control": "private, max-age=60"}, False),
    ({"Cache-Control": "public, max-age=0"}, False),
    ({"Cache-Control": "max-age=60, s-maxage=0"}, False),  # s-maxage wins
    ({"Set-Cookie": "session=abc"}, False),
    ({"Vary": "*"}, False),
    ({"Expires": "0"}, False),
    ({"Cache-Control": "public, max-age=60"}, True),
    ({"Cache-Control": "must-revalidate"}, True),
])
async def test_response_cache_control(pygate_gateway, origin, backend, headers, stored):
    origin_, url = origin
    origin_.replies["/cc"] = Reply(headers=headers)
    gateway = await start(pygate_gateway, url, {"backend": backend})
    assert await x_cache(gateway, "/cc") == "MISS"
    _, cache, _, response_headers = await get(gateway, "/cc")
    assert cache == ("HIT" if stored else "MISS")
    assert origin_.hits["/cc"] == (1 if stored else 2)
    if "Set-Cookie" in headers:
        assert response_headers["Set-Cookie"] == "session=abc"  # passed on, never stored


@pytest.mark.parametrize(("status", "stored"), [
    (200, True), (203, True), (204, True), (300, True), (301, True), (404, True), (410, True),
    (201, False), (302, False), (307, False), (400, False), (403, False), (500, False),
])
async def test_only_heuristically_cacheable_statuses_are_stored(pygate_gateway, origin, status,
                                                                stored):
    origin_, url = origin
    origin_.replies["/s"] = Reply(status=status, headers={"Location": "/elsewhere"},
                                  body=b"" if status == 204 else None)
    gateway = await start(pygate_gateway, url)
    assert (await get(gateway, "/s"))[:2] == (status, "MISS")
    again_status, cache, _, _ = await get(gateway, "/s")
    assert (again_status, cache) == (status, "HIT" if stored else "MISS")
    assert origin_.hits["/s"] == (1 if stored else 2)


async def test_max_age_and_s_maxage_override_the_ttl(pygate_gateway, origin, backend):
    origin_, url = origin
    origin_.replies["/long"] = Reply(headers={"Cache-Control": "max-age=60"})
    origin_.replies["/shared-long"] = Reply(headers={"Cache-Control": "max-age=0, s-maxage=60"})
    origin_.replies["/short"] = Reply(headers={"Cache-Control": "max-age=60, s-maxage=1"})
    gateway = await start(pygate_gateway, url, {"ttl": "300ms", "backend": backend})
    for path in ("/long", "/shared-long", "/short", "/plain"):
        assert await x_cache(gateway, path) == "MISS"
    await asyncio.sleep(0.4)  # past the ttl: only responses with their own lifetime remain
    assert [await x_cache(gateway, p) for p in ("/long", "/shared-long", "/short", "/plain")] == [
        "HIT", "HIT", "HIT", "MISS"]
    await asyncio.sleep(0.7)  # past s-maxage=1
    assert await x_cache(gateway, "/short") == "MISS"
    assert await x_cache(gateway, "/long") == "HIT"


async def test_request_cache_control(pygate_gateway, origin, backend):
    origin_, url = origin
    gateway = await start(pygate_gateway, url, {"backend": backend})
    assert (await get(gateway, "/r"))[1:3] == ("MISS", b"/r #1")
    # no-store: fetched, not served from the cache, and the answer is not stored
    assert (await get(gateway, "/r", Cache_Control="no-store"))[1:3] == ("BYPASS", b"/r #2")
    assert (await get(gateway, "/r"))[1:3] == ("HIT", b"/r #1")
    # no-cache (and its HTTP/1.0 spelling): fetched, and the fresh answer replaces the entry
    assert (await get(gateway, "/r", Cache_Control="no-cache"))[1:3] == ("BYPASS", b"/r #3")
    assert (await get(gateway, "/r"))[1:3] == ("HIT", b"/r #3")
    assert (await get(gateway, "/r", Pragma="no-cache"))[1:3] == ("BYPASS", b"/r #4")
    assert (await get(gateway, "/r", Cache_Control="max-age=0"))[1:3] == ("BYPASS", b"/r #5")
    assert (await get(gateway, "/r", Cache_Control="max-age=30"))[1:3] == ("HIT", b"/r #5")
    # max-age=N: an entry older than N seconds is not served, the fresh answer is stored
    origin_.replies["/old"] = Reply(headers={"Age": "5", "Cache-Control": "max-age=60"})
    assert (await get(gateway, "/old"))[1:3] == ("MISS", b"/old #6")
    assert (await get(gateway, "/old", Cache_Control="max-age=10"))[1:3] == ("HIT", b"/old #6")
    assert (await get(gateway, "/old", Cache_Control="max-age=3"))[1:3] == ("BYPASS", b"/old #7")
    assert (await get(gateway, "/old"))[1:3] == ("HIT", b"/old #7")
    assert origin_.hits["/r"] == 5


async def test_cache_control_false_keeps_the_ttl_and_ignores_clients(pygate_gateway, origin):
    origin_, url = origin
    origin_.replies["/legacy"] = Reply(headers={"Cache-Control": "no-cache, max-age=0"})
    origin_.replies["/secret"] = Reply(headers={"Cache-Control": "private"})
    gateway = await start(pygate_gateway, url, {"ttl": "300ms", "cache_control": False})
    assert await x_cache(gateway, "/legacy") == "MISS"
    assert await x_cache(gateway, "/legacy", Cache_Control="no-cache") == "HIT"
    await asyncio.sleep(0.4)
    assert await x_cache(gateway, "/legacy") == "MISS"
    await get(gateway, "/secret")
    assert await x_cache(gateway, "/secret") == "MISS"  # private is never stored


async def test_vary(pygate_gateway, origin, backend):
    origin_, url = origin
    origin_.replies["/v"] = Reply(headers={"Vary": "Accept-Language"})
    gateway = await start(pygate_gateway, url, {"backend": backend})
    fr, de = {"Accept_Language": "fr"}, {"Accept_Language": "de"}
    assert (await get(gateway, "/v", **fr))[1:3] == ("MISS", b"/v #1")
    assert (await get(gateway, "/v", **fr))[1:3] == ("HIT", b"/v #1")
    assert (await get(gateway, "/v", **de))[1:3] == ("MISS", b"/v #2")
    assert (await get(gateway, "/v", **de))[1:3] == ("HIT", b"/v #2")
    assert (await get(gateway, "/v", **fr))[1:3] == ("HIT", b"/v #1")
    assert (await get(gateway, "/v"))[1:3] == ("MISS", b"/v #3")
    assert (await get(gateway, "/v"))[1:3] == ("HIT", b"/v #3")
    assert (await get(gateway, "/v", Accept_Language="fr", X_Other="1"))[1] == "HIT"
    assert origin_.hits["/v"] == 3


async def test_conditional_get_is_answered_304_from_the_entry(pygate_gateway, origin):
    origin_, url = origin
    origin_.replies["/e"] = Reply(headers={"ETag": '"v1"', "Cache-Control": "max-age=60"})
    gateway = await start(pygate_gateway, url)
    await get(gateway, "/e")
    status, cache, body, headers = await get(gateway, "/e", If_None_Match='"v1"')
    assert (status, cache, body) == (304, "HIT", b"")
    assert headers["ETag"] == '"v1"' and headers["Cache-Control"] == "max-age=60"
    assert (await get(gateway, "/e", If_None_Match='"v0"'))[:3] == (200, "HIT", b"/e #1")
    assert origin_.hits["/e"] == 1


# ---------------------------------------------------------------------------
# Consumers
# ---------------------------------------------------------------------------


async def test_authenticated_responses_are_cached_per_consumer(pygate_gateway, origin, backend):
    origin_, url = origin
    gateway = await start(pygate_gateway, url, {"backend": backend})
    assert (await get(gateway, "/me", X_User="alice"))[1:3] == ("MISS", b"/me #1")
    assert (await get(gateway, "/me", X_User="alice"))[1:3] == ("HIT", b"/me #1")
    assert (await get(gateway, "/me", X_User="bob"))[1:3] == ("MISS", b"/me #2")
    assert (await get(gateway, "/me"))[1:3] == ("MISS", b"/me #3")  # anonymous: its own entry
    assert (await get(gateway, "/me", X_User="bob"))[1:3] == ("HIT", b"/me #2")
    assert (await get(gateway, "/me"))[1:3] == ("HIT", b"/me #3")
    assert origin_.hits["/me"] == 3


async def test_shared_true_serves_one_entry_to_every_consumer(pygate_gateway, origin, backend):
    origin_, url = origin
    gateway = await start(pygate_gateway, url, {"backend": backend, "shared": True})
    assert (await get(gateway, "/all", X_User="alice"))[1:3] == ("MISS", b"/all #1")
    assert (await get(gateway, "/all", X_User="bob"))[1:3] == ("HIT", b"/all #1")
    assert (await get(gateway, "/all"))[1:3] == ("HIT", b"/all #1")
    assert origin_.hits["/all"] == 1


async def test_authorization_nobody_checked_is_not_shared(pygate_gateway, origin):
    """A credential the gateway did not verify (the upstream does): RFC 9111 section 3.5."""
    origin_, url = origin
    origin_.replies["/public"] = Reply(headers={"Cache-Control": "public, max-age=60"})
    gateway = await start(pygate_gateway, url)
    assert await x_cache(gateway, "/doc", Authorization="Bearer t1") == "MISS"
    assert (await get(gateway, "/doc", Authorization="Bearer t2"))[1:3] == ("MISS", b"/doc #2")
    assert await x_cache(gateway, "/public", Authorization="Bearer t1") == "MISS"
    assert await x_cache(gateway, "/public", Authorization="Bearer t2") == "HIT"


# ---------------------------------------------------------------------------
# Sizes and eviction
# ---------------------------------------------------------------------------


async def test_objects_over_max_object_are_not_stored(pygate_gateway, origin, backend):
    origin_, url = origin
    origin_.replies["/big"] = Reply(body=b"x" * 2000)
    origin_.replies["/big-chunked"] = Reply(body=b"y" * 5000, stream=True)
    origin_.replies["/small"] = Reply(body=b"z" * 1000)
    origin_.replies["/small-chunked"] = Reply(body=b"w" * 1000, stream=True)
    gateway = await start(pygate_gateway, url, {"backend": backend, "max_object": "1KB"})
    for path, size in (("/big", 2000), ("/big-chunked", 5000)):
        for _ in range(2):
            status, cache, body, _ = await get(gateway, path)
            assert (status, cache, len(body)) == (200, "MISS", size)
    for path in ("/small", "/small-chunked"):
        assert await x_cache(gateway, path) == "MISS"
        status, cache, body, _ = await get(gateway, path)
        assert (status, cache, len(body)) == (200, "HIT", 1000)
    assert origin_.hits == Counter({"/big": 2, "/big-chunked": 2, "/small": 1,
                                    "/small-chunked": 1})


async def test_max_entries_evicts_the_least_recently_used(pygate_gateway, origin):
    origin_, url = origin
    gateway = await start(pygate_gateway, url, {"max_entries": 2})
    await get(gateway, "/1")
    await get(gateway, "/2")
    assert await x_cache(gateway, "/1") == "HIT"  # /2 is now the least recently used
    assert await x_cache(gateway, "/3") == "MISS"
    assert [await x_cache(gateway, p) for p in ("/1", "/3", "/2")] == ["HIT", "HIT", "MISS"]
    assert origin_.hits == Counter({"/1": 1, "/2": 2, "/3": 1})


async def test_max_bytes_evicts_the_least_recently_used(pygate_gateway, origin):
    origin_, url = origin
    for path in ("/1", "/2", "/3"):
        origin_.replies[path] = Reply(body=path.encode() * 750)  # 1500 bytes each
    gateway = await start(pygate_gateway, url, {"max_bytes": "4KB", "max_object": "2KB"})
    await get(gateway, "/1")
    await get(gateway, "/2")
    assert [await x_cache(gateway, p) for p in ("/1", "/2")] == ["HIT", "HIT"]
    await get(gateway, "/3")  # does not fit beside both: /1, the least recent, goes
    assert [await x_cache(gateway, p) for p in ("/3", "/2", "/1")] == ["HIT", "HIT", "MISS"]


# ---------------------------------------------------------------------------
# Purge
# ---------------------------------------------------------------------------


async def test_purge_by_key_prefix(pygate_gateway, origin, backend):
    _, url = origin
    gateway = await start(pygate_gateway, url, {"backend": backend}, routes=[
        {"name": "users", "path": "/users", "upstream": url},
        {"name": "orders", "path": "/orders", "upstream": url},
    ])
    paths = ["/users/1", "/users/1?full=1", "/users/10", "/users/2", "/orders/1"]
    for path in paths:
        await get(gateway, path)
    await get(gateway, "/users/1", X_User="alice")
    app = gateway.running.gateway.facade  # what hooks see as ctx.gateway
    assert await purge(app, "users:/users/1?") == 3  # both queries, and alice's entry
    assert [await x_cache(gateway, p) for p in paths] == ["MISS", "MISS", "HIT", "HIT", "HIT"]
    assert await purge(app, pygate_cache.route_prefix("users")) == 4
    assert [await x_cache(gateway, p) for p in paths] == ["MISS", "MISS", "MISS", "MISS", "HIT"]
    assert await purge(app, "") == 5
    assert await x_cache(gateway, "/orders/1") == "MISS"
    assert await purge(app, "nothing:") == 0


# ---------------------------------------------------------------------------
# Configuration and discovery
# ---------------------------------------------------------------------------


def test_listed_by_pygate_plugins():
    command = Path(sys.executable).parent / "pygate"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    found = {p["name"]: p for p in json.loads(done.stdout)}
    assert found["cache"]["distribution"] == "pygate-cache"
    assert found["cache"]["priority"] == 100
    assert found["cache"]["hooks"] == ["admit", "config_schema", "post_response", "startup"]


@pytest.mark.parametrize(("settings", "path", "message"), [
    ({"methods": ["GET", "POST"]}, "plugins.cache.methods", "only \"GET\" and \"HEAD\""),
    ({"backend": "memcached://x"}, "plugins.cache.backend", "redis://host:port/db"),
    ({"ttl": "0s"}, "plugins.cache.ttl", "at least"),
    ({"max_bytes": "lots"}, "plugins.cache.max_bytes", "size"),
    ({"tll": "1s"}, "plugins.cache.tll", "ttl"),
])
async def test_config_errors_name_the_key(settings, path, message):
    data = {"plugins": {"cache": settings},
            "routes": [{"name": "r", "path": "/", "upstream": "http://127.0.0.1:9"}]}
    # the gateway refuses to start: pygate's ConfigError lists every problem
    with pytest.raises(Exception, match="configuration error") as caught:
        await start_gateway(data, {"cache": pygate_cache})
    issues = [str(issue) for issue in caught.value.issues]
    assert any(issue.startswith(path) and message in issue for issue in issues), issues


def test_defaults():
    config = pygate_cache.CacheConfig()
    assert (config.ttl, config.backend, config.max_entries, config.max_bytes, config.max_object,
            config.methods, config.shared, config.cache_control) == (
        30.0, "memory", 10_000, 64 * 1024 * 1024, 1024 * 1024, ["GET", "HEAD"], False, True)
    assert pygate_cache.CacheConfig(max_bytes="512KB").max_object == 512 * 1024


async def test_a_reload_keeps_the_memory_cache(pygate_gateway, origin):
    """A reload starts the new gateway on the same event loop before the old one stops:
    the memory store (``gateway.shared``) outlives the old gateway."""
    origin_, url = origin
    config = {"plugins": {"cache": {}},
              "routes": [{"name": "r", "path": "/", "upstream": url}]}
    old = await start_gateway(config, {"cache": pygate_cache})
    try:
        assert await x_cache(old, "/kept") == "MISS"
        new = await pygate_gateway(config, plugins={"cache": pygate_cache})
    finally:
        await old.close()
    assert await x_cache(new, "/kept") == "HIT"
    assert origin_.hits["/kept"] == 1
    assert await purge(new.running.gateway.facade, "r:") == 1
