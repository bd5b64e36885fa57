"""Keys from a fake identity provider's JWKS: rotation, refetch rate limit, outages."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from jwt_helpers import (
    PLUGINS,
    Idp,
    bearer,
    claims,
    config,
    description,
    identity_seen,
    key,
    token,
)

ALGORITHMS = ["ES256", "RS256"]


async def start(pygate_gateway, fake_upstream, idp_keys: Idp, *,
                routes: list[dict[str, Any]] | None = None, **extra: Any):
    upstream = await fake_upstream()
    idp = await fake_upstream(routes={"GET /jwks": idp_keys.handler})
    settings = {"algorithms": ALGORITHMS, "jwks_url": f"{idp.url}/jwks", **extra}
    gateway = await pygate_gateway(config(upstream.url, settings, routes=routes),
                                   plugins=PLUGINS)
    return gateway, upstream, idp


def ec_token(kid: str | None, **overrides: Any) -> str:
    """An ES256 token signed by the EC key named ``kid`` (``anon`` when there is none)."""
    return token(key("ec", kid=kid or "anon"), "ES256", claims(**overrides), kid=kid)


async def test_keys_are_fetched_once_and_reused(pygate_gateway, fake_upstream):
    gateway, upstream, idp = await start(pygate_gateway, fake_upstream, Idp(key("ec", "e1")))
    assert idp.requests == []  # fetched on first use, not at startup
    for sub in ("ann", "bob", "cy"):
        status, _, _ = await gateway.request("GET", "/", headers=bearer(ec_token("e1", sub=sub)))
        assert status == 200
        assert identity_seen(upstream)["id"] == sub
    assert len(idp.requests) == 1
    assert idp.requests[0].path == "/jwks"


async def test_rotated_key_works_without_restart(pygate_gateway, fake_upstream):
    idp_keys = Idp(key("ec", "old"))
    gateway, _, idp = await start(pygate_gateway, fake_upstream, idp_keys,
                                  jwks_min_refresh="100ms")
    assert (await gateway.request("GET", "/", headers=bearer(ec_token("old"))))[0] == 200
    status, headers, _ = await gateway.request("GET", "/", headers=bearer(ec_token("new")))
    assert status == 401
    assert description(headers) == "the token signing key is unknown"
    idp_keys.keys.append(key("ec", "new"))  # the IdP publishes the next key
    await asyncio.sleep(0.15)
    status, _, _ = await gateway.request("GET", "/", headers=bearer(ec_token("new")))
    assert status == 200
    assert (await gateway.request("GET", "/", headers=bearer(ec_token("old", sub="z"))))[0] == 200
    assert len(idp.requests) <= 3


async def test_flood_of_unknown_kids_is_rate_limited(pygate_gateway, fake_upstream):
    gateway, _, idp = await start(pygate_gateway, fake_upstream, Idp(key("ec", "e1")),
                                  jwks_min_refresh="400ms")
    assert (await gateway.request("GET", "/", headers=bearer(ec_token("e1"))))[0] == 200
    assert len(idp.requests) == 1

    async def flood(count: int) -> None:
        tokens = [ec_token(uuid.uuid4().hex) for _ in range(count)]
        results = await asyncio.gather(*(gateway.request("GET", "/", headers=bearer(t))
                                         for t in tokens))
        for status, headers, _ in results:
            assert status == 401
            assert description(headers) == "the token signing key is unknown"

    await flood(40)  # within min_refresh of the first fetch: no fetch at all
    assert len(idp.requests) == 1
    await asyncio.sleep(0.45)
    await flood(40)  # one interval later: one fetch for the whole flood
    assert len(idp.requests) == 2
    await flood(20)
    assert len(idp.requests) == 2


async def test_default_min_refresh_protects_the_idp(pygate_gateway, fake_upstream):
    gateway, _, idp = await start(pygate_gateway, fake_upstream, Idp(key("ec", "e1")))
    for _ in range(10):
        await gateway.request("GET", "/", headers=bearer(ec_token(uuid.uuid4().hex)))
    assert len(idp.requests) == 1


async def test_idp_down_gives_503_then_recovers(pygate_gateway, fake_upstream):
    idp_keys = Idp(key("ec", "e1"))
    idp_keys.status = 500
    gateway, _, _ = await start(pygate_gateway, fake_upstream, idp_keys,
                                jwks_min_refresh="100ms")
    status, headers, body = await gateway.request("GET", "/", headers=bearer(ec_token("e1")))
    assert status == 503
    assert headers["Content-Type"] == "application/problem+json"
    assert "WWW-Authenticate" not in headers
    assert "127.0.0.1" not in str(body)
    idp_keys.status = 200
    await asyncio.sleep(0.15)
    assert (await gateway.request("GET", "/", headers=bearer(ec_token("e1"))))[0] == 200


async def test_known_keys_keep_working_while_the_idp_is_down(pygate_gateway, fake_upstream):
    gateway, _, idp = await start(pygate_gateway, fake_upstream, Idp(key("ec", "e1")),
                                  jwks_min_refresh="100ms", jwks_ttl="100ms")
    assert (await gateway.request("GET", "/", headers=bearer(ec_token("e1"))))[0] == 200
    await idp.close()
    await asyncio.sleep(0.15)  # keys are stale now, and the refetch fails
    status, _, _ = await gateway.request("GET", "/", headers=bearer(ec_token("e1", sub="x")))
    assert status == 200


async def test_key_removed_from_the_jwks_stops_working_after_jwks_ttl(
        pygate_gateway, fake_upstream):
    idp_keys = Idp(key("ec", "e1"), key("ec", "e2"))
    gateway, _, idp = await start(pygate_gateway, fake_upstream, idp_keys,
                                  jwks_min_refresh="50ms", jwks_ttl="200ms")
    assert (await gateway.request("GET", "/", headers=bearer(ec_token("e2"))))[0] == 200
    idp_keys.keys = [key("ec", "e1")]
    await asyncio.sleep(0.25)
    status, headers, _ = await gateway.request("GET", "/",
                                               headers=bearer(ec_token("e2", sub="new")))
    assert status == 401
    assert description(headers) == "the token signing key is unknown"
    assert len(idp.requests) == 2


async def test_token_without_kid_tries_the_fitting_keys(pygate_gateway, fake_upstream):
    gateway, _, _ = await start(pygate_gateway, fake_upstream,
                                Idp(key("rsa", "r1"), key("ec", "anon")))
    status, _, _ = await gateway.request("GET", "/", headers=bearer(ec_token(None)))
    assert status == 200


async def test_key_type_must_fit_the_algorithm(pygate_gateway, fake_upstream):
    """A kid naming an EC key, on an RS256 token: refused, whatever the signature."""
    gateway, _, _ = await start(pygate_gateway, fake_upstream, Idp(key("ec", "e1")),
                                jwks_min_refresh="10ms")
    forged = token(key("rsa"), "RS256", kid="e1")
    status, headers, _ = await gateway.request("GET", "/", headers=bearer(forged))
    assert status == 401
    assert description(headers) == "the token algorithm does not fit its signing key"


async def test_enabled_on_one_route_only(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    idp = await fake_upstream(routes={"GET /jwks": Idp(key("ec", "e1")).handler})
    gateway = await pygate_gateway(
        {"plugins": {"identity-echo": {}},
         "routes": [{"name": "open", "path": "/open", "upstream": upstream.url},
                    {"name": "closed", "path": "/closed", "upstream": upstream.url,
                     "plugins": {"jwt": {"algorithms": ["ES256"],
                                         "jwks_url": f"{idp.url}/jwks"}}}]},
        plugins=PLUGINS)
    assert (await gateway.request("GET", "/open"))[0] == 200
    assert (await gateway.request("GET", "/closed"))[0] == 401
    status, _, _ = await gateway.request("GET", "/closed", headers=bearer(ec_token("e1")))
    assert status == 200
    assert identity_seen(upstream)["id"] == "alice"
