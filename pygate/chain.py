"""A route's plugin chain, and the one place hook implementations are called.

:class:`pygate.plugins.ChainBuilder` compiles a :class:`Chain` per route at
configuration load: for each request hook, the ordered implementations of the
plugins enabled on that route (:class:`Step`: bound to the plugin's effective
config, marked async or not). The pipeline runs each phase through one method
of the chain, which applies that hook's result rule (STYLE.md section 2):

============================  ==========================================
``pre_route``, ``admit``      first non-None response answers now
``authenticate``              first identity wins
``transform_request``         all run, in priority order
``aggregate``                 first non-None body, else the core's default
``post_response``             all run, in reverse priority order
``log``                       all run after the response, never raising
============================  ==========================================

and the plugin-failure rule: an exception other than a :class:`GatewayError`
is logged with the plugin's name and becomes :class:`PluginFailure`, which the
pipeline answers with 500. A phase with no implementation costs the pipeline
one attribute test (it checks ``chain.PHASE`` before calling the method).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import structlog

from .context import Context, Identity, UpstreamRequest
from .errors import GatewayError
from .upstream.client import head_problem

if TYPE_CHECKING:
    from aiohttp import web

log = structlog.get_logger("pygate")


class PluginFailure(Exception):
    """A plugin's hook raised (or broke a rule): the request gets 500, the log its name."""

    def __init__(self, plugin: str, hook: str) -> None:
        super().__init__(f"plugin {plugin!r} failed in {hook}")
        self.plugin = plugin
        self.hook = hook


@dataclass(frozen=True, slots=True)
class Step:
    """One hook implementation of one plugin, bound to its config for one route."""

    plugin: str
    func: Callable[..., Any]
    is_async: bool
    args: tuple[int, ...] | None  # indexes into the hook's arguments; None = all of them
    config: Any


