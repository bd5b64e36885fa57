"""headers: identity headers to upstreams; add, remove and rename request and response headers.

``transform_request`` edits the upstream request (remove, rename, add), then
strips every client-sent copy of the identity headers and sets them from
``ctx.identity``. ``post_response`` edits the response the same way; by default
it removes ``Server`` and ``X-Powered-By``.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, UpstreamRequest, hookimpl

from .config import HeadersConfig
from .transform import apply, set_identity

PRIORITY = 800


@hookimpl
def config_schema() -> type[BaseModel]:
    return HeadersConfig


@hookimpl
def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
    config: HeadersConfig = ctx.config
    apply(upstream_request.headers, config.request)
    set_identity(upstream_request.headers, config.identity, ctx.identity)


@hookimpl
def post_response(ctx: Context, response: web.StreamResponse) -> None:
    config: HeadersConfig = ctx.config
    apply(response.headers, config.response)


__all__ = ["PRIORITY", "HeadersConfig", "config_schema", "post_response", "transform_request"]
