"""GraphQL documents, prepared once per route and kept: parsed, validated, bounded, planned.

- :class:`Documents`: a route's cache of :class:`Prepared` documents, keyed by
  the document's text (a bounded LRU: :data:`DOCUMENTS` entries, documents of at
  most :data:`DOCUMENT_CHARS` characters). A repeated query is not parsed,
  validated or measured again; its refusal, when it is refused, is kept too.
- :class:`Prepared`: the outcome: either the request errors (a syntax error,
  validation errors, a bound exceeded) formatted once, or the document's
  operations, each with the execution plans built for it so far.
- :class:`Persisted`: a route's Automatic Persisted Queries, sha256 hash ->
  document text (a bounded LRU: :data:`PERSISTED` entries, :data:`PERSISTED_CHARS`
  characters in all).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    parse,
    validate,
)

from .graphql_bounds import Bounds, FieldCosts, refusal
from .graphql_plan import ObjectPlan, uses_variable_conditions

DOCUMENTS: Final = 1000
"""Prepared documents kept per route."""
DOCUMENT_CHARS: Final = 64 * 1024
"""Longer documents are prepared for each request and not kept."""
PLANS: Final = 16
"""Execution plans kept per operation (one per set of ``@skip``/``@include`` values)."""
PERSISTED: Final = 2000
"""Persisted queries kept per route."""
PERSISTED_CHARS: Final = 8 * 1024 * 1024
"""Characters of persisted documents kept per route, in all."""

PARSE_FAILED: Final = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED: Final = "GRAPHQL_VALIDATION_FAILED"
BAD_USER_INPUT: Final = "BAD_USER_INPUT"
OPERATION_RESOLUTION_FAILURE: Final = "OPERATION_RESOLUTION_FAILURE"
"""``extensions.code`` of the request errors, as GraphQL servers commonly name them."""

V = TypeVar("V")


class LRU(Generic[V]):
    """A dict that keeps at most ``entries`` values and ``size`` units of them, the least
    recently used going first."""

    def __init__(self, entries: int, size: int = 0, measure: Callable[[V], int] | None = None
                 ) -> None:
        self.entries = entries
        self.size = size  # 0: not measured
        self.measure = measure
        self.used = 0
        self.items: dict[str, V] = {}

    def get(self, key: str) -> V | None:
        items = self.items
        value = items.pop(key, None)
        if value is not None:
            items[key] = value  # now the most recent
        return value

    def put(self, key: str, value: V) -> None:
        items = self.items
        old = items.pop(key, None)
        if old is not None and self.measure is not None:
            self.used -= self.measure(old)
        cost = self.measure(value) if self.measure is not None else 0
        if self.size and cost > self.size:
            return
        items[key] = value
        self.used += cost
        while len(items) > self.entries or (self.size and self.used > self.size):
            oldest = next(iter(items))
            dropped = items.pop(oldest)
            if self.measure is not None:
                self.used -= self.measure(dropped)

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------------------
# Documents


def error_entry(error: GraphQLError | str, code: str) -> dict[str, Any]:
    """A GraphQL error (formatted) with ``extensions.code``."""
    formatted: dict[str, Any] = (dict(error.formatted) if isinstance(error, GraphQLError)
                                 else {"message": error})
    extensions = dict(formatted.get("extensions") or {})
    extensions["code"] = code
    formatted["extensions"] = extensions
    return formatted


@dataclass(eq=False)
class Operation:
    """One operation of a valid document, and its execution plans so far."""

    node: OperationDefinitionNode
    kind: OperationType
    introspection: bool  # reads __schema or __type: graphql-core executes it
    conditions: tuple[str, ...]  # variables read by @skip/@include
    plans: dict[tuple[Any, ...], ObjectPlan] = field(default_factory=dict)


@dataclass(eq=False)
class Prepared:
    """A document as a route takes it: its request errors, or its operations."""

    document: DocumentNode | None
    errors: list[dict[str, Any]] | None  # formatted, with extensions.code
    operations: dict[str, Operation] = field(default_factory=dict)  # by name
    fragments: dict[str, FragmentDefinitionNode] = field(default_factory=dict)
    only: Operation | None = None  # the one operation of a document that has one

    def operation(self, name: str | None) -> Operation | str:
        """The operation to run, or why none can be chosen."""
        if name is None:
            if self.only is not None:
                return self.only
            return "the document has several operations: operationName is required"
        found = self.operations.get(name)
        return found if found is not None else f"the document has no operation named {name!r}"


class Documents:
    """A route's prepared documents."""

    def __init__(self, schema: GraphQLSchema, rules: tuple[type[ASTValidationRule], ...],
                 costs: FieldCosts, bounds: Bounds) -> None:
        self.schema = schema
        self.rules = rules
        self.costs = costs
        self.bounds = bounds
        self.cache: LRU[Prepared] = LRU(DOCUMENTS)

    def get(self, text: str) -> Prepared:
        found = self.cache.get(text)
        if found is None:
            found = self.prepare(text)
            if len(text) <= DOCUMENT_CHARS:
                self.cache.put(text, found)
        return found

    def prepare(self, text: str) -> Prepared:
        """Parse, validate and measure ``text`` (no upstream call is made for any of it)."""
        try:
            document = parse(text)
        except GraphQLError as error:
            return Prepared(None, [error_entry(error, PARSE_FAILED)])
        errors = validate(self.schema, document, self.rules)
        if errors:
            return Prepared(None, [error_entry(e, VALIDATION_FAILED) for e in errors])
        refused = refusal(document, self.schema, self.costs, self.bounds)
        if refused is not None:  # after validation: no fragment cycles, every field known
            return Prepared(None, [error_entry(refused, VALIDATION_FAILED)])
        prepared = Prepared(document, None)
        fragments = prepared.fragments
        operations = []
        for definition in document.definitions:
            if isinstance(definition, FragmentDefinitionNode):
                fragments[definition.name.value] = definition
            elif isinstance(definition, OperationDefinitionNode):
                operations.append(definition)
        for node in operations:
            operation = Operation(
                node, node.operation, _introspects(node.selection_set, fragments, set()),
                uses_variable_conditions([node, *fragments.values()]))
            if node.name is not None:
                prepared.operations[node.name.value] = operation
            if len(operations) == 1:
                prepared.only = operation
        return prepared


def _introspects(selection_set: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode],
                 seen: set[str]) -> bool:
    """Whether a root selection set reads ``__schema`` or ``__type``."""
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value in ("__schema", "__type"):
                return True
        elif isinstance(selection, InlineFragmentNode):
            if _introspects(selection.selection_set, fragments, seen):
                return True
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name not in seen and name in fragments:
                seen.add(name)
                if _introspects(fragments[name].selection_set, fragments, seen):
                    return True
    return False


# ---------------------------------------------------------------------------
# Automatic Persisted Queries


class Persisted:
    """A route's persisted queries: sha256 hex digest -> document text."""

    def __init__(self) -> None:
        self.store: LRU[str] = LRU(PERSISTED, PERSISTED_CHARS, len)

    def get(self, digest: str) -> str | None:
        return self.store.get(digest.lower())

    def put(self, digest: str, text: str) -> None:
        self.store.put(digest.lower(), text)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
