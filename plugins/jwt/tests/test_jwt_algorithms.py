"""Each algorithm family verifies, with static keys and with a JWKS; confusion is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from jwcrypto import jwk
from jwt_helpers import (
    HS512_SECRET,
    PLUGINS,
    Idp,
    bearer,
    challenge,
    claims,
    config,
    description,
    identity_seen,
    key,
    public_pem,
    token,
    unsigned_token,
)

STATIC_CASES = [
    ("RS256", "rsa"),
    ("PS256", "rsa"),
    ("RS512", "rsa"),
    ("ES256", "ec"),
    ("ES384", "ec384"),
    ("EdDSA", "ed25519"),
]


@pytest.mark.parametrize(("alg", "kind"), STATIC_CASES)
async def test_public_key_algorithms_verify(pygate_gateway, fake_upstream, alg, kind):
    upstream = await fake_upstream()
    private = key(kind)
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": [alg], "public_key": public_pem(private)}),
        plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/x", headers=bearer(token(private, alg)))
    assert status == 200
    assert identity_seen(upstream) == {"id": "alice", "roles": ["admin"], "consumer": None,
                                       "source": "jwt", "fields": {}}


@pytest.mark.parametrize("alg", ["HS512", "HS256"])
async def test_hmac_algorithms_verify(pygate_gateway, fake_upstream, alg):
    upstream = await fake_upstream()
    private = key(alg.lower())
    secret = private.export_symmetric(as_dict=True)["k"]  # base64url of the shared secret
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": [alg], "secret": f"base64:{secret}"}),
        plugins=PLUGINS)
    status, _, _ = await gateway.request("GET", "/", headers=bearer(token(private, alg)))
    assert status == 200
    assert identity_seen(upstream)["id"] == "alice"


async def test_hs512_with_plain_text_secret(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": ["HS512"], "secret": HS512_SECRET}),
        plugins=PLUGINS)
    good = token(key("hs512"), "HS512")
    assert (await gateway.request("GET", "/", headers=bearer(good)))[0] == 200
    other = token(jwk.JWK.from_password("x" * 64), "HS512")
    status, headers, body = await gateway.request("GET", "/", headers=bearer(other))
    assert status == 401
    assert description(headers) == "the token signature is invalid"
    assert body["detail"] == "the token signature is invalid"


@pytest.mark.parametrize(("alg", "kind"), [("RS256", "rsa"), ("PS256", "rsa"),
                                           ("ES256", "ec"), ("EdDSA", "ed25519")])
async def test_jwks_algorithms_verify(pygate_gateway, fake_upstream, alg, kind):
    upstream = await fake_upstream()
    private = key(kind, kid=f"{kind}-jwks")
    idp_keys = Idp(private)
    idp = await fake_upstream(routes={"GET /jwks": idp_keys.handler})
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": ["RS256", "PS256", "ES256", "EdDSA"],
                              "jwks_url": f"{idp.url}/jwks"}),
        plugins=PLUGINS)
    status, _, _ = await gateway.request(
        "GET", "/", headers=bearer(token(private, alg, kid=f"{kind}-jwks")))
    assert status == 200
    assert identity_seen(upstream)["id"] == "alice"


async def test_signature_by_another_key_is_refused(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": ["RS256"], "public_key": public_pem(key("rsa"))}),
        plugins=PLUGINS)
    forged = token(key("rsa", kid="someone-else"), "RS256")
    status, headers, body = await gateway.request("GET", "/", headers=bearer(forged))
    assert status == 401
    assert challenge(headers) == ('Bearer error="invalid_token", '
                                  'error_description="the token signature is invalid"')
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == 401
    assert upstream.requests == []


async def test_algorithm_confusion_is_refused(pygate_gateway, fake_upstream):
    """An HS256 token whose HMAC secret is the RSA public key PEM (which anyone has)."""
    upstream = await fake_upstream()
    pem = public_pem(key("rsa"))
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": ["RS256"], "public_key": pem}), plugins=PLUGINS)
    confused = token(jwk.JWK.from_password(pem), "HS256")
    status, headers, _ = await gateway.request("GET", "/", headers=bearer(confused))
    assert status == 401
    assert description(headers) == "the token algorithm is not accepted"
    assert upstream.requests == []


async def test_algorithm_confusion_with_jwks_is_refused(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    private = key("rsa", kid="conf")
    idp = await fake_upstream(routes={"GET /jwks": Idp(private).handler})
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": ["RS256"], "jwks_url": f"{idp.url}/jwks"}),
        plugins=PLUGINS)
    confused = token(jwk.JWK.from_password(public_pem(private)), "HS256", kid="conf")
    status, headers, _ = await gateway.request("GET", "/", headers=bearer(confused))
    assert status == 401
    assert description(headers) == "the token algorithm is not accepted"


async def test_algorithm_not_in_the_list_is_refused(pygate_gateway, fake_upstream):
    """A PS256 token against a config that only accepts RS256 (same RSA key)."""
    upstream = await fake_upstream()
    private = key("rsa")
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": ["RS256"], "public_key": public_pem(private)}),
        plugins=PLUGINS)
    status, headers, _ = await gateway.request("GET", "/", headers=bearer(token(private,
                                                                                 "PS256")))
    assert status == 401
    assert description(headers) == "the token algorithm is not accepted"


async def test_alg_none_is_refused(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": ["RS256"], "public_key": public_pem(key("rsa"))}),
        plugins=PLUGINS)
    for value in (unsigned_token(), unsigned_token(claims(sub="admin"))[:-1] + ".c2ln"):
        status, headers, _ = await gateway.request("GET", "/", headers=bearer(value))
        assert status == 401
        assert description(headers) == "the token algorithm is not accepted"
    assert upstream.requests == []


async def test_malformed_tokens_are_refused(pygate_gateway, fake_upstream):
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        config(upstream.url, {"algorithms": ["HS512"], "secret": HS512_SECRET}),
        plugins=PLUGINS)
    for value in ("not-a-token", "a.b.c", "....", "eyJhbGciOiJIUzUxMiJ9.e30"):
        status, headers, body = await gateway.request("GET", "/", headers=bearer(value))
        assert status == 401, value
        assert description(headers) == "the token is malformed"
        assert value not in str(body)
