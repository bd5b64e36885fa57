"""An OpenAPI 3.0/3.1 document, compiled once: its operations, found by method and path.

Pure: no aiohttp, no pluggy. :func:`compile_document` reads the document
(:mod:`.documents`), checks it with ``openapi-spec-validator``, and builds for
every operation its parameters (:class:`~.params.Param`) and request body
(:class:`~.body.BodySpec`), each schema compiled to a validator. Paths are
matched as OpenAPI says: a path without templates before templated ones, then
the templates with more literal text first; each under the base path of the
operation's ``servers`` (``https://api.example.com/v1`` -> ``/v1``), or under
the configured ``base_path`` instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from jsonschema_path import SchemaPath
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT4, DRAFT202012

from .body import BodySpec, Media, media_type
from .documents import Bundle, DocumentError, escape, load, path_of, read, shown
from .params import ANY, IGNORED_HEADERS, Param, Shape, shape_of
from .schemas import OAS30, OAS31, SchemaCheck

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_TEMPLATE = re.compile(r"\{([^{}/]+)\}")
_VARIABLE = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True, slots=True)
class Operation:
    """One described operation: ``GET /users/{id}`` and what its requests must be."""

    method: str
    template: str
    params: tuple[Param, ...]
    body: BodySpec | None


@dataclass(slots=True)
class PathItem:
    """The operations of one path (under one base path)."""

    template: str
    operations: dict[str, Operation] = field(default_factory=dict)

    def operation(self, method: str) -> Operation | None:
        """The operation for ``method``; ``HEAD`` falls back to ``GET`` as in HTTP."""
        found = self.operations.get(method)
        if found is None and method == "HEAD":
            found = self.operations.get("GET")
        return found

    def allow(self) -> str:
        methods = set(self.operations)
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(sorted(methods))


class Paths:
    """Path templates, matched against a request path: literal paths by a dict look-up,
    templates by regular expressions grouped by their number of segments."""

    __slots__ = ("literal", "templated")

    def __init__(self, items: dict[str, PathItem]) -> None:
        self.literal: dict[str, PathItem] = {}
        grouped: dict[int, list[tuple[int, int, re.Pattern[str], tuple[str, ...], PathItem]]] = {}
        for full, item in items.items():
            parts = _TEMPLATE.split(full)
            if len(parts) == 1:
                self.literal[full] = item
                continue
            names = tuple(parts[1::2])
            pattern = "".join(re.escape(text) if i % 2 == 0 else "([^/]+)"
                              for i, text in enumerate(parts))
            literal = sum(len(text) for text in parts[::2])
            grouped.setdefault(full.count("/"), []).append(
                (-literal, len(names), re.compile(pattern), names, item))
        self.templated = {count: [(pattern, names, item) for *_, pattern, names, item in
                                  sorted(found, key=lambda entry: entry[:2])]
                          for count, found in grouped.items()}

    def find(self, path: str) -> tuple[PathItem, dict[str, str]] | None:
        item = self.literal.get(path)
        if item is not None:
            return item, {}
        for pattern, names, item in self.templated.get(path.count("/"), ()):
            match = pattern.fullmatch(path)
            if match is not None:
                return item, dict(zip(names, match.groups(), strict=True))
        return None


@dataclass(frozen=True, slots=True)
class Document:
    """A compiled OpenAPI document."""

    version: str
    paths: Paths
    operations: int


def child(location: str, *keys: str) -> str:
    """The URI of a member of what ``location`` points at (``...#/a`` -> ``...#/a/b``)."""
    base, _, pointer = location.partition("#")
    for key in keys:
        pointer += "/" + quote(escape(key), safe="~!$&'()*+,;=:@{}")
    return f"{base}#{pointer}"


def server_bases(servers: Any) -> list[str]:
    """The base paths of a ``servers`` list (``/`` when there is none)."""
    if not isinstance(servers, list) or not servers:
        return [""]
    bases: list[str] = []
    for server in servers:
        if not isinstance(server, dict) or not isinstance(server.get("url"), str):
            continue
        found = server.get("variables")
        variables: dict[str, Any] = found if isinstance(found, dict) else {}

        def value(match: re.Match[str], variables: dict[str, Any] = variables) -> str:
            var = variables.get(match.group(1))
            return str(var.get("default", "")) if isinstance(var, dict) else ""

        url = _VARIABLE.sub(value, server["url"])
        path = urlsplit(url).path if "//" in url else url.partition("?")[0]
        path = path.strip("/")
        base = "/" + path if path else ""
        if base not in bases:
            bases.append(base)
    return bases or [""]


def normal_base(base_path: str) -> str:
    path = base_path.strip().strip("/")
    return "/" + path if path else ""


class _Compiler:
    def __init__(self, bundle: Bundle, dialect: str) -> None:
        self.bundle = bundle
        self.dialect = dialect
        self.resolver = bundle.registry.resolver()

    def deref(self, value: Any, location: str) -> tuple[Any, str]:
        hops = 0
        while isinstance(value, dict) and isinstance(value.get("$ref"), str):
            location = urljoin(location, value["$ref"])
            value = self.resolver.lookup(location).contents
            hops += 1
            if hops > 32:
                raise DocumentError(f"$ref loop at {location}")
        return value, location

    def resolve(self, ref: str, base: str) -> tuple[Any, str]:
        location = urljoin(base, ref)
        return self.resolver.lookup(location).contents, location

    def schema(self, schema: Any, location: str) -> tuple[SchemaCheck, Shape]:
        check = SchemaCheck(location, self.dialect, self.bundle.registry)
        return check, shape_of(schema, location, self.resolve)

    def param(self, raw: Any, location: str) -> Param | None:
        raw, location = self.deref(raw, location)
        if not isinstance(raw, dict):
            return None
        name, where = str(raw.get("name", "")), raw.get("in")
        if where not in ("path", "query", "header") or (
                where == "header" and name.lower() in IGNORED_HEADERS):
            return None  # cookies are not checked; HTTP describes those headers itself
        style = str(raw.get("style") or ("form" if where == "query" else "simple"))
        explode = bool(raw.get("explode", style == "form"))
        required = where == "path" or bool(raw.get("required", False))
        check, shape, json_content = None, ANY, False
        if isinstance(raw.get("schema"), dict):
            check, shape = self.schema(raw["schema"], child(location, "schema"))
        elif isinstance(raw.get("content"), dict) and raw["content"]:
            media, entry = next(iter(raw["content"].items()))
            if isinstance(entry, dict) and isinstance(entry.get("schema"), dict):
                check, _ = self.schema(entry["schema"],
                                       child(location, "content", media, "schema"))
                json_content = True  # the value is JSON text: no style, no coercion
        return Param(name, where, required, style, explode, shape, check, json_content)

    def body(self, raw: Any, location: str) -> BodySpec | None:
        raw, location = self.deref(raw, location)
        if not isinstance(raw, dict) or not isinstance(raw.get("content"), dict):
            return None
        content = []
        for media, entry in raw["content"].items():
            check = None
            if isinstance(entry, dict) and isinstance(entry.get("schema"), dict):
                check, _ = self.schema(entry["schema"],
                                       child(location, "content", media, "schema"))
            content.append(Media(media_type(media) or "*/*", check))
        return BodySpec(bool(raw.get("required", False)), tuple(content))

    def operations(self, base_path: str | None) -> Iterator[tuple[str, Operation]]:
        """``(full path template, operation)`` for every operation of the document."""
        root = self.bundle.root
        location = self.bundle.uri + "#"
        paths = root.get("paths") if isinstance(root.get("paths"), dict) else {}
        for template, raw_item in paths.items():
            item, item_location = self.deref(raw_item, child(location, "paths", template))
            if not isinstance(item, dict):
                continue
            shared = self.params(item.get("parameters"), child(item_location, "parameters"))
            for method in METHODS:
                raw_op = item.get(method)
                if not isinstance(raw_op, dict):
                    continue
                op_location = child(item_location, method)
                params = {**shared, **self.params(raw_op.get("parameters"),
                                                  child(op_location, "parameters"))}
                ordered = sorted(params.values(),
                                 key=lambda p: ("path", "query", "header").index(p.where))
                body = None
                if "requestBody" in raw_op:
                    body = self.body(raw_op["requestBody"], child(op_location, "requestBody"))
                operation = Operation(method.upper(), template, tuple(ordered), body)
                servers = raw_op.get("servers") or item.get("servers") or root.get("servers")
                bases = [normal_base(base_path)] if base_path is not None else (
                    server_bases(servers))
                for base in bases:
                    yield base + template, operation
                    if template == "/" and base:
                        yield base, operation

    def params(self, raw: Any, location: str) -> dict[tuple[str, str], Param]:
        found: dict[tuple[str, str], Param] = {}
        for index, entry in enumerate(raw if isinstance(raw, list) else []):
            param = self.param(entry, child(location, str(index)))
            if param is not None:
                found[(param.name.lower() if param.where == "header" else param.name,
                       param.where)] = param
        return found


def _version(root: Any, name: str) -> str:
    if not isinstance(root, dict):
        raise DocumentError(f"{name} is not an OpenAPI document (expected a mapping with "
                            "openapi, info and paths)")
    version = root.get("openapi")
    if "swagger" in root and version is None:
        raise DocumentError(f"{name} is a Swagger 2.0 document; convert it to OpenAPI 3.0 "
                            "or 3.1")
    if isinstance(version, str) and re.match(r"3\.0\.\d", version):
        return OAS30
    if isinstance(version, str) and re.match(r"3\.1\.\d", version):
        return OAS31
    raise DocumentError(f"{name} is not an OpenAPI 3.0 or 3.1 document (its openapi field "
                        f"is {version!r}; expected \"3.0.x\" or \"3.1.x\")")


def _check_document(bundle: Bundle, dialect: str, name: str) -> None:
    cls = OpenAPIV30SpecValidator if dialect == OAS30 else OpenAPIV31SpecValidator
    try:
        spec = SchemaPath.from_dict(bundle.root, base_uri=bundle.uri)
        errors = []
        for error in cls(spec).iter_errors():
            message = getattr(error, "message", None) or str(error).splitlines()[0]
            where = "".join("/" + escape(str(p)) for p in getattr(error, "absolute_path", ()))
            errors.append(f"{message} (at {where})" if where else message)
            if len(errors) == 3:
                break
    except (DocumentError, Unresolvable):
        raise
    except Exception as exc:  # the validator fails on documents far from OpenAPI's shape
        raise DocumentError(f"{name} is not a valid OpenAPI document ({exc})") from None
    if errors:
        raise DocumentError(f"{name} is not a valid OpenAPI document: " + "; ".join(errors))


def check_patterns(bundle: Bundle) -> None:
    """Every ``pattern`` of the documents compiles (else a request would meet the error)."""
    for uri, contents in bundle.contents.items():
        stack: list[tuple[Any, str]] = [(contents, "")]
        while stack:
            node, pointer = stack.pop()
            if isinstance(node, dict):
                found = [(node["pattern"], f"{pointer}/pattern")] if isinstance(
                    node.get("pattern"), str) else []
                if isinstance(node.get("patternProperties"), dict):
                    found.extend((key, f"{pointer}/patternProperties/{escape(key)}")
                                 for key in node["patternProperties"])
                for pattern, where in found:
                    try:
                        re.compile(pattern)
                    except re.error as exc:
                        raise DocumentError(
                            f"invalid regular expression {pattern!r} at {where} in "
                            f"{shown(path_of(uri))}: {exc}") from None
                stack.extend((v, f"{pointer}/{escape(k)}") for k, v in node.items())
            elif isinstance(node, list):
                stack.extend((v, f"{pointer}/{i}") for i, v in enumerate(node))


def compile_document(path: Path, base_path: str | None = None) -> Document:
    """Read, check and compile the OpenAPI document at ``path``.

    :raise DocumentError: the file cannot be read or parsed, is not a valid OpenAPI 3.0
        or 3.1 document, or has a ``$ref`` that resolves to nothing.
    """
    name = shown(path)
    root = read(path)
    dialect = _version(root, name)
    bundle = load(path, DRAFT4 if dialect == OAS30 else DRAFT202012, ids=dialect == OAS31,
                  root=root)
    _check_document(bundle, dialect, name)
    check_patterns(bundle)
    compiler = _Compiler(bundle, dialect)
    items: dict[str, PathItem] = {}
    count = 0
    try:
        for full, operation in compiler.operations(base_path):
            item = items.setdefault(full, PathItem(full))
            item.operations.setdefault(operation.method, operation)
            count += 1
    except Unresolvable as exc:  # checked by load(); kept for references it cannot see
        raise DocumentError(f"{name}: a $ref cannot be resolved ({exc})") from None
    return Document(dialect, Paths(items), count)
