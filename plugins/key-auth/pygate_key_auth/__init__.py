"""key-auth: API keys in a header or query parameter, mapped to named consumers.

A request carrying a configured key gets ``Identity(id=consumer,
consumer=consumer, source="key-auth")``; a missing or unknown key gets 401 with
``WWW-Authenticate: Key realm="pygate"`` (a missing one passes anonymously with
``optional = true``). With ``hide_credentials`` (the default) the key header
and query parameter are removed before the request goes upstream.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Identity, UpstreamRequest, hookimpl

from .config import KeyAuthConfig
from .credentials import hide, identify

__version__ = "0.1.0"

PRIORITY = 1250


@hookimpl
def config_schema() -> type[BaseModel]:
    return KeyAuthConfig


@hookimpl
def authenticate(request: web.BaseRequest, ctx: Context) -> Identity | None:
    return identify(ctx.config, request.headers, request.query)


@hookimpl
def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
    config: KeyAuthConfig = ctx.config
    if config.hide_credentials:
        hide(config, upstream_request)


__all__ = ["PRIORITY", "KeyAuthConfig", "authenticate", "config_schema", "transform_request"]
