"""The gateway object: configuration compiled into a router, chains and upstreams.

:func:`build_gateway` does all the work that can be done before a port is
bound (plugin loading, plugin config validation, route compilation), raising a
:class:`ConfigError` that lists every problem. :meth:`Gateway.start` and
:meth:`Gateway.stop` open and close what lives with the running server
(upstream pools, the shared client session, plugin startup/shutdown).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from .aggregate import AggregatePlan, compile_plan
from .config import Config, ConfigError, UpstreamConfig, is_url
from .plugins import EMPTY_CHAIN, Chain, ChainBuilder, PluginSet, enabled_plugins, load_plugins
from .plugins import route_settings as merge_route_settings
from .router import Route, Router
from .sanitize import ForwardedRule
from .upstream import Upstream

if TYPE_CHECKING:  # graphql-core is imported only when a GraphQL route exists
    from .graphql import GraphQLPlan

log = structlog.get_logger("pygate")


@dataclass
class RoutePlan:
    """What the gateway attaches to a compiled route: its chain and its upstream
    (or, for an aggregate route, its compiled plan)."""

    chain: Chain
    upstream: Upstream | None
    preserve_host: bool = False
    aggregate: AggregatePlan | None = None
    graphql: GraphQLPlan | None = None


class Gateway:
    """One configured gateway: the request pipeline's view of the configuration."""

    def __init__(self, config: Config, plugins: PluginSet, router: Router,
                 global_chain: Chain, upstreams: dict[str, Upstream]) -> None:
        self.config = config
        self.plugins = plugins
        self.router = router
        self.global_chain = global_chain
        self.upstreams = upstreams
        self.forwarded = ForwardedRule(config.gateway.trusted_networks())
        self.max_body = config.gateway.max_body
        self.drop_underscores = config.gateway.underscore_headers == "drop"
        self.reject_underscores = config.gateway.underscore_headers == "reject"
        self.timeout = config.gateway.timeout
        self.state: dict[str, Any] = {}
        self.client: aiohttp.ClientSession | None = None
        # Called when a drain starts (SIGTERM): long-lived exchanges close politely.
        self.on_drain: list[Callable[[], Awaitable[None]]] = []
        self._started: list[str] = []

    async def start(self) -> None:
        """Open upstream pools and the shared client, then run plugin ``startup`` hooks."""
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        for upstream in self.upstreams.values():
            await upstream.start()
        for name in self.plugins.info:
            impl = self.plugins.impl(name, "startup")
            if impl is not None:
                config = self.global_chain.configs.get(name)
                result = impl.function(**_pick(impl.argnames, app=self, config=config))
                if inspect.isawaitable(result):
                    await result
            self._started.append(name)

    async def stop(self) -> None:
        """Run plugin ``shutdown`` hooks in reverse order, then close pools."""
        for name in reversed(self._started):
            impl = self.plugins.impl(name, "shutdown")
            if impl is None:
                continue
            try:
                result = impl.function(**_pick(impl.argnames, app=self))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin shutdown failed", plugin=name)
        self._started.clear()
        for upstream in self.upstreams.values():
            await upstream.close()
        if self.client is not None:
            await self.client.close()
            self.client = None

    def plan(self, route: Route) -> RoutePlan:
        plan: RoutePlan = route.payload
        return plan

    def plugin_configs(self, name: str) -> list[Any]:
        """Every distinct effective config of plugin ``name`` (global table and routes).

        For ``startup`` hooks that prepare per-config state (a JWKS cache, a pool
        per backend URL) before the first request.
        """
        found: dict[int, Any] = {}
        chains = [self.global_chain, *(self.plan(r).chain for r in self.router.routes)]
        for chain in chains:
            config = chain.configs.get(name)
            if name in chain.configs and id(config) not in found:
                found[id(config)] = config
        return list(found.values())

    async def drain(self) -> None:
        """Run the ``on_drain`` callbacks (close WebSockets with 1001...) when draining."""
        for callback in list(self.on_drain):
            try:
                await callback()
            except Exception:
                log.exception("drain callback failed")


def _pick(argnames: tuple[str, ...], **available: Any) -> dict[str, Any]:
    return {name: available[name] for name in argnames if name in available}


def build_gateway(config: Config, extra_plugins: Mapping[str, Any] | None = None) -> Gateway:
    """Compile a validated configuration; raise ConfigError listing every problem."""
    names = enabled_plugins(config)
    plugins, issues = load_plugins(names, extra_plugins)
    builder = ChainBuilder(plugins, base_dir=config.base_dir, source=config.source)

    global_where = {name: f"plugins.{name}" for name in config.plugins}
    global_chain = builder.build(
        {name: dict(table) for name, table in config.plugins.items()}, global_where
    ) if config.plugins else EMPTY_CHAIN

    upstreams = {name: Upstream(name, up) for name, up in config.upstreams.items()}
    router = Router(config.routes, ignore_case=config.gateway.path_case == "insensitive")
    for route in router.routes:
        settings = merge_route_settings(config, route.config.plugins)
        where = {
            name: (f"routes[{route.index}].plugins.{name}" if name in route.config.plugins
                   else f"plugins.{name}")
            for name in settings
        }
        chain = builder.build(settings, where) if settings else EMPTY_CHAIN
        upstream = None
        ref = route.config.upstream
        if ref is not None:
            if is_url(ref):
                if ref not in upstreams:
                    single = UpstreamConfig.model_validate({"targets": [ref]})
                    upstreams[ref] = Upstream(ref, single)
                upstream = upstreams[ref]
            else:
                upstream = upstreams[ref]
        aggregate = None
        if route.config.aggregate is not None:
            aggregate, found = compile_plan(route, lambda ref: _upstream_for(upstreams, ref))
            issues.extend(found)
        graphql = None
        if route.config.graphql is not None:
            from .graphql import compile_graphql  # graphql-core: ~15 MB, loaded when needed

            graphql, found = compile_graphql(
                route, route.config.graphql,
                str(config.resolve_path(route.config.graphql.schema_)),
                lambda ref: _upstream_for(upstreams, ref))
            issues.extend(found)
        route.payload = RoutePlan(chain=chain, upstream=upstream,
                                  preserve_host=route.config.preserve_host, aggregate=aggregate,
                                  graphql=graphql)
    issues.extend(_dedupe(builder.issues))
    if issues:
        raise ConfigError(config.source, issues)
    return Gateway(config, plugins, router, global_chain, upstreams)


def _upstream_for(upstreams: dict[str, Upstream], ref: str) -> Upstream:
    """The pool for an upstream name, or a single-target pool for a URL (made once)."""
    if ref not in upstreams and is_url(ref):
        upstreams[ref] = Upstream(ref, UpstreamConfig.model_validate({"targets": [ref]}))
    return upstreams[ref]


def _dedupe(items: list[Any]) -> list[Any]:
    seen = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
