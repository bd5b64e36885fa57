"""GraphQL execution semantics through the gateway, against the reference executor.

pygate runs data fields with its own planned executor (:mod:`pygate.graphql_exec`);
each query here goes through a real gateway to a real upstream serving JSON, and
its answer must equal what graphql-core's executor gives for the same schema and
the same JSON: fragments and type conditions, aliases and merged fields,
``@skip``/``@include`` with variables, interfaces and unions (``__typename`` in
the upstream's JSON), enums and custom scalars, leaf values that do not fit
their type, and nulls in non-null positions going up to the nearest nullable
one, each error with its path and locations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from graphql import build_schema, execute, parse

from tests.conftest import UpstreamFactory

SCHEMA = """
type Query {
  user(id: ID!): User
  users: [User!]
  strict: [User!]!
  node(id: ID!): Node
  search: [SearchResult]
  status: Status
  when: Date
  nothing: String
}
interface Node { id: ID! }
union SearchResult = User | Product
enum Status { OK DEGRADED }
scalar Date
type User implements Node {
  id: ID!
  name: String!
  nick: String
  age: Int
  score: Float
  admin: Boolean
  tags: [String!]
  friends: [User]
  best: User!
}
type Product implements Node {
  id: ID!
  title: String
  price: Float!
}
"""

ADA = {"id": "1", "name": "Ada", "nick": "ada", "age": 36, "score": 9.5, "admin": True,
       "tags": ["math", "engines"], "best": {"id": "2", "name": "Bob"}}
DATA: dict[str, Any] = {
    "/users/1": ADA,
    "/users/bad": {"id": "bad", "name": None},
    "/users/odd": {"id": "odd", "name": "Odd", "age": "thirty", "score": "high",
                   "tags": ["a", None], "admin": "yes"},
    "/users/str": {"id": "str", "name": "S", "tags": "not a list"},
    "/users/1/friends": [{"id": "2", "name": "Bob", "best": {"id": "1", "name": "Ada"}},
                         {"id": "3", "name": "Cy"},  # no best: a null in User.best!
                         None],
    "/users/2/friends": [],
    "/users/3/friends": None,
    "/users": [ADA, {"id": "4", "name": None}],
    "/strict": [ADA, {"id": "5"}],
    "/nodes/p1": {"__typename": "Product", "id": "p1", "title": "Widget", "price": 2.5},
    "/nodes/1": {"__typename": "User", **ADA},
    "/nodes/x": {"__typename": "Robot", "id": "x"},
    "/search": [{"__typename": "User", "id": "2", "name": "Bob"},
                {"__typename": "Product", "id": "p2", "title": "Gadget", "price": None}],
    "/status": "DEGRADED",
    "/when": {"day": 6, "month": 12},
}

RESOLVERS = {  # "Type.field" -> the path of its call, from the parent and the arguments
    "Query.user": lambda parent, args: f"/users/{args['id']}",
    "Query.users": lambda parent, args: "/users",
    "Query.strict": lambda parent, args: "/strict",
    "Query.node": lambda parent, args: f"/nodes/{args['id']}",
    "Query.search": lambda parent, args: "/search",
    "Query.status": lambda parent, args: "/status",
    "Query.when": lambda parent, args: "/when",
    "User.friends": lambda parent, args: f"/users/{parent['id']}/friends",
}
PATHS = {  # the same calls as pygate resolvers
    "Query.user": "/users/{args.id}", "Query.users": "/users", "Query.strict": "/strict",
    "Query.node": "/nodes/{args.id}", "Query.search": "/search", "Query.status": "/status",
    "Query.when": "/when", "User.friends": "/users/{parent.id}/friends",
}

QUERIES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("leaves", '{ user(id: "1") { id name nick age score admin tags } }', None),
    ("non-null field", '{ user(id: "bad") { id name } }', None),
    ("non-null list items", "{ users { id name } }", None),
    ("non-null to the root", "{ strict { id name } nothing }", None),
    ("leaf values of the wrong type", '{ user(id: "odd") { age score admin tags } }', None),
    ("a list that is not one", '{ user(id: "str") { name tags } }', None),
    ("fragments, aliases, __typename",
     'query Q { a: user(id: "1") { ...F ... on User { nick } } b: user(id: "1") { n: name } } '
     "fragment F on User { __typename id n: name }", None),
    ("merged fields", '{ user(id: "1") { name best { id } } user(id: "1") { nick best { name } } }',
     None),
    ("nested lists and a nested non-null",
     '{ user(id: "1") { friends { name best { id } friends { id } } } }', None),
    ("interface", '{ a: node(id: "p1") { id ... on Product { title } ... on User { name } } '
                  'b: node(id: "1") { __typename id ... on User { name } } }', None),
    ("union and a non-null in it",
     "{ search { __typename ... on User { name } ... on Product { title price } } }", None),
    ("enum and custom scalar", "{ status when }", None),
    ("variables in arguments", "query Q($id: ID!) { user(id: $id) { name } }", {"id": "1"}),
    ("skip and include, false",
     'query Q($s: Boolean!, $i: Boolean!) { user(id: "1") { name @skip(if: $s) '
     "nick @include(if: $i) ... on User @include(if: $i) { age } } }", {"s": False, "i": False}),
    ("skip and include, true",
     'query Q($s: Boolean!, $i: Boolean!) { user(id: "1") { name @skip(if: $s) '
     "nick @include(if: $i) ... on User @include(if: $i) { age } } }", {"s": True, "i": True}),
    ("skip with a literal", '{ user(id: "1") { name @skip(if: true) nick @include(if: true) } }',
     None),
]


def reference(query: str, variables: dict[str, Any] | None) -> dict[str, Any]:
    """graphql-core's own executor over the same JSON."""
    schema = build_schema(SCHEMA)
    for key, path in RESOLVERS.items():
        type_name, field_name = key.split(".")

        def resolve(parent: Any, info: Any, path: Any = path, **args: Any) -> Any:
            return DATA[path(parent, args)]

        schema.type_map[type_name].fields[field_name].resolve = resolve  # type: ignore[attr-defined]
    result = execute(schema, parse(query), variable_values=variables)
    assert not hasattr(result, "__await__")
    return result.formatted  # type: ignore[union-attr,return-value]


