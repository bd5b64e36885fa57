"""The request story, top to bottom.

sanitize -> route -> pre_route -> authenticate -> admit -> transform_request
-> proxy (or aggregate / graphql) -> post_response -> send -> log (scheduled).

Every refusal on the way is a :class:`GatewayError` that becomes a problem
document; an exception from a plugin becomes a 500 naming the plugin in the
log, and the next request is served as usual.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from .aggregate import Transform, call_headers, execute
from .app import Gateway, RoutePlan
from .context import Context, RouteInfo, UpstreamRequest
from .errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    from_error,
    problem_response,
)
from .plugins import Chain, Step
from .sanitize import (
    check_framing,
    check_headers,
    drop_underscored,
    host_of,
    normalize_path,
    request_id,
    strip_hop_by_hop,
)
from .upstream.client import head_problem
from .upstream.forward import Streamer, exchange

log = structlog.get_logger("pygate")


class PluginFailure(Exception):
    def __init__(self, plugin: str, hook: str) -> None:
        super().__init__(f"plugin {plugin!r} failed in {hook}")
        self.plugin = plugin
        self.hook = hook


async def call_step(step: Step, hook: str, args: tuple[Any, ...], ctx: Context) -> Any:
    """Call one hook implementation with the plugin's config in ``ctx.config``."""
    if not step.is_async:
        return call_sync(step, hook, args, ctx)
    ctx.config = step.config
    try:
        if step.args is not None:
            args = tuple(args[i] for i in step.args)
        return await step.func(*args)
    except GatewayError:
        raise
    except Exception as exc:
        raise _failure(step, hook, ctx, exc) from exc


def call_sync(step: Step, hook: str, args: tuple[Any, ...], ctx: Context) -> Any:
    """:func:`call_step` for a plain-function implementation, without a coroutine."""
    ctx.config = step.config
    try:
        if step.args is not None:
            args = tuple(args[i] for i in step.args)
        return step.func(*args)
    except GatewayError:
        raise
    except Exception as exc:
        raise _failure(step, hook, ctx, exc) from exc


