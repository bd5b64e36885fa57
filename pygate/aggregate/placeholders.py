"""Placeholders and templates: where a call's path, query, headers and body get values.

``{param}`` (a route path parameter), ``{query.NAME}``, ``{header.NAME}``,
``{identity.FIELD}`` and ``{CALL.a.b}`` (a field of another call's result) are
resolved at load into :class:`Placeholder` objects; per request a
:class:`Scope` gives their values, which are percent-encoded for a path
segment or a query value, checked for control characters in a header, and
kept with their JSON type when a body string is one whole placeholder.
A value that is absent (or null, or an object where text is needed) raises
:class:`Missing`: the call fails.

:class:`ValueTemplate` is the same for plugins (``pygate.plugin``): a configured
value filled from the request alone (no call results).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote

from ..config.errors import suggest
from ..context import Identity

if TYPE_CHECKING:
    from aiohttp import web

    from ..context import Context

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
SEGMENT_SAFE = "!$&'()*+,;=:@~"  # a placeholder value stays inside one path segment
PATH_SAFE = "/" + SEGMENT_SAFE  # {name:path} route params keep their slashes


class Missing(Exception):
    """A placeholder has no usable value for this request (the call fails)."""

    def __init__(self, placeholder: str, reason: str = "has no value") -> None:
        super().__init__(f"{{{placeholder}}} {reason}")
        self.placeholder = placeholder
        self.reason = reason


_ABSENT: Final[Any] = object()


# ---------------------------------------------------------------------------
# Where values come from


class Scope:
    """The values placeholders read for one request; call results are added as they come."""

    __slots__ = ("_query", "headers", "identity", "params", "raw_query", "results")

    def __init__(self, params: Mapping[str, str], raw_query: str, headers: Mapping[str, str],
                 identity: Identity | None) -> None:
        self.params = params
        self.raw_query = raw_query
        self.headers = headers
        self.identity = identity
        self.results: dict[str, Any] = {}
        self._query: dict[str, str] | None = None

    def query(self, name: str) -> Any:
        if self._query is None:
            parsed: dict[str, str] = {}
            for key, value in parse_qsl(self.raw_query, keep_blank_values=True):
                parsed.setdefault(key, value)  # the first value of a repeated name
            self._query = parsed
        return self._query.get(name, _ABSENT)


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``{...}`` of a template, resolved at load to where its value comes from."""

    text: str  # as written, without braces
    kind: str  # "param" | "query" | "header" | "identity" | "call"
    name: str  # the param, query or header name, the identity field, or the call
    path: tuple[str | int, ...] = ()  # for calls: the keys (and list indexes) to follow
    keeps_slashes: bool = False  # a {name:path} route param

    def value(self, scope: Scope) -> Any:
        """The raw value, or ``_ABSENT``."""
        kind = self.kind
        if kind == "call":
            current = scope.results.get(self.name, _ABSENT)
            for part in self.path:
                if isinstance(current, dict):
                    current = current.get(part, _ABSENT) if isinstance(part, str) else (
                        current.get(str(part), _ABSENT))
                elif isinstance(current, list) and isinstance(part, int):
                    current = current[part] if -len(current) <= part < len(current) else _ABSENT
                else:
                    return _ABSENT
            return current
        if kind == "param":
            return scope.params.get(self.name, _ABSENT)
        if kind == "query":
            return scope.query(self.name)
        if kind == "header":
            return scope.headers.get(self.name, _ABSENT)
        identity = scope.identity
        if identity is None:
            return _ABSENT
        found = identity.get(self.name, _ABSENT)
        return _ABSENT if found is None else found

    def text_value(self, scope: Scope) -> str:
        """The value as text (numbers and booleans in JSON form); raise :class:`Missing`."""
        value = self.value(scope)
        if isinstance(value, str):
            return value
        text = _as_text(value)
        if text is None:
            if value is _ABSENT or value is None:
                raise Missing(self.text)
            raise Missing(self.text, "is an object, not a value for a path, query or header")
        return text


