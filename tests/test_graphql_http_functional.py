"""GraphQL over HTTP: media types by ``Accept``, status codes, and the official audit.

PRODUCT.md section 6: POST (``application/json``) and GET as the GraphQL-over-HTTP
specification describes; a client that accepts ``application/graphql-response+json``
gets that media type (and 4xx for a document that does not parse or validate); a
client that accepts only ``application/json`` gets 200 with ``errors`` for those.
The graphql-http server audit passes with no error and no warning: it runs here
against a real ``pygate serve`` (``tests/graphql_audit/``, installed by ``make
test`` with ``npm ci``; without node or the package this test skips, and fails
under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import GatewayFactory, UpstreamFactory, problem

AUDIT = Path(__file__).resolve().parent / "graphql_audit"
GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON_TYPE = "application/json"

SCHEMA = """
type Query { user(id: ID!): User, broken: User }
type Mutation { rename(name: String!): User }
type User { id: ID! name: String }
"""


# ---------------------------------------------------------------------------
# The official audit, against pygate serve


def audit_command() -> list[str]:
    node = shutil.which("node")
    installed = (AUDIT / "node_modules" / "graphql-http" / "package.json").is_file()
    if node is None or not installed:
        message = ("node, or the graphql-http package in tests/graphql_audit/node_modules, is "
                   "missing (make test installs both: the Debian nodejs and npm packages, "
                   "then npm ci)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return [node, str(AUDIT / "audit.mjs")]


async def test_the_graphql_http_audit_passes_without_an_error_or_a_warning(
        gateway_process: GatewayFactory, upstream: UpstreamFactory, tmp_path: Path) -> None:
    command = audit_command()

    async def user(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "name": "Ada"})

    up = await upstream(routes={"GET /users/{id}": user})
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    gw = await gateway_process(f"""
[upstreams.users]
targets = ["{up.url}"]

