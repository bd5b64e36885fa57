"""Aggregate plans, compiled once at configuration load.

A plan holds, for every call of an ``aggregate`` route, its upstream, its
templates (path, query, headers, body) with their placeholders resolved, the
calls it reads (its needs), the calls that read it, and its stage. Per request
only values are looked up and encoded; nothing is parsed.

Problems (unknown placeholders, unknown calls, dependency cycles, bad methods)
are returned as :class:`ConfigIssue` with key paths such as
``routes[3].aggregate.calls.customer.path``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from ..config import HTTP_METHODS, CallConfig, ConfigIssue, key_path, suggest
from ..router import Route
from ..upstream import Upstream
from .placeholders import (
    CONTROL_CHARS,
    PATH_SAFE,
    BodyTemplate,
    Part,
    Placeholder,
    Scope,
    Template,
    TemplateSyntaxError,
    encode_header,
    encode_query,
    encode_segment,
    split_template,
)
from .shape import Tree, compile_fields, field_error

SOURCES: Final = ("query", "header", "identity")
"""Placeholder prefixes that are not calls; no call may take these names."""

_CALL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LITERAL_PATH_SAFE = PATH_SAFE + "%"
_LITERAL_QUERY_SAFE = PATH_SAFE + "%?"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# ---------------------------------------------------------------------------
# Plans


@dataclass(eq=False)
class CallPlan:
    """One call of an aggregate route, ready to render per request."""

    name: str
    index: int  # config order
    where: str  # key path of the call's table
    upstream: Upstream
    method: str
    path: Template
    raw_query: Template | None  # a query written in ``path`` after "?"
    query: tuple[tuple[str, Template], ...]  # names percent-encoded already
    headers: tuple[tuple[str, Template], ...]
    body: BodyTemplate | None
    fields: Tree | None
    rename: dict[str, str]
    merge: bool
    optional: bool
    timeout: float | None
    needs: tuple[str, ...] = ()  # calls whose results this call reads, in config order
    dependents: list[CallPlan] = field(default_factory=list)
    stage: int = 1

    def render_target(self, scope: Scope) -> tuple[str, str]:
        """``(path, query)`` percent-encoded; raise :class:`Missing`."""
        path = self.path.render(scope, encode_segment)
        query = "" if self.raw_query is None else self.raw_query.render(scope, encode_query)
        if self.query:
            pairs = "&".join(f"{name}={template.render(scope, encode_query)}"
                             for name, template in self.query)
            query = f"{query}&{pairs}" if query else pairs
        return path, query

    def render_headers(self, scope: Scope) -> list[tuple[str, str]]:
        return [(name, template.render(scope, encode_header)) for name, template in self.headers]


@dataclass(eq=False)
class AggregatePlan:
    """An aggregate route's calls in config order, with their graph and stages."""

    route: str
    timeout: float
    calls: tuple[CallPlan, ...]
    roots: tuple[CallPlan, ...]  # calls that need no other call: started at once
    stages: tuple[tuple[CallPlan, ...], ...]


