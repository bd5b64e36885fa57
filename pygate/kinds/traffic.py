"""Proxy routes with ``[routes.canary]`` or ``[routes.mirror]`` (PRODUCT.md section 11).

:class:`pygate.kinds.proxy.ProxyKind` compiles a proxy route into this handler
only when the route has one of the two tables, so every other proxy route keeps
the plain :class:`~pygate.kinds.proxy.Proxy` and pays nothing for them. The
request is the proxy's, with two differences:

- the upstream is the side :class:`pygate.canary.Canary` chooses (the canary's
  name is then the request's ``ctx.upstream``: its access record, its metrics);
- once ``transform_request`` has run, :meth:`pygate.mirror.Mirror.start` copies the
  request to the mirror upstream (its body through a tee, as it streams).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from ..canary import Canary
from ..context import Context
from ..mirror import Copies, Mirror, TeeBody
from ..upstream.forward import Streamer, exchange
from . import Build, Routed
from .proxy import Proxy

if TYPE_CHECKING:
    from ..app import Gateway
    from ..chain import Chain
    from ..config import ConfigIssue
    from ..router import Route
    from ..upstream import Upstream


class TrafficProxy(Proxy):
    """The handler of a proxy route with a canary, a mirror, or both."""

    __slots__ = ("canary", "mirror")

    def __init__(self, route: Route, upstream: Upstream, canary: Canary[Upstream] | None,
                 mirror: Mirror | None) -> None:
        super().__init__(route, upstream)
        self.canary = canary
        self.mirror = mirror

    async def serve(self, request: web.BaseRequest, ctx: Context, chain: Chain,
                    routed: Routed) -> tuple[web.StreamResponse, Streamer | None]:
        gw: Gateway = ctx.app  # the request's own gateway, even after a reload
        headers = request.headers
        canary = self.canary
        upstream = self.upstream if canary is None else canary.choose(headers, ctx)
        upstream_request = self.prepare(request, ctx, routed, upstream, gw)
        if chain.transform_request:
            await chain.run_transform_request(request, ctx, upstream_request)
        if ctx.body is not None and upstream_request.body is None:
            upstream_request.body = ctx.body  # read by a plugin (pygate.body.read_body)
        deadline = asyncio.get_running_loop().time() + gw.timeout
        if "Upgrade" in headers:
            from ..upstream import websocket

            if websocket.is_upgrade(request):  # a WebSocket is not mirrored
                return await websocket.connect(request, ctx, upstream, upstream_request, gw,
                                               deadline=deadline)
        tee: TeeBody | None = None
        if self.mirror is not None:
            tee = self.mirror.start(request, ctx, upstream_request, gw.timeout, gw.max_body)
        if (ctx.body is None and "Expect" in headers
                and headers["Expect"].lower() == "100-continue"):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            return await exchange(request, ctx, upstream, upstream_request, tee,
                                  max_body=gw.max_body, deadline=deadline)
        finally:
            if tee is not None:
                tee.settle()

    def explain(self, route: Route, method: str, params: Mapping[str, str], routed: Routed,
                headers: Mapping[str, str]) -> list[str]:
        upstream_line, forwarded = super().explain(route, method, params, routed, headers)
        lines = [upstream_line]
        canary = self.canary
        if canary is not None:
            target = canary.target
            targets = ", ".join(t.label for t in target.targets)
            lines.append(f"canary: {target.name} ({target.config.balancer}: {targets}): "
                         f"{canary.describe()}")
            lines.append(f"this request goes to: {canary.explain(headers)}")
        lines.append(forwarded)
        if self.mirror is not None:
            lines.append(self.mirror.describe())
        return lines


def compile_traffic(route: Route, build: Build) -> tuple[TrafficProxy, list[ConfigIssue]]:
    """The handler of a proxy route with ``[routes.canary]`` and/or ``[routes.mirror]``.

    The configuration checks (:func:`pygate.config.traffic.traffic_issues`) have
    made sure that every upstream named exists and is another than the route's.
    """
    config = route.config
    assert config.upstream is not None, "canary and mirror are checked to be on proxy routes"
    main = build.upstream_for(config.upstream)
    canary: Canary[Upstream] | None = None
    if config.canary is not None:
        target = build.upstream_for(config.canary.upstream)
        canary = Canary(config.canary, main, target, target.name)
    mirror: Mirror | None = None
    if config.mirror is not None:
        shadow = build.upstream_for(config.mirror.upstream)
        if shadow.mirrored is None:  # shared by every route mirroring to it
            shadow.mirrored = Copies(shadow.name, shadow.config.max_connections)
        mirror = Mirror(config.mirror, shadow)
    return TrafficProxy(route, main, canary, mirror), []
