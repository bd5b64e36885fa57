"""GraphQL routes: one schema, its fields resolved by upstream calls.

At load (:func:`compile_graphql`) the route's SDL file is read and built with
graphql-core, and every ``[routes.graphql.resolvers."Type.field"]`` table is
checked against the schema and compiled like an aggregate call (its path,
query, headers and body are templates whose placeholders also read
``{parent.FIELD}`` and ``{args.NAME}``), with its ``batch`` when it has one
(:mod:`pygate.graphql_calls`).

Per request (:func:`serve`), in the order the GraphQL-over-HTTP specification
gives (:mod:`pygate.graphql_http`): the response media type from ``Accept``; the
parameters; a persisted query's hash looked up or its document stored
(Automatic Persisted Queries); the document prepared, or found prepared
(parsed, validated, held to the route's bounds, :mod:`pygate.graphql_documents`);
the operation chosen and its variables coerced; then the operation executed
(:mod:`pygate.graphql_exec`), making only the calls its fields need. A request
refused before execution makes no upstream call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from aiohttp import web
from graphql import (
    ASTValidationRule,
    ExecutionResult,
    GraphQLError,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationType,
    build_schema,
    execute,
    specified_rules,
)
from graphql.execution.values import get_variable_values

from .aggregate.placeholders import Placeholder
from .aggregate.plan import SOURCES, CallCompiler
from .config import CallConfig, ConfigIssue, GraphQLConfig, key_path, suggest
from .context import Context
from .errors import MethodNotAllowed
from .graphql_bounds import Bounds, field_costs
from .graphql_calls import Calls, Resolver, compile_batch
from .graphql_documents import (
    BAD_USER_INPUT,
    OPERATION_RESOLUTION_FAILURE,
    PLANS,
    Documents,
    Persisted,
    Prepared,
    error_entry,
    sha256_hex,
)
from .graphql_exec import Failed, Run
from .graphql_http import (
    BadGraphQLRequest,
    Params,
    json_bytes,
    negotiate,
    read_params,
    request_errors,
    respond,
)
from .graphql_plan import PlanBuilder
from .router import Route
from .upstream import Upstream

RESOLVER_SOURCES = ("parent", "args")
"""What a resolver's placeholders read besides the aggregate sources."""

NOT_STORED = {"Cache-Control": "no-store"}
"""On answers that change once a document is stored (a persisted query not found)."""

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(eq=False)
class GraphQLPlan:
    """A GraphQL route: its schema, resolvers, bounds, documents and persisted queries."""

    route: str
    schema: GraphQLSchema
    bounds: Bounds
    introspection: bool
    resolvers: dict[str, Resolver]
    documents: Documents
    persisted: Persisted | None  # None: persisted_queries = false

    def describe(self) -> list[str]:
        """``Query.me -> users GET /users/{identity.id}`` lines for ``pygate explain``."""
        return [resolver.describe() for resolver in self.resolvers.values()]


# ---------------------------------------------------------------------------
# Load


class _ResolverCompiler(CallCompiler):
    """The aggregate call compiler, with ``{parent.X}``/``{args.X}`` and resolver key paths."""

    def __init__(self, route: Route, keys: Mapping[str, str]) -> None:
        super().__init__(route, {})
        self.where = f"routes[{route.index}].graphql"
        self.call_names = list(RESOLVER_SOURCES)
        self.keys = keys  # internal call name -> "Type.field"

    def call_where(self, name: str) -> str:
        return f"{self.where}.resolvers.{key_path([self.keys[name]])}"

    def placeholder(self, text: str, where: str) -> Placeholder | None:
        head, dot, _ = text.partition(".")
        known = [*RESOLVER_SOURCES, *SOURCES]
        if dot and head not in known and head not in self.params:
            self.issues.append(ConfigIssue(
                where, f"unknown placeholder {{{text}}}: expected {{parent.FIELD}}, "
                f"{{args.NAME}}, {{identity.FIELD}}, {{query.NAME}} or {{header.NAME}}"
                + suggest(head, known)))
            return None
        return super().placeholder(text, where)