def failure(step: Step, hook: str, ctx: Context | None, exc: BaseException) -> PluginFailure:
    """Log a hook implementation's exception; the failure that answers 500 naming it."""
    log.error("plugin raised", plugin=step.plugin, hook=hook,
              request_id=ctx.request_id if ctx is not None else None,
              error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return PluginFailure(step.plugin, hook)


def call_sync(step: Step, hook: str, args: tuple[Any, ...], ctx: Context) -> Any:
    """Call a plain-function implementation with its config in ``ctx.config``."""
    ctx.config = step.config
    try:
        return step.func(*(args if step.args is None else tuple(args[i] for i in step.args)))
    except GatewayError:
        raise
    except Exception as exc:
        raise failure(step, hook, ctx, exc) from exc


async def call_async(step: Step, hook: str, args: tuple[Any, ...], ctx: Context) -> Any:
    """Await a coroutine implementation with its config in ``ctx.config``."""
    ctx.config = step.config
    try:
        return await step.func(
            *(args if step.args is None else tuple(args[i] for i in step.args)))
    except GatewayError:
        raise
    except Exception as exc:
        raise failure(step, hook, ctx, exc) from exc


@dataclass(frozen=True)
class Chain:
    """A route's hook implementations, in the order the pipeline calls them."""

    plugins: tuple[str, ...] = ()
    configs: dict[str, Any] = field(default_factory=dict)
    pre_route: tuple[Step, ...] = ()
    authenticate: tuple[Step, ...] = ()
    admit: tuple[Step, ...] = ()
    transform_request: tuple[Step, ...] = ()
    aggregate: tuple[Step, ...] = ()
    post_response: tuple[Step, ...] = ()  # reverse priority order
    log: tuple[Step, ...] = ()

    @cached_property
    def log_is_sync(self) -> bool:
        """Every log hook is a plain function (run in a loop callback, no task)."""
        return not any(step.is_async for step in self.log)

    @cached_property
    def transform_is_async(self) -> bool:
        """Some ``transform_request`` hook is a coroutine: concurrent calls need own contexts."""
        return any(step.is_async for step in self.transform_request)

    # -- the phases, in the order a request meets them ------------------------------

    async def run_pre_route(self, request: web.BaseRequest, ctx: Context
                            ) -> web.StreamResponse | None:
        """``pre_route``: the first response answers now."""
        return await _first(self.pre_route, "pre_route", (request, ctx), ctx)

    async def run_authenticate(self, request: web.BaseRequest, ctx: Context
                               ) -> Identity | None:
        """``authenticate``: the first identity wins; it is set on ``ctx.identity``."""
        identity = await _first(self.authenticate, "authenticate", (request, ctx), ctx)
        if identity is not None:
            ctx.identity = identity
        return identity

    async def run_admit(self, request: web.BaseRequest, ctx: Context
                        ) -> web.StreamResponse | None:
        """``admit``: the first response (a refusal, a cache hit) answers now."""
        return await _first(self.admit, "admit", (request, ctx), ctx)

    async def run_transform_request(self, request: web.BaseRequest, ctx: Context,
                                    upstream_request: UpstreamRequest) -> None:
        """``transform_request``: all run, for each upstream call.

        After each one the request must still be a safe request head (no CR/LF
        or control character in the method, target or headers): a plugin that
        breaks it fails, so nothing is sent.
        """
        args = (request, ctx, upstream_request)
        for step in self.transform_request:
            if step.is_async:
                await call_async(step, "transform_request", args, ctx)
            else:
                call_sync(step, "transform_request", args, ctx)
            query = upstream_request.query
            problem = head_problem(
                upstream_request.method,
                f"{upstream_request.path}?{query}" if query else upstream_request.path,
                upstream_request.headers)
            if problem is not None:
                log.error("plugin made an invalid upstream request", plugin=step.plugin,
                          hook="transform_request", request_id=ctx.request_id, problem=problem)
                raise PluginFailure(step.plugin, "transform_request")

    async def run_aggregate(self, request: web.BaseRequest, ctx: Context, results: Any
                            ) -> tuple[Any, str] | None:
        """``aggregate``: the first non-None body and the plugin that made it, or None."""
        for step in self.aggregate:
            args = (request, ctx, results)
            shaped = (await call_async(step, "aggregate", args, ctx) if step.is_async
                      else call_sync(step, "aggregate", args, ctx))
            if shaped is not None:
                return shaped, step.plugin
        return None

    async def run_post_response(self, request: web.BaseRequest, ctx: Context,
                                response: web.StreamResponse) -> None:
        """``post_response``: all run, in reverse priority order."""
        args = (request, ctx, response)
        for step in self.post_response:
            if step.is_async:
                await call_async(step, "post_response", args, ctx)
            else:
                call_sync(step, "post_response", args, ctx)

    def schedule_log(self, ctx: Context, record: dict[str, Any],
                     loop: asyncio.AbstractEventLoop,
                     tasks: set[asyncio.Task[None]]) -> None:
        """``log``: all run after this handler returns, never delaying the client:
        plain functions in one loop callback, coroutines in a task added to ``tasks``
        (so a shutdown can wait for them). Errors are logged, never raised."""
        if self.log_is_sync:
            loop.call_soon(self._log_sync, ctx, record)
            return
        task = loop.create_task(self._log_async(ctx, record))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _log_sync(self, ctx: Context, record: dict[str, Any]) -> None:
        for step in self.log:
            try:
                call_sync(step, "log", (ctx, record), ctx)
            except (PluginFailure, GatewayError):
                pass  # logged by call_sync; a log hook never fails a request

    async def _log_async(self, ctx: Context, record: dict[str, Any]) -> None:
        for step in self.log:
            try:
                if step.is_async:
                    await call_async(step, "log", (ctx, record), ctx)
                else:
                    call_sync(step, "log", (ctx, record), ctx)
            except (PluginFailure, GatewayError):
                pass  # logged by call_*; a log hook never fails a request


async def _first(steps: tuple[Step, ...], hook: str, args: tuple[Any, ...], ctx: Context
                 ) -> Any:
    for step in steps:
        result = (await call_async(step, hook, args, ctx) if step.is_async
                  else call_sync(step, hook, args, ctx))
        if result is not None:
            return result
    return None


EMPTY_CHAIN = Chain()