class CallCompiler:
    """Compiles one route's aggregate table, collecting every problem."""

    def __init__(self, route: Route, calls: Mapping[str, CallConfig]) -> None:
        self.route = route
        self.where = f"routes[{route.index}].aggregate"
        self.params = list(route.path.params)
        self.path_params = route.path.path_params
        self.call_names = list(calls)
        self.issues: list[ConfigIssue] = []

    def call_where(self, name: str) -> str:
        return f"{self.where}.calls.{key_path([name])}"

    def placeholder(self, text: str, where: str) -> Placeholder | None:
        head, dot, rest = text.partition(".")
        if not dot:
            if head in self.params:
                return Placeholder(text, "param", head, keeps_slashes=head in self.path_params)
            if head in self.call_names:
                hint = f"; use {{{head}.FIELD}} for a field of call {head!r}"
            elif head in SOURCES:
                hint = f"; expected {{{head}.NAME}}"
            elif self.params:
                hint = (suggest(head, self.params)
                        or f" (path parameters: {', '.join(self.params)})")
            else:
                hint = f" (the route path {self.route.config.path} has no parameters)"
            self.issues.append(ConfigIssue(
                where, f"unknown placeholder {{{text}}}: not a path parameter{hint}"))
            return None
        if head in SOURCES:
            if not rest:
                self.issues.append(ConfigIssue(where, f"expected {{{head}.NAME}}, found "
                                               f"{{{text}}}"))
                return None
            if head == "header" and not _HEADER_NAME.fullmatch(rest):
                self.issues.append(ConfigIssue(where, f"invalid header name in {{{text}}}"))
                return None
            return Placeholder(text, head, rest)
        if head in self.call_names:
            parts = rest.split(".")
            if any(not part for part in parts):
                self.issues.append(ConfigIssue(where, f"expected {{{head}.a.b}} (key names "
                                               f"separated by dots), found {{{text}}}"))
                return None
            path = tuple(int(p) if p.lstrip("-").isdigit() else p for p in parts)
            return Placeholder(text, "call", head, path)
        options = [*self.call_names, *SOURCES]
        self.issues.append(ConfigIssue(
            where, f"unknown call {head!r} in {{{text}}}"
            + (suggest(head, options) or f" (calls: {', '.join(self.call_names)})")))
        return None

    def template(self, text: str, where: str) -> Template | None:
        try:
            pieces = split_template(text)
        except TemplateSyntaxError as exc:
            self.issues.append(ConfigIssue(where, str(exc)))
            return None
        parts: list[Part] = []
        ok = True
        for is_placeholder, piece in pieces:
            if not is_placeholder:
                parts.append(piece)
                continue
            found = self.placeholder(piece, where)
            if found is None:
                ok = False
            else:
                parts.append(found)
        return Template(text, tuple(parts)) if ok else None

    def body(self, value: Any, where: str) -> tuple[Any, bool]:
        """The body tree with templates; ``(tree, has_placeholders)``."""
        if isinstance(value, str):
            try:
                pieces = split_template(value)
            except TemplateSyntaxError as exc:
                self.issues.append(ConfigIssue(where, str(exc)))
                return value, False
            if len(pieces) == 1 and pieces[0][0]:
                whole = self.placeholder(pieces[0][1], where)
                return (whole, True) if whole is not None else (value, False)
            template = self.template(value, where)
            if template is None:
                return value, False
            constant = template.constant
            return (template, True) if constant is None else (constant, False)
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            dynamic = False
            for key, item in value.items():
                out[key], inner = self.body(item, f"{where}.{key_path([key])}")
                dynamic = dynamic or inner
            return out, dynamic
        if isinstance(value, list):
            items = []
            dynamic = False
            for index, item in enumerate(value):
                filled, inner = self.body(item, f"{where}[{index}]")
                items.append(filled)
                dynamic = dynamic or inner
            return items, dynamic
        return value, False

    def call(self, index: int, name: str, config: CallConfig,
             upstream_for: Callable[[str], Upstream]) -> CallPlan | None:
        where = self.call_where(name)
        before = len(self.issues)
        if not _CALL_NAME.fullmatch(name):
            self.issues.append(ConfigIssue(where, "a call name is letters, digits, '_' and "
                                           "'-', starting with a letter or '_'"))
        elif name in SOURCES:
            self.issues.append(ConfigIssue(where, f"{name!r} is reserved for "
                                           f"{{{name}.NAME}} placeholders; name the call "
                                           "differently"))
        method = config.method.upper()
        if method not in HTTP_METHODS:
            self.issues.append(ConfigIssue(
                f"{where}.method", f"expected an HTTP method ({', '.join(HTTP_METHODS)}), "
                f"found {config.method!r}{suggest(method, HTTP_METHODS)}"))
        if not config.path.startswith("/"):
            self.issues.append(ConfigIssue(f"{where}.path", "expected a path starting with "
                                           f"'/', found {config.path!r}"))
        path_text, has_query, query_text = config.path.partition("?")
        path = self.template(path_text, f"{where}.path")
        if path is not None:
            path = Template(path.source, tuple(
                quote(p, safe=_LITERAL_PATH_SAFE) if isinstance(p, str) else p
                for p in path.parts))
        raw_query = self.template(query_text, f"{where}.path") if has_query else None
        if raw_query is not None:
            raw_query = Template(raw_query.source, tuple(
                quote(p, safe=_LITERAL_QUERY_SAFE) if isinstance(p, str) else p
                for p in raw_query.parts))
        query = []
        for qname, text in config.query.items():
            template = self.template(text, f"{where}.query.{key_path([qname])}")
            if template is not None:
                literal = tuple(quote(p, safe="") if isinstance(p, str) else p
                                for p in template.parts)
                query.append((quote(qname, safe=""), Template(text, literal)))
        headers = []
        for hname, text in config.headers.items():
            hwhere = f"{where}.headers.{key_path([hname])}"
            if not _HEADER_NAME.fullmatch(hname):
                self.issues.append(ConfigIssue(hwhere, f"invalid header name {hname!r}"))
                continue
            if CONTROL_CHARS.search(text):
                self.issues.append(ConfigIssue(hwhere, "a header value may not contain "
                                               "control characters"))
                continue
            template = self.template(text, hwhere)
            if template is not None:
                headers.append((hname, template))
        body: BodyTemplate | None = None
        if config.body is not None:
            if method not in _BODY_METHODS:
                self.issues.append(ConfigIssue(f"{where}.body", f"a {method} call has no "
                                               "body (use POST, PUT, PATCH or DELETE)"))
            tree, dynamic = self.body(config.body, f"{where}.body")
            constant = None if dynamic else json.dumps(tree, separators=(",", ":")).encode()
            body = BodyTemplate(tree, constant)
            if not any(h.lower() == "content-type" for h, _ in headers):
                headers.append(("Content-Type", Template("application/json",
                                                         ("application/json",))))
        fields = None
        if config.fields is not None:
            for position, entry in enumerate(config.fields):
                problem = field_error(entry)
                if problem:
                    self.issues.append(ConfigIssue(f"{where}.fields[{position}]", problem))
            fields = compile_fields(config.fields)
        for old, new in config.rename.items():
            if not new:
                self.issues.append(ConfigIssue(f"{where}.rename.{key_path([old])}",
                                               "expected a new key name, found ''"))
        if config.timeout is not None and config.timeout <= 0:
            self.issues.append(ConfigIssue(f"{where}.timeout", "expected a duration above 0"))
        if len(self.issues) > before or path is None or (has_query and raw_query is None):
            return None
        return CallPlan(
            name=name, index=index, where=where, upstream=upstream_for(config.upstream),
            method=method, path=path, raw_query=raw_query, query=tuple(query),
            headers=tuple(headers), body=body,
            fields=fields, rename=dict(config.rename), merge=config.merge,
            optional=config.optional, timeout=config.timeout,
        )


