"""bff-shape through an in-process gateway (pygate.testing) in front of loopback upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pygate_bff_shape
import pytest
from aiohttp import web

from pygate.testing import start_gateway

pytest_plugins = ["pygate.testing"]


def test_listed_by_pygate_plugins() -> None:
    command = Path(sys.executable).parent / "pygate"
    done = subprocess.run([str(command), "plugins"], capture_output=True, text=True,
                          timeout=60, check=True)
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    entry = listed["bff-shape"]
    assert entry["distribution"] == "pygate-bff-shape"
    assert entry["hooks"] == ["aggregate", "config_schema"]


async def upstreams(fake_upstream: Any) -> str:
    async def user(request: web.Request) -> web.Response:
        return web.json_response({"id": "1", "name": "Ann", "address": {"city": "Oslo"}})

    async def orders(request: web.Request) -> web.Response:
        return web.json_response([{"id": "o1", "status": "new"}])

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=503)

    up = await fake_upstream(routes={"GET /users/1": user, "GET /orders": orders,
                                     "GET /broken": broken})
    return str(up.url)


def route(url: str, name: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": path, "aggregate": {"calls": {
        "user": {"upstream": url, "path": "/users/1"},
        "orders": {"upstream": url, "path": "/orders"},
        "extra": {"upstream": url, "path": "/broken", "optional": True},
    }}, **extra}


async def test_hook_aggregate_reshapes_per_route(pygate_gateway: Any, fake_upstream: Any
                                                 ) -> None:
    url = await upstreams(fake_upstream)
    gateway = await pygate_gateway({
        "plugins": {"bff-shape": {"envelope": "data"}},
        "routes": [
            route(url, "watch", "/watch", plugins={"bff-shape": {
                "pick": {"name": "user.name", "city": "user.address.city",
                         "last_status": "orders.0.status", "extra": "extra.value"},
                "drop_nulls": True}}),
            route(url, "wrapped", "/wrapped"),
            route(url, "plain", "/plain", plugins={"bff-shape": False}),
        ],
    }, plugins={"bff-shape": pygate_bff_shape})
    status, headers, body = await gateway.request("GET", "/watch")
    assert status == 200
    assert body == {"data": {"name": "Ann", "city": "Oslo", "last_status": "new"}}
    assert headers["X-Pygate-Partial"] == "extra"
    status, _, body = await gateway.request("GET", "/wrapped")
    assert body["data"]["orders"] == [{"id": "o1", "status": "new"}]
    assert body["data"]["extra"] is None
    status, _, body = await gateway.request("GET", "/plain")
    assert set(body) == {"user", "orders", "extra"}


async def test_nothing_configured_keeps_pygates_composition(pygate_gateway: Any,
                                                            fake_upstream: Any) -> None:
    url = await upstreams(fake_upstream)
    gateway = await pygate_gateway({"routes": [route(url, "r", "/r",
                                                     plugins={"bff-shape": {}})]},
                                   plugins={"bff-shape": pygate_bff_shape})
    status, _, body = await gateway.request("GET", "/r")
    assert status == 200
    assert body["user"]["name"] == "Ann" and body["extra"] is None


async def test_config_errors_carry_the_key_path() -> None:
    config = {"routes": [route("http://127.0.0.1:9", "r", "/r", plugins={
        "bff-shape": {"pick": {"name": "user..name"}, "envelop": "data"}})]}
    # the gateway refuses to start: pygate's ConfigError lists every problem
    with pytest.raises(Exception, match="configuration error") as caught:
        await start_gateway(config, {"bff-shape": pygate_bff_shape})
    text = str(caught.value)
    assert "routes[0].plugins.bff-shape.pick: expected paths like" in text
    assert "routes[0].plugins.bff-shape.envelop: unknown key; did you mean 'envelope'?" in text
