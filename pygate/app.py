"""The gateway object: configuration compiled into a router, chains and upstreams.

:func:`build_gateway` does all the work that can be done before a port is
bound (plugin loading, plugin config validation, route compilation), raising a
:class:`ConfigError` that lists every problem. :meth:`Gateway.start` and
:meth:`Gateway.stop` open and close what lives with the running server
(upstream pools, the shared client session, plugin startup/shutdown).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from .chain import EMPTY_CHAIN, Chain
from .config import (
    Config,
    ConfigError,
    UpstreamConfig,
    interpolate,
    is_url,
    load_data,
    parse_toml,
)
from .config.errors import in_file_order
from .kinds import Build, Handler, kind_of
from .plugin import Gateway as PluginGateway
from .plugins import (
    ChainBuilder,
    PluginSet,
    check_plugin_tables,
    enabled_plugins,
    load_plugins,
)
from .plugins import route_settings as merge_route_settings
from .router import Route, Router
from .sanitize import ForwardedRule
from .tls import ListenerTls, listener_tls
from .upstream import Upstream

log = structlog.get_logger("pygate")


@dataclass
class RoutePlan:
    """What the gateway attaches to a compiled route: its chain, and its kind's handler."""

    chain: Chain
    kind: str  # the route's key: "upstream", "aggregate", "graphql" (pygate.kinds.KINDS)
    handler: Handler


