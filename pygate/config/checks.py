"""Checks that span sections: unique names, route kinds, references, templates."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from pydantic import ValidationError

from .errors import ConfigIssue, suggest, validation_issues
from .models import Config, TargetConfig
from .traffic import traffic_issues, traffic_refs
from .values import split_listen


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def cross_check(config: Config) -> list[ConfigIssue]:
    """Checks that span sections: unique names, route kinds, references, templates;
    and the files upstreams' ``tls`` tables name (read, their paths made absolute)."""
    from ..upstream.tls import check_upstream_tls

    issues = check_routes(config, range(len(config.routes)), list(config.upstreams))
    return issues + check_upstream_tls(config)


_REWRITE_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_REWRITE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::path)?\}")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rewrite_issues(rewrite: str, params: list[str], where: str) -> list[ConfigIssue]:
    issues = []
    outside = _REWRITE_PLACEHOLDER.sub("", rewrite)
    if "{" in outside or "}" in outside:
        issues.append(ConfigIssue(where, f"unbalanced braces in {rewrite!r}"))
    for placeholder in _REWRITE_PLACEHOLDER.findall(rewrite):
        found = _REWRITE_PARAM.fullmatch(placeholder)
        if found is None:
            issues.append(ConfigIssue(where, "expected a parameter like {id} or {rest:path}, "
                                      f"found {placeholder!r}"))
        elif found.group(1) not in params:
            name = found.group(1)
            issues.append(ConfigIssue(where, f"unknown path parameter {{{name}}}"
                                      f"{suggest(name, params)}"))
    return issues


def check_routes(config: Config, indices: Iterable[int],
                 upstream_names: list[str]) -> list[ConfigIssue]:
    """:func:`cross_check` with the file's index of each route and every upstream name."""
    from ..kinds import KINDS
    from ..router import TemplateError, compile_path

    issues: list[ConfigIssue] = []
    seen: dict[str, int] = {}

    def check_upstream_ref(ref: str, loc: str) -> None:
        if is_url(ref):
            try:
                TargetConfig(url=ref)
            except ValidationError as exc:
                issues.append(ConfigIssue(loc, validation_issues(exc, TargetConfig)[0].message))
        elif ref not in upstream_names:
            hint = suggest(ref, upstream_names) or (
                f"; defined upstreams: {', '.join(upstream_names)}" if upstream_names
                else "; no [upstreams] are defined (or give a URL)")
            issues.append(ConfigIssue(loc, f"unknown upstream {ref!r}{hint}"))

    if config.admin is not None and not (config.admin.token or "").strip():
        host, _ = split_listen(config.admin.listen)
        if not _is_loopback(host):
            issues.append(ConfigIssue("admin.token", "required (and not empty) when "
                                      "admin.listen is not a loopback address"))
    gateway = config.gateway
    if gateway.redirect_http is not None and gateway.tls is None:
        issues.append(ConfigIssue("gateway.redirect_http", "needs [gateway.tls] (it redirects "
                                  "to the https URL of gateway.listen)"))
    tls = gateway.tls
    if tls is not None and tls.client_cert == "required" and tls.client_ca is None:
        issues.append(ConfigIssue("gateway.tls.client_cert", '"required" needs '
                                  "gateway.tls.client_ca (the CA that verifies client "
                                  "certificates)"))

    for index, route in zip(indices, config.routes, strict=True):
        where = f"routes[{index}]"
        if route.name in seen:
            issues.append(ConfigIssue(f"{where}.name", f"duplicate route name {route.name!r} "
                                      f"(also routes[{seen[route.name]}])"))
        else:
            seen[route.name] = index
        present = [(key, kind, spec) for key, kind in KINDS.items()
                   if (spec := getattr(route, key)) is not None]
        if len(present) != 1:
            found = ", ".join(key for key, _, _ in present) or "none"
            keys = list(KINDS)
            issues.append(ConfigIssue(where, "a route needs exactly one of "
                                      f"{', '.join(keys[:-1])} or {keys[-1]} (found {found})"))
        try:
            compiled = compile_path(route.path)
        except TemplateError as exc:
            issues.append(ConfigIssue(f"{where}.path", str(exc)))
            compiled = None
        if route.rewrite is not None and compiled is not None:
            issues.extend(_rewrite_issues(route.rewrite, compiled.params, f"{where}.rewrite"))
        for _, kind, spec in present:
            for ref, below in kind.upstream_refs(spec):
                check_upstream_ref(ref, f"{where}.{below}")
        for ref, below in traffic_refs(route):  # [routes.canary], [routes.mirror]
            check_upstream_ref(ref, f"{where}.{below}")
        issues.extend(traffic_issues(route, where))
        for host in route.hosts or []:
            # no port: hosts are matched against the Host header without its port
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
                issues.append(ConfigIssue(f"{where}.hosts",
                                          f'expected host names like "api.example.com" or '
                                          f'"*.example.com" (without a port), found {host!r}'))
    return issues
