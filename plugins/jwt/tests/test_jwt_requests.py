"""Where the token comes from, anonymous requests, per-route settings, the token cache."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import pygate_jwt.auth
from jwt_helpers import (
    PLUGINS,
    bearer,
    challenge,
    claims,
    config,
    description,
    identity_seen,
    key,
    public_pem,
    token,
)
from pygate_jwt.verify import TokenCache, Verified

from pygate.plugin import Identity


def settings(**extra: Any) -> dict[str, Any]:
    return {"algorithms": ["EdDSA"], "public_key": public_pem(key("ed25519")), **extra}


def good(**overrides: Any) -> str:
    return token(key("ed25519"), "EdDSA", claims(**overrides))


async def test_missing_token_gets_a_bare_challenge(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, settings()), plugins=PLUGINS)
    for headers in ({}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer "}):
        status, response_headers, body = await gateway.request("GET", "/", headers=headers)
        assert status == 401
        assert challenge(response_headers) == 'Bearer realm="pygate"'
        assert body["detail"] == "a bearer token is required"
        assert body["route"] == "api"
    assert upstream.requests == []


async def test_bearer_scheme_is_case_insensitive(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, settings()), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/", headers={"Authorization": f"bearer {good()}"})
    assert status == 200


async def test_token_from_cookie_and_query(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    sources = ["header:Authorization", "cookie:session", "query:access_token"]
    gateway = await pygate_gateway(config(upstream.url, settings(token_from=sources)),
                                   plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/", headers={"Cookie": f"session={good()}"})
    assert status == 200
    assert identity_seen(upstream)["id"] == "alice"
    status, _, _ = await gateway.request("GET", f"/?access_token={good(sub='bob')}")
    assert status == 200
    assert identity_seen(upstream)["id"] == "bob"
    # the first configured source that carries a token is the one checked
    status, headers, _ = await gateway.request(
        "GET", f"/?access_token={good(sub='bob')}", headers=bearer("x.y.z"))
    assert status == 401
    assert description(headers) == "the token is malformed"


async def test_header_only_by_default(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, settings()), plugins=PLUGINS)
    status, headers, _ = await gateway.request("GET", f"/?access_token={good()}",
                                               headers={"Cookie": f"session={good()}"})
    assert status == 401
    assert challenge(headers) == 'Bearer realm="pygate"'


async def test_custom_header_source(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config(upstream.url, settings(token_from=["header:X-Access-Token"])), plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/", headers={"X-Access-Token": good()})
    assert status == 200


async def test_optional_lets_anonymous_requests_through(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, settings(optional=True)),
                                   plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/")
    assert status == 200
    assert identity_seen(upstream) is None
    status, _, _ = await gateway.request("GET", "/", headers=bearer(good()))
    assert status == 200
    assert identity_seen(upstream)["id"] == "alice"
    # a token that is present but invalid is still refused
    status, headers, _ = await gateway.request(
        "GET", "/", headers=bearer(good(exp=int(time.time()) - 10)))
    assert status == 401
    assert description(headers) == "the token has expired"


async def test_route_can_turn_jwt_off(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    routes = [
        {"name": "private", "path": "/private", "upstream": upstream.url},
        {"name": "public", "path": "/public", "upstream": upstream.url,
         "plugins": {"jwt": False}},
    ]
    gateway = await pygate_gateway(config(upstream.url, settings(), routes=routes),
                                   plugins=PLUGINS)
    assert (await gateway.request("GET", "/private"))[0] == 401
    status, _, _ = await gateway.request("GET", "/public")
    assert status == 200
    assert identity_seen(upstream) is None
    # a token sent to the public route is not even looked at
    status, _, _ = await gateway.request("GET", "/public", headers=bearer("garbage"))
    assert status == 200


async def test_route_settings_merge_over_the_global_table(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    routes = [
        {"name": "orders", "path": "/orders", "upstream": upstream.url,
         "plugins": {"jwt": {"audience": "orders"}}},
        {"name": "users", "path": "/users", "upstream": upstream.url,
         "plugins": {"jwt": {"audience": "users", "claims": {"email": "email"}}}},
    ]
    gateway = await pygate_gateway(config(upstream.url, settings(), routes=routes),
                                   plugins=PLUGINS)
    orders_token = good(aud="orders", email="ann@example.com")
    assert (await gateway.request("GET", "/orders", headers=bearer(orders_token)))[0] == 200
    assert identity_seen(upstream)["fields"] == {}
    status, headers, _ = await gateway.request("GET", "/users", headers=bearer(orders_token))
    assert status == 401
    assert description(headers) == "the token audience is not accepted"
    users_token = good(aud="users", email="ann@example.com")
    assert (await gateway.request("GET", "/users", headers=bearer(users_token)))[0] == 200
    assert identity_seen(upstream)["fields"] == {"email": "ann@example.com"}


async def test_repeated_token_is_verified_once(pygate_gateway, fake_upstream, monkeypatch):
    calls: list[str] = []
    real = pygate_jwt.auth.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("decode")
        return real(*args, **kwargs)

    monkeypatch.setattr(pygate_jwt.auth, "decode", counting)
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, settings()), plugins=PLUGINS)
    value = good()
    for _ in range(5):
        assert (await gateway.request("GET", "/", headers=bearer(value)))[0] == 200
        assert identity_seen(upstream)["id"] == "alice"
    assert calls == ["decode"]


async def test_cached_token_is_refused_once_it_expires(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, settings()), plugins=PLUGINS)
    exp = int(time.time()) + 1
    value = good(exp=exp)
    assert (await gateway.request("GET", "/", headers=bearer(value)))[0] == 200
    await asyncio.sleep(max(0.0, exp + 0.05 - time.time()))
    status, headers, _ = await gateway.request("GET", "/", headers=bearer(value))
    assert status == 401
    assert description(headers) == "the token has expired"


def test_token_cache_never_returns_an_entry_past_exp():
    now = [1000.0]
    cache = TokenCache(size=2, ttl=300.0, clock=lambda: now[0])
    verified = Verified(identity=Identity(id="a"), claims={}, expires=1010.0)
    cache.put("t1", verified)
    assert cache.get("t1") is verified
    now[0] = 1010.0
    assert cache.get("t1") is None
    assert len(cache) == 0
    cache.put("t2", verified)  # already expired: not stored
    assert cache.get("t2") is None


def test_token_cache_is_bounded_and_time_limited():
    now = [0.0]
    cache = TokenCache(size=2, ttl=60.0, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        cache.put(name, Verified(identity=Identity(id=name), claims={}, expires=None))
    assert len(cache) == 2
    assert cache.get("c") is not None
    now[0] = 61.0
    assert cache.get("c") is None
    disabled = TokenCache(size=0, ttl=60.0)
    disabled.put("a", Verified(identity=Identity(id="a"), claims={}, expires=None))
    assert disabled.get("a") is None
