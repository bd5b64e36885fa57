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
``transform_response``        all run, in reverse priority order, on a
                              buffered body within each one's limit
``post_response``             all run, in reverse priority order
``log``                       all run after the response, never raising
                              (:class:`LogQueue`)
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
    """One hook implementation of one plugin, bound to its config for one route.

    ``call`` takes the hook's arguments in the order of
    :data:`pygate.hookspecs.HOOK_ARGS` and passes the implementation the ones it
    names (the function itself when it names them all): the choice is made once,
    at load.
    """

    plugin: str
    call: Callable[..., Any]
    is_async: bool
    config: Any
    limit: int = 0  # transform_response: the largest body the step is called with


DEFAULT_RESPONSE_BUFFER = 1024 * 1024
"""The body limit of a ``transform_response`` implementation whose config has no
``max_body`` (bytes)."""


def response_limit(config: Any) -> int:
    """The largest body a plugin's ``transform_response`` is called with, from its
    effective config: its ``max_body`` (an attribute, or a key of a dict config) when
    that is a non-negative integer, else :data:`DEFAULT_RESPONSE_BUFFER`. Read at load."""
    value = config.get("max_body") if isinstance(config, dict) else getattr(
        config, "max_body", None)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return DEFAULT_RESPONSE_BUFFER


# Headers that describe the exact bytes of a body: stale once a hook changes it.
BODY_DIGESTS = ("Content-MD5", "Content-Digest", "Repr-Digest", "Digest")


def bind(func: Callable[..., Any], picks: tuple[int, ...] | None) -> Callable[..., Any]:
    """``func`` called with the hook arguments at ``picks`` (``None``: all of them)."""
    if picks is None:
        return func
    if not picks:
        return lambda *args: func()
    if len(picks) == 1:
        (i,) = picks
        return lambda *args: func(args[i])
    if len(picks) == 2:
        i, j = picks
        return lambda *args: func(args[i], args[j])
    return lambda *args: func(*[args[k] for k in picks])