def compile_graphql(route: Route, config: GraphQLConfig, schema_path: str,
                    upstream_for: Callable[[str], Upstream]
                    ) -> tuple[GraphQLPlan | None, list[ConfigIssue]]:
    """Read and build the schema, compile and attach the resolvers; or the problems."""
    where = f"routes[{route.index}].graphql"
    try:
        with open(schema_path, encoding="utf-8") as file:
            sdl = file.read()
    except OSError as exc:
        return None, [ConfigIssue(f"{where}.schema",
                                  f"cannot read {schema_path}: {exc.strerror or exc}")]
    try:
        schema = build_schema(sdl)
    except GraphQLError as exc:
        return None, [ConfigIssue(f"{where}.schema", f"invalid schema in {schema_path}: "
                                  f"{exc.message}")]
    if schema.query_type is None:
        return None, [ConfigIssue(f"{where}.schema", f"{schema_path} defines no Query type")]
    keys = {f"resolver{n}": key for n, key in enumerate(config.resolvers)}
    compiler = _ResolverCompiler(route, keys)
    bounds = Bounds(max_depth=config.max_depth, max_aliases=config.max_aliases,
                    max_cost=config.max_cost, list_size=config.list_size,
                    max_calls=config.max_calls)
    resolvers: dict[str, Resolver] = {}
    for index, (name, key) in enumerate(keys.items()):
        resolver = config.resolvers[key]
        kwhere = compiler.call_where(name)
        type_name, dot, field_name = key.partition(".")
        owner = schema.type_map.get(type_name)
        if not dot or not field_name:
            compiler.issues.append(ConfigIssue(kwhere, "expected a key like \"Type.field\""))
            continue
        if not isinstance(owner, GraphQLObjectType):
            objects = [t.name for t in schema.type_map.values()
                       if isinstance(t, GraphQLObjectType) and not t.name.startswith("__")]
            compiler.issues.append(ConfigIssue(
                kwhere, f"no object type {type_name!r} in the schema" + suggest(type_name,
                                                                              objects)))
            continue
        if field_name not in owner.fields:
            compiler.issues.append(ConfigIssue(
                kwhere, f"type {type_name} has no field {field_name!r}"
                + suggest(field_name, list(owner.fields))))
            continue
        values = dict(resolver)
        batch_config = values.pop("batch")
        call = compiler.call(index, name, CallConfig(**values), upstream_for)
        if call is None:
            continue
        compiled = Resolver(key, call)
        if batch_config is not None:
            compiled.batch, issues = compile_batch(call, batch_config,
                                                   owner.fields[field_name].type, kwhere)
            compiler.issues.extend(issues)
        resolvers[key] = compiled
        owner.fields[field_name].resolve = _resolve(compiled)  # for graphql-core's executor
    if compiler.issues:
        return None, compiler.issues
    rules: list[type[ASTValidationRule]] = list(specified_rules)
    if not config.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    costs = field_costs(schema, resolvers, bounds.list_size,
                        {key: r.batch.max for key, r in resolvers.items() if r.batch is not None})
    documents = Documents(schema, tuple(rules), costs, bounds)
    return GraphQLPlan(route.name, schema, bounds, config.introspection, resolvers, documents,
                       Persisted() if config.persisted_queries else None), []


