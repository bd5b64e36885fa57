"""The route table: compiled once at load, matched per request, explained on demand.

Pure: no I/O, no aiohttp. Paths given to :meth:`Router.match` are already
normalized by :mod:`pygate.sanitize` (decoded once, dot-segments resolved).

The table is compiled into a segment trie: from a node, a literal segment leads
to one child (a dict lookup), any non-empty segment to the node's ``{param}``
child, and a ``{name:path}`` route at a node takes whatever is left. A request
walks the trie once, gathering the routes whose path matches at the nodes it
reaches; hosts, headers and methods are then checked among those only, in match
order. So the cost of a match grows with the depth of the path and the routes
sharing it, not with the size of the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote

from .config import RouteConfig

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}$")

# The non-ASCII characters that re.IGNORECASE equates with an ASCII letter
# (tests/test_router.py checks this against re over every code point).
_ASCII_TWINS = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


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
    segments: tuple[str, ...] = ()  # the path's segments, parameters as written ("{id}")
    ignore_case: bool = False

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        """Templates; and prefixes matched ignoring case. Built on first use: the router
        matches through its trie, this is for :meth:`match` alone."""
        flags = re.IGNORECASE if self.ignore_case else 0
        if not self.is_template:
            if not (self.ignore_case and self.prefix):
                return None
            return re.compile(re.escape(self.prefix) + r"(?=/|\Z)", flags)
        pattern = ""
        for segment in self.segments:
            found = _PARAM.match(segment)
            if found is None:
                pattern += "/" + re.escape(segment)
            elif found.group(2):
                pattern += f"(?:/(?P<{found.group(1)}>.*))?"  # the rest, newlines too
            else:
                pattern += f"/(?P<{found.group(1)}>[^/]+)"
        tail = "" if self.path_params else "/?"
        return re.compile(pattern + tail + r"\Z", flags | re.DOTALL)

    def match(self, path: str) -> dict[str, str] | None:
        """Params when ``path`` matches (on whole segments), else ``None``.

        This route alone, in a plain way; :class:`Router` matches the whole table
        through its trie, with the same result.
        """
        regex = self.regex
        if regex is None:
            prefix = self.prefix
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return {}
            return None
        found = regex.match(path)
        if found is None:
            return None
        return {k: (v or "") for k, v in found.groupdict().items()}


def compile_path(path: str, *, ignore_case: bool = False) -> CompiledPath:
    """Compile a route path; raise TemplateError naming what is wrong.

    With ``ignore_case`` (``gateway.path_case = "insensitive"``) the literal
    segments match in any case, as ``re.IGNORECASE`` compares them; parameters
    keep the case the client sent. That comparison takes one character for one
    character, so a matched prefix has the length of the route's own.
    """
    if not path.startswith("/"):
        raise TemplateError(f"expected a path starting with '/', found {path!r}")
    segments = [s for s in path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise TemplateError(f"dot-segments are not allowed in a route path, found {path!r}")
    params: list[str] = []
    path_params: set[str] = set()
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
        else:
            literal_count += 1
            if not params:
                prefix_parts.append(segment)
    prefix = "/" + "/".join(prefix_parts) if prefix_parts else ""
    return CompiledPath(path, bool(params), literal_count, params, frozenset(path_params),
                        prefix, tuple(segments), ignore_case)


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

    def accepts(self, host: str, headers: Mapping[str, str]) -> bool:
        """Whether the request's host and headers meet this route's (the method aside)."""
        if self.host_match is not None and not self.host_match(host):
            return False
        return not self.headers or all(headers.get(k) == v for k, v in self.headers)

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


# ---------------------------------------------------------------------------
# The trie

_Entry = tuple[int, Route]  # (position in match order, route)
_Candidate = tuple[int, Route, tuple[str, ...]]  # ... and the param values, in order


class _Node:
    """One segment position. Lists and the dict are made when something goes in."""

    __slots__ = ("children", "exotic", "param", "prefixes", "rest", "templates")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None  # literal segment (its key) -> node
        # ignoring case, literal segments with no ASCII key, each compared by itself
        self.exotic: list[tuple[re.Pattern[str], _Node]] | None = None
        self.param: _Node | None = None  # a {param} segment
        self.prefixes: list[_Candidate] | None = None  # prefix routes ending here
        self.templates: list[_Entry] | None = None  # templates whose last segment ends here
        self.rest: list[_Entry] | None = None  # templates whose {name:path} follows here


def _fold(segment: str) -> str | None:
    """The key of a segment ignoring case (as ``re.IGNORECASE`` compares), or None when
    no ASCII key has it: such a segment can only equal a segment kept in ``exotic``."""
    if not segment.isascii():
        segment = segment.translate(_ASCII_TWINS)
        if not segment.isascii():
            return None
    return segment.lower()


def _build(routes: Sequence[Route], ignore_case: bool) -> _Node:
    """The trie of ``routes`` (in match order): each route at the node its path ends on."""
    root = _Node()
    exotic: dict[tuple[int, str], _Node] = {}  # (id of the parent node, segment) -> node
    for rank, route in enumerate(routes):
        node = root
        entry = (rank, route)
        for segment in route.path.segments:
            if segment[0] == "{":
                if segment.endswith(":path}"):  # always the last segment
                    if node.rest is None:
                        node.rest = []
                    node.rest.append(entry)
                    break
                if node.param is None:
                    node.param = _Node()
                node = node.param
                continue
            key = _fold(segment) if ignore_case else segment
            if key is None:
                child = exotic.get((id(node), segment))
                if child is None:
                    child = exotic[(id(node), segment)] = _Node()
                    if node.exotic is None:
                        node.exotic = []
                    node.exotic.append((re.compile(re.escape(segment), re.IGNORECASE), child))
                node = child
                continue
            if node.children is None:
                node.children = {}
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node()
            node = child
        else:
            if route.path.is_template:
                if node.templates is None:
                    node.templates = []
                node.templates.append(entry)
            else:
                if node.prefixes is None:
                    node.prefixes = []
                node.prefixes.append((rank, route, ()))
    return root


def _rank(candidate: _Candidate) -> int:
    return candidate[0]


class Router:
    """Routes in match order (PRODUCT.md section 3), compiled into a segment trie."""

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
        self.ignore_case = ignore_case
        self._root = _build(self.routes, ignore_case)

    def _candidates(self, path: str) -> list[_Candidate]:
        """Every route whose path matches ``path``, in match order, with its param values.

        One walk down the trie: at each node reached, its prefix routes match, and so
        do its ``{name:path}`` routes (taking the rest); at the end of the path (or
        before a last empty segment, a trailing slash) its templates match. Each node
        is reached at most once, so no route appears twice.
        """
        segments = path.split("/")  # "/api/users" -> ["", "api", "users"]
        root = self._root
        if segments[0]:  # not a path: only "/" prefix routes take it
            return list(root.prefixes or ())
        found: list[_Candidate] = []
        ignore_case = self.ignore_case
        count = len(segments)
        pending: list[tuple[_Node, int, tuple[str, ...]]] = []  # branches still to walk
        node, i = root, 1
        values: tuple[str, ...] = ()
        while True:
            if node.prefixes is not None:
                found += node.prefixes
            if node.rest is not None:
                taken = (*values, "/".join(segments[i:]))
                found += [(rank, route, taken) for rank, route in node.rest]
            if i == count:
                if node.templates is not None:
                    found += [(rank, route, values) for rank, route in node.templates]
            else:
                segment = segments[i]
                if not segment and i == count - 1 and node.templates is not None:
                    found += [(rank, route, values) for rank, route in node.templates]
                if node.param is not None and segment:
                    pending.append((node.param, i + 1, (*values, segment)))
                if node.exotic is not None:
                    pending += [(child, i + 1, values) for pattern, child in node.exotic
                                if pattern.fullmatch(segment)]
                if node.children is not None:
                    key = _fold(segment) if ignore_case else segment
                    child = node.children.get(key) if key is not None else None
                    if child is not None:
                        node = child
                        i += 1
                        continue
            if not pending:
                break
            node, i, values = pending.pop()
        if len(found) > 1:
            found.sort(key=_rank)
        return found

    def match(self, method: str, path: str, host: str,
              headers: Mapping[str, str]) -> Match:
        """The first route matching every constraint; 405 data when only methods differ."""
        allowed: set[str] = set()
        for _, route, values in self._candidates(path):
            if route.host_match is not None and not route.host_match(host):
                continue
            if route.headers and any(headers.get(k) != v for k, v in route.headers):
                continue
            if route.methods is not None and method not in route.methods:
                allowed.update(route.methods)
                continue
            return Match(route, dict(zip(route.path.params, values, strict=True)) if values
                         else {})
        return Match(None, allowed=frozenset(allowed))

    def lookup(self, path: str, host: str, headers: Mapping[str, str]) -> Route | None:
        """The first route matching path, host and headers, whatever the method."""
        for _, route, _ in self._candidates(path):
            if route.accepts(host, headers):
                return route
        return None

    def explain(self, method: str, path: str, host: str,
                headers: Mapping[str, str]) -> tuple[Match, list[str]]:
        """The match plus one line per route considered, saying why it did or did not match.

        Every route in match order up to the one that matches; the path test is the
        trie's (:meth:`_candidates`), so the route named MATCH is :meth:`match`'s.
        """
        matching = {route.index: values for _, route, values in self._candidates(path)}
        lines = []
        for route in self.routes:
            label = f"routes[{route.index}] {route.name!r} ({route.config.path})"
            values = matching.get(route.index)
            if values is None:
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
            params = dict(zip(route.path.params, values, strict=True))
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
