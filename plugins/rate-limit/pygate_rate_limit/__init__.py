"""pygate's ``rate-limit`` plugin: fixed window, sliding window and token bucket limits.

``admit`` checks every configured limit for the caller (by IP, consumer or a
header; per route or global) in the memory or Redis store and refuses with 429;
``post_response`` puts ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` on the response. See README.md for every setting.

The stores live in a :class:`~pygate_rate_limit.backends.Registry` per event
loop, which ``startup`` takes with ``gateway.shared`` (a reloaded gateway keeps
the counters) and keeps in ``gateway.state("rate-limit")``.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Gateway, ServiceUnavailable, TooManyRequests, hookimpl

from .algorithms import Decision, decide
from .backends import BackendError, MemoryStore, Registry, key_part, limit_keys, metrics
from .config import RateLimitConfig

__version__ = "0.1.0"

NAME = "rate-limit"  # the entry point's name: the [plugins.rate-limit] table

PRIORITY = 910

STATE_KEY = "rate-limit"
"""``ctx.state[STATE_KEY]``: the :class:`Decision` of this request, for post_response."""

REGISTRY = "registry"
"""``gateway.state(NAME)[REGISTRY]``: the event loop's :class:`Registry` of stores."""

KEYS = "keys"
"""``gateway.state(NAME)[KEYS]``: the store keys of recent callers, by config, route and
caller (:func:`keys_for`)."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return RateLimitConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    state = gateway.state(NAME)
    state[REGISTRY] = gateway.shared(NAME, Registry)
    state[KEYS] = {}


@hookimpl
async def admit(request: web.BaseRequest, ctx: Context) -> None:
    config: RateLimitConfig = ctx.config
    limits = config.effective_limits
    state = ctx.gateway.state(NAME)
    keys = keys_for(request, ctx, config, state[KEYS])
    registry: Registry = state[REGISTRY]
    store = registry.store(config.backend, config.backend_timeout)
    try:
        outcomes = (store.check_now(keys, config.algorithm, limits)
                    if isinstance(store, MemoryStore)  # no await: nothing to wait for
                    else await store.check(keys, config.algorithm, limits))
    except BackendError as error:
        registry.backend_failed(config.backend, error, config.on_backend_error)
        if config.on_backend_error == "deny":
            raise ServiceUnavailable("the rate-limit store is unavailable") from None
        return
    if registry.failures:
        registry.backend_ok(config.backend)
    decision = decide(outcomes)
    ctx.state[STATE_KEY] = decision
    if decision.allowed:
        metrics["allowed"] += 1
        return
    metrics["limited"] += 1
    raise TooManyRequests(
        f"rate limit exceeded; retry in {decision.retry_after} s",
        headers={"Retry-After": str(decision.retry_after), **headers(decision)},
    )


@hookimpl
def post_response(ctx: Context, response: web.StreamResponse) -> None:
    decision: Decision | None = ctx.state.get(STATE_KEY)
    if decision is not None:
        response.headers.update(headers(decision))


def headers(decision: Decision) -> dict[str, str]:
    """The ``RateLimit-*`` headers for a decision."""
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset),
    }


KNOWN_KEYS = 4096
"""Callers whose store keys are remembered; past it the memory starts over."""


def keys_for(request: web.BaseRequest, ctx: Context, config: RateLimitConfig,
             known: dict[tuple[int, str | None, str], list[str]]) -> list[str]:
    """The store keys of this request's caller (one per limit), made once per caller
    and kept in ``known``."""
    caller = caller_of(request, ctx, config)
    known_as = (id(config), ctx.route.name if ctx.route is not None else None, caller)
    keys = known.get(known_as)
    if keys is None:
        if len(known) >= KNOWN_KEYS:
            known.clear()
        keys = known[known_as] = limit_keys(
            config.key_prefix, subject(request, ctx, config, caller), config.algorithm,
            config.effective_limits)
    return keys


def caller_of(request: web.BaseRequest, ctx: Context, config: RateLimitConfig) -> str:
    """Who is counted: ``ip=ADDRESS``, ``c=CONSUMER`` or ``h:NAME=VALUE``.

    ``ip`` is the core's trusted-proxy-aware client IP; ``consumer`` and a missing
    ``header:NAME`` fall back to it, as Kong does.
    """
    if config.key == "consumer":
        if ctx.identity is not None:
            return "c=" + str(ctx.identity.get("consumer"))
    elif config.key != "ip":
        name = config.key[len("header:"):]
        value = request.headers.get(name)
        if value is not None:
            return f"h:{name.lower()}={value}"
    return "ip=" + ctx.client_ip


def subject(request: web.BaseRequest, ctx: Context, config: RateLimitConfig,
            caller: str | None = None) -> str:
    """Whose counter: ``SCOPE|CALLER``, e.g. ``r=users|ip=10.0.0.7`` or ``g|c=alice``
    (``caller``: :func:`caller_of`, computed when not given)."""
    scope = "g" if config.scope == "global" or ctx.route is None else (
        "r=" + key_part(ctx.route.name))
    if caller is None:
        caller = caller_of(request, ctx, config)
    return f"{scope}|{key_part(caller)}"


__all__ = [
    "NAME",
    "PRIORITY",
    "admit",
    "caller_of",
    "config_schema",
    "headers",
    "keys_for",
    "metrics",
    "post_response",
    "startup",
    "subject",
]
