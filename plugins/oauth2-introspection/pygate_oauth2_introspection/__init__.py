"""oauth2-introspection: authenticate bearer tokens by asking the identity provider.

Each token is POSTed to the RFC 7662 ``introspection_url`` with the gateway's
client credentials (HTTP Basic). An active result gives ``Identity(id=sub,
roles=scope..., source="oauth2-introspection")`` and is cached until the
token's ``exp`` or for ``ttl``, whichever comes first; an inactive token gets
401; an identity provider that is down, slow or answers other than 200 gets
503 (never 401: the token may well be valid) and a log line naming the plugin.

``startup`` makes the introspectors (one per distinct setting, each with its
result cache) and keeps them in ``gateway.state("oauth2-introspection")``, keyed
by ``id(config)``.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Gateway, Identity, hookimpl

from .auth import authenticate as authenticate_request
from .config import IntrospectionConfig
from .introspect import SOURCE, prepare

__version__ = "0.1.0"

NAME = SOURCE  # the entry point's name: the [plugins.oauth2-introspection] table

PRIORITY = 1700


@hookimpl
def config_schema() -> type[BaseModel]:
    return IntrospectionConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    prepare(gateway)


@hookimpl
async def authenticate(request: web.BaseRequest, ctx: Context) -> Identity | None:
    config: IntrospectionConfig = ctx.config
    introspector = ctx.gateway.state(NAME).get(id(config))
    return await authenticate_request(request, config, introspector, ctx.state, ctx.request_id)


__all__ = ["NAME", "PRIORITY", "IntrospectionConfig", "authenticate", "config_schema", "startup"]