def failure(step: Step, hook: str, ctx: Context | None, exc: BaseException) -> PluginFailure:
    """The plugin-failure rule: log a hook implementation's exception with the plugin's
    name; the :class:`PluginFailure` that answers 500 naming it.

    Every ``run_*`` method below applies it the same way: ``ctx.config`` is the step's
    config during the call, a :class:`GatewayError` is the plugin's answer and passes
    through, any other exception becomes this failure.
    """
    log.error("plugin raised", plugin=step.plugin, hook=hook,
              request_id=ctx.request_id if ctx is not None else None,
              error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return PluginFailure(step.plugin, hook)


def invalid_request(plugin: str, ctx: Context, problem: str) -> PluginFailure:
    """A ``transform_request`` implementation left a request head that would inject
    bytes (``problem`` says how): logged naming it; the failure that answers 500."""
    log.error("plugin made an invalid upstream request", plugin=plugin,
              hook="transform_request", request_id=ctx.request_id, problem=problem)
    return PluginFailure(plugin, "transform_request")


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
    transform_response: tuple[Step, ...] = ()  # reverse priority order
    post_response: tuple[Step, ...] = ()  # reverse priority order
    log: tuple[Step, ...] = ()
    # Some log implementation names the ``record`` argument: without one, the access
    # record is not built (the hooks read ``ctx``; ``record`` is None).
    log_record: bool = False
    # The largest limit of the transform_response steps: proxied bodies up to this
    # size are buffered for them (0: no step, the body streams).
    response_buffer: int = 0

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
        return await _first(self.pre_route, "pre_route", request, ctx)

    async def run_authenticate(self, request: web.BaseRequest, ctx: Context
                               ) -> Identity | None:
        """``authenticate``: the first identity wins; it is set on ``ctx.identity``."""
        identity = await _first(self.authenticate, "authenticate", request, ctx)
        if identity is not None:
            ctx.identity = identity
        return identity

    async def run_admit(self, request: web.BaseRequest, ctx: Context
                        ) -> web.StreamResponse | None:
        """``admit``: the first response (a refusal, a cache hit) answers now."""
        return await _first(self.admit, "admit", request, ctx)

    async def run_transform_request(self, request: web.BaseRequest, ctx: Context,
                                    upstream_request: UpstreamRequest) -> None:
        """``transform_request``: all run, for each upstream call.

        The request a plugin leaves must still be a safe request head (no CR/LF
        or control character in the method, target or headers), or it fails and
        nothing is sent: checked after each step but the last here, and after the
        last one as the head is built (:func:`pygate.upstream.client.build_head`,
        or :func:`pygate.upstream.websocket.connect`), which blame
        ``upstream_request.shaped_by``; so a request is checked once for the usual
        single step.
        """
        steps = self.transform_request
        last = steps[-1]
        for step in steps:
            ctx.config = step.config
            try:
                result = step.call(request, ctx, upstream_request)
                if step.is_async:
                    await result
            except GatewayError:
                raise
            except Exception as exc:
                raise failure(step, "transform_request", ctx, exc) from exc
            if step is not last:
                problem = head_problem(upstream_request.method, upstream_request.target,
                                       upstream_request.headers)
                if problem is not None:
                    raise invalid_request(step.plugin, ctx, problem)
        upstream_request.shaped_by = last.plugin

    async def run_aggregate(self, request: web.BaseRequest, ctx: Context, results: Any
                            ) -> tuple[Any, str] | None:
        """``aggregate``: the first non-None body and the plugin that made it, or None."""
        for step in self.aggregate:
            ctx.config = step.config
            try:
                shaped = step.call(request, ctx, results)
                if step.is_async:
                    shaped = await shaped
            except GatewayError:
                raise
            except Exception as exc:
                raise failure(step, "aggregate", ctx, exc) from exc
            if shaped is not None:
                return shaped, step.plugin
        return None

    async def run_transform_response(self, request: web.BaseRequest, ctx: Context,
                                     response: web.Response) -> None:
        """``transform_response``: all run, in reverse priority order, on a buffered body;
        a step is skipped while the body (as the steps before left it) is over its limit.

        Afterwards ``Content-Length`` is left to be computed from the body, and when the
        body changed: a strong ``ETag`` the steps left as it was becomes weak (the
        representation is no longer the upstream's byte for byte, as nginx does for the
        bodies its filters change) and digests of the old bytes go.
        """
        body = response.body
        headers = response.headers
        etag = headers.get("ETag")
        digests = [(name, headers[name]) for name in BODY_DIGESTS if name in headers]
        for step in self.transform_response:
            current = response.body
            if not isinstance(current, bytes | bytearray):
                continue
            if len(current) > step.limit:
                log.info("response body over the plugin's limit: left untouched",
                         plugin=step.plugin, hook="transform_response",
                         request_id=ctx.request_id, size=len(current), limit=step.limit)
                continue
            ctx.config = step.config
            try:
                result = step.call(request, ctx, response)
                if step.is_async:
                    await result
            except GatewayError:
                raise
            except Exception as exc:
                raise failure(step, "transform_response", ctx, exc) from exc
        headers.popall("Content-Length", None)  # aiohttp writes the body's own length
        if response.body is not body:
            for name, value in digests:
                if headers.get(name) == value:
                    headers.popall(name)
            if etag is not None and headers.get("ETag") == etag and not etag.startswith("W/"):
                headers["ETag"] = f"W/{etag}"

    async def run_post_response(self, request: web.BaseRequest, ctx: Context,
                                response: web.StreamResponse) -> None:
        """``post_response``: all run, in reverse priority order."""
        for step in self.post_response:
            ctx.config = step.config
            try:
                result = step.call(request, ctx, response)
                if step.is_async:
                    await result
            except GatewayError:
                raise
            except Exception as exc:
                raise failure(step, "post_response", ctx, exc) from exc

    def run_log(self, ctx: Context, record: dict[str, Any] | None) -> None:
        """``log`` when every implementation is a plain function (:attr:`log_is_sync`):
        all run; errors are logged, never raised."""
        for step in self.log:
            ctx.config = step.config
            try:
                step.call(ctx, record)
            except Exception as exc:  # a log hook never fails a request
                failure(step, "log", ctx, exc)

    async def run_log_async(self, ctx: Context, record: dict[str, Any] | None) -> None:
        """``log`` with some coroutine implementation: all run, in order."""
        for step in self.log:
            ctx.config = step.config
            try:
                result = step.call(ctx, record)
                if step.is_async:
                    await result
            except Exception as exc:  # a log hook never fails a request
                failure(step, "log", ctx, exc)


class LogQueue:
    """The ``log`` phase, after the responses, never delaying a client.

    Records whose chain has only plain-function log hooks wait in a list that one
    loop callback empties, once per loop iteration for every request that finished
    in it (one callback, not one per request); a chain with a coroutine hook runs in
    a task of its own, kept in :attr:`tasks` until done so a shutdown can wait.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Chain, Context, dict[str, Any] | None]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def put(self, chain: Chain, ctx: Context, record: dict[str, Any] | None) -> None:
        """Run ``chain``'s log hooks for ``ctx`` soon (``record`` is None when no hook of
        the chain names it: :attr:`Chain.log_record`)."""
        if chain.log_is_sync:
            pending = self._pending
            pending.append((chain, ctx, record))
            if len(pending) == 1:
                asyncio.get_running_loop().call_soon(self.flush)
            return
        task = asyncio.get_running_loop().create_task(chain.run_log_async(ctx, record))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def flush(self) -> None:
        """Run the waiting records' log hooks now."""
        pending, self._pending = self._pending, []
        for chain, ctx, record in pending:
            chain.run_log(ctx, record)

    async def drain(self) -> None:
        """Run what waits, and let the tasks finish (5 s at most)."""
        self.flush()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)


async def _first(steps: tuple[Step, ...], hook: str, request: web.BaseRequest, ctx: Context
                 ) -> Any:
    """The first non-None result of ``steps``, each called with ``(request, ctx)``."""
    for step in steps:
        ctx.config = step.config
        try:
            result = step.call(request, ctx)
            if step.is_async:
                result = await result
        except GatewayError:
            raise
        except Exception as exc:
            raise failure(step, hook, ctx, exc) from exc
        if result is not None:
            return result
    return None


EMPTY_CHAIN = Chain()
