"""The bundled demo services answer as the README and the example config expect."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from pygate.demo import SERVICES, make_app
from pygate.demo.__main__ import parse_args
from pygate.demo.services import RECORDS

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
