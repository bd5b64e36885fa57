"""pygate's ``cache`` plugin: a TTL response cache for GET and HEAD, in memory or Redis.

``admit`` answers hits (``X-Cache: HIT`` and ``Age``) without calling the
upstream and makes concurrent misses for one key share one upstream call;
``post_response`` stores what Cache-Control, Vary and Set-Cookie allow and
marks every response of a cached route ``X-Cache: MISS`` or ``BYPASS``.
:func:`purge` removes entries by key prefix (for the admin API). See README.md
for every setting.

The stores live in a :class:`~pygate_cache.store.Registry` per event loop, which
``startup`` takes with ``gateway.shared`` (a reloaded gateway keeps the memory
entries) and keeps in ``gateway.state("cache")``.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Gateway, hookimpl

from . import handler, store
from .config import CacheConfig
from .policy import cache_key, route_prefix
from .store import BackendError, Registry, metrics

__version__ = "0.1.0"

PRIORITY = 100
"""After authentication (the key needs the consumer), acl and rate-limit (a refused
request must not be answered from the cache), so late on the request side, and early
on the response side (it stores the response before the cors, rate-limit and headers
plugins add their per-request headers)."""

NAME = store.PLUGIN  # the entry point's name: the [plugins.cache] table

STATE_KEY = handler.STATE_KEY
"""``ctx.state[STATE_KEY]``: what ``admit`` decided for this request (a ``Pending``)."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return CacheConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    gateway.state(NAME)[store.REGISTRY] = gateway.shared(NAME, Registry)


@hookimpl
async def admit(request: web.BaseRequest, ctx: Context) -> web.StreamResponse | None:
    return await handler.admit(request, ctx)


@hookimpl
async def post_response(request: web.BaseRequest, ctx: Context,
                        response: web.StreamResponse) -> None:
    await handler.post_response(request, ctx, response)


async def purge(gateway: Gateway, prefix: str) -> int:
    """Remove every entry whose key starts with ``prefix``; return how many were removed.

    Keys read ``ROUTE:PATH?QUERY`` (plus `` c=CONSUMER`` for per-consumer entries), so
    ``"users:"`` purges the route ``users``, ``"users:/users/7?"`` one path with all its
    queries and consumers, ``"users:/users/"`` every path under it, and ``""`` all.
    Every store the gateway's cache configs name (global table and routes) is purged,
    a Redis one for every node that shares it.

    :param gateway: the running gateway (``ctx.gateway`` in a hook).
    :raise BackendError: a Redis store did not answer (the others were purged).
    :raise RuntimeError: the plugin has not started on this gateway.
    """
    registry: Registry | None = gateway.state(NAME).get(store.REGISTRY)
    if registry is None:
        raise RuntimeError("the cache plugin is not running on this gateway")
    caches: dict[int, store.Cache] = {}
    for config in gateway.configs(NAME):
        if isinstance(config, CacheConfig):
            cache = registry.cache(config)
            caches[id(cache)] = cache
    return await store.purge_caches(list(caches.values()), prefix)


__all__ = [
    "NAME",
    "PRIORITY",
    "BackendError",
    "CacheConfig",
    "admit",
    "cache_key",
    "config_schema",
    "metrics",
    "post_response",
    "purge",
    "route_prefix",
    "startup",
]