def _failure(step: Step, hook: str, ctx: Context, exc: Exception) -> PluginFailure:
    """Log a hook implementation's exception; the failure that answers 500 naming it."""
    log.error("plugin raised", plugin=step.plugin, hook=hook, request_id=ctx.request_id,
              error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return PluginFailure(step.plugin, hook)


async def first_response(steps: tuple[Step, ...], hook: str, request: web.BaseRequest,
                         ctx: Context) -> web.StreamResponse | None:
    """Run ``pre_route``/``admit`` implementations until one answers."""
    for step in steps:
        if step.is_async:
            response = await call_step(step, hook, (request, ctx), ctx)
        else:
            response = call_sync(step, hook, (request, ctx), ctx)
        if response is not None:
            return response
    return None


async def transform(chain: Chain, request: web.BaseRequest, ctx: Context,
                    upstream_request: UpstreamRequest) -> None:
    """Run every ``transform_request`` implementation (for each upstream call).

    After each one the request it leaves must still be a safe request head
    (no CR/LF or control character in the method, target or headers): a
    plugin that breaks one answers 500 naming it, and nothing is sent.
    """
    args = (request, ctx, upstream_request)
    for step in chain.transform_request:
        if step.is_async:
            await call_step(step, "transform_request", args, ctx)
        else:
            call_sync(step, "transform_request", args, ctx)
        query = upstream_request.query
        problem = head_problem(
            upstream_request.method,
            f"{upstream_request.path}?{query}" if query else upstream_request.path,
            list(upstream_request.headers.items()))
        if problem is not None:
            log.error("plugin made an invalid upstream request", plugin=step.plugin,
                      hook="transform_request", request_id=ctx.request_id, problem=problem)
            raise PluginFailure(step.plugin, "transform_request")


class InFlight:
    """How many requests are being handled on one gateway (a reload waits for zero)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class Pipeline:
    """Binds a :class:`Gateway` to the aiohttp low-level server's handler."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.in_flight = 0  # requests being handled, for the drain
        self.draining = False  # set when the drain starts: every response closes
        self.on_gw = InFlight()  # those of them that run on self.gw, for a reload
        self._log_tasks: set[asyncio.Task[None]] = set()

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self.__dict__.get("loop")
        if loop is None:
            loop = self.__dict__["loop"] = asyncio.get_running_loop()
        return loop

    def switch(self, gateway: Gateway) -> InFlight:
        """Handle new requests with ``gateway`` (a reload); the old gateway's in-flight count.

        A request keeps the gateway it started with to its end.
        """
        previous = self.on_gw
        self.gw = gateway
        self.on_gw = InFlight()
        return previous

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The aiohttp handler: one request, start to finish (the whole story is here)."""
        # self.gw is read before the first await: the gateway counted is the one used.
        on_gw = self.on_gw
        self.in_flight += 1
        on_gw.count += 1
        stream: Streamer | None = None  # the response body, until it is written or dropped
        try:
            gw = self.gw
            headers = request.headers
            ctx = Context(
                request_id=request_id(headers.get("X-Request-ID")),
                client_ip="",
                method=request.method,
                path=request.raw_path,
                start=time.monotonic(),
            )
            ctx.app = gw
            hops = headers.getall("X-Forwarded-For", None)  # several lines are one list
            ctx.client_ip, forwarded_for, trusted = gw.forwarded.resolve(
                request.remote or "", ", ".join(hops) if hops else None)
            # Until a route is known (a path refused before routing), the global chain's
            # post_response and log hooks see the request.
            chain: Chain | None = gw.global_chain
            response: web.StreamResponse | None = None
            close = False
            try:
                if "Content-Length" in headers or "Transfer-Encoding" in headers:
                    try:
                        check_framing(headers)
                    except GatewayError:
                        close = True  # the body's framing is in doubt: read nothing more
                        raise
                check_headers(headers, reject_underscores=gw.reject_underscores)
                path, encoded, query = normalize_path(request.raw_path)
                ctx.path = path
                host = host_of(headers)
                match = gw.router.match(request.method, path, host, headers)
                route = match.route
                if route is None:
                    # pre_route still runs (CORS preflight on a GET-only route), then 404/405
                    tentative = gw.router.lookup(path, host, headers)
                    chain = tentative.payload.chain if tentative is not None else gw.global_chain
                    if tentative is not None:
                        ctx.route = RouteInfo(tentative.name, {})
                    response = await first_response(chain.pre_route, "pre_route", request, ctx)
                    if response is None:
                        if match.allowed:
                            raise MethodNotAllowed(
                                f"method {request.method} is not allowed on this route",
                                headers={"Allow": ", ".join(sorted(match.allowed))})
                        raise NotFound("no route matches this request")
                else:
                    plan: RoutePlan = route.payload
                    chain = plan.chain
                    ctx.route = RouteInfo(route.name, match.params)
                    if chain.pre_route:
                        response = await first_response(chain.pre_route, "pre_route", request, ctx)
                    if response is None and chain.authenticate:
                        for step in chain.authenticate:
                            identity = (await call_step(step, "authenticate", (request, ctx), ctx)
                                    if step.is_async else
                                    call_sync(step, "authenticate", (request, ctx), ctx))
                            if identity is not None:
                                ctx.identity = identity
                                break
                    if response is None and chain.admit:
                        response = await first_response(chain.admit, "admit", request, ctx)
                    if response is None:
                        if plan.upstream is not None:
                            # proxy: built here rather than in a helper coroutine, so that
                            # each resume of the upstream wait crosses one frame fewer
                            upstream_request = self.upstream_request(
                                request, ctx, plan,
                                route.upstream_path(path, encoded, match.params),
                                query, forwarded_for, trusted)
                            if chain.transform_request:
                                await transform(chain, request, ctx, upstream_request)
                            if "Upgrade" in headers or "Expect" in headers:
                                response, stream = await self.proxy_special(
                                    request, ctx, plan, upstream_request)
                            else:
                                response, stream = await exchange(
                                    request, ctx, plan.upstream, upstream_request,
                                    max_body=gw.max_body, deadline=self._loop.time() + gw.timeout)
                        else:
                            response = await self.compose(request, ctx, plan, query, forwarded_for,
                                                          trusted)
            except GatewayError as error:
                response = from_error(error, request_id=ctx.request_id,
                                      route=ctx.route.name if ctx.route else None)
                ctx.error = error.detail
                close = close or error.status == 413  # do not drain a refused body
            except PluginFailure as failure:
                response = self._internal_error(ctx)
                ctx.error = str(failure)
            except Exception as exc:
                fault = client_fault(request, exc)
                if fault is None:
                    log.error("unhandled error", request_id=ctx.request_id, exc_info=exc)
                    response = self._internal_error(ctx)
                    ctx.error = type(exc).__name__
                else:
                    # the client went away or sent a broken body: its doing, not ours
                    log.info("request ended by the client", request_id=ctx.request_id,
                             status=fault.status, error=fault.detail)
                    response = from_error(fault, request_id=ctx.request_id,
                                          route=ctx.route.name if ctx.route else None)
                    ctx.error = fault.detail
                    close = True

            assert response is not None
            response_headers = response.headers
            if "X-Request-ID" not in response_headers:
                response_headers["X-Request-ID"] = ctx.request_id
            ctx.status = response.status
            if chain is not None and chain.post_response:
                try:
                    for step in chain.post_response:
                        if step.is_async:
                            await call_step(step, "post_response", (request, ctx, response),
                                            ctx)
                        else:
                            call_sync(step, "post_response", (request, ctx, response), ctx)
                except (GatewayError, PluginFailure) as failure:
                    if stream is not None:
                        stream.discard()
                        stream = None
                    if isinstance(failure, GatewayError):
                        response = from_error(failure, request_id=ctx.request_id,
                                              route=ctx.route.name if ctx.route else None)
                    else:
                        response = self._internal_error(ctx)
                        ctx.error = str(failure)
                ctx.status = response.status
            # Never let the server library announce itself (a plugin may remove upstream's).
            response.headers.setdefault("Server", "pygate")
            if close or self.draining:
                response.force_close()  # during a drain: Connection: close

            await self._send(request, response, stream, ctx)
            if chain is not None and chain.log:
                self._schedule_log(chain, ctx, request, response)
            return response
        finally:
            if stream is not None:
                stream.discard()  # a no-op once written; else the upstream is let go
            self.in_flight -= 1
            on_gw.count -= 1

    async def _send(self, request: web.BaseRequest, response: web.StreamResponse,
                    stream: Streamer | None, ctx: Context) -> None:
        try:
            await response.prepare(request)
            if stream is not None:
                await stream(response)
            else:
                await response.write_eof()
                body = getattr(response, "body", None)
                if isinstance(body, bytes):
                    ctx.bytes_out = len(body)
        except ConnectionResetError:
            ctx.error = ctx.error or "client disconnected"

    def _internal_error(self, ctx: Context) -> web.Response:
        return problem_response(500, "the gateway could not process this request",
                                request_id=ctx.request_id,
                                route=ctx.route.name if ctx.route else None)

    def upstream_request(self, request: web.BaseRequest, ctx: Context, plan: RoutePlan,
                         path: str, query: str, forwarded_for: str, trusted: bool
                         ) -> UpstreamRequest:
        """The request to send to the route's upstream (before transform_request)."""
        gw: Gateway = ctx.app  # the request's own gateway, even after a reload
        upstream = plan.upstream
        assert upstream is not None
        length = request.content_length
        if length is not None and length > gw.max_body:
            raise PayloadTooLarge("request body exceeds the gateway's max_body")
        ctx.upstream = upstream.name
        return UpstreamRequest(
            method=request.method,
            path=path,
            query=query,
            headers=outgoing_headers(request, ctx, forwarded_for, trusted,
                                     preserve_host=plan.preserve_host),
            upstream=upstream.name,
        )

    async def proxy_special(self, request: web.BaseRequest, ctx: Context, plan: RoutePlan,
                            upstream_request: UpstreamRequest
                            ) -> tuple[web.StreamResponse, Streamer | None]:
        """Proxy a WebSocket upgrade, or a request that expects ``100 Continue``."""
        gw: Gateway = ctx.app
        upstream = plan.upstream
        assert upstream is not None
        if "Upgrade" in request.headers:
            from .upstream import websocket

            if websocket.is_upgrade(request):  # authenticated and admitted: upgrade now
                return await websocket.connect(request, ctx, upstream, upstream_request, gw,
                                               deadline=self._loop.time() + gw.timeout)
        if "Expect" in request.headers and request.headers["Expect"].lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        deadline = self._loop.time() + gw.timeout
        return await exchange(request, ctx, upstream, upstream_request,
                              max_body=gw.max_body, deadline=deadline)

    async def compose(self, request: web.BaseRequest, ctx: Context, plan: RoutePlan,
                      query: str, forwarded_for: str, trusted: bool) -> web.StreamResponse:
        """Aggregate and GraphQL routes: upstream calls composed into one JSON body.

        For an aggregate route the ``aggregate`` hooks may replace the composed
        body (the first non-None body wins); without one, pygate's composition
        is sent. A GraphQL route answers its query (:mod:`pygate.graphql`).
        """
        chain = plan.chain
        transformer: Transform | None = None
        if chain.transform_request:
            async def transformer(upstream_request: UpstreamRequest, call_ctx: Context) -> None:
                await transform(chain, request, call_ctx, upstream_request)
        assert ctx.route is not None
        gw: Gateway = ctx.app  # the request's own gateway, even after a reload
        fork_ctx = chain.transform_is_async
        calls = plan.aggregate
        if calls is None:
            assert plan.graphql is not None
            from . import graphql  # imported by the configuration already

            state = graphql.GraphQLRequest(
                request, ctx, ctx.route.params, query,
                call_headers(request, ctx, forwarded_for, trusted), transformer, fork_ctx,
                self._loop.time() + gw.timeout, gw.max_body)
            return await graphql.serve(plan.graphql, request, ctx, state)
        composed = await execute(
            calls, request, ctx, params=ctx.route.params, query=query,
            headers=call_headers(request, ctx, forwarded_for, trusted),
            transform=transformer, fork_ctx=fork_ctx,
            deadline=self._loop.time() + min(calls.timeout, gw.timeout),
            max_body=gw.max_body)
        body: Any = composed.body
        shaper = None
        for step in chain.aggregate:
            shaped = await call_step(step, "aggregate", (request, ctx, body), ctx)
            if shaped is not None:
                body, shaper = shaped, step.plugin
                break
        try:
            return composed.response(body)
        except (TypeError, ValueError) as exc:  # a plugin's body that is not JSON
            if shaper is None:
                raise
            log.error("plugin raised", plugin=shaper, hook="aggregate",
                      request_id=ctx.request_id, error=f"{type(exc).__name__}: {exc}")
            raise PluginFailure(shaper, "aggregate") from exc

    def _schedule_log(self, chain: Chain, ctx: Context, request: web.BaseRequest,
                      response: web.StreamResponse) -> None:
        """Run the log hooks after this handler returns: plain functions in a loop
        callback, coroutines in a task (tracked so a shutdown can wait for them)."""
        record = access_record(ctx)
        record["query"] = request.query_string
        record["cache"] = response.headers.get("X-Cache")
        self._schedule_record(chain, ctx, record)

    def refused(self, conn: RequestHandler, status: int, detail: str, rid: str) -> None:
        """An access line for a request refused before the pipeline saw it (the HTTP
        parser's 400/431, a request head that came too late: 408)."""
        chain = self.gw.global_chain
        if not chain.log:
            return
        transport = conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        ctx = Context(request_id=rid, client_ip=peer[0] if peer else "", method="", path="",
                      start=time.monotonic())
        ctx.app = self.gw
        ctx.status = status
        ctx.error = detail
        record = access_record(ctx)
        record["query"] = ""
        record["cache"] = None
        self._schedule_record(chain, ctx, record)

    def _schedule_record(self, chain: Chain, ctx: Context, record: dict[str, Any]) -> None:
        if chain.log_is_sync:
            self._loop.call_soon(run_sync_log_hooks, chain, ctx, record)
            return
        task = self._loop.create_task(run_log_hooks(chain, ctx, record))
        self._log_tasks.add(task)
        task.add_done_callback(self._log_tasks.discard)

    async def wait_for_logs(self) -> None:
        """Let scheduled log hooks finish (before the gateway's plugins shut down)."""
        if self._log_tasks:
            await asyncio.wait(list(self._log_tasks), timeout=5)


def outgoing_headers(request: web.BaseRequest, ctx: Context, forwarded_for: str,
                     trusted: bool, *, preserve_host: bool) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, plus X-Forwarded-* and X-Request-ID."""
    headers = CIMultiDict(request.headers)
    strip_hop_by_hop(headers)
    if ctx.app.drop_underscores:
        drop_underscored(headers)
    if "Expect" in headers:
        headers.popall("Expect")
    host = headers.get("Host", "")
    if not preserve_host and host:
        del headers["Host"]
    headers["X-Forwarded-For"] = forwarded_for
    if not (trusted and "X-Forwarded-Proto" in headers):
        headers["X-Forwarded-Proto"] = "https" if request.secure else "http"
    if not (trusted and "X-Forwarded-Host" in headers):
        if host:
            headers["X-Forwarded-Host"] = host
        elif "X-Forwarded-Host" in headers:
            headers.popall("X-Forwarded-Host")
    headers["X-Request-ID"] = ctx.request_id
    return headers


def client_fault(request: web.BaseRequest, exc: Exception) -> GatewayError | None:
    """The 4xx for an exception the client caused (PRODUCT.md section 4, item 6), else None.

    A body cut short or a connection closed mid-request is 499 (as nginx logs
    a client that went away); a body whose framing breaks mid-stream (a bad
    chunk size) is 400.
    """
    if isinstance(exc, HttpProcessingError):
        return BadRequest("malformed request body")
    transport = request.transport
    if isinstance(exc, ConnectionError) or transport is None or transport.is_closing():
        return GatewayError("the client closed the connection", status=499)
    return None


def access_record(ctx: Context) -> dict[str, Any]:
    identity = ctx.identity
    return {
        "time": time.time(),
        "request_id": ctx.request_id,
        "method": ctx.method,
        "path": ctx.path,
        "route": ctx.route.name if ctx.route else None,
        "upstream": ctx.upstream,
        "target": ctx.target,
        "status": ctx.status,
        "duration_ms": round((time.monotonic() - ctx.start) * 1000, 3),
        "bytes_in": ctx.bytes_in,
        "bytes_out": ctx.bytes_out,
        "client_ip": ctx.client_ip,
        "consumer": identity.get("consumer") if identity else None,
        "error": ctx.error,
    }


def run_sync_log_hooks(chain: Chain, ctx: Context, record: dict[str, Any]) -> None:
    for step in chain.log:
        ctx.config = step.config
        try:
            step.func(*((ctx, record) if step.args is None else
                        tuple((ctx, record)[i] for i in step.args)))
        except Exception as exc:  # a log hook never fails a request
            log.error("plugin raised", plugin=step.plugin, hook="log",
                      request_id=ctx.request_id, error=f"{type(exc).__name__}: {exc}",
                      exc_info=exc)


async def run_log_hooks(chain: Chain, ctx: Context, record: dict[str, Any]) -> None:
    for step in chain.log:
        try:
            await call_step(step, "log", (ctx, record), ctx)
        except Exception:  # logged by call_step; a log hook never fails a request
            pass
