"""headers: identity headers to upstreams; add, remove and rename request and response headers.

``transform_request`` edits the upstream request (remove, rename, add), then
strips every client-sent copy of the identity headers and sets them from
``ctx.identity``. ``post_response`` edits the response the same way; by default
it removes ``Server`` and ``X-Powered-By``.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Gateway, UpstreamRequest, hookimpl

from .config import HeadersConfig
from .transform import apply, set_identity

__version__ = "0.1.0"

NAME = "headers"  # the entry point's name: the [plugins.headers] table

PRIORITY = 800

IDENTITIES = "identities"
"""``gateway.state(NAME)[IDENTITIES]``: recent identities' header values
(:func:`pygate_headers.transform.set_identity`)."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return HeadersConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    gateway.state(NAME)[IDENTITIES] = {}


@hookimpl
def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
    config: HeadersConfig = ctx.config
    headers = upstream_request.headers
    edits = config.request
    if edits.remove or edits.rename or edits.add:
        apply(headers, edits)
    set_identity(headers, config.identity, ctx.identity,
                 ctx.gateway.state(NAME)[IDENTITIES])


@hookimpl
def post_response(ctx: Context, response: web.StreamResponse) -> None:
    config: HeadersConfig = ctx.config
    edits = config.response
    if edits.remove or edits.rename or edits.add:
        apply(response.headers, edits)


__all__ = ["NAME", "PRIORITY", "HeadersConfig", "config_schema", "post_response", "startup",
           "transform_request"]
