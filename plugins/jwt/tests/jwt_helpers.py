"""Shared helpers of the jwt plugin's tests.

Keys, key sets and tokens are made with jwcrypto, a different library from the
one the plugin verifies with (pyjwt), so a test cannot pass merely because both
sides share a bug. ``IDENTITY_ECHO`` is a tiny plugin that copies
``ctx.identity`` into an ``X-Identity`` request header, so a test can see what
identity reached the upstream.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
import types
from typing import Any

import pygate_jwt
import pytest
from aiohttp import web
from jwcrypto import jwk
from jwcrypto import jwt as jcjwt

from pygate.plugin import Context, UpstreamRequest, hookimpl
from pygate.testing import start_gateway

HS512_SECRET = "a-shared-secret-of-sixty-four-bytes-for-hs512-0123456789abcdefgh"
HS256_SECRET = "a-shared-secret-of-at-least-32-bytes!!"

# -- keys ---------------------------------------------------------------------


def key(kind: str, kid: str = "k1") -> jwk.JWK:
    """A private key: ``rsa``, ``ec`` (P-256), ``ec384``, ``ed25519``, ``hs256``, ``hs512``;
    the same one for the same ``kind`` and ``kid`` throughout the test run."""
    return _key(kind, kid)


@functools.cache
def _key(kind: str, kid: str) -> jwk.JWK:
    if kind == "rsa":
        return jwk.JWK.generate(kty="RSA", size=2048, kid=kid)
    if kind == "ec":
        return jwk.JWK.generate(kty="EC", crv="P-256", kid=kid)
    if kind == "ec384":
        return jwk.JWK.generate(kty="EC", crv="P-384", kid=kid)
    if kind == "ed25519":
        return jwk.JWK.generate(kty="OKP", crv="Ed25519", kid=kid)
    if kind == "hs512":
        return jwk.JWK.from_password(HS512_SECRET)
    if kind == "hs256":
        return jwk.JWK.from_password(HS256_SECRET)
    raise ValueError(kind)


def public_pem(private: jwk.JWK) -> str:
    return private.export_to_pem(private_key=False, password=None).decode()


def jwks(*keys: jwk.JWK, alg: dict[str, str] | None = None) -> dict[str, Any]:
    """A JWKS document with the public half of ``keys`` (``alg`` pins kid -> algorithm)."""
    out = []
    for private in keys:
        entry = private.export_public(as_dict=True)
        entry["use"] = "sig"
        if alg and entry.get("kid") in alg:
            entry["alg"] = alg[entry["kid"]]
        out.append(entry)
    return {"keys": out}


# -- tokens -------------------------------------------------------------------


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims (sub alice, role admin, 5 minutes to live) with ``overrides``;
    an override of ``None`` removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "role": "admin", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(private: jwk.JWK, alg: str, payload: dict[str, Any] | None = None, *,
          kid: str | None = None, header: dict[str, Any] | None = None) -> str:
    """A signed compact JWT (``kid`` in the header when given)."""
    head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    head.update(header or {})
    made = jcjwt.JWT(header=head, claims=claims() if payload is None else payload)
    made.make_signed_token(private)
    return str(made.serialize())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, Any] | None = None) -> str:
    """An ``alg: none`` token (no library makes these willingly)."""
    head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims() if payload is None else payload).encode())
    return f"{head}.{body}."


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# -- the gateway --------------------------------------------------------------


def _identity_echo() -> types.ModuleType:
    module = types.ModuleType("identity_echo")
    module.PRIORITY = 0  # type: ignore[attr-defined]

    @hookimpl
    def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
        identity = ctx.identity
        if identity is not None:
            upstream_request.headers["X-Identity"] = json.dumps({
                "id": identity.id, "roles": list(identity.roles),
                "consumer": identity.consumer, "source": identity.source,
                "fields": identity.fields,
            })

    module.transform_request = transform_request  # type: ignore[attr-defined]
    return module


IDENTITY_ECHO = _identity_echo()
PLUGINS = {"jwt": pygate_jwt, "identity-echo": IDENTITY_ECHO}


def config(upstream_url: str, settings: dict[str, Any], *,
           routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A gateway config: ``jwt`` globally with ``settings``, identity echo, one route."""
    return {
        "plugins": {"jwt": settings, "identity-echo": {}},
        "routes": routes or [{"name": "api", "path": "/", "upstream": upstream_url}],
    }


def config_errors(data: dict[str, Any]) -> str:
    """The gateway refuses to start: pygate's ConfigError, rendered with every problem."""
    with pytest.raises(Exception, match="configuration error") as caught:
        asyncio.run(start_gateway(data, PLUGINS))
    return str(caught.value)


def effective_configs(data: dict[str, Any]) -> list[Any]:
    """Every effective ``jwt`` config of a gateway started from ``data`` (the global
    table's first), as ``gateway.configs("jwt")`` gives them to the plugin."""
    async def run() -> list[Any]:
        gateway = await start_gateway(data, PLUGINS)
        try:
            return gateway.running.gateway.facade.configs("jwt")
        finally:
            await gateway.close()

    return asyncio.run(run())


def identity_seen(upstream: Any) -> dict[str, Any] | None:
    """The identity the last upstream request carried, or None."""
    raw = upstream.requests[-1].headers.get("X-Identity")
    return json.loads(raw) if raw else None


def challenge(headers: Any) -> str:
    return str(headers.get("WWW-Authenticate", ""))


def description(headers: Any) -> str:
    """The ``error_description`` of a ``WWW-Authenticate: Bearer`` challenge."""
    value = challenge(headers)
    marker = 'error_description="'
    start = value.find(marker)
    if start < 0:
        return ""
    start += len(marker)
    return value[start:value.index('"', start)]


class Idp:
    """A fake identity provider's JWKS endpoint; ``keys`` and ``status`` may change."""

    def __init__(self, *keys: jwk.JWK) -> None:
        self.keys = list(keys)
        self.status = 200

    async def handler(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response(jwks(*self.keys))
