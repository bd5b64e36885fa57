"""GraphQL routes end to end: a schema whose fields real upstream services resolve.

PRODUCT.md section 6: the query ``{ me { name email orders { id total } } }``
answered with one JSON response built from the users and orders services; only
the fields a query asks for cause upstream calls; identical calls within one
request are made once; sibling fields resolve concurrently; a failing resolver
gives ``null`` plus an entry in ``errors`` with its ``path``; queries deeper than
``max_depth`` are refused before any upstream call; plugins apply to the route.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from graphql import get_introspection_query

from pygate import Context, Identity, Unauthorized, hookimpl
from pygate.app import build_gateway
from pygate.cli import main
from pygate.config import ConfigError, load_data
from pygate.demo.token import demo_token
from tests.conftest import ROOT, UpstreamFactory, problem, shipped_config

SCHEMA = """
type Query {
  me: User
  user(id: ID!): User
  product(id: ID!): Product
  products(ids: [ID!]!): [Product]
  pair: Pair
}
type Mutation {
  rename(name: String!): User
}
type User {
  id: ID!
  name: String
  email: String
  orders: [Order]
}
type Order {
  id: ID!
  total: Float
  productId: ID
  product: Product
}
type Product {
  id: ID!
  name: String
  price: Float
}
type Pair {
  left: String
  right: String
}
"""

USERS = {"7": {"id": "7", "name": "Ada", "email": "ada@example.com"}}
ORDERS = {"7": [{"id": "o1", "total": 12.5, "productId": "p1"},
                {"id": "o2", "total": 3.0, "productId": "p1"},
                {"id": "o3", "total": 9.9, "productId": "p2"}]}
PRODUCTS = {"p1": {"id": "p1", "name": "Widget", "price": 2.5},
            "p2": {"id": "p2", "name": "Gadget", "price": 9.9}}


class Caller:
    """An in-test auth plugin: ``X-Caller: ID`` is the identity; without it, 401."""

    PRIORITY = 100

    @hookimpl
    def authenticate(self, request: web.BaseRequest, ctx: Context) -> Identity | None:
        caller = request.headers.get("X-Caller")
        if not caller:
            raise Unauthorized("who are you?")
        return Identity(id=caller, consumer=caller, source="caller")


async def services(upstream: UpstreamFactory) -> dict[str, Any]:
    async def user(request: web.Request) -> web.Response:
        found = USERS.get(request.match_info["id"])
        return web.json_response(found) if found else web.json_response({}, status=404)

    async def orders(request: web.Request) -> web.Response:
        return web.json_response(ORDERS.get(request.query.get("userId", ""), []))

    async def product(request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        if pid == "broken":
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response(PRODUCTS[pid])

    arrived: list[str] = []
    both = asyncio.Event()

    async def side(request: web.Request) -> web.Response:
        # Answers only once both sides have arrived: sequential resolvers would hang.
        arrived.append(request.match_info["name"])
        if len(arrived) >= 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)
        return web.json_response(request.match_info["name"])

    users = await upstream(routes={"GET /users/{id}": user,
                                   "PUT /users/{id}": user})
    shop = await upstream(routes={"GET /orders": orders, "GET /products/{id}": product,
                                  "GET /side/{name}": side})
    return {"users": users, "shop": shop}


def config(ups: dict[str, Any], *, max_depth: int = 8, introspection: bool = True,
           plugins: dict[str, Any] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": "graphql", "path": "/graphql",
        "graphql": {
            "schema": "schema.graphql", "max_depth": max_depth,
            "introspection": introspection,
            "resolvers": {
                "Query.me": {"upstream": "users", "path": "/users/{identity.id}"},
                "Query.user": {"upstream": "users", "path": "/users/{args.id}"},
                "User.orders": {"upstream": "shop", "path": "/orders",
                                "query": {"userId": "{parent.id}"}},
                "Order.product": {"upstream": "shop", "path": "/products/{parent.productId}"},
                "Query.product": {"upstream": "shop", "path": "/products/{args.id}"},
                "Pair.left": {"upstream": "shop", "path": "/side/left"},
                "Pair.right": {"upstream": "shop", "path": "/side/right"},
                "Mutation.rename": {"upstream": "users", "method": "PUT",
                                    "path": "/users/{identity.id}"},
            },
        },
        "plugins": plugins if plugins is not None else {"caller": {}},
    }
    return {
        "upstreams": {"users": {"targets": [ups["users"].url]},
                      "shop": {"targets": [ups["shop"].url]}},
        "routes": [route],
    }


@pytest.fixture
def schema_dir(tmp_path: Path) -> str:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    return str(tmp_path)


GRAPHQL_RESPONSE = "application/graphql-response+json"


async def gql(gw: Any, query: str, *, variables: dict[str, Any] | None = None,
              caller: str | None = "7", method: str = "POST",
              accept: str | None = None) -> tuple[int, Any]:
    headers = {"X-Caller": caller} if caller else {}
    if accept:
        headers["Accept"] = accept
    if method == "GET":
        params = {"query": query}
        if variables:
            params["variables"] = json.dumps(variables)
        async with gw.session.get(gw.url + "/graphql", params=params,
                                  headers=headers) as response:
            return response.status, await response.json(content_type=None)
    async with gw.session.post(gw.url + "/graphql", headers=headers,
                               json={"query": query, "variables": variables}) as response:
        return response.status, await response.json(content_type=None)


async def test_the_product_example_is_one_response_from_two_services(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), plugins={"caller": Caller()}, base_dir=schema_dir)
    status, body = await gql(gw, "{ me { name email orders { id total } } }")
    assert status == 200
    assert body == {"data": {"me": {"name": "Ada", "email": "ada@example.com", "orders": [
        {"id": "o1", "total": 12.5}, {"id": "o2", "total": 3.0}, {"id": "o3", "total": 9.9}]}}}
    assert [s.path for s in ups["users"].seen] == ["/users/7"]
    assert [s.path for s in ups["shop"].seen] == ["/orders?userId=7"]
    # Every call carries the request ID and the forwarding headers, like a proxied request.
    assert ups["users"].seen[0].headers["X-Forwarded-For"] == "127.0.0.1"
    assert ups["users"].seen[0].headers["X-Request-ID"]


async def test_only_the_fields_asked_for_cause_calls(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), plugins={"caller": Caller()}, base_dir=schema_dir)
    status, body = await gql(gw, "{ me { name } }")
    assert (status, body) == (200, {"data": {"me": {"name": "Ada"}}})
    assert len(ups["users"].seen) == 1
    assert ups["shop"].seen == []  # no orders asked, no orders call


async def test_identical_calls_within_a_request_are_made_once(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), plugins={"caller": Caller()}, base_dir=schema_dir)
    status, body = await gql(gw, """{
        a: product(id: "p1") { name }
        b: product(id: "p1") { price }
        me { orders { id product { name } } }
    }""")
    assert status == 200, body
    assert body["data"]["a"] == {"name": "Widget"} and body["data"]["b"] == {"price": 2.5}
    assert [o["product"]["name"] for o in body["data"]["me"]["orders"]] == \
        ["Widget", "Widget", "Gadget"]
    product_calls = sorted(s.path for s in ups["shop"].seen if s.path.startswith("/products"))
    assert product_calls == ["/products/p1", "/products/p2"]
    # A second request makes its own calls again: nothing is cached across requests.
    await gql(gw, '{ product(id: "p1") { name } }')
    assert sum(s.path == "/products/p1" for s in ups["shop"].seen) == 2


async def test_sibling_fields_resolve_concurrently(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    """Each side answers only once the other has arrived: one at a time would never finish."""
    ups = await services(upstream)
    cfg = config(ups)
    cfg["routes"][0]["graphql"]["resolvers"]["Query.pair"] = {"upstream": "shop",
                                                               "path": "/products/p1"}
    gw = await pygate_gateway(cfg, plugins={"caller": Caller()}, base_dir=schema_dir)
    status, body = await gql(gw, "{ pair { left right } }")
    assert (status, body) == (200, {"data": {"pair": {"left": "left", "right": "right"}}})


async def test_a_failing_resolver_gives_null_and_an_error_with_its_path(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), plugins={"caller": Caller()}, base_dir=schema_dir)
    status, body = await gql(gw, '{ good: product(id: "p2") { name } bad: product(id: "broken") '
                                 "{ name } }")
    assert status == 200
    assert body["data"] == {"good": {"name": "Gadget"}, "bad": None}
    [error] = body["errors"]
    assert error["path"] == ["bad"]
    assert "Query.product" in error["message"] and "500" in error["message"]
    assert "127.0.0.1" not in json.dumps(body)


async def test_too_deep_a_query_is_refused_before_any_call(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups, max_depth=3), plugins={"caller": Caller()},
                              base_dir=schema_dir)
    assert (await gql(gw, "{ me { orders { id } } }"))[0] == 200  # depth 3
    ups["users"].seen.clear()
    ups["shop"].seen.clear()
    status, body = await gql(gw, "{ me { orders { product { name } } } }",  # depth 4
                             accept=GRAPHQL_RESPONSE)
    assert status == 400 and "data" not in body
    assert body["errors"] == [{"message": "the query is 4 levels deep; this route allows 3",
                               "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]
    # Fragments count where they are spread.
    status, _ = await gql(gw, "fragment P on Order { product { name } } "
                              "{ me { orders { ...P } } }", accept=GRAPHQL_RESPONSE)
    assert status == 400
    # A client that takes only application/json gets the same errors with 200.
    status, body = await gql(gw, "{ me { orders { product { name } } } }",
                             accept="application/json")
    assert status == 200 and "data" not in body and "4 levels" in body["errors"][0]["message"]
    assert ups["users"].seen == [] and ups["shop"].seen == []
    # A client's standard introspection query is not held to the data's depth limit.
    status, body = await gql(gw, get_introspection_query())
    assert status == 200 and body["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_documents_that_fail_are_graphql_errors_before_any_call(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    """A document that does not parse or validate, an unknown operation, variables that do
    not fit: GraphQL's ``errors`` without ``data``, 400 for a GraphQL-over-HTTP client
    (it takes application/graphql-response+json), 200 for one taking only application/json."""
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups, introspection=False), plugins={"caller": Caller()},
                              base_dir=schema_dir)
    cases: list[tuple[str, dict[str, Any] | None, str, str]] = [
        ("{ me { name ", None, "GRAPHQL_PARSE_FAILED", "Syntax Error"),
        ("{ me { nickname } }", None, "GRAPHQL_VALIDATION_FAILED", "nickname"),
        ("{ __schema { types { name } } }", None, "GRAPHQL_VALIDATION_FAILED",
         "introspection"),
        ("query Q($id: ID!) { user(id: $id) { name } }", {"id": None}, "BAD_USER_INPUT",
         "$id"),
        ("query A { me { name } } query B { me { id } }", None,
         "OPERATION_RESOLUTION_FAILURE", "operationName is required"),
    ]
    for query, variables, code, phrase in cases:
        for accept, expected in ((GRAPHQL_RESPONSE, 400), ("application/json", 200)):
            status, body = await gql(gw, query, variables=variables, accept=accept)
            assert status == expected, (query, accept, body)
            assert set(body) == {"errors"}, body
            assert body["errors"][0]["extensions"]["code"] == code
            assert phrase.lower() in body["errors"][0]["message"].lower(), body
    status, body = await gql(gw, "{ me { name ", accept=GRAPHQL_RESPONSE)
    assert body["errors"][0]["locations"] == [{"line": 1, "column": 13}]
    assert ups["users"].seen == [] and ups["shop"].seen == []


async def test_requests_that_are_not_graphql_are_problem_documents(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    """Not a well-formed GraphQL-over-HTTP request: a problem document with the status the
    specification gives, carrying ``errors`` for GraphQL clients; no upstream call."""
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), plugins={"caller": Caller()}, base_dir=schema_dir)
    url = gw.url + "/graphql"
    caller = {"X-Caller": "7"}

    async def post(data: bytes | str, content_type: str | None, **headers: str
                   ) -> tuple[int, Any]:
        sent = {**caller, **headers}
        if content_type is not None:
            sent["Content-Type"] = content_type
        async with gw.session.post(url, data=data, headers=sent) as response:
            assert response.content_type == "application/problem+json"
            body = problem(await response.read())
            assert body["errors"][0]["message"] == body["detail"] or response.status == 406
            return response.status, body

    assert (await post(b"not json", "application/json"))[0] == 400
    assert (await post(b"", "application/json"))[0] == 400
    assert (await post(b'["query"]', "application/json"))[0] == 400
    for bad in ({"query": 7}, {"query": "{ me { id } }", "variables": [1]},
                {"query": "{ me { id } }", "operationName": False},
                {"query": "{ me { id } }", "extensions": "x"}, {"qeury": "{ me { id } }"}):
        assert (await post(json.dumps(bad), "application/json"))[0] == 400, bad
    assert (await post(b'{"query": "{ me { id } }"}', "text/plain"))[0] == 415
    assert (await post(b'{"query": "{ me { id } }"}', "application/json; charset=latin-1")
            )[0] == 415
    status, _ = await post(b'{"query": "{ me { id } }"}', "application/json", Accept="text/html")
    assert status == 406
    async with gw.session.put(url, headers=caller) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET, POST"
    async with gw.session.get(url, params={"query": "{ me { id } }", "variables": "{"},
                              headers=caller) as response:
        assert response.status == 400
    assert ups["users"].seen == [] and ups["shop"].seen == []


async def test_get_queries_variables_and_mutations(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), plugins={"caller": Caller()}, base_dir=schema_dir)
    status, body = await gql(gw, "query Q($id: ID!) { user(id: $id) { name } }",
                             variables={"id": "7"}, method="GET")
    assert (status, body) == (200, {"data": {"user": {"name": "Ada"}}})
    status, body = await gql(gw, 'mutation { rename(name: "Ada L.") { id } }', method="GET")
    assert status == 405
    status, body = await gql(gw, 'mutation { rename(name: "Ada L.") { id } }')
    assert (status, body) == (200, {"data": {"rename": {"id": "7"}}})
    assert ups["users"].seen[-1].method == "PUT"


async def test_plugins_apply_to_the_graphql_route(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), plugins={"caller": Caller()}, base_dir=schema_dir)
    status, body = await gql(gw, "{ me { name } }", caller=None)
    assert status == 401 and body["route"] == "graphql"
    assert ups["users"].seen == []


def test_resolvers_are_checked_against_the_schema_with_key_paths(tmp_path: Path) -> None:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    ups = {"users": type("U", (), {"url": "http://127.0.0.1:9"})(),
           "shop": type("U", (), {"url": "http://127.0.0.1:9"})()}
    cfg = config(ups, plugins={})
    resolvers = cfg["routes"][0]["graphql"]["resolvers"]
    resolvers["Query.mee"] = {"upstream": "users", "path": "/x"}
    resolvers["Usr.name"] = {"upstream": "users", "path": "/x"}
    resolvers["Order.product"] = {"upstream": "shop", "path": "/products/{parnt.id}"}
    with pytest.raises(ConfigError) as caught:
        build_gateway(load_data(cfg, base_dir=str(tmp_path)))
    messages = [f"{issue.path}: {issue.message}" for issue in caught.value.issues]
    assert any(m.startswith('routes[0].graphql.resolvers."Query.mee":')
               and "did you mean 'me'" in m for m in messages), messages
    assert any(m.startswith('routes[0].graphql.resolvers."Usr.name":')
               and "did you mean 'User'" in m for m in messages), messages
    assert any(m.startswith('routes[0].graphql.resolvers."Order.product".path:')
               and "{parnt.id}" in m for m in messages), messages

    (tmp_path / "schema.graphql").unlink()
    with pytest.raises(ConfigError) as caught:
        build_gateway(load_data(config(ups, plugins={}), base_dir=str(tmp_path)))
    issue = caught.value.issues[0]
    assert issue.path == "routes[0].graphql.schema" and issue.message.startswith("cannot read")


def test_explain_lists_the_resolvers(tmp_path: Path) -> None:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    (tmp_path / "pygate.toml").write_text("""
[upstreams.users]
targets = ["http://127.0.0.1:3001"]

