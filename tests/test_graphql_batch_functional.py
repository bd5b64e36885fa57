"""Batched GraphQL resolvers end to end, against real upstream services.

PRODUCT.md section 6: ``batch = { key = "userId", max = 100 }`` on a resolver makes
one call for all the parents of a field in a request (per ``max`` parents), its
query parameter holding every parent's value comma-separated, and gives each
parent the items whose ``key`` field equals its value: a list for a list field,
the one item or null otherwise. 50 users' ``orders`` cost one call. Each test
counts what the upstreams received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from click.testing import CliRunner

from pygate.app import build_gateway
from pygate.cli import main
from pygate.config import ConfigError, load_data
from tests.conftest import UpstreamFactory

SCHEMA = """
type Query {
  users: [User]
  orders: [Order]
}
type User {
  id: ID!
  name: String
  orders: [Order]
  latest: Order
}
type Order {
  id: ID!
  userId: ID
  total: Float
  customer: User
}
"""

USERS = [{"id": str(n), "name": f"user {n}"} for n in range(1, 51)]


def orders_of(user: int) -> list[dict[str, Any]]:
    """User n has n % 3 orders; userId is a number in the service's JSON (matched as text)."""
    return [{"id": f"o{user}-{k}", "userId": user, "total": float(k)} for k in range(user % 3)]


async def services(upstream: UpstreamFactory, *, orders_status: int = 200,
                   orders_body: Any = None) -> dict[str, Any]:
    async def users(request: web.Request) -> web.Response:
        wanted = request.query.get("id")
        found = USERS if wanted is None else [u for u in USERS if u["id"] in wanted.split(",")]
        return web.json_response(found)

    async def orders(request: web.Request) -> web.Response:
        if orders_status != 200:
            return web.json_response({"error": "down"}, status=orders_status)
        if orders_body is not None:
            return web.json_response(orders_body)
        wanted = request.query.get("userId")
        if wanted is None:  # Query.orders: a few orders of users 1, 2, 2 and 99 (unknown)
            return web.json_response([{"id": "a", "userId": "1"}, {"id": "b", "userId": "2"},
                                      {"id": "c", "userId": "2"}, {"id": "d", "userId": "99"}])
        return web.json_response([o for v in wanted.split(",") for o in orders_of(int(v))])

    return {"users": await upstream(routes={"GET /users": users}),
            "orders": await upstream(routes={"GET /orders": orders})}


def config(ups: dict[str, Any], **batch: Any) -> dict[str, Any]:
    orders_batch = {"key": "userId", **batch}
    return {
        "upstreams": {"users": {"targets": [ups["users"].url]},
                      "orders": {"targets": [ups["orders"].url]}},
        "routes": [{
            "name": "graphql", "path": "/graphql",
            "graphql": {
                "schema": "schema.graphql",
                "resolvers": {
                    "Query.users": {"upstream": "users", "path": "/users"},
                    "Query.orders": {"upstream": "orders", "path": "/orders"},
                    "User.orders": {"upstream": "orders", "path": "/orders",
                                    "query": {"userId": "{parent.id}"},
                                    "batch": orders_batch},
                    "User.latest": {"upstream": "orders", "path": "/orders",
                                    "query": {"userId": "{parent.id}"},
                                    "batch": {"key": "userId"}},
                    "Order.customer": {"upstream": "users", "path": "/users",
                                       "query": {"id": "{parent.userId}"},
                                       "batch": {"key": "id"}},
                },
            },
        }],
    }


@pytest.fixture
def schema_dir(tmp_path: Path) -> str:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    return str(tmp_path)


async def gql(gw: Any, query: str) -> tuple[int, Any]:
    async with gw.session.post(gw.url + "/graphql", json={"query": query}) as response:
        return response.status, await response.json(content_type=None)


def values(seen: Any, name: str) -> list[list[str]]:
    """Each received call's comma-separated values of query parameter ``name``."""
    return [parse_qs(urlsplit(s.path).query)[name][0].split(",") for s in seen]


async def test_fifty_users_orders_cost_one_call(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), base_dir=schema_dir)
    status, body = await gql(gw, "{ users { id orders { id total } } }")
    assert status == 200 and "errors" not in body, body
    assert len(ups["users"].seen) == 1
    assert len(ups["orders"].seen) == 1  # not 50
    assert values(ups["orders"].seen, "userId") == [[str(n) for n in range(1, 51)]]
    for user in body["data"]["users"]:
        n = int(user["id"])
        assert user["orders"] == [{"id": o["id"], "total": o["total"]} for o in orders_of(n)]
    assert body["data"]["users"][2]["orders"] == []  # user 3 has none: an empty list


async def test_max_parents_per_call(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups, max=20), base_dir=schema_dir)
    status, body = await gql(gw, "{ users { orders { id } } }")
    assert status == 200 and "errors" not in body, body
    assert [len(v) for v in values(ups["orders"].seen, "userId")] == [20, 20, 10]
    assert sum(len(u["orders"]) for u in body["data"]["users"]) == \
        sum(len(orders_of(n)) for n in range(1, 51))


async def test_a_single_object_field_gets_its_item_or_null(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    """``Order.customer`` (a User, not a list): each order its customer; an unknown one null,
    without an error; each value sent once however many parents share it."""
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), base_dir=schema_dir)
    status, body = await gql(gw, "{ orders { id customer { id name } } }")
    assert status == 200 and "errors" not in body, body
    assert [o["customer"] for o in body["data"]["orders"]] == [
        {"id": "1", "name": "user 1"}, {"id": "2", "name": "user 2"},
        {"id": "2", "name": "user 2"}, None]
    assert values(ups["users"].seen, "id") == [["1", "2", "99"]]
    # A user's latest order: the first item matching it, or null.
    status, body = await gql(gw, "{ users { id latest { id } } }")
    assert [u["latest"] for u in body["data"]["users"][:3]] == [{"id": "o1-0"}, {"id": "o2-0"},
                                                                None]


