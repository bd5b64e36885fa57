"""The GraphQL kind (``[routes.graphql]``): a schema whose fields are upstream calls.

graphql-core is imported only when the configuration has a GraphQL route
(:mod:`pygate.graphql` does the work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..aggregate import call_headers
from ..aggregate.placeholders import Scope
from ..context import Context
from . import Build, Routed
from .aggregate import call_transform

if TYPE_CHECKING:
    from ..app import Gateway
    from ..chain import Chain
    from ..config import ConfigIssue
    from ..graphql import GraphQLPlan
    from ..graphql_calls import Calls
    from ..router import Route
    from ..upstream.forward import Streamer


class GraphQL:
    """The handler of one GraphQL route."""

    __slots__ = ("calls", "plan", "schema_file", "serve_graphql")

    def __init__(self, plan: GraphQLPlan, schema_file: str) -> None:
        from .. import graphql  # imported by the configuration already
        from ..graphql_calls import Calls

        self.plan = plan
        self.schema_file = schema_file
        self.serve_graphql = graphql.serve
        self.calls = Calls

    async def serve(self, request: web.BaseRequest, ctx: Context, chain: Chain,
                    routed: Routed) -> tuple[web.StreamResponse, Streamer | None]:
        gw: Gateway = ctx.app  # the request's own gateway, even after a reload
        route = ctx.route
        assert route is not None
        plan = self.plan
        deadline = asyncio.get_running_loop().time() + gw.timeout

        def calls() -> Calls:  # once the operation is known to run
            return self.calls(ctx, Scope(route.params, routed.query, request.headers,
                                         ctx.identity),
                              call_headers(request, ctx, routed.forwarded_for, routed.trusted),
                              call_transform(chain, request), chain.transform_is_async,
                              deadline, gw.max_body, plan.bounds.max_calls)

        return await self.serve_graphql(plan, request, ctx, calls), None

    def explain(self, route: Route, method: str, params: Mapping[str, str], routed: Routed,
                headers: Mapping[str, str]) -> list[str]:
        plan = self.plan
        lines = [f"graphql: schema {self.schema_file}, {plan.bounds.describe()}, "
                 f"introspection {'on' if plan.introspection else 'off'}, persisted queries "
                 f"{'on' if plan.persisted is not None else 'off'}",
                 "resolvers (a field's call is made only when a query selects it):"]
        lines.extend(f"  {line}" for line in
                     plan.describe() or ["(none: every field is read from its parent)"])
        return lines


class GraphQLKind:
    """``[routes.graphql]``: an SDL schema, a resolver (an upstream call) per field."""

    key = "graphql"

    def upstream_refs(self, spec: Any) -> list[tuple[str, str]]:
        from ..config import key_path

        return [(resolver.upstream, f"graphql.resolvers.{key_path([name])}.upstream")
                for name, resolver in spec.resolvers.items()]

    def target(self, spec: Any) -> str:
        return "graphql"

    def compile(self, route: Route, spec: Any, build: Build
                ) -> tuple[GraphQL | None, list[ConfigIssue]]:
        from ..graphql import compile_graphql  # graphql-core: ~15 MB, loaded when needed

        plan, issues = compile_graphql(route, spec, str(build.config.resolve_path(spec.schema_)),
                                       build.upstream_for)
        return (GraphQL(plan, spec.schema_) if plan is not None and not issues else None), issues


GRAPHQL = GraphQLKind()
