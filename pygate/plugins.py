"""Plugin discovery, configuration and the per-route chains.

pluggy finds and validates the plugins (entry point group ``pygate``, hook
names checked by ``check_pending``); pygate dispatches through its own chains,
compiled once per route at configuration load: for each request hook, the
ordered implementations of the plugins enabled on that route, each bound to the
plugin's effective (validated) config and marked async or not, so the request
path calls functions directly with no registry look-ups.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from . import hookspecs
from .chain import Chain, Step, bind, response_limit
from .config import Config, ConfigIssue, suggest, validation_issues

ENTRY_POINT_GROUP = "pygate"


@dataclass
class PluginInfo:
    name: str
    obj: Any
    priority: int
    version: str | None
    distribution: str | None
    schema: type[BaseModel] | None
    hooks: list[str]


FIRST_PARTY = frozenset({
    "acl", "bff-shape", "cache", "cors", "headers", "jwt", "key-auth", "logging", "mtls",
    "oauth2-introspection", "opentelemetry", "prometheus", "rate-limit", "transform",
    "validate",
})
"""The plugins this project publishes (``plugins/NAME``, distribution ``pygate-NAME``)."""


def distribution_name(plugin: str) -> str:
    return f"pygate-{plugin}"


def not_installed(name: str, known: Iterable[str]) -> str:
    """Why a plugin named in the configuration is missing, and what to do about it: the
    installed name it may be a typo of, else the distribution that provides it when it is
    one of ours; never a made-up distribution name."""
    typo = suggest(name, known)
    if typo:
        return f"plugin {name!r} is not installed{typo}"
    if name in FIRST_PARTY:
        return f"plugin {name!r} is not installed (install it with: pip install " \
               f"{distribution_name(name)})"
    return f"plugin {name!r} is not installed (no installed distribution provides it; " \
           "`pygate plugins` lists those that are)"


def installed_entry_points() -> dict[str, metadata.EntryPoint]:
    """Entry points of group ``pygate`` (``PYGATE_DISABLE_PLUGIN_AUTOLOAD`` hides them)."""
    if os.environ.get("PYGATE_DISABLE_PLUGIN_AUTOLOAD"):
        return {}
    points = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    only = os.environ.get("PYGATE_LOAD_PLUGINS")
    if only is not None:
        allowed = {name.strip() for name in only.split(",") if name.strip()}
        points = {name: ep for name, ep in points.items() if name in allowed}
    return points


def _dist_of(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


class PluginSet:
    """The plugins one gateway uses: loaded, registered with pluggy, described."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("pygate")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}

    def add(self, name: str, obj: Any, *, version: str | None = None,
            distribution: str | None = None) -> PluginInfo:
        self.pm.register(obj, name=name)
        hooks = sorted(
            hook for hook in (*hookspecs.REQUEST_HOOKS, *hookspecs.LIFECYCLE_HOOKS)
            if self.impl(name, hook) is not None
        )
        schema: type[BaseModel] | None = None
        impl = self.impl(name, "config_schema")
        if impl is not None:
            schema = impl.function()  # type: ignore[assignment]
        info = PluginInfo(
            name=name,
            obj=obj,
            priority=int(getattr(obj, "PRIORITY", 0)),
            version=version or getattr(obj, "__version__", None),
            distribution=distribution,
            schema=schema,
            hooks=hooks,
        )
        self.info[name] = info
        return info

    def impl(self, plugin: str, hook: str) -> pluggy.HookImpl | None:
        """The plugin's implementation of ``hook``, if it has one."""
        caller = getattr(self.pm.hook, hook)
        for impl in caller.get_hookimpls():
            if impl.plugin_name == plugin:
                return impl
        return None

    def check(self) -> None:
        """Fail loudly when a plugin implements a hook name that does not exist."""
        self.pm.check_pending()


