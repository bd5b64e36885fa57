"""Parameters: from the strings of a request to typed values, as OpenAPI serializes them.

Pure: no aiohttp, no pluggy. A path segment, a query parameter or a header is
text; its schema says what it stands for. :class:`Shape` (read from the schema
once, at load) tells the types; :class:`Param` turns the request's strings
into a value by the parameter's ``style`` and ``explode`` (``simple``,
``label`` and ``matrix`` for path parameters, ``form``, ``spaceDelimited``,
``pipeDelimited`` and ``deepObject`` for the query, ``simple`` for headers),
coerces each piece to the type its schema names (``"7"`` -> ``7`` for an
integer, ``"true"`` -> ``True``), and hands the result to the schema's
validator. Text that is not of the type stays text, so the validator reports it
(``'abc' is not of type 'integer'``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from . import jsontext
from .documents import escape
from .schemas import SchemaCheck, Violation

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
               list: "array", dict: "object", type(None): "null"}
MAX_SHAPE_DEPTH = 6


@dataclass(frozen=True, slots=True)
class Shape:
    """The types a schema allows, as far as turning text into a value needs them."""

    types: frozenset[str] = frozenset()
    items: Shape | None = None
    properties: Mapping[str, Shape] = field(default_factory=dict)
    additional: Shape | None = None

    @property
    def kind(self) -> str:
        """``"array"``, ``"object"`` or ``"primitive"``: how the text is split."""
        if "array" in self.types:
            return "array"
        if "object" in self.types:
            return "object"
        return "primitive"

    def prop(self, name: str) -> Shape:
        return self.properties.get(name) or self.additional or ANY


ANY = Shape()

Resolve = Callable[[str, str], tuple[Any, str]]
"""``resolve(ref, base)`` -> ``(contents, base of the contents)``."""


def shape_of(schema: Any, base: str, resolve: Resolve, depth: int = 0) -> Shape:
    """The :class:`Shape` of a schema (following ``$ref``, ``allOf``/``anyOf``/``oneOf``)."""
    if not isinstance(schema, dict) or depth > MAX_SHAPE_DEPTH:
        return ANY
    if isinstance(schema.get("$ref"), str):
        contents, where = resolve(schema["$ref"], base)
        return shape_of(contents, where, resolve, depth + 1)
    declared = schema.get("type")
    types: set[str] = set()
    if isinstance(declared, str):
        types.add(declared)
    elif isinstance(declared, list):
        types.update(t for t in declared if isinstance(t, str))
    parts = [shape_of(sub, base, resolve, depth + 1)
             for key in ("allOf", "anyOf", "oneOf") if isinstance(schema.get(key), list)
             for sub in schema[key]]
    if not types:
        for part in parts:
            types.update(part.types)
    if not types and isinstance(schema.get("enum"), list):
        types.update(_JSON_TYPES.get(type(value), "string") for value in schema["enum"])
    if not types and "const" in schema:
        types.add(_JSON_TYPES.get(type(schema["const"]), "string"))
    if not types and isinstance(schema.get("properties"), dict):
        types.add("object")
    if not types and "items" in schema:
        types.add("array")
    if schema.get("nullable") is True:
        types.add("null")
    items = None
    if isinstance(schema.get("items"), dict):
        items = shape_of(schema["items"], base, resolve, depth + 1)
    properties: dict[str, Shape] = {}
    for part in parts:
        properties.update(part.properties)
        items = items or part.items
    if isinstance(schema.get("properties"), dict):
        properties.update({name: shape_of(sub, base, resolve, depth + 1)
                           for name, sub in schema["properties"].items()})
    additional = None
    if isinstance(schema.get("additionalProperties"), dict):
        additional = shape_of(schema["additionalProperties"], base, resolve, depth + 1)
    return Shape(frozenset(types), items, properties, additional)


def coerce(text: str, shape: Shape) -> Any:
    """``text`` as the type its shape names, or ``text`` when it is not of that type."""
    types = shape.types
    if not types or "string" in types:
        return text
    if "integer" in types and _INTEGER.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # more digits than Python converts: leave it to the validator
            return text
    if "number" in types and _NUMBER.fullmatch(text):
        if _INTEGER.fullmatch(text):
            try:
                return int(text)
            except ValueError:
                return text
        value = float(text)
        return value if math.isfinite(value) else text
    if "boolean" in types and text in ("true", "false"):
        return text == "true"
    if "null" in types and text in ("", "null"):
        return None
    return text


# ---------------------------------------------------------------------------
# The query string
# ---------------------------------------------------------------------------

Query = dict[str, list[str | None]]
"""Parameter name -> its values in order; ``None`` for a value that is not UTF-8."""


def _decode(text: str) -> str | None:
    try:
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_query(raw: str) -> Query:
    """The raw query string (without ``?``) as names and decoded values
    (``application/x-www-form-urlencoded``: ``+`` is a space). A name that is not
    UTF-8 once decoded is left out: no description can name it."""
    query: Query = {}
    if not raw:
        return query
    for part in raw.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name = _decode(raw_name)
        if name is not None:
            query.setdefault(name, []).append(_decode(raw_value))
    return query


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------

IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})
"""Header parameters OpenAPI says to ignore (HTTP itself describes them)."""


@dataclass(frozen=True, slots=True)
class Param:
    """One described parameter, compiled.

    :param where: ``"path"``, ``"query"`` or ``"header"``.
    :param check: the schema's validator, or ``None`` (nothing to check).
    :param json_content: the value is JSON text (``content: application/json``).
    """

    name: str
    where: str
    required: bool
    style: str
    explode: bool
    shape: Shape
    check: SchemaCheck | None
    json_content: bool = False

    @property
    def pointer(self) -> str:
        return "/" + escape(self.name)

    def missing(self) -> Violation:
        return Violation(self.where, self.pointer,
                         f"required {self.where} parameter {self.name!r} is missing")

    def validate(self, value: Any) -> list[Violation]:
        """Violations of an already deserialized value."""
        if self.check is None:
            return []
        return self.check.violations(value, self.where, self.pointer)

    def from_text(self, text: str) -> tuple[Any, Violation | None]:
        """The value of a path segment or header (style ``simple``, ``label``, ``matrix``)."""
        if self.json_content:
            return self._json(text)
        shape = self.shape
        style = self.style
        if style == "label":
            text = text[1:] if text.startswith(".") else text
            sep = "." if self.explode else ","
        elif style == "matrix":
            return self._matrix(text), None
        else:
            sep = ","
        if shape.kind == "array":
            return self._items(text.split(sep) if text else []), None
        if shape.kind == "object":
            return self._object(text.split(sep) if text else [], self.explode), None
        return coerce(text, shape), None

    def _matrix(self, text: str) -> Any:
        shape = self.shape
        prefix = f";{self.name}="
        if shape.kind == "array" and self.explode:
            parts = [p.removeprefix(f"{self.name}=") for p in text.split(";") if p]
            return self._items(parts)
        if shape.kind == "object" and self.explode:
            return self._object([p for p in text.split(";") if p], True)
        if text.startswith(prefix):
            text = text[len(prefix):]
        elif text == f";{self.name}":
            text = ""
        if shape.kind == "array":
            return self._items(text.split(",") if text else [])
        if shape.kind == "object":
            return self._object(text.split(",") if text else [], False)
        return coerce(text, shape)

    def from_query(self, query: Query) -> tuple[bool, Any, Violation | None]:
        """``(present, value, problem)`` of a query parameter."""
        shape = self.shape
        if self.json_content:
            shape = ANY
        elif shape.kind == "object" and self.style == "deepObject":
            return self._deep_object(query)
        elif shape.kind == "object" and self.explode and self.style == "form":
            found = {name: query[name] for name in shape.properties if name in query}
            if not found:
                return False, None, None
            if any(None in values for values in found.values()):
                return True, None, self._not_utf8()
            return True, {name: coerce(str(values[0]), shape.prop(name))
                          for name, values in found.items()}, None
        values = query.get(self.name)
        if values is None:
            return False, None, None
        if None in values:
            return True, None, self._not_utf8()
        texts = [v for v in values if v is not None]
        if shape.kind == "array" and self.explode and self.style == "form":
            return True, self._items(texts), None
        if len(texts) > 1:
            return True, None, Violation("query", self.pointer, f"given {len(texts)} times; "
                                                                "expected once")
        text = texts[0]
        if self.json_content:
            value, problem = self._json(text)
            return True, value, problem
        if shape.kind == "array":
            sep = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(self.style, ",")
            return True, self._items(text.split(sep) if text else []), None
        if shape.kind == "object":
            return True, self._object(text.split(",") if text else [], False), None
        return True, coerce(text, shape), None

    def _deep_object(self, query: Query) -> tuple[bool, Any, Violation | None]:
        prefix = self.name + "["
        found: dict[str, Any] = {}
        for key, values in query.items():
            if key.startswith(prefix) and key.endswith("]"):
                if None in values:
                    return True, None, self._not_utf8()
                name = key[len(prefix):-1]
                found[name] = coerce(str(values[0]), self.shape.prop(name))
        return bool(found), found, None

    def _items(self, parts: list[str]) -> list[Any]:
        item = self.shape.items or ANY
        return [coerce(part.strip() if self.where == "header" else part, item)
                for part in parts]

    def _object(self, parts: list[str], exploded: bool) -> dict[str, Any]:
        shape = self.shape
        out: dict[str, Any] = {}
        if exploded:
            for part in parts:
                name, _, text = part.partition("=")
                out[name.strip()] = coerce(text.strip(), shape.prop(name.strip()))
        else:
            for name, text in zip(parts[::2], parts[1::2], strict=False):
                out[name] = coerce(text, shape.prop(name))
        return out

    def _json(self, text: str) -> tuple[Any, Violation | None]:
        try:
            return jsontext.loads(text), None
        except ValueError as exc:
            return None, Violation(self.where, self.pointer, str(exc))

    def _not_utf8(self) -> Violation:
        return Violation(self.where, self.pointer, "not UTF-8 text once percent-decoded")
