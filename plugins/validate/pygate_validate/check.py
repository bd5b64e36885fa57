"""What one effective configuration checks, compiled at load, and the per-request checks.

Pure: no aiohttp, no pluggy. A :class:`Plan` holds the compiled OpenAPI
document (or none) and the per-route JSON Schemas. Per request it finds the
operation (:meth:`Plan.find`), lists the violations of the parameters
(:meth:`Plan.check_params`), and says which body rules apply
(:meth:`Plan.body_spec`); the plugin's hook reads the body and asks
:func:`~.body.check_json`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin

from .body import BodySpec, Media
from .documents import DocumentError, escape, load, shown
from .openapi import Document, Operation
from .params import ANY, Param, Query, Shape, coerce, parse_query, shape_of
from .schemas import JSON_SCHEMA, SchemaCheck, Violation


class Headers(Protocol):
    def getall(self, key: str, default: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Found:
    """The outcome of matching a request: an operation, or why there is none.

    ``operation`` is ``None`` for a request the document does not describe: then
    ``allow`` lists the methods of a described path (for 405), or is empty (404).
    """

    operation: Operation | None
    path_params: dict[str, str]
    allow: str = ""


NOT_DESCRIBED = Found(None, {})


class QuerySchema:
    """``query_schema``: the query string as an object of its parameters, coerced by the
    schema's property types (a parameter whose type is ``array`` takes every value)."""

    __slots__ = ("check", "shape")

    def __init__(self, check: SchemaCheck, shape: Shape) -> None:
        self.check = check
        self.shape = shape

    def violations(self, query: Query) -> list[Violation]:
        value: dict[str, Any] = {}
        problems: list[Violation] = []
        for name, values in query.items():
            pointer = "/" + escape(name)
            shape = self.shape.prop(name)
            if None in values:
                problems.append(Violation("query", pointer,
                                          "not UTF-8 text once percent-decoded"))
            elif shape.kind == "array":
                item = shape.items or ANY
                value[name] = [coerce(str(text), item) for text in values]
            elif len(values) > 1:
                problems.append(Violation("query", pointer,
                                          f"given {len(values)} times; expected once"))
            else:
                value[name] = coerce(str(values[0]), shape)
        return problems + self.check.violations(value, "query")


def json_schema_file(path: Path) -> tuple[SchemaCheck, Shape]:
    """A JSON Schema file (and what it refers to), checked against its draft's metaschema.

    :raise DocumentError: unreadable, not JSON/YAML, not a valid schema, a bad ``$ref``.
    """
    bundle = load(path, None, ids=True)
    schema = bundle.root
    if not isinstance(schema, dict | bool):
        raise DocumentError(f"{shown(path)} is not a JSON Schema (expected an object)")
    check = SchemaCheck(bundle.uri, JSON_SCHEMA, bundle.registry)
    try:
        type(check.validator).check_schema(schema)
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc).splitlines()[0]
        where = "".join("/" + escape(str(p)) for p in getattr(exc, "path", ()))
        raise DocumentError(f"{shown(path)} is not a valid JSON Schema: {message}"
                            + (f" (at {where})" if where else "")) from None
    resolver = bundle.registry.resolver()

    def resolve(ref: str, base: str) -> tuple[Any, str]:
        location = urljoin(base, ref)
        return resolver.lookup(location).contents, location

    return check, shape_of(schema, bundle.uri, resolve)


class Plan:
    """The compiled checks of one effective ``validate`` config."""

    __slots__ = ("body_schema", "document", "query_schema", "strict")

    def __init__(self, document: Document | None, *, strict: bool,
                 body_schema: BodySpec | None = None,
                 query_schema: QuerySchema | None = None) -> None:
        self.document = document
        self.strict = strict
        self.body_schema = body_schema
        self.query_schema = query_schema

    def find(self, method: str, path: str) -> Found:
        """The operation for a request (``path``: the path as the client sent it,
        normalized by the gateway)."""
        if self.document is None:
            return NOT_DESCRIBED
        found = self.document.paths.find(path)
        if found is None:
            return NOT_DESCRIBED
        item, params = found
        operation = item.operation(method)
        if operation is None:
            return Found(None, {}, allow=item.allow())
        return Found(operation, params)

    def body_spec(self, operation: Operation | None) -> BodySpec | None:
        """The body rules: ``body_schema`` when set, else the operation's request body."""
        if self.body_schema is not None:
            return self.body_schema
        return operation.body if operation is not None else None

    def check_params(self, operation: Operation | None, path_params: dict[str, str],
                     raw_query: str, headers: Headers) -> list[Violation]:
        """Violations of the path, query and header parameters."""
        query = parse_query(raw_query) if (
            self.query_schema is not None or (operation is not None and operation.params)
        ) else {}
        problems: list[Violation] = []
        if operation is not None:
            for param in operation.params:
                if param.where == "query" and self.query_schema is not None:
                    continue  # query_schema replaces the document's query parameters
                problems.extend(_param(param, path_params, query, headers))
        if self.query_schema is not None:
            problems.extend(self.query_schema.violations(query))
        return problems


def _param(param: Param, path_params: dict[str, str], query: Query, headers: Headers
           ) -> Iterable[Violation]:
    if param.where == "query":
        present, value, problem = param.from_query(query)
    elif param.where == "path":
        text = path_params.get(param.name)
        present = text is not None
        value, problem = param.from_text(text) if text is not None else (None, None)
    else:
        lines = headers.getall(param.name, None)
        present = bool(lines)
        value, problem = param.from_text(",".join(lines)) if lines else (None, None)
    if problem is not None:
        return [problem]
    if not present:
        return [param.missing()] if param.required else []
    return param.validate(value)


def body_schema_spec(check: SchemaCheck) -> BodySpec:
    """``body_schema``: any JSON media type, checked by one schema."""
    return BodySpec(False, (Media("application/json", check),), any_json=True)