def load_plugins(names: Iterable[str], extra: Mapping[str, Any] | None = None,
                 where: Mapping[str, str] | None = None
                 ) -> tuple[PluginSet, list[ConfigIssue]]:
    """Load the named plugins from entry points (or from ``extra`` objects, for tests).

    :param where: the key path where each name is first written (``plugins.jwt``,
        ``routes[2].plugins.jwt``), for the issues; ``plugins.NAME`` by default.
    """
    where = where or {}
    plugins = PluginSet()
    issues: list[ConfigIssue] = []
    extra = dict(extra or {})
    points = installed_entry_points()
    for name in names:
        if name in plugins.info:
            continue
        if name in extra:
            plugins.add(name, extra[name], distribution="(in-process)")
            continue
        site = where.get(name, f"plugins.{name}")
        ep = points.get(name)
        if ep is None:
            issues.append(ConfigIssue(site, not_installed(name, sorted({*points, *extra}))))
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not crash the CLI
            issues.append(ConfigIssue(site, f"plugin {name!r} failed to import: "
                                      f"{type(exc).__name__}: {exc}"))
            continue
        dist, version = _dist_of(ep)
        plugins.add(name, obj, version=version, distribution=dist)
    try:
        plugins.check()
    except pluggy.PluginValidationError as exc:
        plugin_name = plugins.pm.get_name(exc.plugin) or "?"
        issues.append(ConfigIssue(f"plugins.{plugin_name}", f"invalid plugin: {exc}"))
    return plugins, issues


def describe_installed() -> list[dict[str, Any]]:
    """Every installed plugin: name, version, distribution, priority, hooks."""
    points = installed_entry_points()
    out: list[dict[str, Any]] = []
    for name in sorted(points):
        plugins, issues = load_plugins([name])
        if issues:
            out.append({"name": name, "error": issues[0].message})
            continue
        info = plugins.info[name]
        out.append({
            "name": name,
            "version": info.version,
            "distribution": info.distribution,
            "priority": info.priority,
            "hooks": info.hooks,
        })
    return out


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def enabled_plugins(config: Config) -> dict[str, str]:
    """Every plugin name the configuration turns on somewhere, in first-seen order, with
    the key path where it is first written."""
    names = {name: f"plugins.{name}" for name in config.plugins}
    for index, route in enumerate(config.routes):
        for name, setting in route.plugins.items():
            if setting is not False and name not in names:
                names[name] = f"routes[{index}].plugins.{name}"
    return names


def check_plugin_tables(data: Any, *, base_dir: str = ".", source: str = "<config>",
                        extra: Mapping[str, Any] | None = None) -> list[ConfigIssue]:
    """The plugin tables of a parsed (and interpolated) file whose core sections do not
    validate: checked as :func:`pygate.app.build_gateway` checks them, so that one run
    reports every error. Values of the wrong shape are left to the core's validation."""
    if not isinstance(data, dict):
        return []
    tables = data.get("plugins")
    tables = {k: v for k, v in tables.items() if isinstance(v, dict)} \
        if isinstance(tables, dict) else {}
    found = data.get("routes")
    routes: list[Any] = found if isinstance(found, list) else []
    sites = {name: f"plugins.{name}" for name in tables}
    overrides: list[tuple[int, dict[str, Any]]] = []
    for index, route in enumerate(routes):
        own = route.get("plugins") if isinstance(route, dict) else None
        if not isinstance(own, dict):
            continue
        overrides.append((index, own))
        for name, setting in own.items():
            if isinstance(setting, dict | bool) and setting is not False:
                sites.setdefault(name, f"routes[{index}].plugins.{name}")
    plugins, issues = load_plugins(sites, extra, sites)
    builder = ChainBuilder(plugins, base_dir=base_dir, source=source)
    for name, table in tables.items():
        if name in plugins.info:
            builder.validate(name, table, f"plugins.{name}")
    for index, own in overrides:
        for name, setting in own.items():
            if isinstance(setting, dict) and name in plugins.info:
                builder.validate(name, _merge(tables.get(name, {}), setting),
                                 f"routes[{index}].plugins.{name}", own=setting)
    return issues + builder.issues


