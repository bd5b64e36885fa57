"""GraphQL amplification bounds end to end, against real upstream services.

PRODUCT.md section 6, "More route keys, and what they bound": one document may
not fan out into hundreds of upstream calls. ``max_aliases`` (aliased fields in
one document) and ``max_cost`` with ``list_size`` (estimated upstream calls)
refuse a document before any call; ``max_calls`` stops the calls one request
makes at run time (after identical calls are de-duplicated), the calls beyond
it failing as GraphQL errors with their paths. Each test sends the attack and
checks what the upstreams received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from graphql import build_schema, get_introspection_query, parse

from pygate.config import ConfigError, load_data
from pygate.graphql_bounds import Bounds, field_costs, measure, refusal
from tests.conftest import UpstreamFactory

SCHEMA = """
type Query {
  user(id: ID!): User
  product(id: ID!): Product
  node(id: ID!): Node
}
interface Node { id: ID! }
type User implements Node {
  id: ID!
  name: String
  friends: [User]
  orders: [Order]
}
type Order {
  id: ID!
  productId: ID
  product: Product
}
type Product implements Node {
  id: ID!
  name: String
}
"""

MANY = 300  # orders of user "many" (each a different product) and of user "few" (5 products)


async def services(upstream: UpstreamFactory) -> dict[str, Any]:
    async def user(request: web.Request) -> web.Response:
        uid = request.match_info["id"]
        return web.json_response({"id": uid, "name": f"user {uid}"})

    async def friends(request: web.Request) -> web.Response:
        uid = request.match_info["id"]
        return web.json_response([{"id": f"{uid}.{n}"} for n in range(10)])

    async def orders(request: web.Request) -> web.Response:
        uid = request.query.get("userId", "")
        count, products = {"many": (MANY, MANY), "few": (MANY, 5)}.get(uid, (2, 2))
        return web.json_response([{"id": f"{uid}-o{n}", "productId": f"p{n % products}"}
                                  for n in range(count)])

    async def product(request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        return web.json_response({"id": pid, "name": f"product {pid}"})

    users = await upstream(routes={"GET /users/{id}": user,
                                   "GET /users/{id}/friends": friends})
    shop = await upstream(routes={"GET /orders": orders, "GET /products/{id}": product})
    return {"users": users, "shop": shop}


def config(ups: dict[str, Any], **bounds: int) -> dict[str, Any]:
    return {
        "upstreams": {"users": {"targets": [ups["users"].url]},
                      "shop": {"targets": [ups["shop"].url]}},
        "routes": [{
            "name": "graphql", "path": "/graphql",
            "graphql": {
                "schema": "schema.graphql", **bounds,
                "resolvers": {
                    "Query.user": {"upstream": "users", "path": "/users/{args.id}"},
                    "Query.product": {"upstream": "shop", "path": "/products/{args.id}"},
                    "User.friends": {"upstream": "users", "path": "/users/{parent.id}/friends"},
                    "User.orders": {"upstream": "shop", "path": "/orders",
                                    "query": {"userId": "{parent.id}"}},
                    "Order.product": {"upstream": "shop",
                                      "path": "/products/{parent.productId}"},
                },
            },
        }],
    }


@pytest.fixture
def schema_dir(tmp_path: Path) -> str:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    return str(tmp_path)


GRAPHQL_RESPONSE = "application/graphql-response+json"


async def gql(gw: Any, query: str) -> tuple[int, Any]:
    """POST the query as a GraphQL-over-HTTP client does (it takes graphql-response+json)."""
    async with gw.session.post(gw.url + "/graphql", json={"query": query},
                               headers={"Accept": GRAPHQL_RESPONSE}) as response:
        assert response.content_type == GRAPHQL_RESPONSE
        return response.status, await response.json(content_type=None)


def calls(ups: dict[str, Any]) -> int:
    return len(ups["users"].seen) + len(ups["shop"].seen)


def refused(status: int, body: Any, *phrases: str) -> None:
    """The refusal of a document that fails validation: 400, GraphQL's ``errors``, no data."""
    assert status == 400, body
    [error] = body["errors"]
    assert set(body) == {"errors"}
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
    for phrase in phrases:
        assert phrase in error["message"], error["message"]


# ---------------------------------------------------------------------------
# max_aliases


