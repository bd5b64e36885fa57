"""GraphQL routes: one schema, its fields resolved by upstream calls.

At load (:func:`compile_graphql`) the route's SDL file is read and built with
graphql-core, and every ``[routes.graphql.resolvers."Type.field"]`` table is
checked against the schema and compiled like an aggregate call: its path,
query and headers are templates whose placeholders are ``{parent.FIELD}``
(the object the field belongs to), ``{args.NAME}`` (the field's arguments),
``{identity.FIELD}``, ``{query.NAME}``, ``{header.NAME}`` and the route's path
parameters. The resolver is attached to the schema's field.

Per request (:func:`serve`): the query is parsed, validated (and no
introspection when it is off), held to the route's ``max_depth``,
``max_aliases`` and ``max_cost`` (:mod:`pygate.graphql_bounds`), and refused
before any upstream call when it is not valid or exceeds one; then graphql-core
executes it. Only fields the query selects are resolved; sibling fields and
list items resolve concurrently; identical upstream calls within one request
are made once, and at most ``max_calls`` distinct calls are made. A resolver
whose call fails, or is not made past ``max_calls``, gives ``null`` and an
entry in ``errors`` with its ``path`` (GraphQL semantics), not an HTTP error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import Any

from aiohttp import web
from graphql import (
    ASTValidationRule,
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationType,
    build_schema,
    execute,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)
from graphql.execution.values import get_variable_values
from multidict import CIMultiDict

from .aggregate.placeholders import Missing, Placeholder, Scope
from .aggregate.plan import SOURCES, CallCompiler, CallPlan
from .aggregate.run import CallFailed, Transform, json_bytes, make_call, render_call
from .config import CallConfig, ConfigIssue, GraphQLConfig, key_path, suggest
from .context import Context
from .errors import GatewayError, MethodNotAllowed, PayloadTooLarge
from .graphql_bounds import Bounds, FieldCosts, field_costs, refusal
from .router import Route
from .upstream import Upstream

RESOLVER_SOURCES = ("parent", "args")
"""What a resolver's placeholders read besides the aggregate sources."""

JSON_TYPE = "application/json"


@dataclass(eq=False)
class GraphQLPlan:
    """A GraphQL route's schema (resolvers attached) and its bounds."""

    route: str
    schema: GraphQLSchema
    bounds: Bounds
    introspection: bool
    resolvers: dict[str, CallPlan] = field(default_factory=dict)  # "Type.field" -> call
    rules: tuple[type[ASTValidationRule], ...] = ()  # validation, decided at load
    costs: FieldCosts = field(default_factory=dict)  # what max_cost counts, per field

    def __post_init__(self) -> None:
        rules = list(specified_rules)
        if not self.introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules = tuple(rules)

    @property
    def max_depth(self) -> int:
        return self.bounds.max_depth

    def describe(self) -> list[str]:
        """``Query.me -> users GET /users/{identity.id}`` lines for ``pygate explain``."""
        return [f"{key} -> {call.upstream.name} {call.method} {call.path.source}"
                for key, call in self.resolvers.items()]


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
    plan = GraphQLPlan(route.name, schema, bounds, config.introspection)
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
        call = compiler.call(index, name, CallConfig(**dict(resolver)), upstream_for)
        if call is not None:
            plan.resolvers[key] = call
            owner.fields[field_name].resolve = _resolver(key, call)
    if compiler.issues:
        return None, compiler.issues
    plan.costs = field_costs(schema, plan.resolvers, bounds.list_size)
    return plan, []