def _as_text(value: Any) -> str | None:
    """A scalar as text (JSON form for numbers and booleans); a list of scalars joined
    with commas (``roles``); ``None`` for null, objects and nested lists."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list) and value and all(
            isinstance(v, str | int | float) for v in value):
        return ",".join(_as_text(v) or "" for v in value)
    return None


# ---------------------------------------------------------------------------
# Templates


Part = str | Placeholder


@dataclass(frozen=True, slots=True)
class Template:
    """A string with placeholders, split at load into literal text and placeholders."""

    source: str
    parts: tuple[Part, ...]

    @property
    def placeholders(self) -> tuple[Placeholder, ...]:
        return tuple(p for p in self.parts if isinstance(p, Placeholder))

    @property
    def constant(self) -> str | None:
        """The text when there is no placeholder."""
        if all(isinstance(p, str) for p in self.parts):
            return "".join(p for p in self.parts if isinstance(p, str))
        return None

    def render(self, scope: Scope, encode: Callable[[str, Placeholder], str]) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(encode(part.text_value(scope), part))
        return "".join(out)

    def preview(self, known: Callable[[Placeholder], str | None]) -> str:
        """The template with the values ``known`` gives, other placeholders left as written."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part.replace("{", "{{").replace("}", "}}"))
            else:
                value = known(part)
                out.append(f"{{{part.text}}}" if value is None else value)
        return "".join(out)


def encode_segment(text: str, placeholder: Placeholder) -> str:
    return quote(text, safe=PATH_SAFE if placeholder.keeps_slashes else SEGMENT_SAFE)


def encode_query(text: str, placeholder: Placeholder) -> str:
    return quote(text, safe="")


def encode_header(text: str, placeholder: Placeholder) -> str:
    if CONTROL_CHARS.search(text):
        raise Missing(placeholder.text, "holds control characters, not allowed in a header")
    return text


class TemplateSyntaxError(ValueError):
    pass


