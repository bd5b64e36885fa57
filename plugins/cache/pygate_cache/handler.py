"""What the hooks do: look up in ``admit``, store in ``post_response``.

``admit`` decides, per request, between

- **HIT**: a fresh entry answers now (a ``web.Response``, no upstream call), or a
  concurrent miss for the same key just stored one;
- **MISS**: not in the cache; the request goes upstream, the first miss of a key
  leading a single flight, with ``ctx.capture_body`` set so that a body up to
  ``max_object`` reaches ``post_response`` whole;
- **BYPASS**: the cache is not consulted (a method not in ``methods``, the
  client's ``no-cache``/``no-store``/``max-age``, or the store is down).

``post_response`` stores what may be stored (see :mod:`pygate_cache.policy`),
settles the flight and sets ``X-Cache``. What ``admit`` decided stays in
``ctx.state["cache"]`` (a :class:`Pending`; ``.status`` is the ``X-Cache`` value)
for the logging and metrics plugins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from pygate.plugin import Context

from .config import CacheConfig
from .policy import (
    Entry,
    cache_key,
    not_modified,
    not_modified_headers,
    request_rules,
    response_verdict,
    stored_headers,
    variant,
    vary_names,
)
from .store import PLUGIN, REGISTRY, BackendError, Cache, Registry, metrics

STATE_KEY = "cache"
HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"
WAIT_MARGIN_S = 1.0


@dataclass(slots=True)
class Pending:
    """What ``admit`` decided for one request, read again by ``post_response``."""

    status: str
    cache: Cache | None = None
    key: str = ""
    store: bool = False  # the response may be stored
    authorized: bool = False  # Authorization sent, nobody identified: RFC 9111 section 3.5
    flight: asyncio.Future[tuple[Entry, str] | None] | None = None  # set on the leader
    task: asyncio.Task[Any] | None = None
    guard: Callable[[asyncio.Task[Any]], None] | None = None


async def admit(request: web.BaseRequest, ctx: Context) -> web.StreamResponse | None:
    config: CacheConfig = ctx.config
    method = request.method
    if method not in config.methods:
        ctx.state[STATE_KEY] = Pending(BYPASS)
        return None
    rules = request_rules(request.headers, config.cache_control)
    identity = ctx.identity
    consumer = None if identity is None or config.shared else str(identity.get("consumer"))
    route = ctx.route.name if ctx.route is not None else ""
    key = cache_key(route, ctx.path, request.raw_path.partition("?")[2], consumer)
    registry: Registry = ctx.gateway.state(PLUGIN)[REGISTRY]
    cache = registry.cache(config)
    pending = Pending(MISS, cache, key, store=rules.store and method == "GET",
                      authorized=identity is None and "Authorization" in request.headers)
    ctx.state[STATE_KEY] = pending
    if not rules.lookup:
        pending.status = BYPASS
        _go_upstream(ctx, pending, config)
        return None

    # One flight per key covers the store lookup too: while a request for this key
    # is looking up or fetching, the others wait for its answer instead of racing
    # it (a lookup that started before the leader stored would miss and fetch again).
    # A HEAD (no body to store), a Range or a conditional request (likely answered
    # 206 or 304, which waiters could not use) waits for a flight but leads none.
    flights = cache.flights
    future = flights.waiting(key)
    if future is None:
        if method == "GET" and not _partial_or_conditional(request):
            _, pending.flight = flights.join_or_lead(key)
            _guard(pending)
        return await _look_up(request, ctx, pending, cache, config, rules.max_age)
    wait_s = ctx.gateway.timeout + WAIT_MARGIN_S
    shared = await flights.wait(future, asyncio.get_running_loop().time() + wait_s)
    if shared is not None:
        entry, digest = shared
        if not entry.vary or variant(entry.vary, request.headers) == digest:
            return answer(request, pending, entry, time.time())
    _go_upstream(ctx, pending, config)  # the leader failed: go ourselves
    return None


async def _look_up(request: web.BaseRequest, ctx: Context, pending: Pending, cache: Cache,
                   config: CacheConfig, max_age: int | None) -> web.StreamResponse | None:
    """The store lookup of a request that leads its key's flight (or leads none)."""
    try:
        entry = await cache.store.get(pending.key, request.headers)
    except BackendError as error:
        cache.failed(error, "get")
        pending.status = BYPASS
        pending.store = False  # the store would fail again, and cost another timeout
        _end_flight(pending)  # waiters go upstream themselves
        return None
    cache.ok()
    now = time.time()
    if entry is not None:
        if max_age is None or entry.age(now) <= max_age:
            if pending.flight is not None:
                digest = variant(entry.vary, request.headers) if entry.vary else ""
                cache.flights.settle(pending.flight, (entry, digest))
                _end_flight(pending)
            return answer(request, pending, entry, now)
        pending.status = BYPASS  # older than the client accepts: fetch and store afresh
    _go_upstream(ctx, pending, config)
    return None


