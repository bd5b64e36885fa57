"""Introspection through an in-process gateway against a fake identity provider."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import structlog

sys.path.insert(0, str(Path(__file__).parent))

from oauth2_helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    PLUGINS,
    FakeIdp,
    bearer,
    config,
    identity_seen,
    settings,
)


async def start(pygate_gateway, fake_upstream, *, routes: list[dict[str, Any]] | None = None,
                **extra: Any):
    idp_state = FakeIdp()
    idp = await fake_upstream(routes={"POST /introspect": idp_state.handler})
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config(upstream.url, settings(idp.url, **extra), routes=routes), plugins=PLUGINS)
    return gateway, upstream, idp, idp_state


async def test_active_token_gives_an_identity(pygate_gateway, fake_upstream):
    gateway, upstream, _, idp = await start(pygate_gateway, fake_upstream)
    idp.active("tok-1", scope="orders:read orders:write", email="ann@example.com")
    status, _, _ = await gateway.request("GET", "/x", headers=bearer("tok-1"))
    assert status == 200
    seen = identity_seen(upstream)
    assert seen["id"] == "alice"
    assert seen["roles"] == ["orders:read", "orders:write"]
    assert seen["source"] == "oauth2-introspection"
    assert seen["fields"]["email"] == "ann@example.com"
    assert seen["fields"]["client_id"] == "web"
    assert "active" not in seen["fields"]


async def test_client_credentials_and_rfc7662_form(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream)
    idp.active("tok-1")
    await gateway.request("GET", "/", headers=bearer("tok-1"))
    [call] = idp.calls
    # RFC 6749 section 2.3.1: both parts form-urlencoded, then base64
    pair = f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}"
    assert pair == "pygate:s3cret%3Awith-colon"
    assert call["authorization"] == "Basic " + base64.b64encode(pair.encode()).decode()
    assert call["content_type"] == "application/x-www-form-urlencoded"
    assert call["form"] == {"token": "tok-1", "token_type_hint": "access_token"}


async def test_inactive_token_is_refused(pygate_gateway, fake_upstream):
    gateway, upstream, _, idp = await start(pygate_gateway, fake_upstream)
    idp.tokens["revoked"] = {"active": False}
    for token in ("revoked", "never-issued"):
        status, headers, body = await gateway.request("GET", "/", headers=bearer(token))
        assert status == 401
        assert headers["WWW-Authenticate"] == \
            'Bearer error="invalid_token", error_description="the token is not active"'
        assert body["detail"] == "the token is not active"
        assert token not in str(body)
    assert upstream.requests == []


async def test_missing_token_gets_a_bare_challenge(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream)
    for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer"}):
        status, response_headers, _ = await gateway.request("GET", "/", headers=headers)
        assert status == 401
        assert response_headers["WWW-Authenticate"] == 'Bearer realm="pygate"'
    assert idp.calls == []


async def test_optional_lets_anonymous_requests_through(pygate_gateway, fake_upstream):
    gateway, upstream, _, idp = await start(pygate_gateway, fake_upstream, optional=True)
    assert (await gateway.request("GET", "/"))[0] == 200
    assert identity_seen(upstream) is None
    assert idp.calls == []
    # a token that is present but inactive is still refused
    assert (await gateway.request("GET", "/", headers=bearer("bad")))[0] == 401


@pytest.mark.parametrize(("response", "expected_id", "expected_roles"), [
    ({"sub": "alice", "username": "ann", "scope": "a b"}, "alice", ["a", "b"]),
    ({"username": "ann", "client_id": "web", "scope": "a"}, "ann", ["a"]),
    ({"client_id": "batch-job"}, "batch-job", []),
    ({"sub": "alice", "roles": ["admin", "ops"], "scope": "a"}, "alice", ["admin", "ops"]),
    ({"sub": "alice", "roles": "admin"}, "alice", ["admin"]),
])
async def test_identity_mapping(pygate_gateway, fake_upstream, response, expected_id,
                                expected_roles):
    gateway, upstream, _, idp = await start(pygate_gateway, fake_upstream)
    idp.tokens["tok"] = {"active": True, **response}
    assert (await gateway.request("GET", "/", headers=bearer("tok")))[0] == 200
    seen = identity_seen(upstream)
    assert (seen["id"], seen["roles"]) == (expected_id, expected_roles)


async def test_active_token_without_subject_is_refused(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream)
    idp.tokens["tok"] = {"active": True, "scope": "a"}
    status, headers, _ = await gateway.request("GET", "/", headers=bearer("tok"))
    assert status == 401
    assert "the token has no subject" in headers["WWW-Authenticate"]


async def test_active_result_is_cached(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream)
    idp.active("tok")
    for _ in range(5):
        assert (await gateway.request("GET", "/", headers=bearer("tok")))[0] == 200
    assert len(idp.calls) == 1
    idp.active("other", sub="bob")
    assert (await gateway.request("GET", "/", headers=bearer("other")))[0] == 200
    assert len(idp.calls) == 2


async def test_concurrent_requests_share_one_call(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream)
    idp.active("tok")
    idp.delay = 0.1
    results = await asyncio.gather(*(gateway.request("GET", "/", headers=bearer("tok"))
                                     for _ in range(10)))
    assert [status for status, _, _ in results] == [200] * 10
    assert len(idp.calls) == 1


async def test_cache_is_not_used_past_exp(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream, ttl="1h")
    exp = int(time.time()) + 1
    idp.active("tok", exp=exp)
    assert (await gateway.request("GET", "/", headers=bearer("tok")))[0] == 200
    await asyncio.sleep(max(0.0, exp + 0.05 - time.time()))
    idp.tokens["tok"] = {"active": False}  # what the IdP says about an expired token
    status, headers, _ = await gateway.request("GET", "/", headers=bearer("tok"))
    assert status == 401
    assert 'error_description="the token is not active"' in headers["WWW-Authenticate"]
    assert len(idp.calls) == 2


async def test_cache_is_not_used_past_ttl(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream, ttl="200ms")
    idp.active("tok")
    assert (await gateway.request("GET", "/", headers=bearer("tok")))[0] == 200
    assert (await gateway.request("GET", "/", headers=bearer("tok")))[0] == 200
    assert len(idp.calls) == 1
    await asyncio.sleep(0.25)
    assert (await gateway.request("GET", "/", headers=bearer("tok")))[0] == 200
    assert len(idp.calls) == 2


async def test_active_but_expired_result_is_refused(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream)
    idp.active("old", exp=int(time.time()) - 5)
    idp.active("early", nbf=int(time.time()) + 600)
    status, headers, _ = await gateway.request("GET", "/", headers=bearer("old"))
    assert status == 401
    assert 'error_description="the token has expired"' in headers["WWW-Authenticate"]
    status, headers, _ = await gateway.request("GET", "/", headers=bearer("early"))
    assert 'error_description="the token is not valid yet"' in headers["WWW-Authenticate"]


async def test_idp_down_gives_503_and_the_gateway_keeps_serving(pygate_gateway,
                                                                  fake_upstream):
    gateway, _, idp_server, idp = await start(pygate_gateway, fake_upstream)
    idp.active("cached")
    assert (await gateway.request("GET", "/", headers=bearer("cached")))[0] == 200
    await idp_server.close()  # the identity provider goes away
    idp.active("fresh")
    with structlog.testing.capture_logs() as logs:
        status, headers, body = await gateway.request("GET", "/", headers=bearer("fresh"))
    assert status == 503
    assert headers["Content-Type"] == "application/problem+json"
    assert "WWW-Authenticate" not in headers
    assert body["detail"] == "the identity provider is unavailable; try again later"
    assert "127.0.0.1" not in str(body)
    failure = next(e for e in logs if e["event"] == "token introspection failed")
    assert failure["plugin"] == "oauth2-introspection"
    assert failure["log_level"] == "warning"
    assert "fresh" not in str(failure)
    # the gateway keeps serving: a cached token still passes
    assert (await gateway.request("GET", "/", headers=bearer("cached")))[0] == 200


async def test_other_routes_are_unaffected_when_the_idp_is_down(pygate_gateway,
                                                                  fake_upstream):
    upstream = await fake_upstream()
    idp_state = FakeIdp()
    idp = await fake_upstream(routes={"POST /introspect": idp_state.handler})
    routes = [{"name": "private", "path": "/private", "upstream": upstream.url},
              {"name": "public", "path": "/public", "upstream": upstream.url,
               "plugins": {"oauth2-introspection": False}}]
    gateway = await pygate_gateway(config(upstream.url, settings(idp.url), routes=routes),
                                   plugins=PLUGINS)
    await idp.close()
    assert (await gateway.request("GET", "/private", headers=bearer("t")))[0] == 503
    assert (await gateway.request("GET", "/public"))[0] == 200


async def test_idp_timeout_gives_503(pygate_gateway, fake_upstream):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream, timeout="200ms")
    idp.active("tok")
    idp.delay = 1.0
    started = time.monotonic()
    status, _, _ = await gateway.request("GET", "/", headers=bearer("tok"))
    assert status == 503
    assert time.monotonic() - started < 0.9


@pytest.mark.parametrize("failure", [500, 401, "not json", "[1, 2]"])
async def test_bad_idp_answers_give_503(pygate_gateway, fake_upstream, failure):
    gateway, _, _, idp = await start(pygate_gateway, fake_upstream)
    idp.active("tok")
    if isinstance(failure, int):
        idp.status = failure
    else:
        idp.raw = failure.encode()
    status, _, body = await gateway.request("GET", "/", headers=bearer("tok"))
    assert status == 503
    assert body["status"] == 503
    idp.status, idp.raw = 200, None  # failures are not cached
    assert (await gateway.request("GET", "/", headers=bearer("tok")))[0] == 200


async def test_route_settings_merge_over_the_global_table(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    idp_state = FakeIdp()
    idp = await fake_upstream(routes={"POST /introspect": idp_state.handler})
    routes = [{"name": "a", "path": "/a", "upstream": upstream.url},
              {"name": "b", "path": "/b", "upstream": upstream.url,
               "plugins": {"oauth2-introspection": {"token_type_hint": None}}}]
    gateway = await pygate_gateway(config(upstream.url, settings(idp.url), routes=routes),
                                   plugins=PLUGINS)
    idp_state.active("tok")
    assert (await gateway.request("GET", "/a", headers=bearer("tok")))[0] == 200
    assert (await gateway.request("GET", "/b", headers=bearer("tok")))[0] == 200
    assert [call["form"] for call in idp_state.calls] == [
        {"token": "tok", "token_type_hint": "access_token"}, {"token": "tok"}]
