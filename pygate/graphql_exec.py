"""Executing a validated GraphQL operation whose values are upstream JSON.

graphql-core parses, validates, coerces variables and arguments, and answers
introspection; this module runs the data fields. Its shape follows the
GraphQL specification's ExecuteQuery: fields collected per selection set
(fragments, type conditions, ``@skip``/``@include``), each field resolved and
its value completed by its type, non-null violations going up to the nearest
nullable position, each error with its path and locations. What it drops is
per-field overhead that graphql-core's general executor must carry (a resolve
info and a coroutine per field):

- **Plans, once** (:mod:`pygate.graphql_plan`). :class:`PlanBuilder` turns an operation into an
  :class:`ObjectPlan` per selection set and concrete type: for each field its
  response key, how its value is found (the parent's JSON by name,
  ``__typename``, or a resolver's upstream call), its arguments when they are
  literals, and a :class:`Completion` for its type (a leaf's serializer, a list,
  an object's plan). Plans are kept with the document (one per set of
  ``@skip``/``@include`` variable values), so a repeated query only fills values.
- **No task per field.** A field read from its parent's JSON is completed in
  place; a resolver's call is a future (:meth:`Calls.start`) whose completion
  continues in a callback, so independent calls overlap and a dependent call
  starts as soon as its parent's value is there. Mutation root fields run one
  after the other, each with everything below it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, Protocol

from graphql import GraphQLError, GraphQLObjectType
from graphql.execution.values import get_argument_values

from .graphql_plan import (
    LEAF,
    LIST,
    OBJECT,
    READ,
    TYPENAME,
    Completion,
    FieldPlan,
    ObjectPlan,
    PlanBuilder,
)

if TYPE_CHECKING:
    from .graphql_calls import Resolver

class Failed:
    """A resolver's value that is an error: the field is null, ``message`` goes to ``errors``."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class Calls(Protocol):
    """Where resolvers' calls go (:class:`pygate.graphql_calls.Calls`)."""

    deadline: float  # the loop time by which every call's value must be in

    def start(self, resolver: Resolver, parent: Any, args: dict[str, Any]) -> asyncio.Future[Any]:
        """A future of the field's value (or a :class:`Failed`); raise :class:`GraphQLError`
        when the call cannot be made."""
        ...


# ---------------------------------------------------------------------------
# One execution

Slot = tuple[Any, Any]  # (a dict or list of the response, a key or index in it)
Path = tuple[Any, Any] | None  # (the parent's path, key or index): linked, built only as needed


