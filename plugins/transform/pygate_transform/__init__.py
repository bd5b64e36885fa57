"""transform: JSON bodies edited both ways: set (with placeholders), remove, rename, keep.

``transform_request`` edits the client's JSON body before it goes to a proxied
upstream (and asks the upstream for an uncompressed answer when responses are
edited); ``transform_response`` edits the upstream's JSON body, which the core
buffers for it up to ``max_body``, before ``post_response`` (so a cache stores what
the client receives). Bodies that are not JSON, compressed, or larger than
``max_body`` pass untouched. See README.md for every key.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, UpstreamRequest, hookimpl

from . import handler
from .config import Edits, TransformConfig

__version__ = "0.1.0"

NAME = handler.NAME  # the entry point's name: the [plugins.transform] table

PRIORITY = 801
"""Kong's request-transformer: after authentication (``set`` reads the identity), acl,
rate-limit and validate (whose checked body it then edits), before headers (800)."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return TransformConfig


@hookimpl
async def transform_request(request: web.BaseRequest, ctx: Context,
                            upstream_request: UpstreamRequest) -> None:
    await handler.transform_request(request, ctx, upstream_request)


@hookimpl
async def transform_response(request: web.BaseRequest, ctx: Context,
                             response: web.Response) -> None:
    await handler.transform_response(request, ctx, response)


__all__ = ["NAME", "PRIORITY", "Edits", "TransformConfig", "config_schema",
           "transform_request", "transform_response"]
