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
from .backends import BackendError, Registry, key_part, limit_keys, metrics
from .config import RateLimitConfig

__version__ = "0.1.0"

NAME = "rate-limit"  # the entry point's name: the [plugins.rate-limit] table

PRIORITY = 910

STATE_KEY = "rate-limit"
"""``ctx.state[STATE_KEY]``: the :class:`Decision` of this request, for post_response."""

REGISTRY = "registry"
"""``gateway.state(NAME)[REGISTRY]``: the event loop's :class:`Registry` of stores."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return RateLimitConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    gateway.state(NAME)[REGISTRY] = gateway.shared(NAME, Registry)


@hookimpl
async def admit(request: web.BaseRequest, ctx: Context) -> None:
    config: RateLimitConfig = ctx.config
    limits = config.effective_limits
    keys = limit_keys(config.key_prefix, subject(request, ctx, config), config.algorithm, limits)
    registry: Registry = ctx.gateway.state(NAME)[REGISTRY]
    store = registry.store(config.backend, config.backend_timeout)
    try:
        outcomes = await store.check(keys, config.algorithm, limits)
    except BackendError as error:
        registry.backend_failed(config.backend, error, config.on_backend_error)
        if config.on_backend_error == "deny":
            raise ServiceUnavailable("the rate-limit store is unavailable") from None
        return
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


def subject(request: web.BaseRequest, ctx: Context, config: RateLimitConfig) -> str:
    """Whose counter: ``SCOPE|CALLER``, e.g. ``r=users|ip=10.0.0.7`` or ``g|c=alice``.

    ``ip`` is the core's trusted-proxy-aware client IP; ``consumer`` and a missing
    ``header:NAME`` fall back to it, as Kong does.
    """
    scope = "g" if config.scope == "global" or ctx.route is None else (
        "r=" + key_part(ctx.route.name))
    caller = "ip=" + ctx.client_ip
    if config.key == "consumer":
        if ctx.identity is not None:
            caller = "c=" + str(ctx.identity.get("consumer"))
    elif config.key != "ip":
        name = config.key[len("header:"):]
        value = request.headers.get(name)
        if value is not None:
            caller = f"h:{name.lower()}={value}"
    return f"{scope}|{key_part(caller)}"


__all__ = [
    "NAME",
    "PRIORITY",
    "admit",
    "config_schema",
    "headers",
    "metrics",
    "post_response",
    "startup",
    "subject",
]
