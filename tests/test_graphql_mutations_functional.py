"""Mutations end to end: request bodies for resolver calls, and mutations in order.

PRODUCT.md section 6: ``body = "{args.input}"`` (a placeholder, or a table of
placeholders) is the JSON body of a resolver's call, so a mutation can POST its
input to a service. Mutation root fields run one after the other, each with
everything below it; calls that change something are never merged (two
identical mutations are two calls).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pygate import Context, Identity, hookimpl
from pygate.app import build_gateway
from pygate.config import ConfigError, load_data
from pygate.demo.token import demo_token
from tests.conftest import ROOT, UpstreamFactory, shipped_config

SCHEMA = """
type Query { user(id: ID!): User }
type Mutation {
  createUser(input: NewUser!): User
  rename(id: ID!, name: String!): User
  step(n: Int!): Int
}
input NewUser { name: String!, email: String!, tags: [String!] }
type User { id: ID! name: String email: String tags: [String] by: String }
"""


class Caller:
    """``X-Caller: ID`` is the identity."""

    PRIORITY = 100

    @hookimpl
    def authenticate(self, request: web.BaseRequest, ctx: Context) -> Identity | None:
        caller = request.headers.get("X-Caller")
        return Identity(id=caller, consumer=caller, source="caller") if caller else None


async def users_service(upstream: UpstreamFactory) -> tuple[Any, list[Any], list[str]]:
    received: list[Any] = []
    events: list[str] = []

    async def create(request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        body = await request.json()
        received.append(body)
        return web.json_response({"id": str(len(received)), **body}, status=201)

    async def rename(request: web.Request) -> web.Response:
        body = await request.json()
        received.append(body)
        return web.json_response({"id": request.match_info["id"], "name": body["name"],
                                  "by": body["by"]})

    async def step(request: web.Request) -> web.Response:
        n = request.match_info["n"]
        events.append(f"start {n}")
        for _ in range(20):  # were the steps sent together, the next would start meanwhile
            await asyncio.sleep(0)
        events.append(f"end {n}")
        return web.json_response(int(n))

    up = await upstream(routes={"POST /users": create, "PATCH /users/{id}": rename,
                                "POST /steps/{n}": step})
    return up, received, events


def config(up: Any) -> dict[str, Any]:
    return {
        "upstreams": {"users": {"targets": [up.url]}},
        "routes": [{"name": "graphql", "path": "/graphql", "plugins": {"caller": {}},
                    "graphql": {"schema": "schema.graphql", "resolvers": {
                        "Mutation.createUser": {"upstream": "users", "method": "POST",
                                                "path": "/users", "body": "{args.input}"},
                        "Mutation.rename": {"upstream": "users", "method": "PATCH",
                                            "path": "/users/{args.id}",
                                            "body": {"name": "{args.name}",
                                                     "by": "{identity.id}",
                                                     "note": "renamed by {identity.id}",
                                                     "source": "graphql"}},
                        "Mutation.step": {"upstream": "users", "method": "POST",
                                          "path": "/steps/{args.n}"},
                    }}}],
    }


@pytest.fixture
def schema_dir(tmp_path: Path) -> str:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    return str(tmp_path)


async def gql(gw: Any, query: str, variables: dict[str, Any] | None = None) -> Any:
    async with gw.session.post(gw.url + "/graphql", headers={"X-Caller": "7"},
                               json={"query": query, "variables": variables}) as response:
        assert response.status == 200
        return await response.json()


async def test_a_mutation_posts_its_input_as_json(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    up, received, _ = await users_service(upstream)
    gw = await pygate_gateway(config(up), plugins={"caller": Caller()}, base_dir=schema_dir)
    body = await gql(gw, "mutation New($in: NewUser!) { createUser(input: $in) { id name "
                         "email tags } }",
                     {"in": {"name": "Dee", "email": "dee@example.com", "tags": ["x", "y"]}})
    assert body == {"data": {"createUser": {"id": "1", "name": "Dee", "email": "dee@example.com",
                                            "tags": ["x", "y"]}}}
    assert received == [{"name": "Dee", "email": "dee@example.com", "tags": ["x", "y"]}]
    assert up.last.method == "POST" and up.last.path == "/users"


async def test_a_table_of_placeholders_is_the_body(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    up, received, _ = await users_service(upstream)
    gw = await pygate_gateway(config(up), plugins={"caller": Caller()}, base_dir=schema_dir)
    body = await gql(gw, 'mutation { rename(id: "3", name: "Cy") { id name by } }')
    assert body == {"data": {"rename": {"id": "3", "name": "Cy", "by": "7"}}}
    assert received == [{"name": "Cy", "by": "7", "note": "renamed by 7", "source": "graphql"}]
    assert up.last.headers["Content-Type"] == "application/json"


async def test_identical_mutations_are_each_made(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    up, received, _ = await users_service(upstream)
    gw = await pygate_gateway(config(up), plugins={"caller": Caller()}, base_dir=schema_dir)
    body = await gql(gw, 'mutation { a: createUser(input: {name: "E", email: "e@x"}) { id } '
                         'b: createUser(input: {name: "E", email: "e@x"}) { id } }')
    assert body == {"data": {"a": {"id": "1"}, "b": {"id": "2"}}}
    assert len(received) == 2


async def test_mutation_fields_run_one_after_the_other(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    up, _, events = await users_service(upstream)
    gw = await pygate_gateway(config(up), plugins={"caller": Caller()}, base_dir=schema_dir)
    body = await gql(gw, "mutation { a: step(n: 1) b: step(n: 2) c: step(n: 3) }")
    assert body == {"data": {"a": 1, "b": 2, "c": 3}}
    assert events == ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]


async def test_a_body_placeholder_without_a_value_fails_the_field(
        pygate_gateway: Any, upstream: UpstreamFactory, schema_dir: str) -> None:
    up, received, _ = await users_service(upstream)
    cfg = config(up)
    cfg["routes"][0]["plugins"] = {}  # no identity
    gw = await pygate_gateway(cfg, plugins={}, base_dir=schema_dir)
    body = await gql(gw, 'mutation { rename(id: "3", name: "Cy") { id } }')
    assert body["data"] == {"rename": None}
    [error] = body["errors"]
    assert error["path"] == ["rename"] and "{identity.id}" in error["message"]
    assert received == []


def test_a_body_on_a_get_call_is_refused_with_its_key_path(tmp_path: Path) -> None:
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    cfg = config(type("U", (), {"url": "http://127.0.0.1:9"})())
    cfg["routes"][0]["graphql"]["resolvers"]["Query.user"] = {
        "upstream": "users", "path": "/users/{args.id}", "body": {"x": "{args.id}"}}
    with pytest.raises(ConfigError) as caught:
        build_gateway(load_data(cfg, base_dir=str(tmp_path)), extra_plugins={"caller": Caller()})
    [issue] = caught.value.issues
    assert issue.path == 'routes[0].graphql.resolvers."Query.user".body'
    assert "a GET call has no body" in issue.message


async def test_the_demo_creates_a_user(pygate_gateway: Any,
                                       demo_services: dict[str, int]) -> None:
    """The README's mutation against the demo services: the user is created by the users
    service, and the next query finds it."""
    gw = await pygate_gateway(shipped_config(ROOT / "pygate.toml", demo_services),
                              base_dir=str(ROOT))
    headers = {"Authorization": f"Bearer {demo_token()}"}
    query = ('mutation { createUser(input: {name: "Dee Demo", email: "dee@example.com"}) '
             "{ id name role } }")
    async with gw.session.post(gw.url + "/graphql", headers=headers,
                               json={"query": query}) as reply:
        body = await reply.json()
    assert body == {"data": {"createUser": {"id": "4", "name": "Dee Demo", "role": "user"}}}
    async with gw.session.post(gw.url + "/graphql", headers=headers, json={
            "query": '{ user(id: "4") { email orders { id } } }'}) as reply:
        assert await reply.json() == {"data": {"user": {"email": "dee@example.com",
                                                        "orders": []}}}


async def test_mutations_after_the_gateway_timeout_are_not_run(
        pygate_gateway: Any, upstream: UpstreamFactory, raw_upstream: Any,
        schema_dir: str) -> None:
    """The first mutation's service answers its head and never its body: at
    ``gateway.timeout`` it fails, and the mutations after it are not sent at all."""
    up, _, events = await users_service(upstream)

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10\r\n\r\n1")
        await writer.drain()
        await reader.read()

    stalled = await raw_upstream(stall)
    cfg = config(up)
    cfg["gateway"] = {"timeout": "500ms"}
    cfg["upstreams"]["stalled"] = {"targets": [stalled.url]}
    cfg["routes"][0]["graphql"]["resolvers"]["Mutation.createUser"] = {
        "upstream": "stalled", "method": "POST", "path": "/users", "body": "{args.input}"}
    gw = await pygate_gateway(cfg, plugins={"caller": Caller()}, base_dir=schema_dir)
    body = await gql(gw, 'mutation { a: createUser(input: {name: "E", email: "e@x"}) { id } '
                         "b: step(n: 1) }")
    assert body["data"] == {"a": None, "b": None}
    assert [e["path"] for e in body["errors"]] == [["a"], ["b"]]
    assert "did not finish within the gateway's timeout" in body["errors"][0]["message"]
    assert "was not run" in body["errors"][1]["message"]
    assert events == []  # step 1 never reached its service
