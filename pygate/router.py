"""The route table: compiled once at load, matched per request, explained on demand.

Pure: no I/O, no aiohttp. Paths given to :meth:`Router.match` are already
normalized by :mod:`pygate.sanitize` (decoded once, dot-segments resolved).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .config import RouteConfig

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}$")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class CompiledPath:
    """A route path: a prefix (``/api/users``) or a template (``/users/{id}``)."""

    source: str
    is_template: bool
    literal_count: int
    params: list[str]
    path_params: frozenset[str]
    prefix: str  # literal segments before the first parameter, "" for "/"
    regex: re.Pattern[str] | None  # templates; and prefixes matched ignoring case

    def match(self, path: str) -> dict[str, str] | None:
        """Params when ``path`` matches (on whole segments), else ``None``."""
        if self.regex is None:
            prefix = self.prefix
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return {}
            return None
        found = self.regex.match(path)
        if found is None:
            return None
        return {k: (v or "") for k, v in found.groupdict().items()}


def compile_path(path: str, *, ignore_case: bool = False) -> CompiledPath:
    """Compile a route path; raise TemplateError naming what is wrong.

    With ``ignore_case`` (``gateway.path_case = "insensitive"``) the literal
    segments match in any case; parameters keep the case the client sent.
    Python's case-insensitive matching folds one character to one character,
    so a matched prefix has the length of the route's own.
    """
    if not path.startswith("/"):
        raise TemplateError(f"expected a path starting with '/', found {path!r}")
    segments = [s for s in path.strip("/").split("/") if s] if path.strip("/") else []
    if any(s in (".", "..") for s in segments):
        raise TemplateError(f"dot-segments are not allowed in a route path, found {path!r}")
    params: list[str] = []
    path_params: set[str] = set()
    pattern = ""
    literal_count = 0
    prefix_parts: list[str] = []
    for index, segment in enumerate(segments):
        if "{" in segment or "}" in segment:
            found = _PARAM.match(segment)
            if found is None:
                raise TemplateError(
                    f"a parameter must be a whole segment like {{id}} or {{rest:path}}, "
                    f"found {segment!r}")
            name = found.group(1)
            if name in params:
                raise TemplateError(f"parameter {{{name}}} appears twice")
            params.append(name)
            if found.group(2):
                if index != len(segments) - 1:
                    raise TemplateError(f"{{{name}:path}} must be the last segment")
                path_params.add(name)
                pattern += f"(?:/(?P<{name}>.*))?"
            else:
                pattern += f"/(?P<{name}>[^/]+)"
        else:
            literal_count += 1
            if not params:
                prefix_parts.append(segment)
            pattern += "/" + re.escape(segment)
    prefix = "/" + "/".join(prefix_parts) if prefix_parts else ""
    flags = re.IGNORECASE if ignore_case else 0
    if not params:
        regex = re.compile(re.escape(prefix) + r"(?=/|\Z)", flags) if ignore_case and prefix \
            else None
        return CompiledPath(path, False, literal_count, [], frozenset(), prefix, regex)
    regex = re.compile(pattern + ("" if path_params else "/?") + r"\Z", flags)
    return CompiledPath(path, True, literal_count, params, frozenset(path_params), prefix, regex)


def _host_matcher(hosts: Sequence[str] | None) -> Callable[[str], bool] | None:
    if not hosts:
        return None
    exact = frozenset(h.lower() for h in hosts if not h.startswith("*."))
    suffixes = tuple(h[1:].lower() for h in hosts if h.startswith("*."))

    def match(host: str) -> bool:
        return host in exact or (bool(suffixes) and host.endswith(suffixes))

    return match


@dataclass
class Route:
    """A compiled route. ``payload`` holds what the gateway attaches (chain, upstream)."""

    index: int
    config: RouteConfig
    path: CompiledPath
    methods: frozenset[str] | None
    host_match: Callable[[str], bool] | None
    headers: tuple[tuple[str, str], ...]
    payload: Any = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.config.name

    @property
    def constraints(self) -> int:
        return (self.methods is not None) + (self.host_match is not None) + len(self.headers)

    def sort_key(self) -> tuple[int, int, int, int]:
        return (-self.path.literal_count, 0 if self.path.is_template else 1,
                -self.constraints, self.index)

    def upstream_path(self, path: str, encoded: str, params: Mapping[str, str]) -> str:
        """The path sent upstream (percent-encoded).

        A template route's ``rewrite`` is rendered from the params; a prefix
        route's ``rewrite`` replaces the matched prefix. Otherwise ``strip_path``
        removes the literal prefix (for templates: the literal segments before
        the first parameter), or the path goes as it is.
        """
        config = self.config
        if config.rewrite is not None and self.path.is_template:
            return _render(config.rewrite, params, self.path.path_params)
        if config.rewrite is None and (not config.strip_path or not self.path.prefix):
            return encoded
        rest = path[len(self.path.prefix):]
        if encoded is not path:
            rest = quote(rest, safe=_PATH_SAFE)
        if config.rewrite is not None:
            # a prefix route's rewrite replaces the matched prefix
            return config.rewrite.rstrip("/") + rest or "/"
        return rest or "/"


_PATH_SAFE = "/!$&'()*+,;=:@~"


def _render(template: str, params: Mapping[str, str], path_params: frozenset[str]) -> str:
    def sub(found: re.Match[str]) -> str:
        name = found.group(1)
        value = params.get(name, "")
        return quote(value, safe=_PATH_SAFE if name in path_params else _PATH_SAFE[1:])

    out = re.sub(r"\{([^}:]+)(?::path)?\}", sub, template)
    return out.replace("//", "/") if "//" in out else out


@dataclass
class Match:
    route: Route | None
    params: dict[str, str] = field(default_factory=dict)
    allowed: frozenset[str] = frozenset()  # methods of routes that matched all but the method

    @property
    def status(self) -> int:
        if self.route is not None:
            return 200
        return 405 if self.allowed else 404


class Router:
    """Routes in match order (PRODUCT.md section 3)."""

    def __init__(self, routes: Sequence[RouteConfig], *, ignore_case: bool = False) -> None:
        compiled = []
        for index, config in enumerate(routes):
            compiled.append(Route(
                index=index,
                config=config,
                path=compile_path(config.path, ignore_case=ignore_case),
                methods=frozenset(config.methods) if config.methods else None,
                host_match=_host_matcher(config.hosts),
                headers=tuple((k, v) for k, v in (config.headers or {}).items()),
            ))
        self.routes: list[Route] = sorted(compiled, key=Route.sort_key)

    def match(self, method: str, path: str, host: str,
              headers: Mapping[str, str]) -> Match:
        """The first route matching every constraint; 405 data when only methods differ."""
        allowed: set[str] = set()
        for route in self.routes:
            params = route.path.match(path)
            if params is None:
                continue
            if route.host_match is not None and not route.host_match(host):
                continue
            if route.headers and any(headers.get(k) != v for k, v in route.headers):
                continue
            if route.methods is not None and method not in route.methods:
                allowed.update(route.methods)
                continue
            return Match(route, params)
        return Match(None, allowed=frozenset(allowed))

    def lookup(self, path: str, host: str, headers: Mapping[str, str]) -> Route | None:
        """The first route matching path, host and headers, whatever the method."""
        for route in self.routes:
            if route.path.match(path) is None:
                continue
            if route.host_match is not None and not route.host_match(host):
                continue
            if route.headers and any(headers.get(k) != v for k, v in route.headers):
                continue
            return route
        return None

    def explain(self, method: str, path: str, host: str,
                headers: Mapping[str, str]) -> tuple[Match, list[str]]:
        """The match plus one line per route considered, saying why it did or did not match."""
        lines = []
        for route in self.routes:
            label = f"routes[{route.index}] {route.name!r} ({route.config.path})"
            params = route.path.match(path)
            if params is None:
                kind = "template" if route.path.is_template else "prefix"
                lines.append(f"{label}: path {path} does not match the {kind}")
                continue
            if route.host_match is not None and not route.host_match(host):
                lines.append(f"{label}: host {host!r} not in {route.config.hosts}")
                continue
            missing = [f"{k}: {v}" for k, v in route.headers if headers.get(k) != v]
            if missing:
                lines.append(f"{label}: header {missing[0]!r} not present")
                continue
            if route.methods is not None and method not in route.methods:
                lines.append(f"{label}: method {method} not in {sorted(route.methods)}")
                continue
            why = ["path"]
            if route.path.params:
                why.append("params " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
            if route.methods is not None:
                why.append(f"method {method}")
            if route.host_match is not None:
                why.append(f"host {host}")
            if route.headers:
                why.append("headers " + ", ".join(f"{k}: {v}" for k, v in route.headers))
            lines.append(f"{label}: MATCH on {', '.join(why)}")
            return Match(route, params), lines
        return self.match(method, path, host, headers), lines
