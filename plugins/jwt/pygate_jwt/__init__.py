"""jwt: authenticate callers by a signed JSON Web Token.

HS256/384/512 with ``secret``; RS*, PS*, ES* and EdDSA with ``public_key`` (a
PEM file or the PEM text) or ``jwks_url`` (the identity provider's key set,
fetched with the gateway's HTTP client, refetched on an unknown ``kid`` at most
once per ``jwks_min_refresh``). A valid token gives ``Identity(id=...,
roles=(...), source="jwt", fields={...})`` mapped from its claims; a missing or
invalid one gets 401 with an RFC 6750 ``WWW-Authenticate: Bearer`` challenge.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from pygate import Context, Identity, hookimpl

from .auth import authenticate as authenticate_request
from .config import JwtConfig
from .jwks import attach

PRIORITY = 1450


@hookimpl
def config_schema() -> type[BaseModel]:
    return JwtConfig


@hookimpl
def startup(app: Any, config: JwtConfig | None) -> None:
    attach(app, config)


@hookimpl
async def authenticate(request: web.BaseRequest, ctx: Context) -> Identity | None:
    return await authenticate_request(request, ctx.config, ctx.state)


__all__ = ["PRIORITY", "JwtConfig", "authenticate", "config_schema", "startup"]
