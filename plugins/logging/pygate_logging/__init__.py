"""logging: a structlog access log, one JSON (or console) line per request.

``post_response`` keeps a reference to the request and the final response in
``ctx.state`` (the core's access record lacks the query string, the
``X-Cache`` header and the request headers). ``log``, which the core runs after
the response has gone, samples, redacts, renders the line with structlog and
hands it to a buffered sink that a background thread writes to stdout or to a
file, so logging never delays a response. See README.md for every setting.

The sinks, one per destination, are opened by ``startup`` and kept in
``gateway.state("logging")``; ``shutdown`` writes what they hold and closes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from pygate.plugin import Context, Gateway, hookimpl

from .config import LoggingConfig
from .lines import access_fields, pick_headers, should_log
from .sink import Sink, open_target

__version__ = "0.1.0"

NAME = "logging"  # the entry point's name: the [plugins.logging] table

PRIORITY = 5  # last on the request side; its post_response runs first, its log hook last

STATE_KEY = "logging"
"""``ctx.state[STATE_KEY]``: ``(request, response)`` seen by post_response."""

SINKS = "sinks"
"""``gateway.state(NAME)[SINKS]``: the open sinks, by destination (``None``: stdout)."""

CLOSE_TIMEOUT = 5.0
"""Seconds ``shutdown`` waits for a destination to take the last lines."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return LoggingConfig


@hookimpl
def startup(gateway: Gateway) -> None:
    """Open one sink per destination (stdout, or each file) that a config names."""
    sinks: dict[str | None, Sink] = {}
    try:
        for config in gateway.configs(NAME):
            if config.destination in sinks:
                continue
            try:
                target = open_target(config.destination)
            except OSError as exc:
                raise RuntimeError(f"the logging plugin cannot open {config.destination}: "
                                   f"{exc.strerror or exc}") from None
            sinks[config.destination] = Sink(target, interval=config.flush_interval,
                                             capacity=config.buffer)
    except BaseException:
        for sink in sinks.values():
            sink.close(CLOSE_TIMEOUT)
        raise
    gateway.state(NAME)[SINKS] = sinks


@hookimpl
async def shutdown(gateway: Gateway) -> None:
    """Take the sinks away from the log hook, then write what they hold and close them."""
    sinks: dict[str | None, Sink] = gateway.state(NAME).pop(SINKS, {})
    for sink in sinks.values():
        await asyncio.to_thread(sink.close, CLOSE_TIMEOUT)


@hookimpl
def post_response(request: web.BaseRequest, ctx: Context, response: web.StreamResponse) -> None:
    ctx.state[STATE_KEY] = (request, response)


@hookimpl
def log(ctx: Context, record: dict[str, Any]) -> None:
    config: LoggingConfig = ctx.config
    sinks: dict[str | None, Sink] | None = ctx.gateway.state(NAME).get(SINKS)
    if sinks is None:  # shut down (or never started)
        return
    if not should_log(record["status"], record["error"], config.sample):
        return
    sink = sinks[config.destination]
    target: str | None = None
    cache: str | None = None
    headers: dict[str, str] | None = None
    seen: tuple[web.BaseRequest, web.StreamResponse] | None = ctx.state.get(STATE_KEY)
    if seen is not None:
        request, response = seen
        target = request.raw_path
        if response.status == record["status"]:  # not replaced by a failing plugin
            cache = response.headers.get("X-Cache")
        if config.headers:
            headers = pick_headers(request.headers, config.headers)
    elif config.headers:
        headers = {}
    fields = access_fields(record, target=target, cache=cache, headers=headers,
                           redact=config.redact)
    sink.put(config.renderer(fields))


__all__ = [
    "NAME",
    "PRIORITY",
    "LoggingConfig",
    "config_schema",
    "log",
    "post_response",
    "shutdown",
    "startup",
]
