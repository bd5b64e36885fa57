"""What the admin endpoints show of one gateway: routes, plugins, upstreams, metrics,
and the cache purge. Plain data (JSON-ready), read from a running :class:`Gateway`."""

from __future__ import annotations

import inspect
import json
from typing import Any

from ..app import Gateway
from ..errors import BadRequest, GatewayError, NotFound, ServiceUnavailable
from ..kinds import kind_of
from ..plugins import config_for_display, describe_installed
from ..upstream.health import CLOSED, HALF_OPEN, OPEN


def _plain(value: Any) -> Any:
    """A plugin config as JSON data, secrets masked as ``pygate explain`` shows them."""
    return json.loads(json.dumps(config_for_display(value), default=str))


def route_table(gateway: Gateway) -> list[dict[str, Any]]:
    """The routes in match order: what ``pygate routes`` prints, as data."""
    rows = []
    for order, route in enumerate(gateway.router.routes):
        cfg = route.config
        plan = gateway.plan(route)
        found = kind_of(cfg)
        rows.append({
            "order": order,
            "name": cfg.name,
            "kind": plan.kind,
            "path": cfg.path,
            "methods": cfg.methods,
            "hosts": cfg.hosts,
            "headers": cfg.headers,
            "target": found[0].target(found[1]) if found is not None else None,
            "canary": ({"upstream": cfg.canary.upstream, "weight": cfg.canary.weight,
                        "sticky": cfg.canary.sticky} if cfg.canary is not None else None),
            "mirror": ({"upstream": cfg.mirror.upstream, "percent": cfg.mirror.percent}
                       if cfg.mirror is not None else None),
            "plugins": list(plan.chain.plugins),
        })
    return rows


def traffic_note(row: dict[str, Any]) -> str:
    """A route row's canary and mirror as ``pygate routes`` shows them after its target."""
    parts = []
    if row["canary"] is not None:
        parts.append(f"canary {row['canary']['upstream']} {row['canary']['weight']:g}%")
    if row["mirror"] is not None:
        parts.append(f"mirror {row['mirror']['upstream']} {row['mirror']['percent']:g}%")
    return f" ({', '.join(parts)})" if parts else ""


def plugin_table(gateway: Gateway) -> dict[str, Any]:
    """Installed plugins, and those this configuration turns on with each route's
    effective config (secrets masked)."""
    enabled = []
    for name, info in gateway.plugins.info.items():
        configs = gateway.global_chain.configs
        enabled.append({
            "name": name,
            "version": info.version,
            "distribution": info.distribution,
            "priority": info.priority,
            "hooks": info.hooks,
            "global": _plain(configs[name]) if name in configs else None,
            "routes": {route.name: _plain(gateway.plan(route).chain.configs[name])
                       for route in gateway.router.routes
                       if name in gateway.plan(route).chain.configs},
        })
    return {"installed": describe_installed(), "enabled": enabled}


def upstream_table(gateway: Gateway) -> list[dict[str, Any]]:
    """Each upstream and its targets' state in this process; for an upstream that routes
    mirror to, ``mirror``: its copies' counts (:meth:`pygate.mirror.Copies.describe`)."""
    return [
        {"name": name, "balancer": up.config.balancer,
         "health_checks": up.config.health is not None,
         "breaker_enabled": up.config.breaker is not None,
         "targets": up.describe(),
         **({"mirror": up.mirrored.describe()} if up.mirrored is not None else {})}
        for name, up in gateway.upstreams.items()
    ]


_SEVERITY = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


def merge_upstreams(answers: list[tuple[int, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Every worker's upstream tables as one: per target, ``active`` added up,
    ``healthy`` only if every worker finds it healthy, ``breaker`` the worst state
    (open, half-open, closed), and ``workers``: each worker's own view; the ``mirror``
    counts added up."""
    merged: dict[str, dict[str, Any]] = {}
    for worker, table in answers:
        for upstream in table:
            into = merged.setdefault(upstream["name"], {
                **{k: v for k, v in upstream.items() if k not in ("targets", "mirror")},
                "targets": {}})
            if "mirror" in upstream:
                counts = into.setdefault("mirror", {})
                for key, count in upstream["mirror"].items():
                    counts[key] = counts.get(key, 0) + count
            for target in upstream["targets"]:
                row = into["targets"].setdefault(target["target"], {
                    "target": target["target"], "weight": target["weight"], "healthy": True,
                    "breaker": CLOSED, "active": 0, "workers": []})
                row["healthy"] = row["healthy"] and target["healthy"]
                if _SEVERITY.get(target["breaker"], 0) > _SEVERITY.get(row["breaker"], 0):
                    row["breaker"] = target["breaker"]
                row["active"] += target["active"]
                row["workers"].append({"worker": worker, "healthy": target["healthy"],
                                       "breaker": target["breaker"], "active": target["active"]})
    return [{**up, "targets": list(up["targets"].values())} for up in merged.values()]


async def purge_cache(gateway: Gateway, prefix: str | None, route: str | None) -> int:
    """Purge the cache plugin's stores (memory and Redis) through its ``purge``; how many
    entries went.

    :param prefix: a path prefix (``/api/x``: that path and every path below it,
        whole segments as routes match; ``/api/x/``: below it only); ``None``: all.
    :param route: only this route's entries.
    :raise GatewayError: 404 when the plugin is not enabled (or ``route`` does not use
        it), 400 for a prefix that is not a path, 503 when a Redis store did not answer.
    """
    info = gateway.plugins.info.get("cache")
    if info is None:
        raise NotFound("the cache plugin is not enabled")
    module = info.obj
    if prefix is not None and not prefix.startswith("/"):
        raise BadRequest(f"prefix: expected a path starting with '/', found {prefix!r}")
    routes = [r.name for r in gateway.router.routes if "cache" in gateway.plan(r).chain.plugins]
    if route is not None:
        if route not in routes:
            raise NotFound(f"no route named {route!r} uses the cache plugin")
        routes = [route]
    prefixes: list[str] = []
    if prefix is None and route is None:
        prefixes.append("")
    for name in routes:
        if prefix is None:
            prefixes.append(module.route_prefix(name))
            continue
        exact = module.cache_key(name, prefix, "")  # "ROUTE:PATH?": every query of PATH
        prefixes.append(exact[:-1] if prefix.endswith("/") else exact)
        if not prefix.endswith("/"):
            prefixes.append(exact[:-1] + "/")  # the paths below it
    backend_error = getattr(module, "BackendError", ())
    removed = 0
    try:
        for key_prefix in dict.fromkeys(prefixes):
            removed += int(await module.purge(gateway.facade, key_prefix))
    except backend_error as exc:
        raise ServiceUnavailable(f"a cache store did not answer: {exc}",
                                 extra={"removed": removed}) from None
    return removed


async def render_metrics(gateway: Gateway) -> tuple[bytes, str]:
    """The ``prometheus`` plugin's ``render(gateway)``: (body, content type).

    :raise GatewayError: 404 when the plugin is not enabled.
    """
    info = gateway.plugins.info.get("prometheus")
    if info is None:
        raise NotFound("the prometheus plugin is not enabled")
    render = getattr(info.obj, "render", None)
    if not callable(render):
        raise GatewayError("the prometheus plugin has no render(gateway) function", status=501)
    result = render(gateway.facade)
    if inspect.isawaitable(result):
        result = await result
    body, content_type = result
    return (body.encode() if isinstance(body, str) else bytes(body)), str(content_type)


__all__ = [
    "merge_upstreams",
    "plugin_table",
    "purge_cache",
    "render_metrics",
    "route_table",
    "traffic_note",
    "upstream_table",
]
