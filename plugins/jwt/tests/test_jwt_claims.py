"""Claim checks (each with its own error_description), leeway, and claims -> identity."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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

NOW = int(time.time())


def settings(**extra: Any) -> dict[str, Any]:
    return {"algorithms": ["ES256"], "public_key": public_pem(key("ec")), **extra}


async def start(pygate_gateway, fake_upstream, **extra: Any):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(config(upstream.url, settings(**extra)), plugins=PLUGINS)
    return gateway, upstream


async def refused(gateway, payload: dict[str, Any]) -> str:
    status, headers, body = await gateway.request(
        "GET", "/", headers=bearer(token(key("ec"), "ES256", payload)))
    assert status == 401, body
    assert challenge(headers).startswith('Bearer error="invalid_token", error_description="')
    assert body["detail"] == description(headers)
    return description(headers)


ISSUER = "https://idp.example/"


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"exp": NOW - 60}, "the token has expired"),
    ({"nbf": NOW + 600}, "the token is not valid yet"),
    ({"iat": NOW + 600}, "the token is not valid yet"),
    ({"iss": "https://evil.example/"}, "the token issuer is not accepted"),
    ({"iss": None}, "the token lacks the required claim 'iss'"),
    ({"aud": "billing"}, "the token audience is not accepted"),
    ({"aud": ["billing", "shipping"]}, "the token audience is not accepted"),
    ({"aud": None}, "the token lacks the required claim 'aud'"),
    ({"exp": None}, "the token lacks the required claim 'exp'"),
    ({"sub": None}, "the token lacks the required claim 'sub'"),
    ({"exp": "tomorrow"}, "the token is malformed"),
])
async def test_each_failed_check_has_its_description(pygate_gateway, fake_upstream,
                                                      overrides, expected):
    gateway, upstream = await start(pygate_gateway, fake_upstream,
                                    issuer=ISSUER, audience="orders")
    payload = claims(**{"iss": ISSUER, "aud": "orders", **overrides})
    assert await refused(gateway, payload) == expected
    assert upstream.requests == []


async def test_issuer_and_audience_accept_matching_tokens(pygate_gateway, fake_upstream):
    gateway, _ = await start(pygate_gateway, fake_upstream, issuer=ISSUER,
                             audience=["orders", "users"])
    for aud in ("orders", ["billing", "users"]):
        payload = claims(iss=ISSUER, aud=aud)
        status, _, _ = await gateway.request("GET", "/",
                                             headers=bearer(token(key("ec"), "ES256", payload)))
        assert status == 200


async def test_audience_is_not_checked_unless_configured(pygate_gateway, fake_upstream):
    gateway, _ = await start(pygate_gateway, fake_upstream)
    status, _, _ = await gateway.request(
        "GET", "/", headers=bearer(token(key("ec"), "ES256", claims(aud="anything"))))
    assert status == 200


async def test_required_claims_are_enforced(pygate_gateway, fake_upstream):
    gateway, _ = await start(pygate_gateway, fake_upstream, required_claims=["exp", "jti"])
    assert await refused(gateway, claims()) == "the token lacks the required claim 'jti'"
    status, _, _ = await gateway.request(
        "GET", "/", headers=bearer(token(key("ec"), "ES256", claims(jti="j-1"))))
    assert status == 200


async def test_exp_may_be_made_optional(pygate_gateway, fake_upstream):
    gateway, _ = await start(pygate_gateway, fake_upstream, required_claims=[])
    status, _, _ = await gateway.request(
        "GET", "/", headers=bearer(token(key("ec"), "ES256", claims(exp=None))))
    assert status == 200


async def test_leeway_accepts_small_clock_skew(pygate_gateway, fake_upstream):
    gateway, _ = await start(pygate_gateway, fake_upstream, leeway="1m")
    for payload in (claims(exp=int(time.time()) - 20), claims(nbf=int(time.time()) + 20)):
        status, _, _ = await gateway.request(
            "GET", "/", headers=bearer(token(key("ec"), "ES256", payload)))
        assert status == 200
    assert await refused(gateway, claims(exp=int(time.time()) - 120)) == "the token has expired"
    assert await refused(gateway, claims(nbf=int(time.time()) + 120)) == \
        "the token is not valid yet"


@pytest.mark.parametrize(("role", "expected"), [
    ("admin", ["admin"]),
    (["admin", "ops"], ["admin", "ops"]),
    ([], []),
])
async def test_roles_claim_string_or_list(pygate_gateway, fake_upstream, role, expected):
    gateway, upstream = await start(pygate_gateway, fake_upstream)
    status, _, _ = await gateway.request(
        "GET", "/", headers=bearer(token(key("ec"), "ES256", claims(role=role))))
    assert status == 200
    assert identity_seen(upstream)["roles"] == expected


async def test_claims_mapping_with_extra_fields(pygate_gateway, fake_upstream):
    gateway, upstream = await start(
        pygate_gateway, fake_upstream,
        claims={"id": "uid", "roles": "realm_access.roles", "email": "email",
                "tenant": "org.tenant", "consumer": "azp"})
    payload = claims(uid="u-42", email="ann@example.com", azp="mobile-app",
                     org={"tenant": "acme"}, realm_access={"roles": ["reader", "writer"]})
    status, _, _ = await gateway.request("GET", "/",
                                         headers=bearer(token(key("ec"), "ES256", payload)))
    assert status == 200
    assert identity_seen(upstream) == {
        "id": "u-42", "roles": ["reader", "writer"], "consumer": "mobile-app",
        "source": "jwt", "fields": {"email": "ann@example.com", "tenant": "acme"}}


async def test_extra_fields_keep_the_default_id_and_roles(pygate_gateway, fake_upstream):
    gateway, upstream = await start(pygate_gateway, fake_upstream, claims={"email": "email"})
    payload = claims(email="ann@example.com")
    await gateway.request("GET", "/", headers=bearer(token(key("ec"), "ES256", payload)))
    seen = identity_seen(upstream)
    assert (seen["id"], seen["roles"], seen["fields"]) == \
        ("alice", ["admin"], {"email": "ann@example.com"})


async def test_scope_claim_is_space_separated(pygate_gateway, fake_upstream):
    gateway, upstream = await start(pygate_gateway, fake_upstream, claims={"roles": "scope"})
    payload = claims(scope="orders:read orders:write")
    await gateway.request("GET", "/", headers=bearer(token(key("ec"), "ES256", payload)))
    assert identity_seen(upstream)["roles"] == ["orders:read", "orders:write"]


async def test_missing_id_claim_is_refused(pygate_gateway, fake_upstream):
    gateway, _ = await start(pygate_gateway, fake_upstream, claims={"id": "uid"})
    assert await refused(gateway, claims()) == "the token lacks the required claim 'uid'"
