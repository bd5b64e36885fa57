"""The bundled demo services answer as the README and the example config expect.

The last part holds the demo configuration (the top-level pygate.toml) to one
policy: every route that reaches the orders service requires the demo JWT.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from pygate.config import Config, RouteConfig, is_url, load
from pygate.demo import DEFAULT_PORTS, SERVICES, make_app
from pygate.demo.__main__ import parse_args
from pygate.demo.services import RECORDS
from pygate.demo.token import demo_token
from pygate.plugins import route_settings
from pygate.testing import TestGateway as RunningGateway

from .conftest import ROOT, problem, shipped_config

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


@pytest.mark.parametrize("name", SERVICES)
async def test_health(aiohttp_client: MakeClient, name: str) -> None:
    client = await aiohttp_client(make_app(name))
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_users(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("users"))

    users = await (await client.get("/users")).json()
    assert [u["id"] for u in users] == ["1", "2", "3"]

    response = await client.get("/users/1")
    assert response.status == 200
    user = await response.json()
    assert set(user) == {"id", "name", "email", "role", "address"}
    assert user["id"] == "1"
    assert user["role"] in ("admin", "user")
    assert set(user["address"]) == {"city", "country"}

    missing = await client.get("/users/999")
    assert missing.status == 404
    assert missing.content_type == "application/json"
    assert (await missing.json())["status"] == 404


async def test_create_user(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("users"))
    response = await client.post("/users", json={"name": "Dee Demo", "email": "dee@example.com"})
    assert response.status == 201
    created = await response.json()
    assert created["id"] == "4"
    assert created["name"] == "Dee Demo"
    assert created["role"] == "user"
    assert (await (await client.get("/users/4")).json()) == created

    bad = await client.post("/users", data=b"not json")
    assert bad.status == 400


async def test_data_is_per_app(aiohttp_client: MakeClient) -> None:
    first = await aiohttp_client(make_app("users"))
    await first.post("/users", json={"name": "Dee Demo", "email": "dee@example.com"})
    second = await aiohttp_client(make_app("users"))
    assert len(await (await second.get("/users")).json()) == 3


async def test_orders(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("orders"))
    order = await (await client.get("/orders/100")).json()
    assert order["userId"] == "1"
    assert order["total"] == 59.9
    assert order["status"] == "shipped"
    assert order["items"]

    mine = await (await client.get("/orders", params={"userId": "1"})).json()
    assert mine and all(o["userId"] == "1" for o in mine)
    everyone = await (await client.get("/orders")).json()
    assert len(everyone) > len(mine)

    assert (await client.get("/orders/1")).status == 404


async def test_products(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("products"))
    listed = await (await client.get("/products", params={"orderId": "100"})).json()
    assert listed
    for product in listed:
        assert set(product) == {"id", "name", "price", "stock", "orderId"}
        assert product["orderId"] == "100"

    one = await (await client.get(f"/products/{listed[0]['id']}")).json()
    assert one == listed[0]
    assert (await client.get("/products/nope")).status == 404


def test_order_links_resolve() -> None:
    """Every order's user and products exist, so aggregation examples never dangle."""
    users = make_app("users")[RECORDS].keys()
    products = make_app("products")[RECORDS]
    for order in make_app("orders")[RECORDS].values():
        assert order["userId"] in users
        assert {i["productId"] for i in order["items"]} <= set(products)
        assert any(p["orderId"] == order["id"] for p in products.values())


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_echo(aiohttp_client: MakeClient, method: str) -> None:
    client = await aiohttp_client(make_app("orders"))
    response = await client.request(
        method,
        "/echo/a/b%20c?x=1&x=2&y=3",
        headers={"X-Test": "yes"},
        data=b"payload" if method == "POST" else None,
    )
    assert response.status == 200
    body = await response.json()
    assert body["service"] == "orders"
    assert body["method"] == method
    assert body["path"] == "/echo/a/b%20c"
    assert body["query"] == {"x": ["1", "2"], "y": "3"}
    assert body["headers"]["X-Test"] == "yes"
    if method == "POST":
        assert body["body"] == "payload"


async def test_echo_root(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("users"))
    body = await (await client.get("/echo")).json()
    assert body["path"] == "/echo"
    assert body["query"] == {}


async def test_sse(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("products"))
    response = await client.get("/sse", params={"interval_ms": "1"})
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    events = [e for e in (await response.text()).split("\n\n") if e]
    assert len(events) == 5
    assert events[0].startswith("id: 1\nevent: tick\ndata: ")


async def test_sse_streams_as_it_goes(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("users"))
    response = await client.get("/sse", params={"interval_ms": "5000"})
    first = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"id: 1\n")
    response.close()


async def test_slow(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("users"))
    response = await client.get("/slow", params={"ms": "20"})
    assert response.status == 200
    assert await response.json() == {"service": "users", "slept_ms": 20}
    assert (await client.get("/slow", params={"ms": "soon"})).status == 400