async def test_nested_batches_cost_one_call_per_level(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    ups = await services(upstream)
    gw = await pygate_gateway(config(ups), base_dir=schema_dir)
    status, body = await gql(gw, "{ users { orders { customer { name } } } }")
    assert status == 200 and "errors" not in body, body
    assert len(ups["orders"].seen) == 1
    # Query.users, then one call for the customers of every order of every user.
    assert len(ups["users"].seen) == 2
    customers = [o["customer"]["name"] for u in body["data"]["users"] for o in u["orders"]]
    assert customers[:3] == ["user 1", "user 2", "user 2"]


async def test_max_cost_counts_a_batched_field_once_per_max_parents(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    """Without batching the query below is estimated at 1 + 10 + 100 + 1000 calls; batched
    (100 parents a call) at 1 + 1 + 1 + 1. It makes three: the customers' orders are their
    users' orders, fetched already in this request."""
    ups = await services(upstream)
    query = "{ users { orders { customer { orders { id } } } } }"
    for max_cost, allowed in ((4, True), (3, False)):
        cfg = config(ups)
        cfg["routes"][0]["graphql"]["max_cost"] = max_cost
        gw = await pygate_gateway(cfg, base_dir=schema_dir)
        async with gw.session.post(gw.url + "/graphql", json={"query": query}, headers={
                "Accept": "application/graphql-response+json"}) as response:
            body = await response.json(content_type=None)
            if allowed:
                assert response.status == 200 and "errors" not in body, body
                assert len(ups["users"].seen) == 2 and len(ups["orders"].seen) == 1
            else:
                assert response.status == 400
                assert "estimated cost is 4 upstream calls" in body["errors"][0]["message"]


@pytest.mark.parametrize(("status", "answer", "phrase"), [
    (500, None, "answered 500"),
    (200, {"orders": []}, "answered an object, not the JSON array a batched call needs"),
])
async def test_a_failed_batch_call_is_each_parents_error(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str, status: int,
        answer: Any, phrase: str) -> None:
    ups = await services(upstream, orders_status=status, orders_body=answer)
    gw = await pygate_gateway(config(ups), base_dir=schema_dir)
    code, body = await gql(gw, "{ users { name orders { id } } }")
    assert code == 200
    users = body["data"]["users"]
    assert all(u["orders"] is None for u in users) and users[0]["name"] == "user 1"
    assert sorted(e["path"][1] for e in body["errors"]) == list(range(50))
    for error in body["errors"]:
        assert error["path"] == ["users", error["path"][1], "orders"]
        assert "'User.orders'" in error["message"] and phrase in error["message"]
        assert "127.0.0.1" not in error["message"]
    assert len(ups["orders"].seen) == 1


def test_a_resolver_that_cannot_be_batched_is_refused_with_its_key_path(
        tmp_path: Path) -> None:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    ups = {"users": type("U", (), {"url": "http://127.0.0.1:9"})(),
           "orders": type("U", (), {"url": "http://127.0.0.1:9"})()}
    cfg = config(ups)
    resolvers = cfg["routes"][0]["graphql"]["resolvers"]
    resolvers["Order.customer"] = {"upstream": "users", "path": "/users/{parent.userId}",
                                   "batch": {"key": "id"}}
    resolvers["User.latest"] = {"upstream": "orders", "path": "/orders",
                                "query": {"user": "u-{parent.id}"}, "batch": {"key": "userId"}}
    with pytest.raises(ConfigError) as caught:
        build_gateway(load_data(cfg, base_dir=str(tmp_path)))
    issues = {issue.path: issue.message for issue in caught.value.issues}
    assert "not in its path" in issues['routes[0].graphql.resolvers."Order.customer".batch']
    assert "must be one placeholder" in issues['routes[0].graphql.resolvers."User.latest".batch']
    resolvers["User.orders"]["batch"] = {"key": "userId", "max": 0}
    with pytest.raises(ConfigError) as caught:
        load_data(cfg, base_dir=str(tmp_path))
    issues = {issue.path: issue.message for issue in caught.value.issues}
    assert "greater than or equal to 1" in \
        issues['routes[0].graphql.resolvers."User.orders".batch.max']
    # An aggregate call is made once per request: batch has no meaning there.
    with pytest.raises(ConfigError) as caught:
        load_data({"routes": [{"name": "a", "path": "/a", "aggregate": {"calls": {"x": {
            "upstream": "http://127.0.0.1:9", "batch": {"key": "id"}}}}}]})
    [issue] = caught.value.issues
    assert issue.path == "routes[0].aggregate.calls.x.batch"
    assert "GraphQL resolvers" in issue.message


def test_explain_shows_batched_fields(tmp_path: Path) -> None:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    (tmp_path / "pygate.toml").write_text("""
[upstreams.orders]
targets = ["http://127.0.0.1:3002"]

[[routes]]
name = "graphql"
path = "/graphql"
[routes.graphql]
schema = "schema.graphql"
[routes.graphql.resolvers."User.orders"]
upstream = "orders"
path = "/orders"
query = { userId = "{parent.id}" }
batch = { key = "userId", max = 50 }
""")
    done = CliRunner().invoke(main, ["explain", "-c", str(tmp_path / "pygate.toml"),
                                     "POST", "/graphql"])
    assert done.exit_code == 0, done.output
    assert ("  User.orders -> orders GET /orders  [batched: userId={parent.id} of up to 50 "
            "parents comma-separated in one call, items matched by userId]") in \
        done.output.splitlines()