[[routes]]
name = "graphql"
path = "/graphql"
[routes.graphql]
schema = "schema.graphql"
[routes.graphql.resolvers."Query.user"]
upstream = "users"
path = "/users/{{args.id}}"
""")
    done = await asyncio.create_subprocess_exec(
        *command, gw.url + "/graphql", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(done.communicate(), 120)
    assert done.returncode == 0, err.decode(errors="replace")
    results = json.loads(out)
    assert len(results) >= 50  # the audit ran in full
    failed = [r for r in results if r["status"] in ("error", "warn")]
    assert failed == [], json.dumps(failed, indent=1)
    assert [r for r in results if r["status"] != "ok"] == []  # no notice either
    # The gateway logged no traceback for any of the audit's requests.
    assert "Traceback" not in gw.stderr()


# ---------------------------------------------------------------------------
# Media types and status codes


@pytest.fixture
async def gateway(pygate_gateway: Any, upstream: UpstreamFactory, tmp_path: Path) -> Any:
    async def user(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "name": "Ada"})

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=503)

    up = await upstream(routes={"GET /users/{id}": user, "GET /broken": broken})
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    return await pygate_gateway({
        "upstreams": {"users": {"targets": [up.url]}},
        "routes": [{"name": "graphql", "path": "/graphql", "graphql": {
            "schema": "schema.graphql", "resolvers": {
                "Query.user": {"upstream": "users", "path": "/users/{args.id}"},
                "Query.broken": {"upstream": "users", "path": "/broken"},
                "Mutation.rename": {"upstream": "users", "method": "POST",
                                    "path": "/rename", "body": {"name": "{args.name}"}}}}}],
    }, base_dir=str(tmp_path))


async def post(gw: Any, query: str, accept: str | None) -> tuple[int, str, Any]:
    headers = {"Accept": accept} if accept is not None else {}
    skip = () if accept is not None else ("Accept",)
    async with gw.session.post(gw.url + "/graphql", json={"query": query}, headers=headers,
                               skip_auto_headers=skip) as response:
        return (response.status, response.headers["Content-Type"],
                await response.json(content_type=None))


@pytest.mark.parametrize(("accept", "media"), [
    (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE),
    (JSON_TYPE, JSON_TYPE),
    ("*/*", JSON_TYPE),
    (None, JSON_TYPE),
    ("application/*", JSON_TYPE),
    (f"{GRAPHQL_RESPONSE}, {JSON_TYPE};q=0.9", GRAPHQL_RESPONSE),
    (f"{JSON_TYPE}, {GRAPHQL_RESPONSE}", JSON_TYPE),
    (f"{JSON_TYPE};q=0.5, {GRAPHQL_RESPONSE}", GRAPHQL_RESPONSE),
    (f"{GRAPHQL_RESPONSE};q=0.4, */*;q=0.5", JSON_TYPE),
    (f"text/html, {GRAPHQL_RESPONSE};q=0.1", GRAPHQL_RESPONSE),
    (f"{GRAPHQL_RESPONSE};charset=latin-1, {JSON_TYPE}", JSON_TYPE),
    (f"{GRAPHQL_RESPONSE};charset=utf-8", GRAPHQL_RESPONSE),
])
async def test_the_media_type_follows_accept(gateway: Any, accept: str | None,
                                             media: str) -> None:
    status, content_type, body = await post(gateway, '{ user(id: "1") { name } }', accept)
    assert (status, content_type) == (200, f"{media}; charset=utf-8")
    assert body == {"data": {"user": {"name": "Ada"}}}
    # A document that does not validate: 400 in graphql-response+json, 200 in json.
    status, content_type, body = await post(gateway, "{ user { nickname } }", accept)
    assert (status, content_type) == (400 if media == GRAPHQL_RESPONSE else 200,
                                      f"{media}; charset=utf-8")
    assert set(body) == {"errors"}


@pytest.mark.parametrize("accept", ["text/html", f"{JSON_TYPE};q=0", "image/*, text/*"])
async def test_an_accept_taking_neither_media_type_is_406(gateway: Any, accept: str) -> None:
    status, content_type, body = await post(gateway, '{ user(id: "1") { name } }', accept)
    assert status == 406 and content_type == "application/problem+json"
    assert problem(body)["errors"]


async def test_an_executed_query_is_200_with_its_field_errors(gateway: Any) -> None:
    for accept in (GRAPHQL_RESPONSE, JSON_TYPE):
        status, _, body = await post(gateway, '{ broken { name } user(id: "2") { name } }',
                                     accept)
        assert status == 200
        assert body["data"] == {"broken": None, "user": {"name": "Ada"}}
        assert body["errors"][0]["path"] == ["broken"]
        assert "answered 503" in body["errors"][0]["message"]


async def test_get_requests(gateway: Any) -> None:
    url = gateway.url + "/graphql"
    query = "query Q($id: ID!) { user(id: $id) { name } }"
    # Empty optional parameters are the same as absent ones.
    async with gateway.session.get(url, params={
            "query": query, "variables": '{"id": "3"}', "operationName": "",
            "extensions": ""}, headers={"Accept": GRAPHQL_RESPONSE}) as response:
        assert response.status == 200
        assert response.headers["Vary"] == "Accept"
        assert await response.json(content_type=None) == {"data": {"user": {"name": "Ada"}}}
    # A mutation is never run by a GET: 405, and POST is the way.
    async with gateway.session.get(url, params={"query": 'mutation { rename(name: "x") { id } }'},
                                   headers={"Accept": GRAPHQL_RESPONSE}) as response:
        assert response.status == 405 and response.headers["Allow"] == "POST"
        assert problem(await response.read())["errors"]


async def test_post_bodies(gateway: Any) -> None:
    url = gateway.url + "/graphql"
    # application/graphql: the document as the body.
    async with gateway.session.post(url, data='{ user(id: "4") { name } }', headers={
            "Content-Type": "application/graphql"}) as response:
        assert await response.json() == {"data": {"user": {"name": "Ada"}}}
    # UTF-8, declared or not; other members of the JSON object are ignored.
    payload = json.dumps({"query": '{ user(id: "Zoë🏃") { id } }', "other": 1},
                         ensure_ascii=False).encode()
    for content_type in (JSON_TYPE, f"{JSON_TYPE}; charset=utf-8", f"{JSON_TYPE};charset=UTF-8"):
        async with gateway.session.post(url, data=payload,
                                        headers={"Content-Type": content_type}) as response:
            assert await response.json() == {"data": {"user": {"id": "Zoë🏃"}}}
    # JSON that is not UTF-8: a bad request, not a crash.
    async with gateway.session.post(url, data=b'{"query": "{ user(id: \xff) { id } }"}',
                                    headers={"Content-Type": JSON_TYPE}) as response:
        assert response.status == 400
        assert problem(await response.read())["errors"]


async def test_json_nested_beyond_the_stack_is_a_4xx_or_a_field_error(
        pygate_gateway: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    """JSON nested deeper than Python's parser can take, in a request body or a GET's
    variables, is a bad request; in an upstream's answer it fails that field."""
    deep = "[" * 100_000 + "]" * 100_000

    async def user(request: web.Request) -> web.Response:
        return web.Response(text=deep, content_type="application/json")

    up = await upstream(routes={"GET /users/{id}": user})
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    gw = await pygate_gateway({
        "upstreams": {"users": {"targets": [up.url]}},
        "routes": [{"name": "graphql", "path": "/graphql", "graphql": {
            "schema": "schema.graphql", "resolvers": {
                "Query.user": {"upstream": "users", "path": "/users/{args.id}"}}}}],
    }, base_dir=str(tmp_path))
    url = gw.url + "/graphql"
    async with gw.session.post(url, data=deep, headers={"Content-Type": JSON_TYPE}) as response:
        assert response.status == 400
        assert "nested too deeply" in problem(await response.read())["detail"]
    async with gw.session.get(url, params={"query": "{ user(id: 1) { id } }",
                                           "variables": "[" * 1200 + "]" * 1200}) as response:
        assert response.status == 400  # a URL within the request line's limit of 8 KB
        assert "variables is JSON nested too deeply" in problem(await response.read())["detail"]
    async with gw.session.post(url, json={"query": '{ user(id: "1") { id } }'}) as response:
        body = await response.json()
    assert body["data"] == {"user": None}
    assert "answered JSON nested too deeply" in body["errors"][0]["message"]


async def test_a_lone_surrogate_from_an_upstream_is_escaped(
        pygate_gateway: Any, upstream: UpstreamFactory, tmp_path: Path) -> None:
    """``"\\ud800"`` is valid JSON but not UTF-8: the answer escapes it instead of failing."""
    async def user(request: web.Request) -> web.Response:
        return web.Response(text='{"id": "1", "name": "a\\ud800b"}',
                            content_type="application/json")

    up = await upstream(routes={"GET /users/{id}": user})
    (tmp_path / "schema.graphql").write_text(SCHEMA)
    gw = await pygate_gateway({
        "upstreams": {"users": {"targets": [up.url]}},
        "routes": [{"name": "graphql", "path": "/graphql", "graphql": {
            "schema": "schema.graphql", "resolvers": {
                "Query.user": {"upstream": "users", "path": "/users/{args.id}"}}}}],
    }, base_dir=str(tmp_path))
    async with gw.session.post(gw.url + "/graphql",
                               json={"query": '{ user(id: "1") { name } }'}) as response:
        assert response.status == 200
        raw = await response.read()
    assert b"\\ud800" in raw
    assert json.loads(raw) == {"data": {"user": {"name": "a\ud800b"}}}