def _resolver(key: str, call: CallPlan) -> Callable[..., Any]:
    async def resolve(parent: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        request: GraphQLRequest = info.context
        return await request.call(key, call, parent, args)

    resolve.__name__ = f"resolve {key}"
    return resolve


# ---------------------------------------------------------------------------
# One request


class GraphQLRequest:
    """What resolvers share within one request: where calls go, and the calls made."""

    def __init__(self, request: web.BaseRequest, ctx: Context, params: Mapping[str, str],
                 raw_query: str, headers: CIMultiDict[str], transform: Transform | None,
                 fork_ctx: bool, deadline: float, max_body: int) -> None:
        self.request = request
        self.ctx = ctx
        self.params = params
        self.raw_query = raw_query
        self.headers = headers
        self.transform = transform
        self.fork_ctx = fork_ctx
        self.deadline = deadline
        self.max_body = max_body
        self.calls: dict[tuple[Any, ...], asyncio.Task[Any]] = {}
        self.max_calls: int | None = None  # distinct calls allowed; serve sets the route's

    async def call(self, key: str, call: CallPlan, parent: Any, args: dict[str, Any]) -> Any:
        scope = Scope(self.params, self.raw_query, self.request.headers, self.ctx.identity)
        scope.results = {"parent": parent if parent is not None else {}, "args": args}
        try:
            upstream_request = render_call(call, scope, self.headers)
        except Missing as missing:
            raise GraphQLError(f"{key} was not resolved: {missing}") from None
        same = (upstream_request.upstream, upstream_request.method, upstream_request.path,
                upstream_request.query, tuple(upstream_request.headers.items()))
        task = self.calls.get(same)
        if task is None and self.max_calls is not None and len(self.calls) >= self.max_calls:
            raise GraphQLError(f"call {key!r} was not made: this request has made "
                               f"{len(self.calls)} upstream calls, the most this route allows "
                               "(max_calls)")
        if task is None:  # the first to ask makes the call; the others share its result
            task = asyncio.get_running_loop().create_task(make_call(
                call, upstream_request, self.ctx, transform=self.transform,
                fork_ctx=self.fork_ctx, deadline=self.deadline, max_body=self.max_body,
                label=key))
            self.calls[same] = task
        result = await asyncio.shield(task)
        if isinstance(result, CallFailed):
            raise GraphQLError(result.detail)
        return result

    def cancel(self) -> None:
        for task in self.calls.values():
            task.cancel()


class BadGraphQLRequest(GatewayError):
    """A request that is not a GraphQL query pygate can run.

    A 400 problem document that also carries GraphQL's ``errors`` list (with
    ``locations`` where the parser or validator gave them), so GraphQL clients
    read it as they read any refused query.
    """

    status = 400

    def __init__(self, detail: str, errors: list[GraphQLError] | None = None) -> None:
        formatted = [e.formatted for e in errors] if errors else [{"message": detail}]
        super().__init__(detail, extra={"errors": formatted})


async def read_params(request: web.BaseRequest, max_body: int
                      ) -> tuple[str, dict[str, Any] | None, str | None]:
    """``(query, variables, operationName)`` from a GET's query string or a POST body."""
    if request.method == "GET":
        get = request.query
        variables_text = get.get("variables")
        try:
            variables = json.loads(variables_text) if variables_text else None
        except ValueError:
            raise BadGraphQLRequest("variables is not JSON") from None
        return _checked(get.get("query"), variables, get.get("operationName"))
    if request.method != "POST":
        raise MethodNotAllowed("GraphQL takes GET or POST", headers={"Allow": "GET, POST"})
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > max_body:
            raise PayloadTooLarge("request body exceeds the gateway's max_body")
    kind = request.content_type
    if kind == "application/graphql":
        return _checked(body.decode("utf-8", "replace"), None, None)
    if kind != JSON_TYPE:
        raise GatewayError(f"expected Content-Type {JSON_TYPE} or application/graphql",
                           status=415)
    try:
        data = json.loads(body)
    except ValueError:
        raise BadGraphQLRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadGraphQLRequest("expected a JSON object with query, variables, operationName")
    return _checked(data.get("query"), data.get("variables"), data.get("operationName"))


def _checked(query: Any, variables: Any, operation: Any
             ) -> tuple[str, dict[str, Any] | None, str | None]:
    if not isinstance(query, str) or not query.strip():
        raise BadGraphQLRequest("no query: expected a GraphQL document in query")
    if variables is not None and not isinstance(variables, dict):
        raise BadGraphQLRequest("variables must be a JSON object")
    if operation is not None and not isinstance(operation, str):
        raise BadGraphQLRequest("operationName must be a string")
    return query, variables, operation


def prepare(plan: GraphQLPlan, query: str, variables: dict[str, Any] | None,
            operation_name: str | None, method: str
            ) -> tuple[DocumentNode, dict[str, Any]]:
    """Parse, validate and check bounds; raise :class:`BadGraphQLRequest` before any call."""
    try:
        document = parse(query)
    except GraphQLError as exc:
        raise BadGraphQLRequest(f"syntax error: {exc.message}", [exc]) from None
    errors = validate(plan.schema, document, plan.rules)
    if errors:
        raise BadGraphQLRequest(f"invalid query: {errors[0].message}", errors)
    refused = refusal(document, plan.schema, plan.costs, plan.bounds)  # after validation:
    if refused is not None:  # no fragment cycles, every field known
        raise BadGraphQLRequest(refused)
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        raise BadGraphQLRequest(f"no operation named {operation_name!r}" if operation_name
                                else "several operations: operationName is required")
    if operation.operation is OperationType.MUTATION and method == "GET":
        raise MethodNotAllowed("a mutation must be sent with POST", headers={"Allow": "POST"})
    coerced = get_variable_values(plan.schema, operation.variable_definitions or (),
                                  variables or {})
    if isinstance(coerced, list):
        raise BadGraphQLRequest(f"invalid variables: {coerced[0].message}", coerced)
    return document, variables or {}


async def serve(plan: GraphQLPlan, request: web.BaseRequest, ctx: Context,
                state: GraphQLRequest) -> web.Response:
    """Answer one GraphQL request: ``{"data": ..., "errors": [...]}`` with status 200."""
    query, variables, operation_name = await read_params(request, state.max_body)
    document, variables = prepare(plan, query, variables, operation_name, request.method)
    state.max_calls = plan.bounds.max_calls
    try:
        outcome = execute(plan.schema, document, context_value=state,
                          variable_values=variables, operation_name=operation_name)
        result: ExecutionResult = await outcome if isawaitable(outcome) else outcome
    finally:
        state.cancel()  # nothing is still needed once the result is complete
        ctx.target = None
    return web.Response(body=json_bytes(result.formatted), content_type=JSON_TYPE)
