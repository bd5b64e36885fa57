"""The three demo services behind the example ``pygate.toml``: users, orders, products.

Each service is a small aiohttp application with deterministic in-memory data.
Besides its own resource, every service answers:

- ``GET /health``: ``{"status": "ok"}``;
- ``/echo`` and ``/echo/{tail}`` (any method): what the service received (method,
  raw path, query, headers, body), so users can see what the gateway forwarded;
- ``GET /sse``: a ``text/event-stream`` of 5 events 200 ms apart
  (``?count=`` and ``?interval_ms=`` change both);
- ``GET /slow?ms=N``: sleeps N milliseconds, then answers JSON.

Errors are JSON too: ``{"error": "...", "status": 404}``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVICES: tuple[str, ...] = ("users", "orders", "products")
"""Service names, in the order they are started."""

DEFAULT_PORTS: dict[str, int] = {"users": 3001, "orders": 3002, "products": 3003}
"""The loopback ports the example configuration expects."""

MAX_SLOW_MS = 60_000
MAX_SSE_COUNT = 1_000

SERVICE_NAME = web.AppKey("service_name", str)
RECORDS = web.AppKey("records", dict[str, JSON])

# ---------------------------------------------------------------------------
# Data (copied into each application, so one app's POSTs never leak into another)

USERS: tuple[JSON, ...] = (
    {
        "id": "1",
        "name": "Alice Demo",
        "email": "alice@example.com",
        "role": "admin",
        "address": {"city": "Lisbon", "country": "PT"},
    },
    {
        "id": "2",
        "name": "Bob Demo",
        "email": "bob@example.com",
        "role": "user",
        "address": {"city": "Berlin", "country": "DE"},
    },
    {
        "id": "3",
        "name": "Carol Demo",
        "email": "carol@example.com",
        "role": "user",
        "address": {"city": "Toronto", "country": "CA"},
    },
)

ORDERS: tuple[JSON, ...] = (
    {
        "id": "100",
        "userId": "1",
        "total": 59.9,
        "status": "shipped",
        "items": [
            {"productId": "1001", "quantity": 2, "price": 19.95},
            {"productId": "1002", "quantity": 1, "price": 20.0},
        ],
    },
    {
        "id": "101",
        "userId": "1",
        "total": 12.5,
        "status": "pending",
        "items": [{"productId": "1003", "quantity": 1, "price": 12.5}],
    },
    {
        "id": "102",
        "userId": "2",
        "total": 240.0,
        "status": "delivered",
        "items": [{"productId": "1004", "quantity": 3, "price": 80.0}],
    },
    {
        "id": "103",
        "userId": "3",
        "total": 8.75,
        "status": "cancelled",
        "items": [{"productId": "1005", "quantity": 1, "price": 8.75}],
    },
)

PRODUCTS: tuple[JSON, ...] = (
    {"id": "1001", "name": "Widget", "price": 19.95, "stock": 120, "orderId": "100"},
    {"id": "1002", "name": "Gadget", "price": 20.0, "stock": 35, "orderId": "100"},
    {"id": "1003", "name": "Sprocket", "price": 12.5, "stock": 0, "orderId": "101"},
    {"id": "1004", "name": "Gizmo", "price": 80.0, "stock": 7, "orderId": "102"},
    {"id": "1005", "name": "Doohickey", "price": 8.75, "stock": 64, "orderId": "103"},
)

_DATA: dict[str, tuple[JSON, ...]] = {"users": USERS, "orders": ORDERS, "products": PRODUCTS}

# The query parameters each list endpoint filters on, and the record field each matches.
# A value may name several records, comma-separated (``?userId=1,2``), as a gateway
# batching GraphQL fields sends them.
_FILTERS: dict[str, tuple[tuple[str, str], ...]] = {
    "users": (("id", "id"),),
    "orders": (("userId", "userId"), ("id", "id")),
    "products": (("orderId", "orderId"), ("id", "id")),
}


# ---------------------------------------------------------------------------
# Helpers


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") else name


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer aiohttp's own HTTP errors (unknown path, wrong method) as JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason)
        if "Allow" in exc.headers:  # 405 says which methods would do
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be an integer") from None
    if not 0 <= value <= maximum:
        raise web.HTTPBadRequest(reason=f"{name} must be between 0 and {maximum}")
    return value


def _multi_dict(items: Any) -> dict[str, str | list[str]]:
    """Collapse a multidict: repeated names become lists, in arrival order."""
    out: dict[str, str | list[str]] = {}
    for key, value in items:
        previous = out.get(key)
        if previous is None:
            out[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            out[key] = [previous, value]
    return out


# ---------------------------------------------------------------------------
# Handlers every service has


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def echo(request: web.Request) -> web.Response:
    """Describe the request as received: method, raw path, query, headers, body."""
    body = await request.read()
    return web.json_response(
        {
            "service": request.app[SERVICE_NAME],
            "method": request.method,
            "path": request.raw_path.split("?", 1)[0],
            "query": _multi_dict(request.query.items()),
            "headers": _multi_dict(request.headers.items()),
            "body": body.decode("utf-8", errors="replace"),
        }
    )


async def sse(request: web.Request) -> web.StreamResponse:
    """Send ``count`` Server-Sent Events, ``interval_ms`` apart (5 and 200 by default)."""
    count = _int_param(request, "count", 5, MAX_SSE_COUNT)
    interval = _int_param(request, "interval_ms", 200, MAX_SLOW_MS) / 1000
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    service = request.app[SERVICE_NAME]
    try:
        for n in range(1, count + 1):
            if n > 1:
                await asyncio.sleep(interval)
            data = json.dumps({"service": service, "n": n})
            await response.write(f"id: {n}\nevent: tick\ndata: {data}\n\n".encode())
        await response.write_eof()
    except ConnectionResetError:  # the client went away mid-stream: nothing to report
        pass
    return response


async def slow(request: web.Request) -> web.Response:
    """Sleep ``ms`` milliseconds (default 0), then answer."""
    ms = _int_param(request, "ms", 0, MAX_SLOW_MS)
    await asyncio.sleep(ms / 1000)
    return web.json_response({"service": request.app[SERVICE_NAME], "slept_ms": ms})


# ---------------------------------------------------------------------------
# Resource handlers (one set, parameterised by the service's name)


async def list_records(request: web.Request) -> web.Response:
    name = request.app[SERVICE_NAME]
    records = list(request.app[RECORDS].values())
    for query_name, field in _FILTERS.get(name, ()):
        if query_name in request.query:
            wanted = set(request.query[query_name].split(","))
            records = [r for r in records if r.get(field) in wanted]
    return web.json_response(records)


async def get_record(request: web.Request) -> web.Response:
    name = request.app[SERVICE_NAME]
    record_id = request.match_info["id"]
    record = request.app[RECORDS].get(record_id)
    if record is None:
        return _error(404, f"{_singular(name)} {record_id} not found")
    return web.json_response(record)


async def create_user(request: web.Request) -> web.Response:
    """Store a user from a JSON body with ``name`` and ``email``; answer it with its new id."""
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    for key in ("name", "email"):
        if not isinstance(body.get(key), str) or not body[key]:
            return _error(400, f"{key} is required and must be a string")
    role = body.get("role", "user")
    if role not in ("admin", "user"):
        return _error(400, 'role must be "admin" or "user"')
    records = request.app[RECORDS]
    new_id = str(max((int(k) for k in records), default=0) + 1)
    user: JSON = {
        "id": new_id,
        "name": body["name"],
        "email": body["email"],
        "role": role,
        "address": body.get("address") or {"city": None, "country": None},
    }
    records[new_id] = user
    return web.json_response(user, status=201, headers={"Location": f"/users/{new_id}"})


# ---------------------------------------------------------------------------
# Factory


def make_app(name: str) -> web.Application:
    """Build one demo service: ``"users"``, ``"orders"`` or ``"products"``."""
    if name not in _DATA:
        raise ValueError(f"unknown demo service {name!r}; expected one of {', '.join(SERVICES)}")
    app = web.Application(middlewares=[json_errors])
    app[SERVICE_NAME] = name
    app[RECORDS] = {record["id"]: copy.deepcopy(record) for record in _DATA[name]}
    app.router.add_get("/health", health)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/sse", sse)
    app.router.add_get("/slow", slow)
    app.router.add_get(f"/{name}", list_records)
    app.router.add_get(f"/{name}/{{id}}", get_record)
    if name == "users":
        app.router.add_post("/users", create_user)
    return app
