"""``pygate.plugin.read_body``: a plugin reads the client's body whole before the upstream
call; the route still gets it (a proxy route's upstream, a GraphQL route's request),
several readers share one read, and a client waiting for ``100 Continue`` is told once."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

from aiohttp import web

from pygate.plugin import BadRequest, Context, hookimpl, read_body

SEEN: list[bytes] = []


def reader(name: str, priority: int) -> types.ModuleType:
    """A plugin whose ``admit`` reads the body and refuses one that says ``refuse``."""
    module = types.ModuleType(name)
    module.PRIORITY = priority  # type: ignore[attr-defined]

    @hookimpl
    async def admit(request: web.BaseRequest, ctx: Context) -> None:
        body = await read_body(request, ctx)
        SEEN.append(body)
        if b"refuse" in body:
            raise BadRequest("refused by its body")

    module.admit = admit  # type: ignore[attr-defined]
    return module


async def test_a_proxy_route_sends_the_bytes_a_plugin_read(pygate_gateway: Any,
                                                           fake_upstream: Any) -> None:
    upstream = await fake_upstream()
    SEEN.clear()
    gateway = await pygate_gateway(
        {"plugins": {"first": {}, "second": {}},
         "routes": [{"name": "r", "path": "/", "upstream": upstream.url}]},
        plugins={"first": reader("first", 20), "second": reader("second", 10)})
    body = b'{"n": 1}' * 5000
    status, _, _ = await gateway.request("POST", "/x", data=body)
    assert status == 200
    assert SEEN == [body, body]  # both plugins saw it whole: read once, kept on ctx.body
    assert upstream.requests[-1].body == body
    assert upstream.requests[-1].headers["Content-Length"] == str(len(body))
    status, _, _ = await gateway.request("POST", "/x", data=b"please refuse")
    assert status == 400
    assert len(upstream.requests) == 1


async def test_a_client_waiting_for_100_continue_is_told_once(pygate_gateway: Any,
                                                              fake_upstream: Any) -> None:
    upstream = await fake_upstream()
    gateway = await pygate_gateway(
        {"plugins": {"first": {}},
         "routes": [{"name": "r", "path": "/", "upstream": upstream.url}]},
        plugins={"first": reader("first", 20)})
    port = int(gateway.url.rsplit(":", 1)[1])
    reader_, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    await writer.drain()
    interim = await asyncio.wait_for(reader_.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader_.read(), 10)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert b"100 Continue" not in rest
    assert upstream.requests[-1].body == b"hello"


SCHEMA = "type Query { echo(text: String!): String }\n"


async def test_a_graphql_route_answers_a_body_a_plugin_read(pygate_gateway: Any,
                                                           fake_upstream: Any,
                                                           tmp_path: Path) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(request.query.get("text"))

    upstream = await fake_upstream(echo)
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    SEEN.clear()
    gateway = await pygate_gateway(
        {"plugins": {"first": {}},
         "routes": [{"name": "g", "path": "/graphql", "graphql": {
             "schema": "schema.graphql",
             "resolvers": {"Query.echo": {"upstream": upstream.url, "path": "/echo",
                                          "query": {"text": "{args.text}"}}}}}]},
        plugins={"first": reader("first", 20)}, base_dir=str(tmp_path))
    query = b'{"query": "{ echo(text: \\"hi\\") }"}'
    status, _, body = await gateway.request(
        "POST", "/graphql", data=query, headers={"Content-Type": "application/json"})
    assert (status, body) == (200, {"data": {"echo": "hi"}})
    assert SEEN == [query]


async def test_a_graphql_post_waiting_for_100_continue_is_told(pygate_gateway: Any,
                                                              fake_upstream: Any,
                                                              tmp_path: Path) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(request.query.get("text"))

    upstream = await fake_upstream(echo)
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    gateway = await pygate_gateway(
        {"routes": [{"name": "g", "path": "/graphql", "graphql": {
            "schema": "schema.graphql",
            "resolvers": {"Query.echo": {"upstream": upstream.url, "path": "/echo",
                                         "query": {"text": "{args.text}"}}}}}]},
        base_dir=str(tmp_path))
    query = b'{"query": "{ echo(text: \\"hi\\") }"}'
    port = int(gateway.url.rsplit(":", 1)[1])
    reader_, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /graphql HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
                 % len(query))
    await writer.drain()
    interim = await asyncio.wait_for(reader_.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(query)
    rest = await asyncio.wait_for(reader_.read(), 10)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert rest.endswith(b'{"data":{"echo":"hi"}}')