def _resolve(resolver: Resolver) -> Callable[..., Any]:
    """The field's resolver for graphql-core's executor (operations that introspect)."""

    async def resolve(parent: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        calls: Calls = info.context
        value = await calls.start(resolver, parent, args)
        if type(value) is Failed:
            raise GraphQLError(value.message)
        return value

    resolve.__name__ = f"resolve {resolver.key}"
    return resolve


# ---------------------------------------------------------------------------
# One request


async def serve(plan: GraphQLPlan, request: web.BaseRequest, ctx: Context,
                calls_for: Callable[[], Calls]) -> web.Response:
    """Answer one GraphQL request (``calls_for`` makes the request's :class:`Calls`)."""
    media = negotiate(request.headers.get("Accept"))
    params = await read_params(request, ctx)
    text = params.query
    digest: str | None = None
    if params.extensions is not None and "persistedQuery" in params.extensions:
        found = persisted_query(plan, params, media)
        if isinstance(found, web.Response):
            return found
        text, digest = found
    assert text is not None
    prepared = plan.documents.get(text)
    if prepared.errors is not None:
        return request_errors(prepared.errors, media)
    if digest is not None and plan.persisted is not None:
        plan.persisted.put(digest, text)  # parsed and valid: worth keeping
    operation = prepared.operation(params.operation_name)
    if isinstance(operation, str):
        return request_errors([error_entry(operation, OPERATION_RESOLUTION_FAILURE)], media)
    kind = operation.kind
    if kind is OperationType.MUTATION and request.method == "GET":
        raise MethodNotAllowed("a mutation must be sent with POST", headers={"Allow": "POST"},
                               extra={"errors": [{"message": "a mutation must be sent with "
                                                             "POST"}]})
    if kind is OperationType.SUBSCRIPTION:
        return request_errors([error_entry("subscriptions are not supported over HTTP",
                                           OPERATION_RESOLUTION_FAILURE)], media)
    variables: Any = None
    definitions = operation.node.variable_definitions
    if definitions:
        variables = get_variable_values(plan.schema, definitions, params.variables or {})
        if isinstance(variables, list):
            return request_errors([error_entry(e, BAD_USER_INPUT) for e in variables], media)
    calls = calls_for()
    try:
        if operation.introspection:
            result = await _introspecting(plan, prepared, params, calls)
        else:
            coerced = getattr(variables, "coerced", variables) or {}
            condition = tuple(coerced.get(name) for name in operation.conditions)
            builder = PlanBuilder(plan.schema, plan.resolvers, prepared.fragments, variables)
            root = operation.plans.get(condition)
            if root is None:
                try:
                    root = builder.operation(operation.node)
                except GraphQLError as error:  # an @include(if:) without a usable value
                    return respond(json_bytes({"data": None, "errors": [error.formatted]}),
                                   media)
                if len(operation.plans) < PLANS:
                    operation.plans[condition] = root
            result = await Run(calls, variables, builder).execute(
                root, serial=kind is OperationType.MUTATION)
    finally:
        calls.cancel()  # nothing is still needed once the result is complete
        ctx.target = None  # calls went to several targets; none is "the" target
    return respond(json_bytes(result), media)


def persisted_query(plan: GraphQLPlan, params: Params, media: str
                    ) -> tuple[str, str | None] | web.Response:
    """The document of a request naming a persisted query's hash, and the hash to store it
    under (None: nothing to store); or the answer when there is no document."""
    assert params.extensions is not None
    extension = params.extensions["persistedQuery"]
    text = params.query
    if plan.persisted is None:  # persisted_queries = false
        if text is not None:
            return text, None  # the document is there: the hash is not needed
        return request_errors([error_entry("PersistedQueryNotSupported",
                                           "PERSISTED_QUERY_NOT_SUPPORTED")], media, NOT_STORED)
    if not isinstance(extension, dict):
        raise BadGraphQLRequest("extensions.persistedQuery must be an object with version "
                                "and sha256Hash")
    if extension.get("version") != 1:
        raise BadGraphQLRequest("extensions.persistedQuery.version: only version 1 (sha256) "
                                "is supported")
    digest = extension.get("sha256Hash")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise BadGraphQLRequest("extensions.persistedQuery.sha256Hash must be a sha256 digest "
                                "(64 hexadecimal digits)")
    if text is None:
        stored = plan.persisted.get(digest)
        if stored is None:
            return request_errors([error_entry("PersistedQueryNotFound",
                                               "PERSISTED_QUERY_NOT_FOUND")], media, NOT_STORED)
        return stored, None
    if sha256_hex(text) != digest.lower():
        raise BadGraphQLRequest("the query's sha256 does not match "
                                "extensions.persistedQuery.sha256Hash; nothing was stored")
    return text, digest


async def _introspecting(plan: GraphQLPlan, prepared: Prepared, params: Params,
                         calls: Calls) -> dict[str, Any]:
    """An operation that reads ``__schema`` or ``__type``, through graphql-core's executor."""
    assert prepared.document is not None
    calls.settle = True  # its resolvers start in tasks, nested a level per list
    outcome = execute(plan.schema, prepared.document, context_value=calls,
                      variable_values=params.variables, operation_name=params.operation_name)
    result: ExecutionResult = await outcome if isawaitable(outcome) else outcome
    return result.formatted  # type: ignore[return-value]