[[routes]]
name = "graphql"
path = "/graphql"
[routes.graphql]
schema = "schema.graphql"
max_depth = 5
introspection = false
[routes.graphql.resolvers."Query.me"]
upstream = "users"
path = "/users/{identity.id}"
[routes.graphql.resolvers."User.orders"]
upstream = "http://127.0.0.1:3002"
path = "/orders"
query = { userId = "{parent.id}" }
""")
    done = CliRunner().invoke(main, ["explain", "-c", str(tmp_path / "pygate.toml"),
                                     "POST", "/graphql"])
    assert done.exit_code == 0, done.output
    tail = done.output.split("plugin chain, in order:\n  (none)\n", 1)[1]
    assert tail.splitlines() == [
        "graphql: schema schema.graphql, max_depth 5, max_aliases 15, max_cost 1000 "
        "(list_size 10), max_calls 200, introspection off, persisted queries on",
        "resolvers (a field's call is made only when a query selects it):",
        "  Query.me -> users GET /users/{identity.id}",
        "  User.orders -> http://127.0.0.1:3002 GET /orders",
    ]


async def test_the_demo_configuration_answers_the_readme_queries(
        pygate_gateway: Any, demo_services: dict[str, int]) -> None:
    gw = await pygate_gateway(shipped_config(ROOT / "pygate.toml", demo_services),
                              base_dir=str(ROOT))
    token = demo_token()
    async with gw.session.post(gw.url + "/graphql", headers={"Authorization": f"Bearer {token}"},
                               json={"query": "{ me { name orders { id total items "
                                              "{ quantity product { name } } } } }"}) as reply:
        assert reply.status == 200
        me = (await reply.json())["data"]["me"]
    assert me["name"] == "Alice Demo"
    assert [o["id"] for o in me["orders"]] == ["100", "101"]
    assert me["orders"][0]["items"] == [{"quantity": 2, "product": {"name": "Widget"}},
                                        {"quantity": 1, "product": {"name": "Gadget"}}]

    async def get(query: str) -> tuple[int, Any]:
        async with gw.session.get(gw.url + "/graphql", params={"query": query},
                                  headers={"Authorization": f"Bearer {token}"}) as reply:
            return reply.status, await reply.json(content_type=None)

    status, body = await get('{ order(id: "999") { status } user(id: "2") { name } }')
    assert status == 200
    assert body["data"] == {"order": None, "user": {"name": "Bob Demo"}}
    assert body["errors"][0]["path"] == ["order"]
    status, body = await get('{ order(id: "100") { customer { orders { customer { orders '
                             '{ customer { name } } } } } } }')
    assert status == 200 and "data" not in body and "7 levels" in body["errors"][0]["message"]
    status, body = await gql(gw, '{ user(id: "2") { name } }', caller=None, method="GET")
    assert status == 401  # orders are reachable from /graphql, so the route needs the token


async def test_a_call_whose_body_never_ends_fails_its_field_at_the_gateway_timeout(
        pygate_gateway: Any, upstream: UpstreamFactory, raw_upstream: Any,
        schema_dir: str) -> None:
    """The upstream sends its head and part of the body, then nothing: that field is null
    with an error once ``gateway.timeout`` has passed; the others are answered."""
    ups = await services(upstream)

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"id\": ")
        await writer.drain()
        await reader.read()  # until the gateway gives up and closes

    stalled = await raw_upstream(stall)
    cfg = config(ups)
    cfg["gateway"] = {"timeout": "500ms"}
    cfg["upstreams"]["stalled"] = {"targets": [stalled.url]}
    cfg["routes"][0]["graphql"]["resolvers"]["Query.user"] = {"upstream": "stalled",
                                                              "path": "/users/{args.id}"}
    gw = await pygate_gateway(cfg, plugins={"caller": Caller()}, base_dir=schema_dir)
    status, body = await gql(gw, '{ user(id: "7") { name } product(id: "p1") { name } }')
    assert status == 200
    assert body["data"] == {"user": None, "product": {"name": "Widget"}}
    [error] = body["errors"]
    assert error["path"] == ["user"]
    assert error["message"] == "call 'Query.user' did not finish within the gateway's timeout"
