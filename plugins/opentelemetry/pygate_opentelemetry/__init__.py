"""opentelemetry: W3C trace context continued or started, a server span per request and a
client span per upstream call, exported over OTLP/HTTP in the background.

``pre_route`` reads the caller's ``traceparent``/``tracestate`` (a valid one is the
parent, an invalid one is ignored and a new trace starts), opens the server span at
the request's arrival and sets ``ctx.trace_id`` (the access log's ``trace_id``).
``transform_request`` opens a client span for each upstream call (proxy, aggregate
and GraphQL calls alike) and sends its ``traceparent`` upstream. ``log``, after the
response, ends them all with what the core recorded (statuses, targets, times) and
hands them to the SDK's batch processor, whose thread exports them. See README.md.

The tracer providers are made in ``startup`` (one per distinct export setting, in each
worker) and kept in ``gateway.state("opentelemetry")``; ``shutdown`` sends what is
queued, waiting at most a few seconds.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Gateway, UpstreamRequest, hookimpl

from .config import OpenTelemetryConfig
from .export import Tracing, close_all
from .spans import RequestTrace, begin

__version__ = "0.1.0"

NAME = "opentelemetry"  # the entry point's name: the [plugins.opentelemetry] table

# First on the request side: its pre_route must see every request before another plugin
# answers it there (a CORS preflight), so that the answer is traced too; its
# transform_request then runs first of all, so its span covers the others' work on the call.
PRIORITY = 3000

STATE_KEY = "opentelemetry"
"""``ctx.state[STATE_KEY]``: the request's :class:`RequestTrace`, until ``log``."""

TRACINGS = "tracings"
"""``gateway.state(NAME)[TRACINGS]``: every :class:`Tracing` of the gateway, for ``shutdown``;
each config's own is at ``gateway.state(NAME)[id(config)]``."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return OpenTelemetryConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    """One tracer provider per distinct export setting, shared by the configs that have it."""
    state = gateway.state(NAME)
    made: dict[str, Tracing] = {}
    for config in gateway.configs(NAME):
        key = config.export_key()
        tracing = made.get(key)
        if tracing is None:
            tracing = made[key] = Tracing(config, __version__)
        state[id(config)] = tracing
    state[TRACINGS] = list(made.values())


@hookimpl
async def shutdown(gateway: Gateway) -> None:
    """Take the providers away from the request hooks, then send what is queued."""
    state = gateway.state(NAME)
    tracings: list[Tracing] = state.pop(TRACINGS, [])
    state.clear()
    await close_all(tracings)


@hookimpl
def pre_route(request: web.BaseRequest, ctx: Context) -> None:
    tracing: Tracing | None = ctx.gateway.state(NAME).get(id(ctx.config))
    if tracing is not None:  # None: shut down (or never started)
        ctx.state[STATE_KEY] = begin(tracing.tracer, request, ctx)


@hookimpl
def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
    trace: RequestTrace | None = ctx.state.get(STATE_KEY)
    if trace is not None:
        trace.call(upstream_request)


@hookimpl
def log(ctx: Context) -> None:
    trace: RequestTrace | None = ctx.state.pop(STATE_KEY, None)
    if trace is not None:
        trace.finish(ctx)


__all__ = [
    "NAME",
    "PRIORITY",
    "OpenTelemetryConfig",
    "config_schema",
    "log",
    "pre_route",
    "shutdown",
    "startup",
    "transform_request",
]