async def test_unknown_path_is_json(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app("orders"))
    response = await client.get("/nowhere")
    assert response.status == 404
    assert (await response.json())["status"] == 404


def test_unknown_service() -> None:
    with pytest.raises(ValueError, match="unknown demo service"):
        make_app("payments")


def test_cli_defaults() -> None:
    args = parse_args([])
    assert (args.host, args.users_port, args.orders_port, args.products_port) == (
        "127.0.0.1",
        3001,
        3002,
        3003,
    )
    assert parse_args(["--orders-port", "4002"]).orders_port == 4002


# ---------------------------------------------------------------------------
# The demo configuration: no route shows orders without a token

DEMO_CONFIG = load(ROOT / "pygate.toml")
"""The top-level pygate.toml as pygate parses it (demo ports, nothing replaced)."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")

SAMPLE_PARAMS = {"id": "100", "userId": "1"}
"""A value for each path parameter of the demo routes: order 100 belongs to user 1."""

GRAPHQL_QUERY = "{ me { name orders { id total } } }"
"""A query of the demo schema that reads the orders service."""


def is_orders_service(config: Config, upstream: str) -> bool:
    """Whether ``upstream`` (a name from [upstreams] or a URL) has a target on the orders port."""
    urls = ([upstream] if is_url(upstream)
            else [t.url for t in config.upstreams[upstream].targets])
    for url in urls:
        parts = urlsplit(url)
        if parts.hostname in LOOPBACK and parts.port == DEFAULT_PORTS["orders"]:
            return True
    return False


def route_upstreams(route: RouteConfig) -> list[str]:
    """Every upstream a route may call: its proxy target, aggregate calls, GraphQL resolvers."""
    upstreams = [route.upstream] if route.upstream is not None else []
    if route.aggregate is not None:
        upstreams += [call.upstream for call in route.aggregate.calls.values()]
    if route.graphql is not None:
        upstreams += [resolver.upstream for resolver in route.graphql.resolvers.values()]
    return upstreams


ORDERS_ROUTES = [route for route in DEMO_CONFIG.routes
                 if any(is_orders_service(DEMO_CONFIG, u) for u in route_upstreams(route))]
"""The demo routes that reach the orders service, derived from the configuration."""


def test_orders_routes_are_found() -> None:
    """The derivation sees the plain proxy route, so an empty list cannot pass for a policy."""
    names = [route.name for route in ORDERS_ROUTES]
    assert "orders" in names
    assert "users" not in names


@pytest.mark.parametrize("route", ORDERS_ROUTES, ids=lambda route: route.name)
def test_orders_routes_require_the_jwt(route: RouteConfig) -> None:
    """The jwt plugin is on for the route, and not optional there."""
    jwt = route_settings(DEMO_CONFIG, route.plugins).get("jwt")
    assert jwt is not None, f"route {route.name!r} reaches orders with the jwt plugin off"
    assert jwt.get("optional", False) is False, (
        f"route {route.name!r} reaches orders but its token is optional")


def sample_request(route: RouteConfig) -> tuple[str, str, dict[str, str], dict[str, Any]]:
    """``(method, path, headers, extra)`` of a request that the route matches and serves."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in SAMPLE_PARAMS, f"add a sample value for {{{name}}} to SAMPLE_PARAMS"
        return SAMPLE_PARAMS[name]

    path = re.sub(r"\{(\w+)(?::path)?\}", value, route.path)
    headers = dict(route.headers or {})
    if route.hosts:
        headers["Host"] = route.hosts[0].replace("*", "demo")
    if route.graphql is not None:
        return "POST", path, headers, {"json": {"query": GRAPHQL_QUERY}}
    methods = route.methods or ["GET"]
    return ("GET" if "GET" in methods else methods[0]), path, headers, {}


@pytest.mark.parametrize("route", ORDERS_ROUTES, ids=lambda route: route.name)
async def test_orders_routes_answer_401_without_the_demo_token_and_200_with_it(
        pygate_gateway: Callable[..., Awaitable[RunningGateway]],
        demo_services: dict[str, int], route: RouteConfig) -> None:
    gateway = await pygate_gateway(shipped_config(ROOT / "pygate.toml", demo_services),
                                   base_dir=str(ROOT))
    method, path, headers, extra = sample_request(route)

    status, reply_headers, body = await gateway.request(method, path, headers=headers, **extra)
    assert status == 401, (route.name, status, body)
    assert problem(body)["route"] == route.name
    assert reply_headers["WWW-Authenticate"].startswith("Bearer")

    headers["Authorization"] = f"Bearer {demo_token()}"
    status, _, body = await gateway.request(method, path, headers=headers, **extra)
    assert status == 200, (route.name, status, body)
    if route.graphql is not None:
        assert "errors" not in body, body
        assert [order["id"] for order in body["data"]["me"]["orders"]] == ["100", "101"]