LEAD_BLOCKERS = ("Range", "If-None-Match", "If-Modified-Since")


def _partial_or_conditional(request: web.BaseRequest) -> bool:
    headers = request.headers
    return any(name in headers for name in LEAD_BLOCKERS)


def _go_upstream(ctx: Context, pending: Pending, config: CacheConfig) -> None:
    if pending.store:
        ctx.capture_body = max(ctx.capture_body, config.max_object)


def _guard(pending: Pending) -> None:
    """End the leader's flight even if ``post_response`` never runs (client gone)."""
    task = asyncio.current_task()
    if task is not None:
        def guard(_: asyncio.Task[Any]) -> None:
            _end_flight(pending)

        pending.task = task
        pending.guard = guard
        task.add_done_callback(guard)


def _end_flight(pending: Pending) -> None:
    if pending.flight is not None and pending.cache is not None:
        pending.cache.flights.end(pending.key, pending.flight)
        pending.flight = None


def answer(request: web.BaseRequest, pending: Pending, entry: Entry,
           now: float) -> web.Response:
    """The response for a hit: the stored one, or 304 when the client's validators match."""
    pending.status = HIT
    metrics["hits"] += 1
    if not_modified(request.headers, entry):
        response = web.Response(status=304, headers=CIMultiDict(not_modified_headers(entry)))
    else:
        response = web.Response(status=entry.status, headers=CIMultiDict(entry.headers),
                                body=entry.body)
    response.headers["X-Cache"] = HIT
    response.headers["Age"] = str(entry.age(now))
    return response


async def post_response(request: web.BaseRequest, ctx: Context,
                        response: web.StreamResponse) -> None:
    pending: Pending | None = ctx.state.get(STATE_KEY)
    if pending is None or pending.status == HIT:
        return
    response.headers["X-Cache"] = pending.status
    metrics["misses" if pending.status == MISS else "bypasses"] += 1
    try:
        if pending.store and pending.cache is not None and ctx.upstream is not None:
            await _store(request, ctx, pending, pending.cache, response)
    finally:
        _end_flight(pending)
        if pending.task is not None and pending.guard is not None:
            pending.task.remove_done_callback(pending.guard)  # nothing left to guard
        pending.task = pending.guard = None


async def _store(request: web.BaseRequest, ctx: Context, pending: Pending, cache: Cache,
                 response: web.StreamResponse) -> None:
    config: CacheConfig = ctx.config
    if not isinstance(response, web.Response):
        return  # streamed: larger than max_object (or a HEAD)
    body = response.body
    if not isinstance(body, bytes) or len(body) > config.max_object:
        return
    now = time.time()
    verdict = response_verdict(response.status, response.headers, ttl=config.ttl,
                               honour=config.cache_control, now=now,
                               authorized=pending.authorized)
    if not verdict.store:
        return
    stored_at = now - verdict.age
    entry = Entry(status=response.status, headers=stored_headers(response.headers), body=body,
                  stored_at=stored_at, expires_at=stored_at + verdict.lifetime,
                  vary=vary_names(response.headers) or ())
    digest = variant(entry.vary, request.headers) if entry.vary else ""
    if pending.flight is not None:
        cache.flights.settle(pending.flight, (entry, digest))  # waiters go on at once
    try:
        await cache.store.put(pending.key, entry, digest or None)
    except BackendError as error:
        cache.failed(error, "put")
        return
    cache.ok()
    metrics["stored"] += 1
