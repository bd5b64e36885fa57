"""The request story, top to bottom (docs/architecture.md has it as a diagram).

sanitize -> route -> pre_route -> authenticate -> admit -> the route kind's
``serve`` (proxy, aggregate, GraphQL: :mod:`pygate.kinds`) -> transform_response
(chains with an implementation only) -> post_response -> send -> log (scheduled).

Every refusal on the way is a :class:`GatewayError` that becomes a problem
document; the hook phases run through the route's :class:`pygate.chain.Chain`,
where an exception from a plugin becomes a :class:`PluginFailure`: a 500
naming the plugin in the log, and the next request is served as usual.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .app import Gateway, RoutePlan
from .chain import Chain, LogQueue, PluginFailure
from .context import Context, RouteInfo
from .errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    from_error,
    problem_response,
)
from .kinds import Routed
from .router import Match
from .sanitize import check_framing, check_headers, host_of, normalize_path, request_id
from .tls import client_cert_of
from .upstream.forward import Streamer, streaming

if TYPE_CHECKING:
    from .admin.stats import Stats

log = structlog.get_logger("pygate")


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
        self.on_gw = InFlight()  # those of them that run on self.gw, for a reload
        self.draining = False  # set when the drain starts: every response closes
        self.stats: Stats | None = None  # per-route counters, with [admin] only
        self.logs = LogQueue()  # the log hooks' work, after the responses

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
        on_gw = self.on_gw  # read before the first await: the gateway counted is the one used
        self.in_flight += 1
        on_gw.count += 1
        gw = self.gw
        ctx, forwarded = self.context(request, gw)
        chain: Chain = gw.global_chain  # until a route is known
        stream: Streamer | None = None  # the response body, until it is written or dropped
        close = False
        try:
            try:
                match, routed = self.route(request, ctx, gw, forwarded)
                plan: RoutePlan | None = match.route.payload if match.route else None
                chain = plan.chain if plan else self.tentative_chain(request, ctx, gw, routed)
                response = await chain.run_pre_route(request, ctx) if chain.pre_route else None
                if response is None and plan is None:
                    raise no_route(request, match)  # after pre_route: a CORS preflight
                if response is None and chain.authenticate:
                    await chain.run_authenticate(request, ctx)
                if response is None and chain.admit:
                    response = await chain.run_admit(request, ctx)
                if response is None:
                    assert plan is not None
                    if chain.transform_response:  # the body buffered for them, up to a limit
                        response, stream = await self.transformed(request, ctx, chain, plan,
                                                                  routed)
                    else:
                        response, stream = await plan.handler.serve(request, ctx, chain, routed)
            except Exception as exc:
                response, close = self.failure(request, ctx, exc)
            response_headers = response.headers
            if "X-Request-ID" not in response_headers:
                response_headers["X-Request-ID"] = ctx.request_id
            ctx.status = response.status
            if chain.post_response:
                try:
                    await chain.run_post_response(request, ctx, response)
                except (GatewayError, PluginFailure) as exc:
                    if stream is not None:
                        stream.discard()
                        stream = None
                    response, _ = self.failure(request, ctx, exc)
                    ctx.status = response.status
            # Never let the server library announce itself (a plugin may remove upstream's).
            response.headers.setdefault("Server", "pygate")
            tls = gw.tls  # [gateway.tls] hsts: every response over TLS, problems included
            if tls is not None and tls.hsts is not None and request.secure:
                response.headers["Strict-Transport-Security"] = tls.hsts
            # during a drain: Connection: close; after a protocol switch the parser took
            # but the gateway did not (a refused WebSocket upgrade), too
            if close or self.draining or (response.status != 101 and "Upgrade" in request.headers
                                          and switches_protocol(request)):
                response.force_close()
            await self._send(request, response, stream, ctx)
            ctx.end = time.monotonic()
            if chain.log:
                self.logs.put(chain, ctx, self.record(ctx, request, response)
                              if chain.log_record else None)
            if self.stats is not None:
                self.stats.note(ctx)  # filed by a loop callback, after the response
            return response
        finally:
            if stream is not None:
                stream.discard()  # a no-op once written; else the upstream is let go
            self.in_flight -= 1
            on_gw.count -= 1

    # -- the steps of the story ----------------------------------------------------

    def context(self, request: web.BaseRequest, gw: Gateway
                ) -> tuple[Context, tuple[str, bool]]:
        """The request's context, and its outgoing X-Forwarded-For and trust."""
        headers = request.headers
        ctx = Context(request_id=request_id(headers.get("X-Request-ID")), client_ip="",
                      method=request.method, path=request.raw_path, start=time.monotonic())
        ctx.app, ctx.gateway = gw, gw.facade
        tls = gw.tls
        if tls is not None and tls.client_certs:  # parsed once per connection
            ctx.client_cert = client_cert_of(request.transport)
        hops = headers.getall("X-Forwarded-For", None)  # several lines are one list
        ctx.client_ip, forwarded_for, trusted = gw.forwarded.resolve(
            request.remote or "", ", ".join(hops) if hops else None)
        return ctx, (forwarded_for, trusted)

    def route(self, request: web.BaseRequest, ctx: Context, gw: Gateway,
              forwarded: tuple[str, bool]) -> tuple[Match, Routed]:
        """Sanitize (PRODUCT.md section 4) and match a route (``match.route`` may be None).

        :raise GatewayError: 400 for a request that is refused before routing.
        """
        headers = request.headers
        if "Content-Length" in headers or "Transfer-Encoding" in headers:
            check_framing(headers)
        check_headers(headers, reject_underscores=gw.reject_underscores)
        if request.method == "CONNECT":  # a tunnel: a forward proxy's business, not ours
            raise MethodNotAllowed(
                "CONNECT is not supported: pygate is not a forward proxy", close=True,
                headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"})
        path, encoded, query = normalize_path(request.raw_path)
        ctx.path = path
        match = gw.router.match(request.method, path, host_of(headers), headers)
        if match.route is not None:
            ctx.route = RouteInfo(match.route.name, match.params)
        return match, Routed(path, encoded, query, *forwarded)

    def tentative_chain(self, request: web.BaseRequest, ctx: Context, gw: Gateway,
                        routed: Routed) -> Chain:
        """With no route matched: the chain of the route the path reaches whatever the
        method (its pre_route answers a CORS preflight on a GET-only route), else the
        global one."""
        headers = request.headers
        tentative = gw.router.lookup(routed.path, host_of(headers), headers)
        if tentative is None:
            return gw.global_chain
        ctx.route = RouteInfo(tentative.name, {})
        plan: RoutePlan = tentative.payload
        return plan.chain

    @staticmethod
    async def transformed(request: web.BaseRequest, ctx: Context, chain: Chain,
                          plan: RoutePlan, routed: Routed
                          ) -> tuple[web.StreamResponse, Streamer | None]:
        """The route's answer through its ``transform_response`` hooks: a proxied body up
        to ``chain.response_buffer`` bytes is read whole for them (``ctx.capture_body``,
        which the cache may have raised already); a larger or streaming one, a ``HEAD``
        answer or a WebSocket upgrade streams through untouched."""
        if chain.response_buffer > ctx.capture_body:
            ctx.capture_body = chain.response_buffer
        response, stream = await plan.handler.serve(request, ctx, chain, routed)
        if stream is None:
            if isinstance(response, web.Response):
                await chain.run_transform_response(request, ctx, response)
        elif (response.status != 101 and request.method != "HEAD"
              and not streaming(response.headers)):
            log.info("response body over the transform_response limit: streamed untouched",
                     request_id=ctx.request_id, route=ctx.route.name if ctx.route else None,
                     limit=ctx.capture_body,
                     plugins=[step.plugin for step in chain.transform_response])
        return response, stream

    def failure(self, request: web.BaseRequest, ctx: Context, exc: Exception
                ) -> tuple[web.StreamResponse, bool]:
        """The problem document for what went wrong, and whether to close the connection."""
        route = ctx.route.name if ctx.route else None
        if isinstance(exc, PluginFailure):
            ctx.error = str(exc)
            return self._internal_error(ctx), False
        close = False
        if not isinstance(exc, GatewayError):
            fault = client_fault(request, exc)
            if fault is None:
                log.error("unhandled error", request_id=ctx.request_id, exc_info=exc)
                ctx.error = type(exc).__name__
                return self._internal_error(ctx), False
            # the client went away or sent a broken body: its doing, not ours
            log.info("request ended by the client", request_id=ctx.request_id,
                     status=fault.status, error=fault.detail)
            exc, close = fault, True
        ctx.error = exc.detail
        # a body whose framing is in doubt, or too large: read nothing more of it
        close = close or exc.close or exc.status in (413, 499)
        return from_error(exc, request_id=ctx.request_id, route=route), close

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

    # -- access records ------------------------------------------------------------

    @staticmethod
    def record(ctx: Context, request: web.BaseRequest, response: web.StreamResponse
               ) -> dict[str, Any]:
        return access_record(ctx, request.query_string, response.headers.get("X-Cache"))

    def refused(self, conn: RequestHandler, status: int, detail: str, rid: str) -> None:
        """An access line for a request refused before the pipeline saw it (the HTTP
        parser's 400/431, a request head that came too late: 408)."""
        chain = self.gw.global_chain
        if not chain.log and self.stats is None:
            return
        transport = conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        now = time.monotonic()
        ctx = Context(request_id=rid, client_ip=peer[0] if peer else "", method="", path="",
                      start=now)
        ctx.end = now
        ctx.app, ctx.gateway = self.gw, self.gw.facade
        ctx.status = status
        ctx.error = detail
        if self.stats is not None:
            self.stats.note(ctx)
        if not chain.log:
            return
        self.logs.put(chain, ctx, access_record(ctx, "", None) if chain.log_record else None)

    async def wait_for_logs(self) -> None:
        """Let scheduled log hooks finish (before the gateway's plugins shut down)."""
        await self.logs.drain()


def switches_protocol(request: web.BaseRequest) -> bool:
    """Whether the HTTP parser reads no more HTTP on this connection after this request.

    aiohttp's parser (llhttp) switches after ``CONNECT`` and after a request with
    ``Upgrade: websocket`` (or ``tcp``) and ``Connection: upgrade``, once its body is
    in; every other ``Upgrade`` (``h2c``...) is a hop-by-hop header and the
    connection stays HTTP.
    """
    if request.method == "CONNECT":
        return True
    headers = request.headers
    protocol = headers.get("Upgrade", "")
    return (protocol.isascii() and protocol.strip().lower() in ("websocket", "tcp")
            and any(token.strip().lower() == "upgrade"
                    for value in headers.getall("Connection", ()) for token in value.split(",")))


def no_route(request: web.BaseRequest, match: Match) -> GatewayError:
    """404, or 405 with ``Allow`` when routes matched all but the method."""
    if match.allowed:
        return MethodNotAllowed(f"method {request.method} is not allowed on this route",
                                headers={"Allow": ", ".join(sorted(match.allowed))})
    return NotFound("no route matches this request")


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


def access_record(ctx: Context, query: str, cache: str | None) -> dict[str, Any]:
    """The ``log`` hooks' record of one request (docs/plugin-hooks.md lists the keys)."""
    identity = ctx.identity
    route = ctx.route
    return {
        "time": time.time(),
        "request_id": ctx.request_id,
        "method": ctx.method,
        "path": ctx.path,
        "route": route.name if route is not None else None,
        "upstream": ctx.upstream,
        "target": ctx.target,
        "status": ctx.status,
        # whole microseconds, in ms: round(x, 3) costs ten times the instructions
        "duration_ms": int((ctx.end - ctx.start) * 1_000_000) / 1000,
        "bytes_in": ctx.bytes_in,
        "bytes_out": ctx.bytes_out,
        "client_ip": ctx.client_ip,
        # Identity.get("consumer"), without the call
        "consumer": (identity.consumer if identity.consumer is not None else identity.id)
        if identity is not None else None,
        "error": ctx.error,
        "query": query,
        "cache": cache,
        "trace_id": ctx.trace_id,  # set by a tracing plugin (opentelemetry), else None
    }