class Gateway:
    """One configured gateway: the request pipeline's view of the configuration."""

    def __init__(self, config: Config, plugins: PluginSet, router: Router,
                 global_chain: Chain, upstreams: dict[str, Upstream],
                 tls: ListenerTls | None = None) -> None:
        self.config = config
        self.plugins = plugins
        self.router = router
        self.global_chain = global_chain
        self.upstreams = upstreams
        # [gateway.tls]: the listener's certificates (contexts built at load), HSTS.
        self.tls = tls
        self.forwarded = ForwardedRule(config.gateway.trusted_networks())
        self.max_body = config.gateway.max_body
        self.drop_underscores = config.gateway.underscore_headers == "drop"
        self.reject_underscores = config.gateway.underscore_headers == "reject"
        self.timeout = config.gateway.timeout
        # The core's own objects (open WebSockets...); plugins keep theirs in
        # ``facade.state(NAME)``.
        self.state: dict[str, Any] = {}
        self.client: aiohttp.ClientSession | None = None
        # Set by the server that runs it (pygate.server.Running), shown to plugins by the
        # facade: the configuration's number (1 at start, one more per reload), and how
        # many requests the process is handling.
        self.generation: int | None = None
        self.in_flight: Callable[[], int] | None = None
        # Called when a drain starts (SIGTERM): long-lived exchanges close politely.
        self.on_drain: list[Callable[[], Awaitable[None]]] = []
        self._started: list[str] = []
        # This gateway as plugins see it: handed to startup/shutdown, and set on every
        # request as ``ctx.gateway`` (pygate.plugin is the whole plugin API).
        self.facade = PluginGateway(self, plugins.info)

    async def start(self) -> None:
        """Open upstream pools and the shared client, then run plugin ``startup`` hooks."""
        # The one aiohttp session of this gateway: plugins' HTTP calls and WebSocket
        # handshakes (upstream HTTP goes through pygate.upstream.client). No cookie jar:
        # a cookie one upstream sets must never ride on another caller's request.
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                            cookie_jar=aiohttp.DummyCookieJar())
        for upstream in self.upstreams.values():
            await upstream.start()
        for name in self.plugins.info:
            impl = self.plugins.impl(name, "startup")
            if impl is not None:
                config = self.global_chain.configs.get(name)
                result = impl.function(**self._lifecycle_args(name, "startup", impl,
                                                              config=config))
                if inspect.isawaitable(result):
                    await result
            self._started.append(name)

    async def stop(self) -> None:
        """Run plugin ``shutdown`` hooks in reverse order, each followed by the release
        of what the plugin took with ``gateway.shared`` and the emptying of its
        ``gateway.state``; then close pools."""
        for name in reversed(self._started):
            impl = self.plugins.impl(name, "shutdown")
            if impl is not None:
                try:
                    result = impl.function(**self._lifecycle_args(name, "shutdown", impl))
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("plugin shutdown failed", plugin=name)
            await self.facade._retire(name)
        self._started.clear()
        await self.facade._retire()  # and what a plugin whose startup failed had taken
        for upstream in self.upstreams.values():
            await upstream.close()
        if self.client is not None:
            await self.client.close()
            self.client = None

    def _lifecycle_args(self, plugin: str, hook: str, impl: Any,
                        **extra: Any) -> dict[str, Any]:
        """The keyword arguments ``impl`` names: ``gateway`` (the facade), and ``app``
        (this object, deprecated since plugin API 1.0) for plugins that still name it."""
        if "app" in impl.argnames:
            self._warn_app_argument(plugin, hook, impl.function)
        return _pick(impl.argnames, gateway=self.facade, app=self, **extra)

    @staticmethod
    def _warn_app_argument(plugin: str, hook: str, function: Any) -> None:
        """A DeprecationWarning pointing at the plugin's hook, and a log line for operators
        (Python hides DeprecationWarnings outside ``__main__`` and tests)."""
        message = (f"plugin {plugin!r}: the 'app' argument of {hook}() is deprecated since "
                   f"pygate plugin API 1.0 and goes in 2.0; name it 'gateway' (a "
                   f"pygate.plugin.Gateway: configs(), client, state(), shared())")
        code = getattr(function, "__code__", None)
        if code is None:
            warnings.warn(message, DeprecationWarning, stacklevel=4)
        else:
            warnings.warn_explicit(message, DeprecationWarning, code.co_filename,
                                   code.co_firstlineno,
                                   module=getattr(function, "__module__", None))
        log.warning("deprecated plugin API", plugin=plugin, hook=hook, argument="app",
                    use="gateway")

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
    plugins, issues = load_plugins(names, extra_plugins, names)
    builder = ChainBuilder(plugins, base_dir=config.base_dir, source=config.source)

    global_where = {name: f"plugins.{name}" for name in config.plugins}
    global_chain = builder.build(
        {name: dict(table) for name, table in config.plugins.items()}, global_where
    ) if config.plugins else EMPTY_CHAIN

    upstreams = {name: Upstream(name, up, config.base_dir)
                 for name, up in config.upstreams.items()}
    build = Build(config, lambda ref: _upstream_for(upstreams, ref))
    router = Router(config.routes, ignore_case=config.gateway.path_case == "insensitive")
    for route in router.routes:
        settings = merge_route_settings(config, route.config.plugins)
        where = {
            name: (f"routes[{route.index}].plugins.{name}" if name in route.config.plugins
                   else f"plugins.{name}")
            for name in settings
        }
        chain = builder.build(settings, where, own=route.config.plugins) \
            if settings else EMPTY_CHAIN
        found = kind_of(route.config)
        assert found is not None, "configuration checks let a route without one kind through"
        kind, spec = found
        handler, kind_issues = kind.compile(route, spec, build)
        issues.extend(kind_issues)
        if handler is not None:
            route.payload = RoutePlan(chain=chain, kind=kind.key, handler=handler)
    issues.extend(_dedupe(builder.issues))
    tls, tls_issues = listener_tls(config)
    issues.extend(tls_issues)
    if issues:
        raise ConfigError(config.source, issues)
    return Gateway(config, plugins, router, global_chain, upstreams, tls=tls)


def load_gateway(path: str | Path, env: Mapping[str, str] | None = None,
                 extra_plugins: Mapping[str, Any] | None = None) -> Gateway:
    """The configuration file ``path`` checked and compiled; or :class:`ConfigError` with
    every problem of the file at once, each once, in the order of the file.

    The core's sections are validated first; when they have errors, the plugin tables
    are still checked against the plugins' schemas (:func:`check_plugin_tables`), so
    one ``pygate check`` shows everything.
    """
    file = Path(path)
    data = parse_toml(file)
    source, base_dir = str(file), str(file.resolve().parent)
    try:
        config = load_data(data, source=source, base_dir=base_dir, env=env)
    except ConfigError as exc:
        expanded = interpolate(data, os.environ if env is None else env, [])
        issues = exc.issues + check_plugin_tables(expanded, base_dir=base_dir, source=source,
                                                  extra=extra_plugins)
        raise ConfigError(source, in_file_order(issues, data)) from None
    try:
        return build_gateway(config, extra_plugins)
    except ConfigError as exc:
        raise ConfigError(source, in_file_order(exc.issues, data)) from None


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