async def test_300_aliases_are_refused_before_any_call(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), base_dir=schema_dir)
    query = "{ " + " ".join(f'p{n}: product(id: "p{n}") {{ name }}' for n in range(300)) + " }"
    status, body = await gql(gw, query)
    refused(status, body, "the document has 300 aliases; this route allows at most 15")
    assert calls(ups) == 0
    # 15 aliases (the default) are fine.
    query = "{ " + " ".join(f'p{n}: product(id: "p{n}") {{ name }}' for n in range(15)) + " }"
    status, body = await gql(gw, query)
    assert status == 200 and body["data"]["p14"] == {"name": "product p14"}, body
    assert calls(ups) == 15


async def test_aliases_in_fragments_count_where_they_are_spread(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups, max_aliases=10), base_dir=schema_dir)
    # A named fragment with 5 aliases, spread under two aliased fields: 2 + 2 * 5 = 12.
    fragment = "fragment F on User { " + " ".join(f"n{n}: name" for n in range(5)) + " }"
    status, body = await gql(gw, fragment + ' { a: user(id: "1") { ...F } '
                                            'b: user(id: "2") { ...F } }')
    refused(status, body, "12 aliases", "at most 10")
    # Inline fragments too: 11 aliases, all inside one.
    status, body = await gql(gw, '{ user(id: "1") { ... on User { '
                             + " ".join(f"n{n}: name" for n in range(11)) + " } } }")
    refused(status, body, "11 aliases")
    assert calls(ups) == 0
    # Spread once, the same fragment is within the bound: 1 + 5.
    status, body = await gql(gw, fragment + ' { a: user(id: "1") { ...F } }')
    assert status == 200 and body["data"]["a"]["n4"] == "user 1", body


# ---------------------------------------------------------------------------
# max_cost and list_size

# user 1 + friends 1 + their friends 10 + their orders 100 + the orders' products 1000
COSTLY = '{ user(id: "1") { friends { friends { orders { product { name } } } } } }'


async def test_a_nested_list_query_over_max_cost_is_refused_before_any_call(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), base_dir=schema_dir)  # max_cost 1000, list_size 10
    status, body = await gql(gw, COSTLY)  # depth 6, no alias: only its cost is too much
    refused(status, body, "estimated cost is 1112 upstream calls", "at most 1000")
    # The same through a named fragment and an inline one.
    status, body = await gql(gw, "fragment O on User { orders { product { name } } } "
                                 '{ user(id: "1") { friends { ... on User { friends { ...O } } '
                                 "} } }")
    refused(status, body, "1112")
    assert calls(ups) == 0
    # One list level less: 1 + 1 + 10 + 100 = 112, answered.
    status, body = await gql(gw, '{ user(id: "1") { friends { orders { product { name } } } } }')
    assert status == 200, body
    assert len(body["data"]["user"]["friends"]) == 10
    assert body["data"]["user"]["friends"][0]["orders"][0]["product"] == {"name": "product p0"}


async def test_list_size_and_max_cost_are_the_routes(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups, max_cost=10, list_size=2), base_dir=schema_dir)
    # 1 + 1 + 2 + 4 = 8: within 10
    status, body = await gql(gw, '{ user(id: "1") { friends { orders { product { name } } } } }')
    assert status == 200, body
    seen = calls(ups)
    # 1 + 1 + 2 + 4 + 8 = 16
    status, body = await gql(gw, COSTLY)
    refused(status, body, "estimated cost is 16 upstream calls (each list counted as 2 items)",
            "at most 10 (max_cost)")
    # Fields without a resolver, and introspection, cost nothing.
    status, body = await gql(gw, '{ a: user(id: "1") { id name } __typename }')
    assert status == 200, body
    assert calls(ups) == seen + 1
    status, body = await gql(gw, get_introspection_query())
    assert status == 200 and body["data"]["__schema"]["queryType"]["name"] == "Query"


# ---------------------------------------------------------------------------
# max_calls


