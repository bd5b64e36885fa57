"""The proxy kind (``upstream = "NAME"`` or a URL): the request streams to one upstream.

The upstream request is the client's, minus hop-by-hop headers (and header
names with ``_`` unless ``gateway.underscore_headers = "allow"``), plus the
forwarding headers, the request ID and what ``transform_request`` hooks
change. WebSocket upgrades and ``Expect: 100-continue`` take their own path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from ..context import Context, UpstreamRequest
from ..errors import PayloadTooLarge
from ..sanitize import drop_underscored, forwarded_headers, strip_hop_by_hop
from ..upstream.forward import Streamer, exchange
from . import Build, Routed

if TYPE_CHECKING:
    from ..app import Gateway
    from ..chain import Chain
    from ..config import ConfigIssue
    from ..router import Route
    from ..upstream import Upstream


class Proxy:
    """The handler of one proxy route."""

    __slots__ = ("preserve_host", "route", "upstream")

    def __init__(self, route: Route, upstream: Upstream) -> None:
        self.route = route
        self.upstream = upstream
        self.preserve_host = route.config.preserve_host

    async def serve(self, request: web.BaseRequest, ctx: Context, chain: Chain,
                    routed: Routed) -> tuple[web.StreamResponse, Streamer | None]:
        gw: Gateway = ctx.app  # the request's own gateway, even after a reload
        upstream_request = self.prepare(request, ctx, routed, self.upstream, gw)
        if chain.transform_request:
            await chain.run_transform_request(request, ctx, upstream_request)
        if ctx.body is not None and upstream_request.body is None:
            upstream_request.body = ctx.body  # read by a plugin (pygate.body.read_body)
        deadline = asyncio.get_running_loop().time() + gw.timeout
        headers = request.headers
        if "Upgrade" in headers or "Expect" in headers:
            return await self._special(request, ctx, upstream_request, gw, deadline)
        return await exchange(request, ctx, self.upstream, upstream_request, max_body=gw.max_body,
                              deadline=deadline)

    def prepare(self, request: web.BaseRequest, ctx: Context, routed: Routed,
                upstream: Upstream, gw: Gateway) -> UpstreamRequest:
        """The request for ``upstream``, for the chain's ``transform_request`` hooks (a
        body over ``max_body`` by its length refused first)."""
        length = request.content_length
        if length is not None and length > gw.max_body:
            raise PayloadTooLarge("request body exceeds the gateway's max_body")
        ctx.upstream = upstream.name
        assert ctx.route is not None
        return UpstreamRequest(
            method=request.method,
            path=self.route.upstream_path(routed.path, routed.encoded, ctx.route.params),
            query=routed.query,
            headers=outgoing_headers(request, ctx, routed, preserve_host=self.preserve_host),
            upstream=upstream.name,
        )

    async def _special(self, request: web.BaseRequest, ctx: Context,
                       upstream_request: UpstreamRequest, gw: Gateway, deadline: float
                       ) -> tuple[web.StreamResponse, Streamer | None]:
        """A WebSocket upgrade, or a request that expects ``100 Continue``."""
        if "Upgrade" in request.headers:
            from ..upstream import websocket

            if websocket.is_upgrade(request):  # authenticated and admitted: upgrade now
                return await websocket.connect(request, ctx, self.upstream, upstream_request,
                                               gw, deadline=deadline)
        if ctx.body is None and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await exchange(request, ctx, self.upstream, upstream_request,
                              max_body=gw.max_body, deadline=deadline)

    def explain(self, route: Route, method: str, params: Mapping[str, str], routed: Routed,
                headers: Mapping[str, str]) -> list[str]:
        upstream = self.upstream
        sent = route.upstream_path(routed.path, routed.encoded, params) + (
            f"?{routed.query}" if routed.query else "")
        targets = ", ".join(t.label for t in upstream.targets)
        return [f"upstream: {upstream.name} ({upstream.config.balancer}: {targets})",
                f"forwarded as: {method} {sent}"]


def outgoing_headers(request: web.BaseRequest, ctx: Context, routed: Routed, *,
                     preserve_host: bool) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, plus X-Forwarded-* and X-Request-ID."""
    headers = CIMultiDict(request.headers)
    strip_hop_by_hop(headers)
    if ctx.app.drop_underscores:
        drop_underscored(headers)
    if "Expect" in headers:
        headers.popall("Expect")
    if not preserve_host and "Host" in headers:
        del headers["Host"]
    forwarded_headers(headers, request.headers, request.secure, routed.forwarded_for,
                      routed.trusted)
    headers["X-Request-ID"] = ctx.request_id
    return headers


class ProxyKind:
    """``upstream = "NAME"`` (a name from ``[upstreams]``) or a URL."""

    key = "upstream"

    def upstream_refs(self, spec: Any) -> list[tuple[str, str]]:
        return [(spec, "upstream")]

    def target(self, spec: Any) -> str:
        return str(spec)

    def compile(self, route: Route, spec: Any, build: Build
                ) -> tuple[Proxy | None, list[ConfigIssue]]:
        config = route.config
        if config.canary is not None or config.mirror is not None:
            from .traffic import compile_traffic  # decided here: other routes pay nothing

            return compile_traffic(route, build)
        return Proxy(route, build.upstream_for(spec)), []


PROXY = ProxyKind()