def _references(call: CallPlan) -> dict[str, str]:
    """Call name -> the first key (``path``, ``query.x``...) that reads one of its fields."""
    found: dict[str, str] = {}

    def note(template: Template | None, key: str) -> None:
        if template is None:
            return
        for placeholder in template.placeholders:
            if placeholder.kind == "call":
                found.setdefault(placeholder.name, key)

    note(call.path, "path")
    note(call.raw_query, "path")
    for name, template in call.query:
        note(template, f"query.{key_path([name])}")
    for name, template in call.headers:
        note(template, f"headers.{key_path([name])}")
    if call.body is not None:
        stack = [call.body.tree]
        while stack:
            node = stack.pop()
            if isinstance(node, Placeholder) and node.kind == "call":
                found.setdefault(node.name, "body")
            elif isinstance(node, Template):
                note(node, "body")
            elif isinstance(node, dict):
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return found


def compile_plan(route: Route, upstream_for: Callable[[str], Upstream]
                 ) -> tuple[AggregatePlan | None, list[ConfigIssue]]:
    """Compile ``route``'s ``aggregate`` table; ``upstream_for`` maps a name or URL to a pool."""
    config = route.config.aggregate
    assert config is not None
    compiler = CallCompiler(route, config.calls)
    if config.timeout <= 0:
        compiler.issues.append(ConfigIssue(f"{compiler.where}.timeout",
                                           "expected a duration above 0"))
    calls: dict[str, CallPlan] = {}
    for index, (name, call_config) in enumerate(config.calls.items()):
        compiled = compiler.call(index, name, call_config, upstream_for)
        if compiled is not None:
            calls[name] = compiled
    issues = compiler.issues
    refs = {name: _references(call) for name, call in calls.items()}
    order = list(config.calls)
    for name, call in calls.items():
        call.needs = tuple(sorted(refs[name], key=order.index))
    issues.extend(_cycles(calls, refs, compiler))
    if issues:
        return None, issues
    for call in calls.values():
        for need in call.needs:
            calls[need].dependents.append(call)
    stages: list[list[CallPlan]] = []
    for call in _topological(calls):
        call.stage = 1 + max((calls[n].stage for n in call.needs), default=0)
        while len(stages) < call.stage:
            stages.append([])
        stages[call.stage - 1].append(call)
    ordered = tuple(calls.values())
    return AggregatePlan(
        route=route.name,
        timeout=config.timeout,
        calls=ordered,
        roots=tuple(c for c in ordered if not c.needs),
        stages=tuple(tuple(sorted(s, key=lambda c: c.index)) for s in stages),
    ), []


def _cycles(calls: Mapping[str, CallPlan], refs: Mapping[str, Mapping[str, str]],
            compiler: CallCompiler) -> list[ConfigIssue]:
    """One issue per dependency cycle, at the key that closes it."""
    issues: list[ConfigIssue] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    reported: set[frozenset[str]] = set()

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        trail.append(name)
        for need in calls[name].needs:
            if need not in calls:
                continue
            if state.get(need) == 1:
                cycle = trail[trail.index(need):]
                members = frozenset(cycle)
                if members not in reported:
                    reported.add(members)
                    where = f"{compiler.call_where(name)}.{refs[name][need]}"
                    if need == name:
                        message = f"call {name!r} reads its own result"
                    else:
                        message = ("dependency cycle: "
                                   + " -> ".join([*cycle, need])
                                   + " (each call waits for the next)")
                    issues.append(ConfigIssue(where, message))
            elif need not in state:
                visit(need, trail)
        trail.pop()
        state[name] = 2

    for name in calls:
        if name not in state:
            visit(name, [])
    return issues


def _topological(calls: Mapping[str, CallPlan]) -> list[CallPlan]:
    done: set[str] = set()
    out: list[CallPlan] = []

    def visit(call: CallPlan) -> None:
        if call.name in done:
            return
        done.add(call.name)
        for need in call.needs:
            visit(calls[need])
        out.append(call)

    for call in calls.values():
        visit(call)
    return out
