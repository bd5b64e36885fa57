"""How much a GraphQL document asks of the upstreams, measured before any call.

A route's ``[routes.graphql]`` bounds (:class:`Bounds`) hold one document's
amplification: one query can otherwise ask for hundreds of upstream calls.

- ``max_depth``: nested selection levels (``{ me { name } }`` is 2).
- ``max_aliases``: aliased fields in the document (``a: product(id: 1)``).
- ``max_cost`` with ``list_size``: the estimated upstream calls. A field with
  a resolver counts 1, times ``list_size`` for each list above it; a field
  whose type is a list (``[Order]``; ``[[Order]]`` is two lists) multiplies
  everything below it. A batched field counts one call per ``max`` of the
  parents so counted (its parents arrive together, and one call serves
  ``max`` of them). Introspection fields cost nothing.
- ``max_calls``: the calls one request may make, counted as they are made
  (:class:`pygate.graphql.GraphQLRequest`), not here.

:func:`refusal` measures a *validated* document in one walk over its AST, each
fragment definition walked once and counted where it is spread (so the walk
stays linear however often a fragment is spread), and names the first bound it
exceeds. :func:`field_costs` builds, at load, what the walk reads of each field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_named_type,
)


@dataclass(frozen=True, slots=True)
class Bounds:
    """A GraphQL route's bounds, from its ``[routes.graphql]`` keys (same defaults)."""

    max_depth: int = 8
    max_aliases: int = 15
    max_cost: int = 1000
    list_size: int = 10
    max_calls: int = 200

    def describe(self) -> str:
        """``max_depth 8, max_aliases 15, max_cost 1000 (list_size 10), max_calls 200``."""
        return (f"max_depth {self.max_depth}, max_aliases {self.max_aliases}, max_cost "
                f"{self.max_cost} (list_size {self.list_size}), max_calls {self.max_calls}")


@dataclass(frozen=True, slots=True)
class FieldCost:
    """What the walk needs of one schema field."""

    calls: int  # 1 when a resolver makes an upstream call for it, else 0
    scale: int  # list_size ** (list levels of its type): the multiplier of what is below it
    type_name: str  # the named type its own selections are fields of
    batch: int = 0  # a batched resolver's max parents per call (0: one call per parent)


FieldCosts = Mapping[str, Mapping[str, FieldCost]]  # type name -> field name -> cost
NOTHING = FieldCost(0, 1, "")  # introspection fields, __typename, a type not in the table


def field_costs(schema: GraphQLSchema, resolved: Iterable[str], list_size: int,
                batched: Mapping[str, int] | None = None) -> dict[str, dict[str, FieldCost]]:
    """Each object and interface field's cost; ``resolved`` are the ``"Type.field"`` keys,
    ``batched`` the batched ones with their ``max``.

    An interface field costs a call when any type that implements it has a
    resolver for it (whichever type the value turns out to be, it is one call);
    it is batched when every such resolver is (with the smallest ``max``).
    """
    keys = set(resolved)
    batches = dict(batched or {})
    table: dict[str, dict[str, FieldCost]] = {}
    for type_ in schema.type_map.values():
        if type_.name.startswith("__"):
            continue
        if isinstance(type_, GraphQLObjectType):
            owners = [type_.name]
        elif isinstance(type_, GraphQLInterfaceType):
            owners = [t.name for t in schema.get_possible_types(type_)]
        else:
            continue
        table[type_.name] = {
            name: FieldCost(
                calls=int(any(f"{owner}.{name}" in keys for owner in owners)),
                scale=list_size ** _lists(definition.type),
                type_name=get_named_type(definition.type).name,
                batch=_batch([f"{owner}.{name}" for owner in owners], keys, batches))
            for name, definition in type_.fields.items()}
    return table


def _batch(candidates: list[str], keys: set[str], batches: Mapping[str, int]) -> int:
    resolved = [key for key in candidates if key in keys]
    if not resolved or any(key not in batches for key in resolved):
        return 0
    return min(batches[key] for key in resolved)


def _lists(type_: GraphQLOutputType) -> int:
    levels = 0
    while isinstance(type_, GraphQLNonNull | GraphQLList):
        if isinstance(type_, GraphQLList):
            levels += 1
        type_ = type_.of_type
    return levels


