"""GraphQL execution plans, compiled once per operation (and ``@skip``/``@include`` values).

:class:`PlanBuilder` turns an operation into an :class:`ObjectPlan` per selection
set and concrete type: fields collected as the GraphQL specification's
CollectFields does (fragments, type conditions, ``@skip``/``@include``, fields of
the same response key merged), and for each field its response key, how its value
is found (the parent's JSON by name, ``__typename``, or a resolver's upstream call),
its arguments when they are literals (coerced once), and a :class:`Completion` for
its type (a leaf's serializer, a list, an object's plan; an interface's or union's
plans are built per concrete type as values meet them). :mod:`pygate.graphql_exec`
runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLAbstractType,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLFloat,
    GraphQLID,
    GraphQLIncludeDirective,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLSkipDirective,
    GraphQLString,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    is_abstract_type,
)
from graphql.execution.values import get_argument_values, get_directive_values
from graphql.language import Visitor, visit

if TYPE_CHECKING:
    from .graphql_calls import Resolver

LEAF: Final = 0
LIST: Final = 1
OBJECT: Final = 2
ABSTRACT: Final = 3

READ: Final = 0  # the parent's JSON member of the field's name
TYPENAME: Final = 1  # __typename
CALL: Final = 2  # a resolver's upstream call

INT_MIN: Final = -(2**31)
INT_MAX: Final = 2**31 - 1


class Completion:
    """How a value of one output type becomes part of the response."""

    __slots__ = ("abstract", "kind", "nodes", "nonnull", "of", "plan", "plans", "serialize",
                 "simple")

    def __init__(self, kind: int, nonnull: bool) -> None:
        self.kind = kind
        self.nonnull = nonnull
        self.of: Completion | None = None  # a list's items
        self.serialize: Callable[[Any], Any] | None = None  # a leaf's
        self.simple: type | None = None  # a leaf's values of this exact type are kept as they are
        self.plan: ObjectPlan | None = None  # an object type's
        self.abstract: GraphQLAbstractType | None = None  # an interface or union
        self.plans: dict[str, ObjectPlan] = {}  # an abstract type's, by concrete type
        self.nodes: tuple[FieldNode, ...] = ()  # the field nodes whose selections are below


class FieldPlan:
    """One response key of a selection set on one concrete type."""

    __slots__ = ("args", "completion", "definition", "how", "key", "name", "nodes", "owner",
                 "resolver")

    def __init__(self, key: str, name: str, nodes: tuple[FieldNode, ...], owner: str,
                 how: int) -> None:
        self.key = key
        self.name = name
        self.nodes = nodes
        self.owner = owner  # the parent type's name, for messages
        self.how = how
        self.definition: GraphQLField | None = None
        self.resolver: Resolver | None = None
        self.args: dict[str, Any] | None = None  # None: computed per request (variables)
        self.completion: Completion = _TYPENAME


_TYPENAME = Completion(LEAF, True)


class ObjectPlan:
    """A selection set's fields for one concrete object type, in response order."""

    __slots__ = ("fields", "type_name")

    def __init__(self, type_name: str, fields: tuple[FieldPlan, ...]) -> None:
        self.type_name = type_name
        self.fields = fields