async def test_calls_beyond_max_calls_fail_with_their_paths(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    """Estimated at 12 calls (list_size 10), the query needs 302 distinct ones."""
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), base_dir=schema_dir)  # max_calls 200
    status, body = await gql(gw, '{ user(id: "many") { orders { id product { name } } } }')
    assert status == 200, body
    assert calls(ups) == 200
    orders = body["data"]["user"]["orders"]
    assert len(orders) == MANY and all(o["id"] for o in orders)
    missing = [n for n, order in enumerate(orders) if order["product"] is None]
    assert len(missing) == MANY + 2 - 200  # the user and orders calls count too
    assert sorted(tuple(e["path"]) for e in body["errors"]) == sorted(
        ("user", "orders", n, "product") for n in missing)
    assert all("max_calls" in e["message"] and "'Order.product'" in e["message"]
               for e in body["errors"])
    assert orders[0]["product"] == {"name": "product p0"}


async def test_max_calls_counts_calls_after_de_duplication(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups, max_calls=7), base_dir=schema_dir)
    # 300 orders of 5 products: 1 + 1 + 5 distinct calls.
    status, body = await gql(gw, '{ user(id: "few") { orders { product { name } } } }')
    assert status == 200 and "errors" not in body, body
    assert [o["product"]["name"] for o in body["data"]["user"]["orders"][:6]] == [
        "product p0", "product p1", "product p2", "product p3", "product p4", "product p0"]
    assert calls(ups) == 7
    # The limit is per request: the next one makes its calls again.
    status, body = await gql(gw, '{ user(id: "few") { orders { product { name } } } }')
    assert status == 200 and "errors" not in body and calls(ups) == 14


# ---------------------------------------------------------------------------
# Configuration


def test_defaults_and_bad_values_name_their_key_paths() -> None:
    def route(**graphql: Any) -> dict[str, Any]:
        return {"routes": [{"name": "g", "path": "/g",
                            "graphql": {"schema": "s.graphql", **graphql}}]}

    graphql = load_data(route()).routes[0].graphql
    assert graphql is not None
    assert (graphql.max_aliases, graphql.max_cost, graphql.list_size, graphql.max_calls) == \
        (15, 1000, 10, 200)
    with pytest.raises(ConfigError) as caught:
        load_data(route(max_aliases=0, max_cost=-5, list_size=True, max_calls="many"))
    issues = {issue.path: issue.message for issue in caught.value.issues}
    assert set(issues) == {f"routes[0].graphql.{key}"
                           for key in ("max_aliases", "max_cost", "list_size", "max_calls")}
    assert "greater than or equal to 1" in issues["routes[0].graphql.max_aliases"]
    assert "-5" in issues["routes[0].graphql.max_cost"]
    assert "True" in issues["routes[0].graphql.list_size"]


# ---------------------------------------------------------------------------
# The measure itself (no gateway: schemas and documents the endpoint cannot take)


def test_interface_fields_cost_what_their_types_resolvers_cost() -> None:
    schema = build_schema("""
        type Query { node: Node, nodes: [Node] }
        interface Node { id: ID!, related: [Node] }
        type A implements Node { id: ID!, related: [Node] }
        type B implements Node { id: ID!, related: [Node] }
    """)
    costs = field_costs(schema, ["Query.nodes", "B.related"], 10)
    [found] = measure(parse("{ nodes { related { id } } node { related { id } } }"), schema,
                      costs)
    # nodes 1; related under the list 10 (B's resolver); node has no resolver, related 1
    assert (found.depth, found.aliases, found.cost) == (3, 0, 12)


def test_fragment_cycles_and_fragment_bombs_are_measured_once() -> None:
    schema = build_schema("type Query { me: User } type User { name: String, me: User }")
    costs = field_costs(schema, ["Query.me", "User.me"], 10)
    cycle = parse("fragment A on User { me { ...B } } fragment B on User { me { ...A } } "
                  "{ me { ...A } }")  # validation refuses this; the walk must still end
    assert refusal(cycle, schema, costs, Bounds()) is None
    # Each fragment spreads the one before twice: 2 ** 40 aliases, counted without expanding.
    levels = [f"fragment F{n} on User {{ a: me {{ ...F{n - 1} }} b: me {{ ...F{n - 1} }} }}"
              for n in range(1, 41)]
    bomb = parse("fragment F0 on User { name } " + " ".join(levels) + " { me { ...F40 } }")
    reason = refusal(bomb, schema, costs, Bounds(max_depth=1000))
    assert reason is not None and f"{2 ** 41 - 2} aliases" in reason
