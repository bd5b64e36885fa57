"""pygate's ``cache`` plugin: a TTL response cache for GET and HEAD, in memory or Redis.

``admit`` answers hits (``X-Cache: HIT`` and ``Age``) without calling the
upstream and makes concurrent misses for one key share one upstream call;
``post_response`` stores what Cache-Control, Vary and Set-Cookie allow and
marks every response of a cached route ``X-Cache: MISS`` or ``BYPASS``.
:func:`purge` removes entries by key prefix (for the admin API). See README.md
for every setting.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from pygate import Context, hookimpl

from . import handler, store
from .config import CacheConfig
from .policy import cache_key, route_prefix
from .store import BackendError, metrics

__version__ = "0.1.0"

PRIORITY = 100
"""After authentication (the key needs the consumer), acl and rate-limit (a refused
request must not be answered from the cache), so late on the request side, and early
on the response side (it stores the response before the cors, rate-limit and headers
plugins add their per-request headers)."""

STATE_KEY = handler.STATE_KEY


@hookimpl
def config_schema() -> type[BaseModel]:
    return CacheConfig


@hookimpl
def startup(app: Any) -> None:
    app.state[STATE_KEY] = store.acquire()


@hookimpl
async def shutdown(app: Any) -> None:
    app.state.pop(STATE_KEY, None)
    await store.release()


@hookimpl
async def admit(request: web.BaseRequest, ctx: Context) -> web.StreamResponse | None:
    return await handler.admit(request, ctx)


@hookimpl
async def post_response(request: web.BaseRequest, ctx: Context,
                        response: web.StreamResponse) -> None:
    await handler.post_response(request, ctx, response)


async def purge(app: Any, prefix: str) -> int:
    """Remove every entry whose key starts with ``prefix``; return how many were removed.

    Keys read ``ROUTE:PATH?QUERY`` (plus `` c=CONSUMER`` for per-consumer entries), so
    ``"users:"`` purges the route ``users``, ``"users:/users/7?"`` one path with all its
    queries and consumers, ``"users:/users/"`` every path under it, and ``""`` all.
    Every store the gateway's cache configs name (global table and routes) is purged,
    a Redis one for every node that shares it.

    :param app: the running :class:`pygate.app.Gateway`.
    :raise BackendError: a Redis store did not answer (the others were purged).
    """
    registry = app.state.get(STATE_KEY) or store.registry()
    caches: dict[int, store.Cache] = {}
    for config in app.plugin_configs("cache"):
        if isinstance(config, CacheConfig):
            cache = registry.cache(config)
            caches[id(cache)] = cache
    return await store.purge_caches(list(caches.values()), prefix)


__all__ = [
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
    "shutdown",
    "startup",
]