class PlanBuilder:
    """Builds the plans of one operation for one set of ``@skip``/``@include`` values."""

    def __init__(self, schema: GraphQLSchema, resolvers: Mapping[str, Resolver],
                 fragments: Mapping[str, FragmentDefinitionNode], variables: Any) -> None:
        self.schema = schema
        self.resolvers = resolvers
        self.fragments = fragments
        self.variables = variables  # graphql-core's coerced variable values

    def operation(self, operation: OperationDefinitionNode) -> ObjectPlan:
        root = self.schema.get_root_type(operation.operation)
        assert root is not None  # validation ensures it
        return self.object_plan(root, (operation.selection_set,))

    def object_plan(self, type_: GraphQLObjectType,
                    selection_sets: Iterable[SelectionSetNode]) -> ObjectPlan:
        grouped: dict[str, list[FieldNode]] = {}
        visited: set[str] = set()
        for selection_set in selection_sets:
            self.collect(type_, selection_set, grouped, visited)
        fields = []
        for key, nodes in grouped.items():
            name = nodes[0].name.value
            if name == "__typename":
                fields.append(FieldPlan(key, name, tuple(nodes), type_.name, TYPENAME))
                continue
            definition = type_.fields.get(name)
            if definition is None:  # validation ensures it exists; never sent
                continue
            resolver = self.resolvers.get(f"{type_.name}.{name}")
            plan = FieldPlan(key, name, tuple(nodes), type_.name,
                             READ if resolver is None else CALL)
            plan.definition = definition
            plan.resolver = resolver
            if resolver is not None:
                plan.args = constant_args(definition, nodes[0])
            plan.completion = self.completion(definition.type, plan.nodes)
            fields.append(plan)
        return ObjectPlan(type_.name, tuple(fields))

    def completion(self, type_: GraphQLOutputType, nodes: tuple[FieldNode, ...]) -> Completion:
        nonnull = isinstance(type_, GraphQLNonNull)
        if nonnull:
            type_ = type_.of_type  # type: ignore[union-attr]
        if isinstance(type_, GraphQLList):
            found = Completion(LIST, nonnull)
            found.of = self.completion(type_.of_type, nodes)
            return found
        if isinstance(type_, GraphQLObjectType):
            found = Completion(OBJECT, nonnull)
            found.plan = self.object_plan(type_, _below(nodes))
            return found
        if is_abstract_type(type_):
            found = Completion(ABSTRACT, nonnull)
            found.abstract = type_
            found.nodes = nodes
            return found
        found = Completion(LEAF, nonnull)
        found.serialize, found.simple = serializer(type_)  # type: ignore[arg-type]
        return found

    def concrete(self, completion: Completion, type_: GraphQLObjectType) -> ObjectPlan:
        plan = completion.plans.get(type_.name)
        if plan is None:
            plan = completion.plans[type_.name] = self.object_plan(type_,
                                                                   _below(completion.nodes))
        return plan

    def collect(self, type_: GraphQLObjectType, selection_set: SelectionSetNode,
                grouped: dict[str, list[FieldNode]], visited: set[str]) -> None:
        for selection in selection_set.selections:
            if selection.directives and not self.included(selection):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                grouped.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                if condition is None or self.applies(condition.name.value, type_):
                    self.collect(type_, selection.selection_set, grouped, visited)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if name in visited or fragment is None:
                    continue
                visited.add(name)
                if self.applies(fragment.type_condition.name.value, type_):
                    self.collect(type_, fragment.selection_set, grouped, visited)

    def applies(self, condition: str, type_: GraphQLObjectType) -> bool:
        if condition == type_.name:
            return True
        named = self.schema.get_type(condition)
        return is_abstract_type(named) and self.schema.is_sub_type(named, type_)

    def included(self, node: Any) -> bool:
        skip = get_directive_values(GraphQLSkipDirective, node, self.variables)
        if skip is not None and skip.get("if") is True:
            return False
        include = get_directive_values(GraphQLIncludeDirective, node, self.variables)
        return not (include is not None and include.get("if") is False)


def _below(nodes: Iterable[FieldNode]) -> list[SelectionSetNode]:
    return [node.selection_set for node in nodes if node.selection_set is not None]


def constant_args(definition: GraphQLField, node: FieldNode) -> dict[str, Any] | None:
    """A field's arguments when no variable is among them (coerced once), else None."""
    if not definition.args:
        return {}
    if node.arguments and _has_variable(node):
        return None
    try:
        return get_argument_values(definition, node)
    except GraphQLError:
        return None  # reported per request, with the field's path


def _has_variable(node: FieldNode) -> bool:
    found: list[bool] = []

    class Finder(Visitor):
        def enter_variable(self, *_: Any) -> Any:
            found.append(True)
            return Visitor.BREAK

    for argument in node.arguments or ():
        visit(argument, Finder())
    return bool(found)


def uses_variable_conditions(definitions: Iterable[Any]) -> tuple[str, ...]:
    """The variables any ``@skip``/``@include`` of these definitions reads (sorted)."""
    names: set[str] = set()

    class Finder(Visitor):
        def enter_directive(self, node: Any, *_: Any) -> Any:
            if node.name.value in ("skip", "include"):
                for argument in node.arguments or ():
                    if isinstance(argument.value, VariableNode):
                        names.add(argument.value.name.value)

    for definition in definitions:
        visit(definition, Finder())
    return tuple(sorted(names))


def serializer(type_: GraphQLScalarType | GraphQLEnumType
               ) -> tuple[Callable[[Any], Any], type | None]:
    """A leaf type's serializer, and the Python type whose values pass unchanged."""
    if type_ is GraphQLString or type_ is GraphQLID:
        return type_.serialize, str
    if type_ is GraphQLBoolean:
        return type_.serialize, bool
    if type_ is GraphQLInt:
        return _int, None
    if type_ is GraphQLFloat:
        return _float, None
    return type_.serialize, None  # enums, custom scalars (as they are, from an SDL)


def _int(value: Any) -> Any:
    if type(value) is int and INT_MIN <= value <= INT_MAX:
        return value
    return GraphQLInt.serialize(value)


def _float(value: Any) -> Any:
    if type(value) is float and math.isfinite(value):
        return value
    return GraphQLFloat.serialize(value)