def split_template(text: str) -> list[tuple[bool, str]]:
    """``"/users/{order.userId}"`` -> ``[(False, "/users/"), (True, "order.userId")]``.

    ``{{`` and ``}}`` stand for literal braces.
    """
    out: list[tuple[bool, str]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "{" and text.startswith("{{", i):
            literal.append("{")
            i += 2
        elif char == "}" and text.startswith("}}", i):
            literal.append("}")
            i += 2
        elif char == "{":
            end = text.find("}", i + 1)
            inner = text[i + 1:end] if end >= 0 else ""
            if end < 0 or "{" in inner:
                raise TemplateSyntaxError(f"unclosed '{{' in {text!r} (write {{{{ for a "
                                          "literal brace)")
            if not inner.strip():
                raise TemplateSyntaxError(f"empty placeholder {{}} in {text!r}")
            if literal:
                out.append((False, "".join(literal)))
                literal = []
            out.append((True, inner.strip()))
            i = end + 1
        elif char == "}":
            raise TemplateSyntaxError(f"unmatched '}}' in {text!r} (write }}}} for a literal "
                                      "brace)")
        else:
            literal.append(char)
            i += 1
    if literal:
        out.append((False, "".join(literal)))
    return out


# ---------------------------------------------------------------------------
# Bodies (JSON templates)


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """A JSON body with placeholders: a string that is one whole placeholder keeps the
    value's JSON type (``"{order.items}"`` sends the list); other strings are text."""

    tree: Any  # JSON with Template / Placeholder leaves
    constant: bytes | None

    def render(self, scope: Scope) -> bytes:
        if self.constant is not None:
            return self.constant
        return json.dumps(_fill(self.tree, scope), separators=(",", ":")).encode()


def _fill(node: Any, scope: Scope) -> Any:
    if isinstance(node, Placeholder):
        value = node.value(scope)
        if value is _ABSENT:
            raise Missing(node.text)
        return value
    if isinstance(node, Template):
        return node.render(scope, _plain)
    if isinstance(node, dict):
        return {key: _fill(value, scope) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(value, scope) for value in node]
    return node


def _plain(text: str, placeholder: Placeholder) -> str:
    return text


# ---------------------------------------------------------------------------
# Values that only the request fills (plugins: pygate.plugin.ValueTemplate)


_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
REQUEST_SOURCES: Final = ("query", "header", "identity")


def request_placeholder(text: str) -> Placeholder:
    """``{NAME}`` (a path parameter), ``{query.NAME}``, ``{header.NAME}`` or
    ``{identity.FIELD}``, resolved at load.

    :raise TemplateSyntaxError: any other placeholder, saying what was expected.
    """
    head, dot, rest = text.partition(".")
    if not dot:
        if head in REQUEST_SOURCES:
            raise TemplateSyntaxError(f"expected {{{head}.NAME}}, found {{{text}}}")
        if not _PARAM_NAME.fullmatch(head):
            raise TemplateSyntaxError(f"invalid placeholder {{{text}}}: expected a path "
                                      "parameter name, {query.NAME}, {header.NAME} or "
                                      "{identity.FIELD}")
        return Placeholder(text, "param", head)
    if head not in REQUEST_SOURCES:
        raise TemplateSyntaxError(
            f"unknown placeholder {{{text}}}: expected {{query.NAME}}, {{header.NAME}}, "
            f"{{identity.FIELD}} or a path parameter {{NAME}}"
            + suggest(head, REQUEST_SOURCES))
    if not rest or (head == "header" and not _HEADER_NAME.fullmatch(rest)):
        raise TemplateSyntaxError(f"expected {{{head}.NAME}} with a valid name, found "
                                  f"{{{text}}}")
    return Placeholder(text, head, rest)


class MissingValue(Missing):
    """A placeholder of a :class:`ValueTemplate` has no value for this request (an
    anonymous caller for ``{identity.id}``, a header or query parameter not sent, a route
    without that path parameter, an object where text is needed).

    ``placeholder`` is the placeholder as written (without braces), ``reason`` why.
    """


class ValueTemplate:
    """A configured value whose strings may hold request placeholders, compiled once.

    Placeholders as in aggregate calls, except call results: ``{NAME}`` (a path
    parameter of the matched route), ``{query.NAME}``, ``{header.NAME}``,
    ``{identity.FIELD}`` (``id``, ``roles``, ``consumer`` or a mapped field); ``{{`` and
    ``}}`` are literal braces. Strings inside tables and arrays are templates too. A
    string that is one whole placeholder keeps the value's JSON type
    (``"{identity.roles}"`` gives the list); a string with more around it gets the value
    as text (numbers and booleans in JSON form, a list of scalars joined with commas).

    :param value: a JSON value from the configuration (string, number, boolean, table,
        array or null).
    :raise ValueError: a malformed template or an unknown placeholder; the message says
        what was expected (a pydantic validator turns it into a config error with its
        key path).
    """

    __slots__ = ("_tree", "dynamic", "source")

    def __init__(self, value: Any) -> None:
        self.source = value
        self._tree, self.dynamic = _compile_value(value)

    def __repr__(self) -> str:
        return f"ValueTemplate({self.source!r})"

    def render(self, request: web.BaseRequest, ctx: Context) -> Any:
        """The value for this request: a new object each time (tables and arrays, an
        identity field's too, are fresh copies, free to change).

        :raise MissingValue: a placeholder has no value for this request.
        """
        tree = self._tree
        if not self.dynamic:
            return copy.deepcopy(tree) if isinstance(tree, dict | list) else tree
        route = ctx.route
        scope = Scope(route.params if route is not None else {},
                      request.raw_path.partition("?")[2], request.headers, ctx.identity)
        try:
            return _fresh(tree, scope)
        except Missing as missing:
            raise MissingValue(missing.placeholder, missing.reason) from None


def _compile_value(value: Any) -> tuple[Any, bool]:
    """``(tree with Placeholder/Template leaves, whether it has any)``."""
    if isinstance(value, str):
        try:
            pieces = split_template(value)
            if len(pieces) == 1 and pieces[0][0]:
                return request_placeholder(pieces[0][1]), True
            parts: list[Part] = [request_placeholder(piece) if is_placeholder else piece
                                 for is_placeholder, piece in pieces]
        except TemplateSyntaxError as exc:
            raise ValueError(str(exc)) from None
        template = Template(value, tuple(parts))
        constant = template.constant
        return (template, True) if constant is None else (constant, False)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        dynamic = False
        for key, item in value.items():
            out[key], inner = _compile_value(item)
            dynamic = dynamic or inner
        return out, dynamic
    if isinstance(value, list | tuple):
        items = []
        dynamic = False
        for item in value:
            filled, inner = _compile_value(item)
            items.append(filled)
            dynamic = dynamic or inner
        return items, dynamic
    return value, False


def _fresh(node: Any, scope: Scope) -> Any:
    """:func:`_fill`, with copies of the containers a placeholder gives."""
    if isinstance(node, Placeholder):
        value = node.value(scope)
        if value is _ABSENT:
            raise Missing(node.text)
        return copy.deepcopy(value) if isinstance(value, dict | list) else value
    if isinstance(node, Template):
        return node.render(scope, _plain)
    if isinstance(node, dict):
        return {key: _fresh(value, scope) for key, value in node.items()}
    if isinstance(node, list):
        return [_fresh(value, scope) for value in node]
    return node
