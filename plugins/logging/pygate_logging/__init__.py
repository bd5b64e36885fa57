"""logging: a structlog access log, one JSON (or console) line per request.

``post_response`` keeps a reference to the request and the final response in
``ctx.state`` (the core's access record lacks the query string, the
``X-Cache`` header and the request headers). ``log``, which the core runs after
the response has gone, samples, redacts, renders the line with structlog and
hands it to a buffered sink that a background thread writes to stdout or to a
file, so logging never delays a response. See README.md for every setting.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from pygate import Context, hookimpl

from .config import LoggingConfig
from .lines import access_fields, pick_headers, should_log
from .sink import Sink, open_target

__version__ = "0.1.0"

NAME = "logging"  # the entry point's name: the [plugins.logging] table

PRIORITY = 5  # last on the request side; its post_response runs first, its log hook last

STATE_KEY = "logging"
"""``ctx.state[STATE_KEY]``: ``(request, response)`` seen by post_response;
``app.state[STATE_KEY]``: the open sinks, by destination."""

CLOSE_TIMEOUT = 5.0
"""Seconds ``shutdown`` waits for a destination to take the last lines."""


@hookimpl
def config_schema() -> type[BaseModel]:
    return LoggingConfig


@hookimpl
def startup(app: Any) -> None:
    """Open one sink per destination (stdout, or each file) and attach it to every config."""
    sinks: dict[str | None, Sink] = {}
    try:
        for config in app.plugin_configs(NAME):
            sink = sinks.get(config.destination)
            if sink is None:
                try:
                    target = open_target(config.destination)
                except OSError as exc:
                    raise RuntimeError(f"the logging plugin cannot open {config.destination}: "
                                       f"{exc.strerror or exc}") from None
                sink = Sink(target, interval=config.flush_interval, capacity=config.buffer)
                sinks[config.destination] = sink
            config.attach(sink)
    except BaseException:
        for sink in sinks.values():
            sink.close(CLOSE_TIMEOUT)
        raise
    app.state[STATE_KEY] = sinks


@hookimpl
async def shutdown(app: Any) -> None:
    """Detach the sinks, then write what they hold and close them."""
    for config in app.plugin_configs(NAME):
        config.attach(None)
    sinks: dict[str | None, Sink] = app.state.pop(STATE_KEY, {})
    for sink in sinks.values():
        await asyncio.to_thread(sink.close, CLOSE_TIMEOUT)


@hookimpl
def post_response(request: web.BaseRequest, ctx: Context, response: web.StreamResponse) -> None:
    ctx.state[STATE_KEY] = (request, response)


@hookimpl
def log(ctx: Context, record: dict[str, Any]) -> None:
    config: LoggingConfig = ctx.config
    sink = config.sink
    if sink is None or not should_log(record["status"], record["error"], config.sample):
        return
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
    "PRIORITY",
    "LoggingConfig",
    "config_schema",
    "log",
    "post_response",
    "shutdown",
    "startup",
]
