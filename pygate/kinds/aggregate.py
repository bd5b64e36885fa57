"""The aggregate kind (``[routes.aggregate]``): calls composed into one JSON response.

The calls run as :mod:`pygate.aggregate` plans them; the ``aggregate`` hooks
may then replace the composed body (the first non-None body wins), else
pygate's composition is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from ..aggregate import AggregatePlan, Transform, call_headers, compile_plan, describe, execute
from ..chain import PluginFailure
from ..context import Context, UpstreamRequest
from . import Build, Routed

if TYPE_CHECKING:
    from ..app import Gateway
    from ..chain import Chain
    from ..config import ConfigIssue
    from ..router import Route
    from ..upstream.forward import Streamer

log = structlog.get_logger("pygate")


def call_transform(chain: Chain, request: web.BaseRequest) -> Transform | None:
    """The ``transform_request`` hooks as one callable for each call, if there are any."""
    if not chain.transform_request:
        return None

    async def transform(upstream_request: UpstreamRequest, call_ctx: Context) -> None:
        await chain.run_transform_request(request, call_ctx, upstream_request)

    return transform


class Aggregate:
    """The handler of one aggregate route."""

    __slots__ = ("plan",)

    def __init__(self, plan: AggregatePlan) -> None:
        self.plan = plan

    async def serve(self, request: web.BaseRequest, ctx: Context, chain: Chain,
                    routed: Routed) -> tuple[web.StreamResponse, Streamer | None]:
        gw: Gateway = ctx.app  # the request's own gateway, even after a reload
        assert ctx.route is not None
        plan = self.plan
        composed = await execute(
            plan, request, ctx, params=ctx.route.params, query=routed.query,
            headers=call_headers(request, ctx, routed.forwarded_for, routed.trusted),
            transform=call_transform(chain, request), fork_ctx=chain.transform_is_async,
            deadline=asyncio.get_running_loop().time() + min(plan.timeout, gw.timeout),
            max_body=gw.max_body)
        body: Any = composed.body
        shaper = None
        if chain.aggregate:
            shaped = await chain.run_aggregate(request, ctx, body)
            if shaped is not None:
                body, shaper = shaped
        try:
            return composed.response(body), None
        except (TypeError, ValueError) as exc:  # a plugin's body that is not JSON
            if shaper is None:
                raise
            log.error("plugin raised", plugin=shaper, hook="aggregate",
                      request_id=ctx.request_id, error=f"{type(exc).__name__}: {exc}")
            raise PluginFailure(shaper, "aggregate") from exc

    def explain(self, route: Route, method: str, params: Mapping[str, str], routed: Routed,
                headers: Mapping[str, str]) -> list[str]:
        return describe(self.plan, params, routed.query, headers)


class AggregateKind:
    """``[routes.aggregate]``: calls to upstreams composed into one JSON object."""

    key = "aggregate"

    def upstream_refs(self, spec: Any) -> list[tuple[str, str]]:
        from ..config import key_path

        return [(call.upstream, f"aggregate.calls.{key_path([name])}.upstream")
                for name, call in spec.calls.items()]

    def target(self, spec: Any) -> str:
        return "aggregate: " + ",".join(spec.calls)

    def compile(self, route: Route, spec: Any, build: Build
                ) -> tuple[Aggregate | None, list[ConfigIssue]]:
        plan, issues = compile_plan(route, build.upstream_for)
        return (Aggregate(plan) if plan is not None and not issues else None), issues


AGGREGATE = AggregateKind()