def route_settings(config: Config, route_plugins: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Plugin name -> raw merged settings for one route (global table, then the route's)."""
    settings: dict[str, dict[str, Any]] = {
        name: dict(table) for name, table in config.plugins.items()
    }
    for name, setting in route_plugins.items():
        if setting is False:
            settings.pop(name, None)
        elif setting is True:
            settings.setdefault(name, {})
        else:
            settings[name] = _merge(settings.get(name, {}), setting)
    return settings


RESPONSE_SIDE = frozenset({"transform_response", "post_response"})
"""Hooks that run in reverse priority order."""


class ChainBuilder:
    """Validates plugin settings and compiles chains.

    Identical effective settings of one plugin (the global table on every route
    that does not override it) are validated once and share one config object,
    so a plugin that derives state from its config (parsed keys, a key index)
    builds it once per distinct config.

    Schemas are validated with the context ``{"base_dir": ..., "source": ...}``
    (read it in a validator through ``info.context``) so that plugins resolve
    relative file paths against the configuration file's folder.
    """

    def __init__(self, plugins: PluginSet, *, base_dir: str = ".",
                 source: str = "<config>") -> None:
        self.plugins = plugins
        self.issues: list[ConfigIssue] = []
        self.context = {"base_dir": base_dir, "source": source}
        self._seen: dict[tuple[str, str], Any] = {}
        # per plugin: the key paths (relative) of the global table's problems
        self._global_issues: dict[str, set[str]] = {}
        self._impls: dict[str, list[tuple[str, Callable[..., Any], bool, tuple[str, ...]]]] = {}

    def validate(self, name: str, raw: dict[str, Any], where: str,
                 own: Mapping[str, Any] | None = None) -> Any:
        """``raw`` validated by the plugin's schema (None if invalid: the issues are
        noted). ``own`` is the route's own table when ``raw`` merges it over the global
        one: a problem of a key the route does not set is the global table's, reported
        once, at ``plugins.NAME``, not again for every route."""
        info = self.plugins.info[name]
        if info.schema is None:
            return raw
        key = (name, json.dumps(raw, sort_keys=True, default=str))
        if key in self._seen:
            return self._seen[key]
        try:
            config = info.schema.model_validate(raw, context=self.context)
        except ValidationError as exc:
            global_issues = self._global_issues.setdefault(name, set())
            for issue in validation_issues(exc, info.schema):
                if own is None:
                    global_issues.add(issue.path)
                else:
                    first = issue.path.split(".", 1)[0].split("[", 1)[0]
                    if issue.path in global_issues and first not in own:
                        continue
                path = f"{where}.{issue.path}" if issue.path else where
                self.issues.append(ConfigIssue(path, issue.message))
            config = None
        self._seen[key] = config
        return config

    def _implementations(self, name: str
                         ) -> list[tuple[str, Callable[..., Any], bool, tuple[str, ...]]]:
        """``(hook, call, is_async, argnames)`` of each request hook the plugin implements
        (``call`` takes the hook's full arguments: :func:`pygate.chain.bind`;
        ``argnames`` are the ones the implementation names): looked up once per plugin,
        not once per route."""
        found = self._impls.get(name)
        if found is None:
            found = []
            for hook in hookspecs.REQUEST_HOOKS:
                impl = self.plugins.impl(name, hook)
                if impl is None:
                    continue
                full = hookspecs.HOOK_ARGS[hook]
                argnames = tuple(impl.argnames)
                args = None if argnames == full else tuple(full.index(a) for a in argnames)
                found.append((hook, bind(impl.function, args),
                              inspect.iscoroutinefunction(impl.function), argnames))
            self._impls[name] = found
        return found

    def build(self, settings: Mapping[str, dict[str, Any]], where: Mapping[str, str],
              own: Mapping[str, Any] | None = None) -> Chain:
        """A chain for one route from its merged settings; ``where`` gives key paths,
        ``own`` the route's own ``plugins`` table (see :meth:`validate`)."""
        configs: dict[str, Any] = {}
        for name, raw in settings.items():
            if name not in self.plugins.info:
                continue  # already reported as not installed
            table = own.get(name) if own is not None else None
            configs[name] = self.validate(name, raw, where[name],
                                          own=table if isinstance(table, dict) else None)
        ordered = sorted(configs, key=lambda n: (-self.plugins.info[n].priority, n))
        steps: dict[str, list[Step]] = {hook: [] for hook in hookspecs.REQUEST_HOOKS}
        log_record = False
        for name in ordered:
            for hook, call, is_async, argnames in self._implementations(name):
                limit = response_limit(configs[name]) if hook == "transform_response" else 0
                steps[hook].append(Step(plugin=name, call=call, is_async=is_async,
                                        config=configs[name], limit=limit))
                log_record = log_record or (hook == "log" and "record" in argnames)
        # the response side runs in reverse priority order (Envoy's encoder side)
        phases = {hook: tuple(reversed(found) if hook in RESPONSE_SIDE else found)
                  for hook, found in steps.items()}
        buffer = max((step.limit for step in phases["transform_response"]), default=0)
        return Chain(plugins=tuple(ordered), configs=configs, log_record=log_record,
                     response_buffer=buffer, **phases)


def config_for_display(value: Any) -> Any:
    """A plugin config as plain data, for ``pygate explain``."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value