class Run:
    """One operation's execution over one request's calls."""

    __slots__ = ("builder", "calls", "closed", "errors", "failure", "open", "started",
                 "variables", "waiter")

    def __init__(self, calls: Calls, variables: Any, builder: PlanBuilder) -> None:
        self.calls = calls
        self.variables = variables
        self.builder = builder  # for abstract types' plans, met at run time
        self.errors: list[dict[str, Any]] = []
        self.open: dict[int, tuple[FieldPlan, Any, Path, Slot]] = {}  # fields awaiting a call
        self.started = 0  # calls asked for, numbering the open ones
        self.waiter: asyncio.Future[bool] | None = None
        self.failure: BaseException | None = None
        self.closed = False

    async def execute(self, plan: ObjectPlan, serial: bool) -> dict[str, Any]:
        """``{"data": ..., "errors": [...]}`` (``errors`` only when there are)."""
        data: dict[str, Any] = {}
        holder: list[Any] = [data]
        root: Slot = (holder, 0)
        try:
            if serial:
                late = False  # the gateway's timeout has passed: the next fields are not run
                for field in plan.fields:
                    if late:
                        self.error(f"mutation field {field.key!r} was not run: the gateway's "
                                   "timeout passed before its turn", field, (None, field.key))
                        self.null(field.completion, data, field.key, root)
                        continue
                    self.fields(ObjectPlan(plan.type_name, (field,)), _ROOT, data, None, root)
                    if self.open and not await self.idle():
                        late = True
            else:
                self.fields(plan, _ROOT, data, None, root)
                if self.open:
                    await self.idle()
        finally:
            self.closed = True
        if self.failure is not None:
            raise self.failure
        result: dict[str, Any] = {"data": holder[0]}
        if self.errors:
            result["errors"] = self.errors
        return result

    async def idle(self) -> bool:
        """Wait until no call is open; False when the deadline came first (the fields still
        waiting then fail, the rest stands)."""
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_at(self.calls.deadline, _expire, waiter)
        try:
            done = await waiter
        finally:
            timer.cancel()
            self.waiter = None
        if done is False:  # a call's body still coming at the gateway's timeout
            for field, out, path, target in list(self.open.values()):
                assert field.resolver is not None
                self.error(f"call {field.resolver.key!r} did not finish within the gateway's "
                           "timeout", field, (path, field.key))
                self.null(field.completion, out, field.key, target)
            return False
        return True

    # -- values ------------------------------------------------------------------------

    def fields(self, plan: ObjectPlan, value: Any, out: dict[str, Any], path: Path,
               target: Slot) -> None:
        for field in plan.fields:
            how = field.how
            key = field.key
            if how == READ:
                member = value.get(field.name)
                completion = field.completion
                if member is not None and type(member) is completion.simple:
                    out[key] = member
                else:
                    self.complete(member, completion, out, key, field, path, target)
            elif how == TYPENAME:
                out[key] = plan.type_name
            else:
                out[key] = None  # its place in the response's order
                self.call(field, value, out, path, target)

    def call(self, field: FieldPlan, parent: Any, out: dict[str, Any], path: Path,
             target: Slot) -> None:
        try:
            args = field.args
            if args is None:
                assert field.definition is not None
                args = get_argument_values(field.definition, field.nodes[0], self.variables)
            assert field.resolver is not None
            future = self.calls.start(field.resolver, parent if parent is not _ROOT else None,
                                      args)
        except GraphQLError as error:
            self.error(error.message, field, (path, field.key))
            self.null(field.completion, out, field.key, target)
            return
        token = self.started = self.started + 1
        self.open[token] = (field, out, path, target)
        future.add_done_callback(lambda done: self.resolved(done, token))

    def resolved(self, done: asyncio.Future[Any], token: int) -> None:
        field, out, path, target = self.open[token]
        try:
            if not self.closed:
                value = done.result()
                if type(value) is Failed:
                    self.error(value.message, field, (path, field.key))
                    self.null(field.completion, out, field.key, target)
                else:
                    self.complete(value, field.completion, out, field.key, field, path, target)
        except BaseException as exc:  # a defect (or a plugin's failure): the request fails
            if self.failure is None:
                self.failure = exc
        finally:
            del self.open[token]
            if (not self.open or self.failure is not None) and self.waiter is not None \
                    and not self.waiter.done():
                self.waiter.set_result(True)

    def complete(self, value: Any, completion: Completion, container: Any, key: Any,
                 field: FieldPlan, path: Path, target: Slot) -> None:
        """Put ``value`` of type ``completion`` at ``container[key]`` (whose path is
        ``(path, key)``); a null in a non-null position empties ``target`` instead."""
        if value is None:
            if completion.nonnull:
                self.error(f"Cannot return null for non-nullable field {field.owner}."
                           f"{field.name}.", field, (path, key))
                target[0][target[1]] = None
            else:
                container[key] = None
            return
        kind = completion.kind
        if kind == LEAF:
            if type(value) is completion.simple:
                container[key] = value
                return
            try:
                assert completion.serialize is not None
                container[key] = completion.serialize(value)
            except Exception as exc:  # GraphQLError, or a custom scalar's own
                message = exc.message if isinstance(exc, GraphQLError) else str(exc)
                self.error(message, field, (path, key))
                self.null(completion, container, key, target)
            return
        here = (path, key)
        below = target if completion.nonnull else (container, key)
        if kind == LIST:
            if not isinstance(value, list):
                self.error(f"Expected Iterable, but did not find one for field "
                           f"'{field.owner}.{field.name}'.", field, here)
                self.null(completion, container, key, target)
                return
            items: list[Any] = [None] * len(value)
            container[key] = items
            of = completion.of
            assert of is not None
            simple = of.simple
            for index, item in enumerate(value):
                if simple is not None and type(item) is simple:
                    items[index] = item
                else:
                    self.complete(item, of, items, index, field, here, below)
            return
        if not isinstance(value, dict):
            self.error(f"{field.owner}.{field.name}: expected a JSON object, found "
                       f"{_kind(value)}", field, here)
            self.null(completion, container, key, target)
            return
        plan = completion.plan if kind == OBJECT else self.concrete(completion, value, field,
                                                                     here)
        if plan is None:
            self.null(completion, container, key, target)
            return
        obj: dict[str, Any] = {}
        container[key] = obj  # before its fields: a null below may empty it
        self.fields(plan, value, obj, here, below)

    def concrete(self, completion: Completion, value: dict[str, Any], field: FieldPlan,
                 here: Path) -> ObjectPlan | None:
        abstract = completion.abstract
        assert abstract is not None
        name = value.get("__typename")
        schema = self.builder.schema
        type_ = schema.get_type(name) if isinstance(name, str) else None
        if not isinstance(type_, GraphQLObjectType) or not schema.is_sub_type(abstract, type_):
            self.error(f"Abstract type {abstract.name!r} must resolve to an object type at "
                       f"runtime for field '{field.owner}.{field.name}': the value's "
                       f"__typename is {name!r}, not one of "
                       + ", ".join(t.name for t in schema.get_possible_types(abstract)),
                       field, here)
            return None
        return self.builder.concrete(completion, type_)

    def null(self, completion: Completion, container: Any, key: Any, target: Slot) -> None:
        if completion.nonnull:
            target[0][target[1]] = None
        else:
            container[key] = None

    def error(self, message: str, field: FieldPlan, path: Path) -> None:
        self.errors.append(GraphQLError(message, nodes=list(field.nodes),
                                        path=path_list(path)).formatted)  # type: ignore[arg-type]


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


_ROOT: Final[dict[str, Any]] = {}
"""The root value: root fields without a resolver are null."""


def path_list(path: Path) -> list[Any]:
    out: list[Any] = []
    while path is not None:
        path, key = path
        out.append(key)
    out.reverse()
    return out


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a boolean" if isinstance(value, bool) else "a number"
