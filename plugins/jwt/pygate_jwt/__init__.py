"""jwt: authenticate callers by a signed JSON Web Token.

HS256/384/512 with ``secret``; RS*, PS*, ES* and EdDSA with ``public_key`` (a
PEM file or the PEM text) or ``jwks_url`` (the identity provider's key set,
fetched with the gateway's HTTP client, refetched on an unknown ``kid`` at most
once per ``jwks_min_refresh``). A valid token gives ``Identity(id=...,
roles=(...), source="jwt", fields={...})`` mapped from its claims; a missing or
invalid one gets 401 with an RFC 6750 ``WWW-Authenticate: Bearer`` challenge.

``startup`` gives every effective config its verified-token cache and key set,
in ``gateway.state("jwt")`` keyed by ``id(config)`` (:mod:`pygate_jwt.state`).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Gateway, Identity, hookimpl

from .auth import authenticate as authenticate_request
from .config import JwtConfig
from .state import NAME, prepare

__version__ = "0.1.0"

PRIORITY = 1450


@hookimpl
def config_schema() -> type[BaseModel]:
    return JwtConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    prepare(gateway)


@hookimpl
async def authenticate(request: web.BaseRequest, ctx: Context) -> Identity | None:
    config: JwtConfig = ctx.config
    runtime = ctx.gateway.state(NAME).get(id(config))
    return await authenticate_request(request, config, runtime, ctx.state)


__all__ = ["NAME", "PRIORITY", "JwtConfig", "authenticate", "config_schema", "startup"]