def normalized(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    if "errors" in out:
        out["errors"] = sorted(out["errors"], key=lambda e: json.dumps(e["path"]))
    return out


@pytest.fixture
async def gateway(pygate_gateway: Any, upstream: UpstreamFactory, tmp_path: Path) -> Any:
    async def serve(request: web.Request) -> web.Response:
        return web.json_response(DATA[request.path])

    up = await upstream(handler=serve)
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    return await pygate_gateway({
        "upstreams": {"data": {"targets": [up.url]}},
        "routes": [{"name": "graphql", "path": "/graphql", "graphql": {
            "schema": "schema.graphql",
            "resolvers": {key: {"upstream": "data", "path": path}
                          for key, path in PATHS.items()}}}],
    }, base_dir=str(tmp_path))


@pytest.mark.parametrize(("name", "query", "variables"), QUERIES, ids=[q[0] for q in QUERIES])
async def test_answers_what_the_reference_executor_answers(
        gateway: Any, name: str, query: str, variables: dict[str, Any] | None) -> None:
    async with gateway.session.post(gateway.url + "/graphql",
                                    json={"query": query, "variables": variables}) as response:
        assert response.status == 200
        body = await response.json()
    expected = reference(query, variables)
    assert normalized(body) == normalized(expected)
    # The same query again: the plan kept with the document gives the same answer.
    async with gateway.session.post(gateway.url + "/graphql",
                                    json={"query": query, "variables": variables}) as response:
        assert normalized(await response.json()) == normalized(expected)


async def test_a_value_that_names_no_type_of_an_abstract_field_is_an_error(
        gateway: Any) -> None:
    """The reference executor fails the same query (it finds no type); pygate says why."""
    query = '{ node(id: "x") { id } }'
    with pytest.raises(AssertionError):
        assert "errors" not in reference(query, None)
    async with gateway.session.post(gateway.url + "/graphql", json={"query": query}) as response:
        body = await response.json()
    assert body["data"] == {"node": None}
    [error] = body["errors"]
    assert error["path"] == ["node"]
    assert "'Robot'" in error["message"] and "User, Product" in error["message"]


def test_the_reference_runs_the_same_resolvers() -> None:
    """The comparison means something: the reference reads the same JSON, and the cases
    above include errors of every kind it reports."""
    assert reference('{ user(id: "1") { name } }', None) == {"data": {"user": {"name": "Ada"}}}
    messages = [e["message"] for q in QUERIES
                for e in reference(q[1], q[2]).get("errors", [])]
    assert any(m.startswith("Cannot return null for non-nullable field") for m in messages)
    assert any(m.startswith("Int cannot represent") for m in messages)
    assert any(m.startswith("Expected Iterable") for m in messages)
