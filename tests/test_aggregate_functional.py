"""Aggregate routes end to end: an in-process gateway in front of real loopback upstreams.

What a client notices (the composed body, X-Pygate-Partial, 502/504 problem
documents naming the call, how long it waits) and what each upstream notices
(which calls arrive, when, with which headers, and that a call the gateway no
longer needs is cancelled).
"""

from __future__ import annotations

import asyncio
import re
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pygate_headers
import pytest
from aiohttp import web

from pygate import Context, Forbidden, Identity, UpstreamRequest, hookimpl
from pygate.demo.token import demo_token
from pygate.testing import TestGateway as RunningGateway

from .conftest import ROOT, UpstreamFactory, free_port, problem, shipped_config

GatewayFactory = Callable[..., Awaitable[RunningGateway]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(body: Any, status: int = 200, delay: float = 0.0) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(body, status=status)
    return handler


def aggregate_route(calls: dict[str, Any], *, name: str = "agg", path: str = "/agg",
                    timeout: str = "3s", **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": path, "aggregate": {"timeout": timeout, "calls": calls},
            **extra}


async def get(gateway: RunningGateway, path: str, **kwargs: Any) -> tuple[int, Any, Any, float]:
    started = time.monotonic()
    status, headers, body = await gateway.request("GET", path, **kwargs)
    return status, headers, body, time.monotonic() - started


# ---------------------------------------------------------------------------
# The contract's example


async def test_order_details_example_of_the_product_contract(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    orders = await upstream(routes={"GET /orders/{id}": reply(
        {"id": "42", "userId": "7", "total": 12.5})})
    users = await upstream(routes={"GET /users/{id}": reply(
        {"id": "7", "name": "Ann", "email": "ann@example.com"})})
    products = await upstream(routes={"GET /products": reply(
        [{"id": "p1", "name": "Pen", "price": 2.5, "stock": 9, "orderId": "42"},
         {"id": "p2", "name": "Ink", "price": 10, "stock": 0, "orderId": "42"}])})
    gateway = await pygate_gateway({
        "upstreams": {"orders": {"targets": [orders.url]}, "users": {"targets": [users.url]},
                      "products": {"targets": [products.url]}},
        "routes": [{
            "name": "order-details", "path": "/api/order-details/{id}", "methods": ["GET"],
            "aggregate": {"timeout": "3s", "calls": {
                "order": {"upstream": "orders", "path": "/orders/{id}"},
                "customer": {"upstream": "users", "path": "/users/{order.userId}"},
                "items": {"upstream": "products", "path": "/products",
                          "query": {"orderId": "{id}"}, "fields": ["id", "name", "price"],
                          "optional": True},
            }},
        }],
    })
    status, headers, body, _ = await get(
        gateway, "/api/order-details/42",
        headers={"X-Request-ID": "req-42", "Cookie": "session=secret",
                 "Authorization": "Bearer client-token", "X-Custom": "client"})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert "X-Pygate-Partial" not in headers
    assert headers["X-Request-ID"] == "req-42"
    assert body == {
        "order": {"id": "42", "userId": "7", "total": 12.5},
        "customer": {"id": "7", "name": "Ann", "email": "ann@example.com"},
        "items": [{"id": "p1", "name": "Pen", "price": 2.5},
                  {"id": "p2", "name": "Ink", "price": 10}],
    }
    assert [s.path for s in orders.seen] == ["/orders/42"]
    assert [s.path for s in users.seen] == ["/users/7"]
    assert [s.path for s in products.seen] == ["/products?orderId=42"]
    for up in (orders, users, products):
        sent = up.last.headers
        assert sent["X-Request-ID"] == "req-42"
        assert sent["X-Forwarded-For"] == "127.0.0.1"
        assert sent["X-Forwarded-Proto"] == "http"
        assert sent["Accept"] == "application/json"
        # the client's own headers are not forwarded to calls
        for private in ("Cookie", "Authorization", "X-Custom"):
            assert private not in sent


# ---------------------------------------------------------------------------
# Concurrency and dependencies


async def test_independent_calls_run_concurrently(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    ups = [await upstream(reply({"n": n}, delay=0.2)) for n in range(3)]
    gateway = await pygate_gateway({"routes": [aggregate_route(
        {f"c{n}": {"upstream": up.url, "path": "/"} for n, up in enumerate(ups)})]})
    await get(gateway, "/agg")  # connections are warm; the timing below is the calls'
    status, _, body, elapsed = await get(gateway, "/agg")
    assert status == 200
    assert body == {"c0": {"n": 0}, "c1": {"n": 1}, "c2": {"n": 2}}
    assert 0.2 <= elapsed < 0.4, f"three 200 ms calls took {elapsed:.3f}s"


async def test_a_dependent_call_starts_as_soon_as_what_it_reads_is_done(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    """`profile` needs only `user` (fast); it must not wait for `report` (slow),
    which sits in the same stage as `user`."""
    arrivals: dict[str, float] = {}

    def timed(name: str, body: Any, delay: float) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            arrivals[name] = time.monotonic()
            await asyncio.sleep(delay)
            return web.json_response(body)
        return handler

    up = await upstream(routes={
        "GET /user": timed("user", {"id": "u1"}, 0.05),
        "GET /report": timed("report", {"lines": 3}, 0.4),
        "GET /profile/{id}": timed("profile", {"bio": "hi"}, 0.05),
    })
    gateway = await pygate_gateway({"routes": [aggregate_route({
        "user": {"upstream": up.url, "path": "/user"},
        "report": {"upstream": up.url, "path": "/report"},
        "profile": {"upstream": up.url, "path": "/profile/{user.id}"},
    })]})
    started = time.monotonic()
    status, _, body, elapsed = await get(gateway, "/agg")
    assert status == 200
    assert body == {"user": {"id": "u1"}, "report": {"lines": 3}, "profile": {"bio": "hi"}}
    assert arrivals["profile"] - started < 0.3, "profile waited for report"
    assert elapsed < 0.7


async def test_chained_calls_pass_values_along_in_path_query_headers_and_body(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    received: list[Any] = []

    async def quote(request: web.Request) -> web.StreamResponse:
        received.append(await request.json())
        return web.json_response({"price": 99, "currency": "EUR"})

    up = await upstream(routes={
        "GET /carts/{id}": reply({"id": "c-1", "owner": {"id": "u 7"}, "skus": ["a", "b"]}),
        "GET /users/{id}": reply({"id": "u 7", "tier": "gold", "country": "PT"}),
        "GET /tax": reply({"rate": 0.23}),
        "POST /quote": quote,
    })
    gateway = await pygate_gateway({"routes": [aggregate_route({
        "cart": {"upstream": up.url, "path": "/carts/{id}"},
        "owner": {"upstream": up.url, "path": "/users/{cart.owner.id}"},
        "tax": {"upstream": up.url, "path": "/tax",
                "query": {"country": "{owner.country}", "tier": "{owner.tier}"},
                "headers": {"X-Cart": "{cart.id}"}},
        "price": {"upstream": up.url, "method": "POST", "path": "/quote",
                  "body": {"skus": "{cart.skus}", "rate": "{tax.rate}",
                           "label": "cart {cart.id} for {owner.tier}"}},
    }, path="/agg/{id}")]})
    status, _, body, _ = await get(gateway, "/agg/c-1")
    assert status == 200
    assert body["price"] == {"price": 99, "currency": "EUR"}
    paths = [s.path for s in up.seen]
    assert paths[:2] == ["/carts/c-1", "/users/u%207"]
    assert "/tax?country=PT&tier=gold" in paths
    tax_call = next(s for s in up.seen if s.path.startswith("/tax"))
    assert tax_call.headers["X-Cart"] == "c-1"
    assert received == [{"skus": ["a", "b"], "rate": 0.23, "label": "cart c-1 for gold"}]
    quote_call = next(s for s in up.seen if s.path == "/quote")
    assert quote_call.headers["Content-Type"] == "application/json"


async def test_request_values_are_encoded_where_they_land(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()  # echoes what it received
    gateway = await pygate_gateway({"routes": [aggregate_route({
        "echo": {"upstream": up.url, "path": "/by/{name}",
                 "query": {"q": "{query.q}", "lang": "{header.Accept-Language}"}},
    }, path="/agg/{name}")]})
    status, _, body, _ = await get(gateway, "/agg/a%20b?q=x%26y%3Dz+w",
                                   headers={"Accept-Language": "pt-PT"})
    assert status == 200
    assert body["echo"]["path"] == "/by/a%20b?q=x%26y%3Dz%20w&lang=pt-PT"


async def test_bodies_are_read_whatever_their_framing_up_to_max_body(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"parts":', b' [1, 2', b", 3]}"):
            await response.write(part)
        await response.write_eof()
        return response

    async def no_content(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    async def huge_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'["' + b"x" * 4096 + b'"]')
        await response.write_eof()
        return response

    up = await upstream(routes={
        "GET /chunked": chunked, "POST /none": no_content, "GET /huge": huge_chunked,
        "GET /big": reply(["y" * 4096])})
    gateway = await pygate_gateway({"gateway": {"max_body": "1KB"}, "routes": [aggregate_route({
        "chunked": {"upstream": up.url, "path": "/chunked"},
        "none": {"upstream": up.url, "path": "/none", "method": "POST", "body": {"a": 1}},
        "huge": {"upstream": up.url, "path": "/huge", "optional": True},
        "big": {"upstream": up.url, "path": "/big", "optional": True},
    })]})
    status, headers, body, _ = await get(gateway, "/agg")
    assert status == 200
    assert body == {"chunked": {"parts": [1, 2, 3]}, "none": None, "huge": None, "big": None}
    assert headers["X-Pygate-Partial"] == "huge,big"


# ---------------------------------------------------------------------------
# Shapes: fields, rename, merge


async def test_fields_rename_and_merge_shape_the_response(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(routes={
        "GET /user": reply({"id": 1, "name": "Ann", "password_hash": "x",
                            "address": {"city": "Oslo", "zip": "0150", "geo": {"lat": 59.9}}}),
        "GET /orders": reply([{"id": 10, "total": 5, "internal": True,
                               "lines": [{"sku": "a", "cost": 1}]}]),
        "GET /flags": reply({"beta": True, "internal_note": "n"}),
    })
    gateway = await pygate_gateway({"routes": [aggregate_route({
        "user": {"upstream": up.url, "path": "/user",
                 "fields": ["id", "name", "address.city", "address.geo.lat"],
                 "rename": {"name": "displayName"}},
        "orders": {"upstream": up.url, "path": "/orders", "fields": ["id", "lines.sku"],
                   "rename": {"id": "orderId"}},
        "flags": {"upstream": up.url, "path": "/flags", "fields": ["beta"], "merge": True},
    })]})
    status, _, body, _ = await get(gateway, "/agg")
    assert status == 200
    assert body == {
        "user": {"id": 1, "displayName": "Ann",
                 "address": {"city": "Oslo", "geo": {"lat": 59.9}}},
        "orders": [{"orderId": 10, "lines": [{"sku": "a"}]}],
        "beta": True,
    }


# ---------------------------------------------------------------------------
# Failures: optional and required, timeouts, cancellation


async def test_failed_optional_calls_are_null_and_listed_in_config_order(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    async def not_json(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    up = await upstream(routes={
        "GET /ok": reply({"fine": True}),
        "GET /boom": reply({"error": "x"}, status=500, delay=0.1),
        "GET /html": not_json,
        "GET /missing": reply({"error": "no"}, status=404),
    })
    refused = f"http://127.0.0.1:{free_port()}"
    gateway = await pygate_gateway({"routes": [aggregate_route({
        "slow_boom": {"upstream": up.url, "path": "/boom", "optional": True},
        "ok": {"upstream": up.url, "path": "/ok"},
        "html": {"upstream": up.url, "path": "/html", "optional": True},
        "refused": {"upstream": refused, "path": "/x", "optional": True},
        "gone": {"upstream": up.url, "path": "/missing", "optional": True},
        "merged": {"upstream": up.url, "path": "/missing", "optional": True, "merge": True},
        "after": {"upstream": up.url, "path": "/ok/{slow_boom.id}", "optional": True},
    })]})
    status, headers, body, _ = await get(gateway, "/agg")
    assert status == 200
    assert body == {"slow_boom": None, "ok": {"fine": True}, "html": None, "refused": None,
                    "gone": None, "after": None}
    assert headers["X-Pygate-Partial"] == "slow_boom,html,refused,gone,merged,after"


async def test_a_failed_required_call_fails_the_response_with_502_naming_it(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(routes={
        "GET /ok": reply({"fine": True}),
        "GET /boom": reply({"error": "internal detail"}, status=503),
        "GET /list": reply([1, 2]),
    })
    refused_port = free_port()
    gateway = await pygate_gateway({"routes": [
        aggregate_route({"ok": {"upstream": up.url, "path": "/ok"},
                         "profile": {"upstream": up.url, "path": "/boom"}}, name="status"),
        aggregate_route({"ok": {"upstream": up.url, "path": "/ok"},
                         "down": {"upstream": f"http://127.0.0.1:{refused_port}"}},
                        name="refused", path="/refused"),
        aggregate_route({"list": {"upstream": up.url, "path": "/list", "merge": True}},
                        name="merge", path="/merge"),
        aggregate_route({"opt": {"upstream": up.url, "path": "/boom", "optional": True},
                         "needs": {"upstream": up.url, "path": "/ok/{opt.id}"}},
                        name="chain", path="/chain"),
    ]})
    cases = [
        ("/agg", "status", "profile", "call 'profile' failed:", "answered 503"),
        ("/refused", "refused", "down", "call 'down' failed: the upstream", "refused"),
        ("/merge", "merge", "list", "call 'list' failed: merge needs a JSON object",
         "an array"),
        ("/chain", "chain", "needs", "call 'needs' was not made", "reads call 'opt'"),
    ]
    for path, route, call, start, end in cases:
        status, headers, body, _ = await get(gateway, path, headers={"X-Request-ID": call})
        assert status == 502, (path, body)
        assert headers["Content-Type"] == "application/problem+json"
        doc = problem(body)
        assert doc["title"] == "Bad Gateway"
        assert doc["call"] == call and doc["route"] == route and doc["request_id"] == call
        assert doc["detail"].startswith(start) and end in doc["detail"], doc["detail"]
        assert str(refused_port) not in str(doc) and "internal detail" not in str(doc)


async def test_timeouts_give_504_for_required_calls_and_null_for_optional_ones(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(routes={
        "GET /fast": reply({"fast": True}),
        "GET /slow": reply({"slow": True}, delay=2.0),
    })
    gateway = await pygate_gateway({"routes": [
        # a call's own timeout
        aggregate_route({"fast": {"upstream": up.url, "path": "/fast"},
                         "slow": {"upstream": up.url, "path": "/slow", "timeout": "200ms"}},
                        name="own", path="/own"),
        # the route's timeout while a required call is still out
        aggregate_route({"fast": {"upstream": up.url, "path": "/fast"},
                         "slow": {"upstream": up.url, "path": "/slow"}},
                        name="route", path="/route", timeout="300ms"),
        # the route's timeout while only an optional call is out: answered, partially
        aggregate_route({"fast": {"upstream": up.url, "path": "/fast"},
                         "slow": {"upstream": up.url, "path": "/slow", "optional": True},
                         "after": {"upstream": up.url, "path": "/fast?{slow.x}",
                                   "optional": True}},
                        name="partial", path="/partial", timeout="300ms"),
    ]})
    for path, limit in (("/own", 0.2), ("/route", 0.3)):
        status, headers, body, elapsed = await get(gateway, path)
        assert status == 504, (path, body)
        doc = problem(body)
        assert doc["title"] == "Gateway Timeout" and doc["call"] == "slow"
        assert "call 'slow'" in doc["detail"]
        assert limit <= elapsed < limit + 0.25, f"{path}: answered after {elapsed:.3f}s"
    status, headers, body, elapsed = await get(gateway, "/partial")
    assert status == 200
    assert body == {"fast": {"fast": True}, "slow": None, "after": None}
    assert headers["X-Pygate-Partial"] == "slow,after"
    assert 0.3 <= elapsed < 0.55


@pytest.fixture
async def cancellable_upstream() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """An upstream whose handlers are cancelled when the client (the gateway) goes away."""
    runners: list[web.AppRunner] = []

    async def factory(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield factory
    for runner in runners:
        await runner.cleanup()


async def test_calls_in_flight_are_cancelled_once_the_response_is_decided(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory,
        cancellable_upstream: Callable[[Handler], Awaitable[str]]) -> None:
    cancelled: list[str] = []
    started: list[str] = []

    async def slow(request: web.Request) -> web.StreamResponse:
        started.append(request.path)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(request.path)
            raise
        return web.json_response({"late": True})

    slow_url = await cancellable_upstream(slow)
    failing = await upstream(reply({"error": "x"}, status=500, delay=0.1))
    gateway = await pygate_gateway({"routes": [
        aggregate_route({"slow": {"upstream": slow_url, "path": "/failed-fast"},
                         "broken": {"upstream": failing.url, "path": "/"}}),
        aggregate_route({"slow": {"upstream": slow_url, "path": "/timed-out", "optional": True},
                         "fine": {"upstream": failing.url, "path": "/", "optional": True}},
                        name="late", path="/late", timeout="300ms"),
    ]})
    status, _, body, elapsed = await get(gateway, "/agg")
    assert status == 502 and problem(body)["call"] == "broken"
    assert elapsed < 1.0
    status, headers, _, elapsed = await get(gateway, "/late")
    assert status == 200 and headers["X-Pygate-Partial"] == "slow,fine"
    for _ in range(100):
        if len(cancelled) == 2:
            break
        await asyncio.sleep(0.01)
    assert started == ["/failed-fast", "/timed-out"]
    assert cancelled == ["/failed-fast", "/timed-out"], "the upstream kept working for nothing"


# ---------------------------------------------------------------------------
# Plugins: identity headers, transform_request on every call, the aggregate hook


def _test_auth() -> types.ModuleType:
    """Trusts ``X-Test-User``: for tests only."""
    module = types.ModuleType("test-auth")
    module.PRIORITY = 2000  # type: ignore[attr-defined]

    @hookimpl
    def authenticate(request: web.BaseRequest) -> Identity | None:
        user = request.headers.get("X-Test-User")
        return Identity(id=user, roles=("reader", "ops")) if user else None

    module.authenticate = authenticate  # type: ignore[attr-defined]
    return module


async def test_identity_headers_and_request_id_reach_every_call(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(routes={
        "GET /me/{id}": reply({"id": "ann", "team": "t1"}),
        "GET /teams/{id}": reply({"name": "Team One"}),
        "GET /inbox": reply([]),
    })
    gateway = await pygate_gateway({
        "plugins": {"test-auth": {}, "headers": {"request": {"add": {"X-Gateway": "pygate"}}}},
        "routes": [aggregate_route({
            "me": {"upstream": up.url, "path": "/me/{identity.id}"},
            "team": {"upstream": up.url, "path": "/teams/{me.team}"},
            "inbox": {"upstream": up.url, "path": "/inbox",
                      "headers": {"X-Roles": "{identity.roles}"}},
        })],
    }, plugins={"test-auth": _test_auth(), "headers": pygate_headers})
    status, headers, body, _ = await get(
        gateway, "/agg", headers={"X-Test-User": "ann", "X-User-Id": "forged"})
    assert status == 200
    assert body == {"me": {"id": "ann", "team": "t1"}, "team": {"name": "Team One"},
                    "inbox": []}
    assert sorted(s.path for s in up.seen) == ["/inbox", "/me/ann", "/teams/t1"]
    for seen in up.seen:
        assert seen.headers.getall("X-User-Id") == ["ann"]
        assert seen.headers["X-User-Role"] == "reader,ops"
        assert seen.headers["X-Gateway"] == "pygate"
        assert seen.headers["X-Request-ID"] == headers["X-Request-ID"]
    assert next(s for s in up.seen if s.path == "/inbox").headers["X-Roles"] == "reader,ops"

    # without an identity, {identity.id} has no value: the required call fails
    status, _, body, _ = await get(gateway, "/agg")
    assert status == 502 and problem(body)["call"] == "me"
    assert "{identity.id} has no value" in problem(body)["detail"]


def _stamping_plugin(name: str, priority: int) -> types.ModuleType:
    """An async transform_request that reads its config after awaiting."""
    module = types.ModuleType(name)
    module.PRIORITY = priority  # type: ignore[attr-defined]

    @hookimpl
    async def transform_request(ctx: Context, upstream_request: UpstreamRequest) -> None:
        await asyncio.sleep(0.01)
        upstream_request.headers[f"X-{name}"] = ctx.config["value"]

    module.transform_request = transform_request  # type: ignore[attr-defined]
    return module


async def test_async_transform_hooks_see_their_own_config_on_concurrent_calls(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gateway = await pygate_gateway({
        "plugins": {"first": {"value": "one"}, "second": {"value": "two"}},
        "routes": [aggregate_route({f"c{n}": {"upstream": up.url} for n in range(4)})],
    }, plugins={"first": _stamping_plugin("first", 20), "second": _stamping_plugin("second", 10)})
    status, _, _, _ = await get(gateway, "/agg")
    assert status == 200
    assert len(up.seen) == 4
    for seen in up.seen:
        assert (seen.headers["X-first"], seen.headers["X-second"]) == ("one", "two")


def _guard() -> types.ModuleType:
    """Refuses calls to /secret (403) and breaks on calls to /bug (a plugin error)."""
    module = types.ModuleType("guard")

    @hookimpl
    def transform_request(upstream_request: UpstreamRequest) -> None:
        if upstream_request.path.startswith("/secret"):
            raise Forbidden("calls to /secret are not allowed")
        if upstream_request.path.startswith("/bug"):
            raise RuntimeError("plugin bug")

    module.transform_request = transform_request  # type: ignore[attr-defined]
    return module


async def test_a_plugin_refusing_one_call_refuses_the_request(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    gateway = await pygate_gateway({"plugins": {"guard": {}}, "routes": [
        aggregate_route({"open": {"upstream": up.url, "path": "/open"},
                         "secret": {"upstream": up.url, "path": "/secret", "optional": True}}),
        aggregate_route({"open": {"upstream": up.url, "path": "/open"},
                         "bug": {"upstream": up.url, "path": "/bug", "optional": True}},
                        name="bug", path="/bug"),
    ]}, plugins={"guard": _guard()})
    status, _, body, _ = await get(gateway, "/agg")
    assert status == 403 and problem(body)["detail"] == "calls to /secret are not allowed"
    status, _, body, _ = await get(gateway, "/bug")
    assert status == 500 and "plugin bug" not in str(body)
    assert not any(s.path.startswith(("/secret", "/bug")) for s in up.seen)


def _shaper(name: str, priority: int, shape: Callable[[dict[str, Any]], Any]
            ) -> types.ModuleType:
    module = types.ModuleType(name)
    module.PRIORITY = priority  # type: ignore[attr-defined]

    @hookimpl
    def aggregate(ctx: Context, results: dict[str, Any]) -> Any:
        ctx.state.setdefault("shapers", []).append(name)
        return shape(results)

    module.aggregate = aggregate  # type: ignore[attr-defined]
    return module


async def test_hook_aggregate_first_non_none_body_replaces_the_composition(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(routes={"GET /user": reply({"name": "Ann"}),
                                "GET /cart": reply({"total": 3}),
                                "GET /bad": reply({}, status=500)})
    calls = {"user": {"upstream": up.url, "path": "/user"},
             "cart": {"upstream": up.url, "path": "/cart"},
             "extra": {"upstream": up.url, "path": "/bad", "optional": True}}
    plugins = {
        "declines": _shaper("declines", 30, lambda results: None),
        "summary": _shaper("summary", 20, lambda results: {
            "who": results["user"]["name"], "total": results["cart"]["total"],
            "missing": results["extra"]}),
        "never": _shaper("never", 10, lambda results: {"never": True}),
        "broken": _shaper("broken", 5, lambda results: {"not json": object()}),
    }
    gateway = await pygate_gateway({"routes": [
        aggregate_route(calls, plugins={"declines": {}, "summary": {}, "never": {}}),
        aggregate_route(calls, name="plain", path="/plain", plugins={"declines": {}}),
        aggregate_route(calls, name="broken", path="/broken", plugins={"broken": {}}),
    ]}, plugins=plugins)
    status, headers, body, _ = await get(gateway, "/agg")
    assert status == 200
    assert body == {"who": "Ann", "total": 3, "missing": None}
    assert headers["X-Pygate-Partial"] == "extra"
    status, _, body, _ = await get(gateway, "/plain")
    assert body == {"user": {"name": "Ann"}, "cart": {"total": 3}, "extra": None}
    status, _, body, _ = await get(gateway, "/broken")
    assert status == 500 and problem(body)["route"] == "broken"


# ---------------------------------------------------------------------------
# Backend-for-Frontend: one path, two shapes


async def test_bff_routes_share_a_path_and_differ_by_client_header(
        pygate_gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(routes={
        "GET /users/{id}": reply({"id": "1", "name": "Ann", "email": "a@x", "bio": "long"}),
        "GET /orders": reply([{"id": "o1", "total": 5, "status": "new", "items": [1, 2]}]),
        "GET /recommendations": reply([{"sku": "r1", "score": 0.9}]),
    })
    web_calls = {
        "user": {"upstream": up.url, "path": "/users/{id}"},
        "orders": {"upstream": up.url, "path": "/orders", "query": {"userId": "{id}"}},
        "recommended": {"upstream": up.url, "path": "/recommendations", "optional": True},
    }
    mobile_calls = {
        "user": {"upstream": up.url, "path": "/users/{id}", "fields": ["name"], "merge": True},
        "orders": {"upstream": up.url, "path": "/orders", "query": {"userId": "{id}"},
                   "fields": ["id", "status"]},
    }
    gateway = await pygate_gateway({"routes": [
        aggregate_route(web_calls, name="home-web", path="/home/{id}"),
        aggregate_route(mobile_calls, name="home-mobile", path="/home/{id}",
                        headers={"X-Client": "mobile"}),
    ]})
    status, _, mobile, _ = await get(gateway, "/home/1", headers={"X-Client": "mobile"})
    assert status == 200
    assert mobile == {"name": "Ann", "orders": [{"id": "o1", "status": "new"}]}
    assert not any(s.path == "/recommendations" for s in up.seen)
    status, _, desktop, _ = await get(gateway, "/home/1", headers={"X-Client": "web"})
    assert status == 200
    assert desktop == {
        "user": {"id": "1", "name": "Ann", "email": "a@x", "bio": "long"},
        "orders": [{"id": "o1", "total": 5, "status": "new", "items": [1, 2]}],
        "recommended": [{"sku": "r1", "score": 0.9}],
    }
    status, _, default, _ = await get(gateway, "/home/1")
    assert default == desktop


# ---------------------------------------------------------------------------
# The shipped configurations, against the demo services


async def test_demo_config_serves_order_details_and_both_bff_shapes(
        pygate_gateway: GatewayFactory, demo_services: dict[str, int]) -> None:
    gateway = await pygate_gateway(shipped_config(ROOT / "pygate.toml", demo_services))
    token = {"Authorization": f"Bearer {demo_token()}"}  # every route that shows orders needs it
    status, headers, body, _ = await get(gateway, "/api/order-details/100", headers=token)
    assert status == 200 and "X-Pygate-Partial" not in headers
    assert body == {
        "order": {"id": "100", "status": "shipped", "total": 59.9},
        "customer": {"id": "1", "name": "Alice Demo", "address": {"city": "Lisbon"}},
        "items": [{"id": "1001", "name": "Widget", "price": 19.95},
                  {"id": "1002", "name": "Gadget", "price": 20.0}],
    }
    status, _, body, _ = await get(gateway, "/api/order-details/999", headers=token)
    assert status == 502 and problem(body)["call"] == "order"

    status, _, mobile, _ = await get(gateway, "/api/home/1",
                                    headers={**token, "X-Client": "mobile"})
    assert status == 200
    assert mobile == {"displayName": "Alice Demo", "address": {"city": "Lisbon"},
                      "orders": [{"id": "100", "status": "shipped"},
                                 {"id": "101", "status": "pending"}]}
    status, _, desktop, _ = await get(gateway, "/api/home/1", headers=token)
    assert status == 200
    assert set(desktop) == {"user", "orders", "latest_items"}
    assert desktop["user"]["email"] == "alice@example.com"
    assert desktop["latest_items"] == [{"id": "1001", "name": "Widget", "price": 19.95},
                                       {"id": "1002", "name": "Gadget", "price": 20.0}]

    # a user without orders: the optional call that reads {orders.0.id} is null
    status, _, _ = await gateway.request(
        "POST", "/api/users", json={"name": "Dee Demo", "email": "dee@example.com"})
    assert status == 201
    status, headers, body, _ = await get(gateway, "/api/home/4", headers=token)
    assert status == 200 and headers["X-Pygate-Partial"] == "latest_items"
    assert body["orders"] == [] and body["latest_items"] is None


async def test_bff_example_config_serves_its_three_shapes(
        pygate_gateway: GatewayFactory, demo_services: dict[str, int]) -> None:
    gateway = await pygate_gateway(shipped_config(ROOT / "examples/bff/pygate.toml",
                                                  demo_services))
    readme = (ROOT / "examples/bff/README.md").read_text()
    for client in ("web", "mobile", "watch"):
        status, _, body, _ = await get(gateway, "/bff/home/1", headers={"X-Client": client})
        assert status == 200, (client, body)
        shown = re.search(rf"<!-- {client} -->\n```json\n(.*?)\n```", readme, re.S)
        assert shown is not None, f"the README shows no {client} response"
        import json

        assert json.loads(shown.group(1)) == body, client