@dataclass(slots=True)
class Measure:
    """Of one selection set, fragments expanded: its depth, aliases and estimated calls.

    ``calls`` counts one call per parent; ``batched`` holds, per batch size, the
    parents of batched fields (``max`` -> parents), turned into calls at the root.
    """

    depth: int = 0
    aliases: int = 0
    calls: int = 0
    batched: dict[int, int] = field(default_factory=dict)

    @property
    def cost(self) -> int:
        """The estimated calls: each batched field's parents in calls of ``max``."""
        return self.calls + sum(-(-parents // size) for size, parents in self.batched.items())

    def add(self, other: Measure, scale: int = 1) -> None:
        self.calls += other.calls * scale
        for size, parents in other.batched.items():
            self.batched[size] = self.batched.get(size, 0) + parents * scale


class _Walk:
    """One document's walk; each fragment is measured once and reused where it is spread."""

    def __init__(self, costs: FieldCosts, fragments: Mapping[str, FragmentDefinitionNode]
                 ) -> None:
        self.costs = costs
        self.fragments = fragments
        self.measured: dict[str, Measure] = {}
        self.open: set[str] = set()  # fragments being measured: a cycle counts nothing

    def selections(self, selection_set: SelectionSetNode | None, type_name: str) -> Measure:
        total = Measure()
        if selection_set is None:
            return total
        fields = self.costs.get(type_name, {})
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                cost = fields.get(name, NOTHING)
                below = self.selections(selection.selection_set, cost.type_name)
                # __schema/__type count one level: their nesting is the schema's, not the data's
                depth = 1 if name.startswith("__") else 1 + below.depth
                total.aliases += below.aliases + (selection.alias is not None)
                if cost.batch:
                    total.batched[cost.batch] = total.batched.get(cost.batch, 0) + cost.calls
                else:
                    total.calls += cost.calls
                total.add(below, cost.scale)
            else:
                if isinstance(selection, InlineFragmentNode):
                    condition = selection.type_condition
                    below = self.selections(selection.selection_set,
                                            condition.name.value if condition else type_name)
                elif isinstance(selection, FragmentSpreadNode):
                    below = self.fragment(selection.name.value)
                else:
                    continue
                depth = below.depth
                total.aliases += below.aliases
                total.add(below)
            total.depth = max(total.depth, depth)
        return total

    def fragment(self, name: str) -> Measure:
        found = self.measured.get(name)
        if found is not None:
            return found
        definition = self.fragments.get(name)
        if definition is None or name in self.open:
            return Measure()
        self.open.add(name)
        found = self.selections(definition.selection_set, definition.type_condition.name.value)
        self.open.discard(name)
        self.measured[name] = found
        return found


def measure(document: DocumentNode, schema: GraphQLSchema, costs: FieldCosts
            ) -> list[Measure]:
    """One :class:`Measure` per operation of a validated document, in document order."""
    fragments = {d.name.value: d for d in document.definitions
                 if isinstance(d, FragmentDefinitionNode)}
    walk = _Walk(costs, fragments)
    found = []
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            root = schema.get_root_type(definition.operation)
            found.append(walk.selections(definition.selection_set,
                                         root.name if root is not None else ""))
    return found


def refusal(document: DocumentNode, schema: GraphQLSchema, costs: FieldCosts,
            bounds: Bounds) -> str | None:
    """Why a validated document is refused before any call, or None.

    Every operation of the document is held to ``max_depth`` and ``max_cost``
    (whichever one the request names); ``max_aliases`` counts the whole document.
    """
    operations = measure(document, schema, costs)
    deepest = max((m.depth for m in operations), default=0)
    if deepest > bounds.max_depth:
        return f"the query is {deepest} levels deep; this route allows {bounds.max_depth}"
    aliases = sum(m.aliases for m in operations)
    if aliases > bounds.max_aliases:
        return (f"the document has {aliases} aliases; this route allows at most "
                f"{bounds.max_aliases} (max_aliases)")
    cost = max((m.cost for m in operations), default=0)
    if cost > bounds.max_cost:
        return (f"the query's estimated cost is {cost} upstream calls (each list counted as "
                f"{bounds.list_size} items); this route allows at most {bounds.max_cost} "
                f"(max_cost)")
    return None
